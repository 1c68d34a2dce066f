"""Base vs tuned for a reward model: on held-out pairs, how often the chosen answer scores above the rejected
one (pairwise accuracy) and by how much on average (mean margin).

The base model has no reward head. `base` is scored with the head a run starts from: freshly initialised at
random, seeded with training.seed (the same head training began with). It holds no learned preference: its
accuracy is what a random projection of the base's features happens to give (chance in expectation; a random
head on good features can land well above 0.5), the floor the trained head is measured against, not a skill of
the base model; results.json says so in `base_note`. As in `eval/preference.py`, one model is loaded and the
adapter is switched off for `base`.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from tunesmith.config import Recipe
from tunesmith.errors import TunesmithError
from tunesmith.eval.preference import pair_samples
from tunesmith.eval.rows import held_out_rows, results_dir, write_eval_outputs
from tunesmith.models import pick_device
from tunesmith.models.tuned import Variant, is_adapter, run_base_model, run_tokenizer
from tunesmith.runs import Run
from tunesmith.train.reward_model import encode_answer, load_reward_base, score_encoded

RANDOM_HEAD_NOTE = ("base is the base model with an untrained, randomly initialised score head (seed {seed}, the head "
                    "training started from): it holds no learned preference, so its accuracy is whatever a random "
                    "projection of the base's features happens to give (chance level in expectation), not a skill.")


def run_reward_eval(recipe: Recipe, run: Run, against: Path | None = None, data: Path | None = None) -> Path:
    """Score the run's held-out pairs (`data`: that file's pairs instead) with base and tuned heads; writes
    eval/results.json and returns its path."""
    if against is not None:
        raise TunesmithError(f"--against {against}: comparing two reward runs is not supported yet.",
                             "Evaluate each reward run on its own and compare their eval/results.json.")
    held_out = held_out_rows(recipe, run, ("preference",), "reward-model evaluation", data)
    rows = held_out.rows[: recipe.eval.max_examples]
    tokenizer, variants = reward_variants(recipe, run)
    results: dict[str, Any] = {"examples": len(rows), "rows_from": held_out.rows_from,
                               "task_metric": "preference_accuracy"}
    margins: dict[str, list[float]] = {}
    for name, (model, context) in variants.items():
        started = time.monotonic()
        with context():
            chosen, rejected = (score_answers(model, tokenizer, rows, key, recipe.eval.batch_size)
                                for key in ("chosen", "rejected"))
        margins[name] = [c - r for c, r in zip(chosen, rejected, strict=True)]
        results[name] = {**score_summary(chosen, rejected), "seconds": round(time.monotonic() - started, 1)}
    if "base" in results:
        results["base_note"] = RANDOM_HEAD_NOTE.format(seed=recipe.training.seed)
        results["comparison"] = score_comparison(margins["base"], margins["tuned"])
    results["samples"] = pair_samples(rows, margins, limit=5)
    folder = results_dir(run.eval_dir, held_out)
    path = write_eval_outputs(run, folder, results)
    return path


def reward_variants(recipe: Recipe, run: Run) -> tuple[Any, dict[str, Variant]]:
    """The tokenizer, and (model, context) for base (untrained head) and tuned."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    model_dir, artifact = run_base_model(run), run.trained_artifact()
    device, seed = pick_device(recipe.training.device), recipe.training.seed
    tokenizer = run_tokenizer(run)
    if not is_adapter(artifact):
        tuned = AutoModelForSequenceClassification.from_pretrained(artifact).to(device).eval()
        base = {"base": (load_reward_base(model_dir, tokenizer, device, seed), nullcontext)}
        return tokenizer, {**(base if recipe.eval.compare_base else {}), "tuned": (tuned, nullcontext)}
    model = PeftModel.from_pretrained(load_reward_base(model_dir, tokenizer, device, seed), artifact).eval()
    variants: dict[str, Variant] = {"tuned": (model, nullcontext)}
    return tokenizer, ({"base": (model, model.disable_adapter), **variants} if recipe.eval.compare_base else variants)


def score_answers(model: Any, tokenizer: Any, rows: list[dict], key: str, batch_size: int) -> list[float]:
    """The reward of each row's `key` answer (chosen or rejected) to its prompt."""
    encoded = [encode_answer(tokenizer, row["prompt"], row[key], row.get("tools")) for row in rows]
    return score_encoded(model, encoded, tokenizer.pad_token_id, batch_size)


def score_comparison(base: list[float], tuned: list[float]) -> dict[str, dict[str, Any]]:
    """Tuned head against the base's random one, pair by pair (score of chosen − score of rejected): accuracy and
    margin, each with its paired-bootstrap 95% interval and the pairs won, lost and tied, as DPO's pairs compare."""
    from tunesmith.eval.stats import compare_metric

    return {"preference_accuracy": compare_metric([float(m > 0) for m in base], [float(m > 0) for m in tuned]),
            "mean_margin": compare_metric(base, tuned)}


def score_summary(chosen: list[float], rejected: list[float]) -> dict[str, float]:
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    return {
        "preference_accuracy": round(sum(m > 0 for m in margins) / len(margins), 4),
        "mean_margin": round(sum(margins) / len(margins), 4),
        "mean_score_chosen": round(sum(chosen) / len(chosen), 4),
        "mean_score_rejected": round(sum(rejected) / len(rejected), 4),
    }
