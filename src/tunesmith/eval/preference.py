"""Base vs tuned by likelihood, for runs whose held-out data has no single reference answer.

Preference pairs: how often the model gives the chosen answer a higher log-probability per token than the
rejected one (length-normalised, as SimPO's reward is, Meng et al. 2024: summed, a longer chosen answer loses to a
short rejected one under every model, and the accuracy read 0 before and after training), by how much on average
(summed over the answer's tokens), and for the tuned model the share of pairs it moved towards the chosen answer
relative to the base: DPO's implicit reward accuracy with the base as reference (Rafailov et al. 2023; TRL logs it
as `rewards/accuracies`). Unpaired rows (KTO):
the mean log-probability of desirable and of undesirable answers, the gap between them, and, row by row against
the base, whether the tuned model moved each answer the way its label asks.
Raw text (CPT): held-out perplexity, in `eval/perplexity.py`. As in `evaluate.py`, one base model is
loaded and the adapter is switched off to score the base; a whole-model run loads its model beside the base.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from tunesmith.config import PREFERENCE_KINDS, Recipe
from tunesmith.data.template import encode_completion
from tunesmith.errors import TunesmithError
from tunesmith.eval.decoding import sequence_logprobs
from tunesmith.eval.rows import held_out_rows, results_dir, write_eval_outputs
from tunesmith.models import pick_device
from tunesmith.models.tuned import Variant, run_tokenizer, tuned_variants
from tunesmith.runs import Run

LIKELIHOOD_KINDS = (*PREFERENCE_KINDS, "cpt")
PREFERENCE_SHAPES = ("preference", "unpaired_preference")


def run_likelihood_eval(recipe: Recipe, run: Run, against: Path | None = None, data: Path | None = None) -> Path:
    """Score base (or another run's model, `against`) and tuned on the held-out rows the run saved (`data`: that
    file's rows instead), and the recipe's probes and lm-eval tasks; writes results.json and returns its path."""
    from tunesmith.eval.add_ons import prepare_add_ons, refuse_failed_add_ons, run_add_ons
    from tunesmith.eval.against import against_dir

    if recipe.eval.judge is not None:
        raise TunesmithError(f"eval.judge grades generated answers, and a {recipe.method.kind} eval generates none.",
                             "Remove eval.judge from the recipe (it applies to sft and grpo runs).")
    cpt = recipe.method.kind == "cpt"
    held_out = held_out_rows(recipe, run, ("text",) if cpt else PREFERENCE_SHAPES,
                             "perplexity evaluation" if cpt else "preference evaluation", data)
    rows = held_out.rows[: recipe.eval.max_examples]
    add_ons = prepare_add_ons(recipe)
    tokenizer, variants, who = likelihood_variants(recipe, run, against)
    if cpt:
        from tunesmith.eval.perplexity import perplexity_results

        results = perplexity_results(variants, tokenizer, recipe, rows)
    else:
        results = preference_results(variants, tokenizer, recipe, rows)
    results["rows_from"] = held_out.rows_from
    results.update({"against": who} if who else {})
    results.update(run_add_ons(add_ons, variants, tokenizer, recipe))
    folder = results_dir(against_dir(run, who), held_out)
    path = write_eval_outputs(run, folder, results)
    refuse_failed_add_ons(results.get("add_on_errors"), path)
    return path


def likelihood_variants(recipe: Recipe, run: Run, against: Path | None) -> tuple[Any, dict[str, Variant], dict | None]:
    """Tokenizer, the (model, context) variants to score, and (against another run) who plays `base`."""
    device = pick_device(recipe.training.device)
    tokenizer = run_tokenizer(run)
    if against is None:
        return tokenizer, tuned_variants(run, device, recipe.eval.compare_base), None
    from tunesmith.eval.against import against_variants

    variants, who = against_variants(run, against, device)
    return tokenizer, variants, who


def preference_results(variants: dict[str, Variant], tokenizer: Any, recipe: Recipe,
                       rows: list[dict]) -> dict[str, Any]:
    """Chosen-over-rejected accuracy and margins (pairs), or the desirable/undesirable gap (KTO), per variant."""
    paired = "chosen" in rows[0]
    results: dict[str, Any] = {"examples": len(rows), "task_metric": "preference_accuracy" if paired else "label_gap"}
    margins: dict[str, list[float]] = {}
    normalised: dict[str, list[bool]] = {}  # per pair: chosen more likely per token than rejected
    for name, (model, context) in variants.items():
        with context(), torch.no_grad():
            if paired:
                chosen = completion_logps(model, tokenizer, rows, "chosen", recipe)
                rejected = completion_logps(model, tokenizer, rows, "rejected", recipe)
                results[name] = pair_summary(chosen, rejected)
                margins[name] = [c - r for (c, _), (r, _) in zip(chosen, rejected, strict=True)]
                normalised[name] = [per_token(c) > per_token(r) for c, r in zip(chosen, rejected, strict=True)]
            else:
                labels = [row["label"] for row in rows]
                logps = [total for total, _ in completion_logps(model, tokenizer, rows, "completion", recipe)]
                results[name], margins[name] = label_summary(logps, labels), signed_logps(logps, labels)
    if paired:
        results["samples"] = pair_samples(rows, margins, limit=5)
    if "base" in margins and "tuned" in margins:
        if paired:
            results["comparison"] = pair_comparison(margins["base"], margins["tuned"], normalised["base"],
                                                    normalised["tuned"])
            results["tuned"]["reward_accuracy"] = reward_accuracy(margins["base"], margins["tuned"])
        else:
            results["comparison"] = label_comparison(margins["base"], margins["tuned"])
    return results


def per_token(score: tuple[float, int]) -> float:
    """A (summed log-probability, tokens) score as the mean log-probability per answer token."""
    total, tokens = score
    return total / max(tokens, 1)


def reward_accuracy(base: list[float], tuned: list[float]) -> float:
    """The share of pairs whose margin log p(chosen) − log p(rejected) the tuned model widened over the base's: DPO's
    implicit reward r = β·(log π(y|x) − log π_ref(y|x)) ranks the chosen answer first, with the base as π_ref
    (Rafailov et al. 2023, "Direct Preference Optimization"; TRL's `rewards/accuracies` on held-out pairs)."""
    return round(sum(t > b for b, t in zip(base, tuned, strict=True)) / len(base), 4)


def signed_logps(logps: list[float], labels: list[bool]) -> list[float]:
    """Each answer's log-probability, negated for an undesirable one: higher is better on every row."""
    return [logp if label else -logp for logp, label in zip(logps, labels, strict=True)]


def label_comparison(base: list[float], tuned: list[float]) -> dict[str, dict[str, Any]]:
    """Tuned against base, row by row, for unpaired (KTO) rows: the signed log-probability (`signed_logps`), so its
    difference is KTO's implied reward log π(y|x) − log π_ref(y|x) with the sign of the label (Ethayarajh et al.,
    2024, "KTO: Model Alignment as Prospect Theoretic Optimization"): a row is won when the tuned model made a
    desirable answer more likely or an undesirable one less likely than the base did. Paired-bootstrap 95%
    interval and wins/losses/ties as `pair_comparison`."""
    from tunesmith.eval.stats import compare_metric

    return {"signed_logp": compare_metric(base, tuned)}


def pair_comparison(base: list[float], tuned: list[float], base_right: list[bool],
                    tuned_right: list[bool]) -> dict[str, dict[str, Any]]:
    """Tuned against base, pair by pair: preference accuracy (`*_right`: the chosen answer more likely per token than
    the rejected) and the margin log p(chosen) − log p(rejected), each with its paired-bootstrap 95% interval and the
    pairs won, lost and tied (`eval/stats.py` `compare_metric`), as SFT's task metrics are compared."""
    from tunesmith.eval.stats import compare_metric

    return {"preference_accuracy": compare_metric([float(r) for r in base_right], [float(r) for r in tuned_right]),
            "mean_margin": compare_metric(base, tuned)}


def pair_summary(chosen: list[tuple[float, int]], rejected: list[tuple[float, int]]) -> dict[str, float]:
    """Over the pairs: preference accuracy (per token, `per_token`), the mean summed margin, the mean summed
    log-probability of each side."""
    margins = [c - r for (c, _), (r, _) in zip(chosen, rejected, strict=True)]
    right = [per_token(c) > per_token(r) for c, r in zip(chosen, rejected, strict=True)]
    return {
        "preference_accuracy": round(sum(right) / len(right), 4),
        "mean_margin": round(sum(margins) / len(margins), 4),
        "mean_logp_chosen": round(sum(c for c, _ in chosen) / len(chosen), 4),
        "mean_logp_rejected": round(sum(r for r, _ in rejected) / len(rejected), 4),
    }


def label_summary(logps: list[float], labels: list[bool]) -> dict[str, float | None]:
    good = [lp for lp, label in zip(logps, labels, strict=True) if label]
    bad = [lp for lp, label in zip(logps, labels, strict=True) if not label]
    mean_good = sum(good) / len(good) if good else None
    mean_bad = sum(bad) / len(bad) if bad else None
    gap = mean_good - mean_bad if good and bad else None
    signed = signed_logps(logps, labels)
    return {"mean_logp_desirable": _round(mean_good), "mean_logp_undesirable": _round(mean_bad),
            "label_gap": _round(gap), "signed_logp": _round(sum(signed) / len(signed))}


def completion_logps(model: Any, tokenizer: Any, rows: list[dict], key: str, recipe: Recipe) -> list[tuple[float, int]]:
    """(summed log-probability, answer tokens) of each row's `key` answer given its prompt."""
    encoded = [asdict(encode_completion(tokenizer, row["prompt"], row[key], recipe.data.max_length, row.get("tools")))
               for row in rows]
    return sequence_logprobs(model, encoded, tokenizer.pad_token_id, recipe.eval.batch_size)


def pair_samples(rows: list[dict], margins: dict[str, list[float]], limit: int) -> list[dict[str, Any]]:
    samples = []
    for index, row in enumerate(rows[:limit]):
        sample = {key: answer_text(row[key]) for key in ("prompt", "chosen", "rejected")}
        sample.update({f"margin_{name}": round(values[index], 3) for name, values in margins.items()})
        samples.append(sample)
    return samples


def answer_text(value: str | list[dict]) -> str:
    return value if isinstance(value, str) else value[-1]["content"]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
