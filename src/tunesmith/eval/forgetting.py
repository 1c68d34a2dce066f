"""Forgetting probes: did tuning break what the base model could already do?

A fine-tune on a narrow task can cost general skills. The probes ask base and tuned the same short
general questions (facts, small reasoning steps, following a format instruction), each with an
automatic check (`probe_checks.py`), and score both on a few paragraphs of plain English text
(perplexity). A regression is flagged when tuned falls more than `eval.probe_margin` below base in
accuracy, or its perplexity rises more than `eval.probe_perplexity_margin` (a fraction) above base.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from tunesmith.errors import TunesmithError
from tunesmith.eval.probe_checks import passes, validate_probe
from tunesmith.eval.stats import compare_metric
from tunesmith.models.generation import Generated
from tunesmith.scoring import final_answer

PROBES_DIR = Path(__file__).resolve().parent / "probes"
BUNDLED_PROBES = PROBES_DIR / "general.jsonl"
GENERAL_TEXT = PROBES_DIR / "general_text.txt"

Variant = tuple[Any, Callable[[], AbstractContextManager]]



def probe_passed(probe: dict[str, Any], generated: str) -> bool:
    """Whether a generated answer passes its probe's check, read as the task metrics read answers: a reasoning
    model's answer is the text after its thinking (`scoring.final_answer`)."""
    return passes(probe, final_answer(generated))

def load_probes(path: Path) -> list[dict[str, Any]]:
    """The probe rows of a JSONL file, each checked (prompt, a known check, an answer where it needs one)."""
    if not path.is_file():
        raise TunesmithError(f"eval.probe_file: no such file {path}.", "Give a path relative to the recipe file.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TunesmithError(f"eval.probe_file: {path} is not UTF-8 text (byte {exc.start}).",
                             "Save it as UTF-8.") from None
    probes = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            probe = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TunesmithError(f"{path}, line {number}: not JSON ({exc.msg}).") from None
        validate_probe(probe, f"{path}, line {number}")
        probes.append({"id": probe.get("id", str(number)), "category": probe.get("category", "general"), **probe})
    if not probes:
        raise TunesmithError(f"{path} has no probes.")
    return probes


def general_paragraphs(path: Path = GENERAL_TEXT) -> list[str]:
    """The perplexity slice: paragraphs separated by blank lines, each scored as its own document."""
    return [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]


def run_probes(variants: dict[str, Variant], tokenizer: Any, probes: list[dict[str, Any]], paragraphs: list[str],
               settings: Any) -> dict[str, Any]:
    """Ask every variant every probe and score the text slice; compare and flag a regression when there is a base.

    `settings` is the recipe's eval section (batch size, new tokens, the two margins).
    """
    results: dict[str, Any] = {"count": len(probes), "margin": settings.probe_margin,
                               "perplexity_margin": settings.probe_perplexity_margin}
    if not getattr(tokenizer, "chat_template", None):
        results["asked_as"] = PLAIN_PROBE_FORMAT  # no chat template: base and tuned asked as plain text
    answers, passed, margins = {}, {}, {}
    for name, (model, context) in variants.items():
        started = time.monotonic()
        with context(), torch.no_grad():
            generated = ask(model, tokenizer, probes, settings.probe_max_new_tokens, settings.batch_size)
            answers[name], margins[name] = generated.answers, generated.first_token_margin
            perplexity = text_perplexity(model, tokenizer, paragraphs, settings.batch_size)
        passed[name] = [float(probe_passed(p, a)) for p, a in zip(probes, answers[name], strict=True)]
        results[name] = {**accuracies(probes, passed[name]), "perplexity": perplexity,
                         "seconds": round(time.monotonic() - started, 1)}
    results["rows"] = [{"id": p["id"], "category": p["category"], "prompt": p["prompt"], "check": p["check"],
                        "expected": p.get("answer"), **{n: answers[n][i] for n in answers},
                        **{f"{n}_passed": bool(passed[n][i]) for n in passed},
                        **{f"{n}_first_token_margin": margins[n][i] for n in margins if len(margins[n]) == len(probes)}}
                       for i, p in enumerate(probes)]
    if "base" in passed and "tuned" in passed:
        results["comparison"] = probe_comparison(probes, passed, results)
        results["regression"], results["reasons"] = regression(results, settings)
        results["lost"] = lost_probes(results["rows"])
    return results


def ask(model: Any, tokenizer: Any, probes: list[dict[str, Any]], max_new_tokens: int, batch_size: int) -> Generated:
    """Greedy answers to each probe as a single user turn (the model's own chat template, no system prompt), with
    each answer's first-token margin. A model without a chat template (a base model after raw-text training) is asked
    in PLAIN_PROBE_FORMAT, the zero-shot question/answer text lm-evaluation-harness gives base models."""
    from tunesmith.eval.decoding import generate_from_prompts, prompt_texts

    if not getattr(tokenizer, "chat_template", None):
        texts = [PLAIN_PROBE_FORMAT.format(prompt=p["prompt"]) for p in probes]
    else:
        rows = [{"messages": [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": ""}]}
                for p in probes]
        texts = prompt_texts(tokenizer, rows)
    return generate_from_prompts(model, tokenizer, texts, max_new_tokens, batch_size)


PLAIN_PROBE_FORMAT = "Question: {prompt}\nAnswer:"


NEAR_TIE_MARGIN = 0.05  # a base whose first answer token leads the runner-up by less than this chose it by a hair


def lost_probes(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The probes the base passed and the tuned model fails, each with the base's first-token margin (top-1 minus
    top-2 probability of the first answer token; None where it was not recorded) and whether that margin was under
    NEAR_TIE_MARGIN: such a probe turns on a near-tie in the base that any small update can flip, so losing it
    says less about lost knowledge than losing one the base answered firmly."""
    lost = [r for r in rows if r.get("base_passed") and not r.get("tuned_passed")]
    return [{"id": r["id"], "base_first_token_margin": r.get("base_first_token_margin"),
             "near_tie": r.get("base_first_token_margin") is not None
             and r["base_first_token_margin"] < NEAR_TIE_MARGIN} for r in lost]


def text_perplexity(model: Any, tokenizer: Any, paragraphs: list[str], batch_size: int) -> float:
    """Perplexity per token over all paragraphs (each a document ending in end-of-text, as pre-training saw it)."""
    from tunesmith.eval.decoding import encode_document, sequence_logprobs

    encoded = [encode_document(tokenizer, text, 512) for text in paragraphs]
    scores = sequence_logprobs(model, encoded, tokenizer.pad_token_id, batch_size)
    loss = -sum(total for total, _ in scores) / max(sum(count for _, count in scores), 1)
    return round(math.exp(min(loss, 50)), 3)


def accuracies(probes: list[dict[str, Any]], passed: list[float]) -> dict[str, float]:
    """Overall accuracy and one per category (in the order categories first appear)."""
    summary = {"accuracy": _mean(passed)}
    for category in dict.fromkeys(p["category"] for p in probes):
        summary[category] = _mean([ok for p, ok in zip(probes, passed, strict=True) if p["category"] == category])
    return summary


def probe_comparison(probes: list[dict[str, Any]], passed: dict[str, list[float]],
                     results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """probe_accuracy and probe/<category> with paired intervals; probe_perplexity (lower is better) as totals."""
    comparison = {"probe_accuracy": compare_metric(passed["base"], passed["tuned"])}
    for category in dict.fromkeys(p["category"] for p in probes):
        indices = [i for i, p in enumerate(probes) if p["category"] == category]
        comparison[f"probe/{category}"] = compare_metric([passed["base"][i] for i in indices],
                                                         [passed["tuned"][i] for i in indices])
    base, tuned = results["base"]["perplexity"], results["tuned"]["perplexity"]
    comparison["probe_perplexity"] = {"base": base, "tuned": tuned, "delta": round(tuned - base, 4), "ci95": None,
                                      "higher_is_better": False}
    return comparison


def regression(results: dict[str, Any], settings: Any) -> tuple[bool, list[str]]:
    """True, with the reasons, when accuracy fell or perplexity rose beyond the recipe's margins."""
    reasons = []
    base, tuned = results["base"], results["tuned"]
    drop = base["accuracy"] - tuned["accuracy"]
    if drop > settings.probe_margin + 1e-9:
        reasons.append(f"probe accuracy fell {drop:.3f} ({base['accuracy']:.3f} → {tuned['accuracy']:.3f}), "
                       f"more than the {settings.probe_margin:g} margin")
    rise = tuned["perplexity"] / base["perplexity"] - 1 if base["perplexity"] > 0 else 0.0
    if rise > settings.probe_perplexity_margin + 1e-9:
        reasons.append(f"general-text perplexity rose {rise:.1%} ({base['perplexity']:.3f} → "
                       f"{tuned['perplexity']:.3f}), more than the {settings.probe_perplexity_margin:.0%} margin")
    return bool(reasons), reasons


def recipe_probes(recipe: Any) -> list[dict[str, Any]]:
    """The recipe's probe file, or the bundled general-purpose set."""
    return load_probes(recipe.resolve_path(recipe.eval.probe_file) if recipe.eval.probe_file else BUNDLED_PROBES)


def probe_source(recipe: Any) -> dict[str, Any]:
    """Which probe file an eval asked (its path, whether it is the bundled set, and its sha256), for results.json:
    two evals' probe accuracies compare only when they asked the same probes."""
    from tunesmith.manifest import file_sha256

    path = recipe.resolve_path(recipe.eval.probe_file) if recipe.eval.probe_file else BUNDLED_PROBES
    return {"path": str(path), "bundled": path == BUNDLED_PROBES, "sha256": file_sha256(path)}


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 4) if values else 0.0
