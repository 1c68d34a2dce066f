"""Dataset statistics and the human report: token lengths (with a histogram), roles and turns, and what
each cleaning step removed, as JSON for tools and as one self-contained HTML page for people."""

from __future__ import annotations

import base64
import html
import io
import math
import statistics
from collections import Counter
from typing import Any

from tunesmith.figures import pyplot

Row = dict[str, Any]


def data_stats(rows: list[Row], lengths: list[int], max_length: int,
               labelled_by: list[Row] | None = None) -> dict[str, Any]:
    """Counts a person checks before training: rows, roles, turns, token-length spread and overflow, and a
    classifier's answers per label (`answer_labels`; `labelled_by`: the rows that decide whether they are labels)."""
    roles: Counter[str] = Counter()
    turns, reasoning = [], 0
    for row in rows:
        messages = row.get("messages") or [m for key in ("prompt", "completion", "chosen", "rejected")
                                           if isinstance(row.get(key), list) for m in row[key]]
        roles.update(message["role"] for message in messages)
        turns.append(len(messages))
        reasoning += any(message.get("reasoning_content") for message in messages)
    return {
        "rows": len(rows),
        "roles": dict(roles.most_common()),
        "turns": summary(turns) if any(turns) else None,
        "tokens": summary(lengths) if lengths else None,
        "total_tokens": sum(lengths),
        "over_max_length": sum(n > max_length for n in lengths),
        "max_length": max_length,
        **({"reasoning_rows": reasoning} if reasoning else {}),  # answers with their thinking (data/turns.py)
        **({"labels": {"desirable": sum(row["label"] is True for row in rows),
                       "undesirable": sum(row["label"] is False for row in rows)}}
           if any("label" in row for row in rows) else {}),  # KTO's: how the file's labels were read
        **answer_labels(rows, labelled_by),
    }


def answer_labels(rows: list[Row], labelled_by: list[Row] | None = None) -> dict[str, Any]:
    """{"answer_labels": {label: rows}}, most frequent first, where the answers are a classifier's labels
    (`data.answers.is_label_set`, decided on `labelled_by`, the training rows, so a small held-out split is counted
    too): a held-out set with 1 row of a label scores it on that row alone, which a person wants to see before
    training. Empty otherwise; counting stops once the answers are too many to be labels."""
    from tunesmith.data.answers import MAX_LABELS, is_label_set, row_answer

    def counted(some: list[Row]) -> Counter[str] | None:
        counts: Counter[str] = Counter()
        for answer in map(row_answer, some):
            if answer is not None:
                counts[answer.strip()] += 1
                if len(counts) > MAX_LABELS:
                    return None  # free text: a million distinct answers are not counted
        return counts

    decided = counted(labelled_by if labelled_by is not None else rows)
    if not decided or not is_label_set(decided):
        return {}
    counts = decided if labelled_by is None else counted(rows)
    return {"answer_labels": dict(counts.most_common())} if counts else {}


def summary(values: list[int]) -> dict[str, float]:
    ordered = sorted(values)

    def pct(p: float) -> int:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    return {"min": ordered[0], "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": ordered[-1],
            "mean": round(statistics.fmean(ordered), 1)}


def length_bins(values: list[int], max_length: int, count: int = 40) -> tuple[list[float], bool]:
    """Histogram bin edges shared by every split (so train and eval bars are comparable), covering the rows and
    max_length, and whether they are log-spaced: when the longest row is more than LOG_SPREAD times the median
    (one long outlier would otherwise put every other row into the first of `count` equal bins). Linear bins are a
    whole number of tokens wide, edges at half-tokens: 1.33-token bins put two lengths in one bar and one in the next,
    drawing peaks the data does not have."""
    ordered = sorted(values)
    low, high = max(1, min(ordered[0], max_length)), max(ordered[-1], max_length, 2)
    log_scale = ordered[-1] > LOG_SPREAD * max(1, ordered[len(ordered) // 2])
    if log_scale:
        return [low * (high / low) ** (i / count) for i in range(count + 1)], True
    low = min(ordered[0], max_length)
    width = max(1, math.ceil((high - low + 1) / count))  # whole tokens per bar, each count in one bar alone
    bars = math.ceil((high - low + 1) / width)
    return [low - 0.5 + width * i for i in range(bars + 1)], False


LOG_SPREAD = 10


def token_length_figure(lengths: dict[str, list[int]], max_length: int, title: str) -> bytes:
    """Histogram of tokens per row for each split, with data.max_length marked; PNG bytes. The bins are shared by
    the splits, log-spaced (with a log axis) where a few rows are far longer than the rest (`length_bins`)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    every = [n for values in lengths.values() for n in values]
    bins, log_scale = length_bins(every, max_length) if every else (40, False)
    for split, values in lengths.items():
        if values:
            ax.hist(values, bins=bins, alpha=0.6, label=f"{split} ({len(values)} rows)")
    ax.axvline(max_length, color="crimson", linestyle="--", label=f"max_length {max_length}")
    if log_scale:
        ax.set_xscale("log")
    ax.set_xlabel("tokens per row (chat template applied" + (", log scale)" if log_scale else ")"))
    ax.set_ylabel("rows")
    ax.set_title(title)
    ax.legend()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", bbox_inches="tight", dpi=110)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def report_html(report: dict[str, Any], histogram_png: bytes) -> str:
    """One page, no network assets: summary table, the histogram inline, each step with examples."""
    image = base64.b64encode(histogram_png).decode()
    labelled = any(s.get("answer_labels") for s in report["splits"].values())
    splits = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{s['rows']}</td><td>{fmt_summary(s['tokens'])}</td>"
        f"<td>{s['over_max_length']}</td><td>{html.escape(fmt_counts(s['roles']))}</td>"
        + (f"<td>{html.escape(fmt_counts(s.get('answer_labels') or {}))}</td>" if labelled else "") + "</tr>"
        for name, s in report["splits"].items())
    steps = "".join(step_html(split, step) for split, split_steps in report["cleaning"].items()
                    for step in (split_steps if isinstance(split_steps, list) else []))
    overlap = report["cleaning"].get("train_eval_overlap", {}).get("removed")
    overlap_line = f"<p>Train rows removed because they duplicate an eval row: {overlap}</p>" if overlap else ""
    removed = sum(step["removed"] for split_steps in report["cleaning"].values() if isinstance(split_steps, list)
                  for step in split_steps) + (overlap or 0)
    kept = sum(split["rows"] for split in report["splits"].values())
    skipped_count = sum((report.get("skipped_rows") or {}).values())  # reason -> rows (data.skip_invalid)
    flow = (f"<p><b>{kept + removed + skipped_count} rows read → {kept} kept</b> ("
            + ", ".join(f"{html.escape(name)} {split['rows']}" for name, split in report["splits"].items())
            + f"); cleaning removed {removed}" + (f", {skipped_count} skipped as unusable" if skipped_count else "")
            + ".</p>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Data report: {html.escape(report['name'])}</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:72em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}"
        "code{white-space:pre-wrap}</style></head><body>"
        f"<h1>Data report: {html.escape(report['name'])}</h1>"
        f"<p>Shape: <b>{html.escape(report['shape'])}</b>. "
        f"Source: {html.escape(fmt_counts(report['sources'], ': '))}</p>{flow}"
        "<table><tr><th>split</th><th>rows</th><th>tokens per row</th><th>over max_length</th><th>roles</th>"
        + ("<th>answers (labels: rows)</th>" if labelled else "") + "</tr>"
        f"{splits}</table><img alt='token length histogram' src='data:image/png;base64,{image}'>"
        f"<h2>Cleaning</h2>{overlap_line}{steps or '<p>No cleaning step ran.</p>'}</body></html>"
    )


def step_html(split: str, step: dict[str, Any]) -> str:
    details = {k: v for k, v in step.items() if k not in ("step", "removed", "changed", "examples")}
    examples = "".join(f"<li><code>{html.escape(fmt_details(example, first=''))}</code></li>"
                       for example in step["examples"])
    return (f"<h3>{html.escape(split)}: {html.escape(step['step'])}</h3><p>removed {step['removed']}, "
            f"changed {step['changed']}{html.escape(fmt_details(details))}</p><ul>{examples}</ul>")


def fmt_summary(tokens: dict[str, float] | None) -> str:
    if not tokens:
        return "-"
    return f"min {tokens['min']} · median {tokens['p50']} · p90 {tokens['p90']} · max {tokens['max']}"


def fmt_counts(counts: dict[str, Any], between: str = " ") -> str:
    return ", ".join(f"{key}{between}{value}" for key, value in counts.items()) or "-"


def fmt_details(details: dict[str, Any], first: str = "; ") -> str:
    """A cleaning step's fields or example as text a person reads ("; seconds: 0.4; languages: en 12, de 3"), not a
    Python dict; nested counts are listed, lists joined; `first` goes before the first field."""
    def text(value: Any) -> str:
        if isinstance(value, dict):
            return fmt_counts({key: text(item) for key, item in value.items()})
        if isinstance(value, list | tuple):
            return ", ".join(text(item) for item in value) or "-"
        return str(value)

    if not details:
        return ""
    return first + "; ".join(f"{key.replace('_', ' ')}: {text(value)}" for key, value in details.items())
