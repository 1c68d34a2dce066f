"""The base-vs-tuned figure: one bar pair per metric, so the effect of tuning is seen at a glance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.figures import pyplot, save_figure

SCORE_METRICS = ("exact_match", "json_valid", "field_accuracy", "contains", "regex", "json_schema", "rouge_l", "chrf",
                 "numeric_match", "label_accuracy", "tool_call_match", "tool_name_match", "tool_call_decision")


PROBES_LABEL = "general prompts\n(forgetting probes)"


def plot_base_vs_tuned(results: dict[str, Any], path: Path) -> Path | None:
    """Bars for the 0..1 task scores of base and tuned, each pair headed by its change and 95% interval, and the
    forgetting probes' accuracy beside them (its tuned bar red where eval flagged a regression): what tuning gained and
    what it cost, in one picture. None when there is nothing to compare."""
    plt = pyplot()
    variants = [v for v in ("base", "tuned") if v in results]
    metrics = [m for m in results.get("tuned", {}) if m in SCORE_METRICS or m.startswith("field/")]
    if len(variants) < 2 or not metrics:
        return None
    scores = {m: [results[v][m] for v in variants] for m in metrics}
    changes = {m: (results.get("comparison") or {}).get(m) for m in metrics}
    probes = results.get("probes") or {}
    if probes.get("base") and probes.get("tuned"):
        scores[PROBES_LABEL] = [probes["base"]["accuracy"], probes["tuned"]["accuracy"]]
        changes[PROBES_LABEL] = (probes.get("comparison") or {}).get("probe_accuracy")
    names = list(scores)
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 1.35), 4.4), dpi=110)  # room for each pair's interval
    width = 0.4
    for offset, variant in enumerate(variants):
        xs = [i + (offset - 0.5) * width for i in range(len(names))]
        bars = ax.bar(xs, [scores[name][offset] for name in names], width, label=variant)
        if variant == "tuned" and probes.get("regression"):
            bars[names.index(PROBES_LABEL)].set_color("#d62728")  # the regression eval flagged
    for index, name in enumerate(names):
        ax.annotate(change_label(changes.get(name), scores[name]), (index, max(scores[name])), xytext=(0, 4),
                    textcoords="offset points", ha="center", va="bottom", fontsize=8)
    if PROBES_LABEL in scores:
        ax.axvline(len(names) - 1.5, color="grey", linestyle=":", linewidth=1)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set(ylim=(0, 1.22), ylabel="score (0 to 1, higher is better)",
           title=f"base vs tuned on {results['examples']} held-out examples"
                 + (f" and {probes['count']} general prompts" if PROBES_LABEL in scores else "")
                 + ("\nforgetting probes: REGRESSION" if probes.get("regression") else ""))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # beside the axes: it hides no bar
    return save_figure(fig, path)


def change_label(entry: dict[str, Any] | None, pair: list[float]) -> str:
    """"+0.90\n[+0.80, +1.00]": tuned − base with its paired 95% interval, where eval computed one."""
    delta = entry["delta"] if entry else pair[-1] - pair[0]
    interval = (entry or {}).get("ci95")
    return f"{delta:+.2f}" + (f"\n[{interval[0]:+.2f}, {interval[1]:+.2f}]" if interval else "")
