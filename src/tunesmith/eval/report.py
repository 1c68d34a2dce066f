"""The base-vs-tuned figure: one bar pair per metric, so the effect of tuning is seen at a glance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.figures import pyplot, save_figure

SCORE_METRICS = ("exact_match", "json_valid", "field_accuracy", "contains", "regex", "json_schema", "rouge_l", "chrf",
                 "numeric_match", "label_accuracy", "tool_call_match", "tool_name_match", "tool_call_decision")


def plot_base_vs_tuned(results: dict[str, Any], path: Path) -> Path | None:
    """Bars for the 0..1 task scores of base and tuned; None when there is nothing to compare."""
    plt = pyplot()
    variants = [v for v in ("base", "tuned") if v in results]
    metrics = [m for m in results.get("tuned", {}) if m in SCORE_METRICS or m.startswith("field/")]
    if len(variants) < 2 or not metrics:
        return None
    fig, ax = plt.subplots(figsize=(max(6, len(metrics) * 0.9), 4), dpi=110)
    width = 0.4
    for offset, variant in enumerate(variants):
        xs = [i + (offset - 0.5) * width for i in range(len(metrics))]
        ax.bar(xs, [results[variant][m] for m in metrics], width, label=variant)
    ax.set_xticks(range(len(metrics)), metrics, rotation=30, ha="right")
    ax.set(ylim=(0, 1.05), ylabel="score", title=f"base vs tuned ({results['examples']} held-out examples)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
