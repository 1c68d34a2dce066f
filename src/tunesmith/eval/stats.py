"""Did tuning help? Base vs tuned on the same examples, with a paired bootstrap interval on the difference.

Both models answer the same prompts, so examples are resampled in pairs: each example's difficulty
stays on both sides, and the interval reflects the difference itself, not how hard the eval set is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

RESAMPLES = 2000
SEED = 0
LOWER_IS_BETTER = ("loss", "perplexity")


def paired_bootstrap_ci(base: Sequence[float], tuned: Sequence[float], resamples: int = RESAMPLES,
                        seed: int = SEED, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of mean(tuned − base) over examples resampled with replacement (seeded)."""
    diffs = np.asarray(tuned, dtype=float) - np.asarray(base, dtype=float)
    if diffs.size == 0:
        raise ValueError("no examples to compare")
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // diffs.size)  # bounds memory at a few million indices per step
    means = np.concatenate([
        diffs[rng.integers(0, diffs.size, size=(min(chunk, resamples - start), diffs.size))].mean(axis=1)
        for start in range(0, resamples, chunk)])
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def wins_losses_ties(base: Sequence[float], tuned: Sequence[float]) -> dict[str, int]:
    """Examples where tuned scored higher, lower, or the same as base."""
    diffs = np.asarray(tuned, dtype=float) - np.asarray(base, dtype=float)
    same = np.isclose(diffs, 0.0, atol=1e-12)
    return {"wins": int(((diffs > 0) & ~same).sum()), "losses": int(((diffs < 0) & ~same).sum()),
            "ties": int(same.sum())}


MIN_INTERVAL_EXAMPLES = 2  # a bootstrap over one example resamples that example alone: its "interval" is a point


def compare_metric(base: Sequence[float], tuned: Sequence[float]) -> dict[str, Any]:
    """Means, their difference tuned − base with a 95% interval (None over fewer than MIN_INTERVAL_EXAMPLES
    examples), and the per-example tally. Raises ValueError with no examples."""
    if len(base) == 0:
        raise ValueError("no examples to compare")
    base_mean, tuned_mean = float(np.mean(base)), float(np.mean(tuned))
    interval = None
    if len(base) >= MIN_INTERVAL_EXAMPLES:
        low, high = paired_bootstrap_ci(base, tuned)
        interval = [_round(low), _round(high)]
    return {"base": _round(base_mean), "tuned": _round(tuned_mean), "delta": _round(tuned_mean - base_mean),
            "ci95": interval, **wins_losses_ties(base, tuned), "higher_is_better": True}


def compare_variants(base_scores: dict[str, list[float]], tuned_scores: dict[str, list[float]],
                     base_summary: dict[str, Any], tuned_summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every metric both variants have: per-example ones with intervals, loss and perplexity as totals.

    Loss is measured over all answer tokens at once, so it has no per-example pairs and no interval.
    """
    comparison = {name: compare_summary(name, base_summary, tuned_summary)
                  for name in LOWER_IS_BETTER if name in base_summary and name in tuned_summary}
    comparison.update({name: compare_metric(base_scores[name], tuned_scores[name])
                       for name in tuned_scores if name in base_scores})
    return comparison


def compare_summary(name: str, base_summary: dict[str, Any], tuned_summary: dict[str, Any]) -> dict[str, Any]:
    base, tuned = float(base_summary[name]), float(tuned_summary[name])
    return {"base": base, "tuned": tuned, "delta": _round(tuned - base), "ci95": None,
            "higher_is_better": name not in LOWER_IS_BETTER}


def _round(value: float) -> float:
    return round(value, 4) + 0.0  # + 0.0 turns -0.0 into 0.0
