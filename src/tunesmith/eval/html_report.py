"""eval/report.html: one self-contained page (inline CSS, chart as base64) to read base vs tuned side by side.

It is built from results.json alone, opens offline and can be attached to a CI job or mailed as one file.
"""

from __future__ import annotations

import base64
import difflib
import html
import re
from pathlib import Path
from typing import Any

from tunesmith.results import interval_text, score_text
from tunesmith.runs import atomic_write_text

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; width: 100%; margin: 1em 0; }
th, td { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; text-align: left; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.better td { background: #eaf7ea; } tr.worse td { background: #fbeaea; }
td.changed { font-weight: 600; } mark { background: #fff2a8; }
table.headline { width: auto; font-size: 15px; }
pre { white-space: pre-wrap; margin: 0; font: 13px/1.4 ui-monospace, monospace; }
table.confusion { width: auto; } table.confusion td { text-align: center; min-width: 3em; }
"""


def write_html_report(results: dict[str, Any], path: Path, chart: Path | None = None) -> Path:
    """Write the report next to results.json; the chart is inlined when it exists."""
    return atomic_write_text(path, render_report(results, chart.read_bytes() if chart and chart.is_file() else None))


def render_report(results: dict[str, Any], chart_png: bytes | None) -> str:
    other = (results.get("against") or {}).get("name")
    versus = f"tuned vs {other}" if other else "base vs tuned" if results.get("base") else "tuned"
    rows_from = str(results.get("rows_from") or "")
    scored = (f"examples of {Path(rows_from.removeprefix('file:')).name}" if rows_from.startswith("file:")
              else "held-out examples")
    title = f"{versus} on {results.get('examples', '?')} {scored}"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{_e(title)}</h1>"]
    if other:
        parts.append(f"<p>The <b>base</b> side of every comparison below is the run <code>{_e(other)}</code> "
                     f"(<code>{_e(results['against']['path'])}</code>), not the base model.</p>")
    from tunesmith.eval.verdict import constrained_tuned_note

    constrained = constrained_tuned_note(results)
    parts += [headline_html(results), metrics_note(results), reasoning_note(results),
              f"<p>{_e(constrained)}</p>" if constrained else "",
              metrics_table(results)]
    if chart_png:
        encoded = base64.b64encode(chart_png).decode("ascii")
        parts.append(f"<img alt='base vs tuned chart' src='data:image/png;base64,{encoded}'>")
    samples = results.get("samples") or []
    examples = pairs_table(results) if samples and "chosen" in samples[0] else examples_table(results)
    parts += [baselines_html(results), labels_html(results), add_ons_html(results), examples,
              judge_rows_table(results), probe_rows_table(results),
              "</body></html>"]
    return "\n".join(parts)


def headline_html(results: dict[str, Any]) -> str:
    """The page's answer first: the task metric base → tuned with its 95% interval, and whether the forgetting probes
    regressed (their verdict), each coloured as its table row is; empty where neither was measured."""
    from tunesmith.results import headline_of

    lines, comparison = [], results.get("comparison") or {}
    metric = headline_of([*results.get("metrics", []), results.get("task_metric", "")], comparison)
    entry = comparison.get(metric) if metric else None
    if entry is not None:
        interval = interval_text(entry, lambda x: _num(x, signed=True))
        lines.append((verdict_class(entry), f"Task ({metric}): {_num(entry['base'])} → {_num(entry['tuned'])}, "
                      f"{_num(entry['delta'], signed=True)}" + (f", 95% CI {interval}" if interval else "")
                      + {"better": ": better.", "worse": ": worse.", "": ": no clear change."}[verdict_class(entry)]))
    probes = results.get("probes") or {}
    if probes.get("tuned"):
        before, after = probes.get("base", {}).get("accuracy"), probes["tuned"]["accuracy"]
        change = f"{_num(before)} → {_num(after)}" if before is not None else _num(after)
        if probes.get("regression"):
            lines.append(("worse", f"General prompts (forgetting probes): {change}, REGRESSION: "
                                   + "; ".join(probes.get("reasons") or []) + "."))
        else:
            lines.append(("", f"General prompts (forgetting probes): {change}, no regression beyond the "
                              f"{probes.get('margin', 0.05)} margin."))
    if not lines:
        return ""
    rows = "".join(f"<tr class='{css}'><td><b>{_e(text)}</b></td></tr>" for css, text in lines)
    return f"<table class='headline'>{rows}</table>"


def baselines_html(results: dict[str, Any]) -> str:
    """The cheaper alternatives beside the tuned model (cheapest first), the constraint and the verdict."""
    from tunesmith.eval.verdict import constraint_phrase, option_rows

    if not results.get("baselines"):
        return ""
    head, rows = option_rows(results["baselines"], results.get("tuned"), results.get("baseline_comparison", {}),
                             results.get("metrics", []), results.get("task_metric", ""))
    constraint = results.get("constraint")
    held = f"<p>Constrained decoding held answers to {_e(constraint_phrase(constraint))}.</p>" if constraint else ""
    verdict = f"<p><b>{_e(results['verdict'])}</b></p>" if results.get("verdict") else ""
    return "<h2>Do you need to fine-tune?</h2>" + _table(head, rows) + held + verdict


def metrics_note(results: dict[str, Any]) -> str:
    """Which metrics were scored and why (eval.task_metric: auto chooses them from the training answers)."""
    choice = results.get("metrics_chosen")
    if not choice:
        return ""
    return (f"<p>Metrics: {_e(', '.join(choice['metrics']))}, by <code>{_e(choice['by'])}</code>; the "
            f"{_e(choice['from'])} are <b>{_e(choice['kind'])}</b> ({_e(choice['reason'])}).</p>")


def reasoning_note(results: dict[str, Any]) -> str:
    """Where an output reasons before it answers, that the metrics read only its answer (`scoring.final_answer`)."""
    from tunesmith.scoring import THINK_CLOSE

    outputs = [text for sample in results.get("samples") or [] for name, text in sample.items()
               if name not in ("prompt", "reference") and isinstance(text, str)]
    if not any(THINK_CLOSE in text for text in outputs):
        return ""
    return (f"<p>Outputs that reason first are scored on their answer alone: the text after their last "
            f"<code>{_e(THINK_CLOSE)}</code> (one still thinking when it ran out of tokens has no answer).</p>")


FEW_LABEL_ROWS = 5


def labels_html(results: dict[str, Any]) -> str:
    """label_accuracy: the accuracy per label, base and tuned, and a confusion matrix (heatmap) per variant."""
    report = results.get("label_accuracy")
    if not report:
        return ""
    variants = [v for v in ("base", "tuned") if v in report["per_label"]]
    tuned = report["per_label"][variants[-1]]
    head = ["label", "examples", *variants, *(["delta"] if len(variants) == 2 else [])]
    rows, classes = [], []
    for label, entry in tuned.items():
        scores = [report["per_label"][v][label]["accuracy"] for v in variants]
        delta = scores[-1] - scores[0] if len(variants) == 2 else None
        rows.append([label, str(entry["examples"]), *map(_num, scores),
                     *([_num(delta, signed=True)] if delta is not None else [])])
        few = entry["examples"] < FEW_LABEL_ROWS  # a label's change on 1 row is not a finding: not coloured
        classes.append("" if few or not delta or abs(delta) < 1e-12 else "better" if delta > 0 else "worse")
    parts = ["<h2>Accuracy per label</h2>", _table(head, rows, classes),
             f"<p>Labels with fewer than {FEW_LABEL_ROWS} held-out rows are not coloured: a change there could be "
             "one answer.</p>" if any(e["examples"] < FEW_LABEL_ROWS for e in tuned.values()) else ""]
    for variant in reversed(variants):
        parts.append(f"<h3>Confusion matrix, {_e(variant)} (rows: reference, columns: answer)</h3>")
        parts.append(confusion_table(report["confusion"][variant]))
    return "\n".join(parts)


def confusion_table(confusion: dict[str, dict[str, int]]) -> str:
    """Counts shaded by their share of the row: green on the diagonal (right), red elsewhere (wrong).

    The "(other)" column (answers that name no label) is left out when it is empty.
    """
    columns = [c for c in next(iter(confusion.values()), {}) if c != "(other)"
               or any(row.get(c) for row in confusion.values())]
    lines = ["<table class='confusion'><tr><th>reference \\ answer</th>"
             + "".join(f"<th>{_e(c)}</th>" for c in columns) + "</tr>"]
    for reference, row in confusion.items():
        total = max(sum(row.values()), 1)
        cells = []
        for column in columns:
            count = row.get(column, 0)
            rgb = "46,160,67" if column == reference else "218,54,51"
            shade = f" style='background: rgba({rgb},{0.75 * count / total:.2f})'" if count else ""
            cells.append(f"<td{shade}>{count}</td>")
        lines.append(f"<tr><th>{_e(reference)}</th>" + "".join(cells) + "</tr>")
    return "\n".join([*lines, "</table>"])


def add_ons_html(results: dict[str, Any]) -> str:
    """A table for each of the forgetting probes, the judge and the lm-eval tasks, with the probes' verdict."""
    from tunesmith.eval.add_ons import add_on_tables
    from tunesmith.results import EvalResults

    sections = []
    for block in add_on_tables(EvalResults.model_validate(results)):
        head = ["metric", "base", "tuned", "delta", "95% CI", "wins", "losses", "ties"]
        rows, classes = [], []
        for metric, base, tuned, compared in block.rows:
            entry = compared.model_dump() if compared is not None else None  # the dict the task table reads too
            rows.append([metric, _num(base) if base is not None else "–", _num(tuned),
                         _num(entry["delta"], signed=True) if entry else "–",
                         interval_text(entry or {}, lambda x: _num(x, signed=True)) or "–",
                         *(str((entry or {}).get(k, "–")) for k in ("wins", "losses", "ties"))])
            classes.append(verdict_class(entry) if entry else "")
        css = " class='worse'" if block.note.startswith("REGRESSION") else ""
        sections.append(f"<h2>{_e(block.title)}</h2>" + _table(head, rows, classes) + f"<p{css}>{_e(block.note)}</p>")
    return "\n".join(sections)


def judge_rows_table(results: dict[str, Any]) -> str:
    """The judge's grade of each sampled example with the start of its reply, so a score can be checked against the
    reasoning behind it: score mode, base and tuned score and reply; pairwise, the verdict in both orders (A is the
    answer shown first) and both replies. Rows where the judge favoured tuned (or base) are coloured."""
    block = results.get("judge") or {}
    replies = block.get("replies")
    if not replies:
        return ""
    samples = results.get("samples") or []
    shown = min(len(samples), len(next(iter(replies.values()))))
    rows, classes = [], []
    if block.get("mode") == "pairwise":
        head = ["#", "prompt", "base shown first", "tuned shown first"]
        for index in range(shown):
            verdicts = block["verdicts"][index]
            rows.append([str(index + 1), _pre(samples[index]["prompt"]),
                         *(_pre(f"verdict: {verdict or 'unread'}\n{replies[key][index]}")
                           for verdict, key in zip(verdicts, ("base_first", "tuned_first"), strict=True))])
            classes.append(pairwise_class(verdicts))
    else:
        variants = [v for v in ("base", "tuned") if v in replies]
        head = ["#", "prompt", *(f"{v}: score and reply" for v in variants)]
        for index in range(shown):
            scores = [block["per_example"][v][index] for v in variants]
            rows.append([str(index + 1), _pre(samples[index]["prompt"]),
                         *(_pre(f"score: {_score(score)}\n{replies[v][index]}")
                           for v, score in zip(variants, scores, strict=True))])
            delta = scores[-1] - scores[0] if len(scores) == 2 and None not in scores else 0
            classes.append("better" if delta > 0 else "worse" if delta < 0 else "")
    caption = f"<h2>LLM judge, example by example ({shown} of {block.get('examples', '?')})</h2>"
    return caption + _table(head, rows, classes, raw=True)


def pairwise_class(verdicts: list[str | None]) -> str:
    """'better' when tuned won in both orders (B first, A after the swap), 'worse' when base did."""
    if verdicts == ["B", "A"]:
        return "better"
    if verdicts == ["A", "B"]:
        return "worse"
    return ""


def _score(value: float | None) -> str:
    return "unread (the reply gives none)" if value is None else f"{value:g}"


def probe_rows_table(results: dict[str, Any]) -> str:
    """Every probe with both answers; rows where tuned lost (or gained) a pass are coloured."""
    rows_in = (results.get("probes") or {}).get("rows") or []
    if not rows_in or "base" not in rows_in[0]:
        return ""
    head = ["#", "category", "prompt", "expected", "base answer", "tuned answer"]
    rows, classes = [], []
    for index, row in enumerate(rows_in, start=1):
        marks = [("✓ " if row[f"{v}_passed"] else "✗ ") + row[v] for v in ("base", "tuned")]
        expected = f"{row['check']}: {row['expected']}" if row.get("expected") is not None else row["check"]
        rows.append([str(index), _e(str(row["category"])), _pre(row["prompt"]), _pre(expected), _pre(marks[0]),
                     f"<pre>{mark_changes(marks[0], marks[1])}</pre>"])
        change = int(row["tuned_passed"]) - int(row["base_passed"])
        classes.append({1: "better", -1: "worse"}.get(change, ""))
    return "<h2>Forgetting probes, answer by answer</h2>" + _table(head, rows, classes, raw=True)


def metrics_table(results: dict[str, Any]) -> str:
    """Means, delta with its 95% interval and the per-example tally; a row is coloured when the interval clears 0."""
    comparison = results.get("comparison")
    if not comparison:
        rows = [[m, *(score_text(m, results[v].get(m)) for v in ("base", "tuned") if v in results)]
                for m in results["tuned"]]
        return _table(["metric", *(v for v in ("base", "tuned") if v in results)], rows)
    head = ["metric", "base", "tuned", "delta", "95% CI", "wins", "losses", "ties"]
    rows, classes = [], []
    for metric, entry in comparison.items():
        rows.append([metric, _num(entry["base"]), _num(entry["tuned"]), _num(entry["delta"], signed=True),
                     interval_text(entry, lambda x: _num(x, signed=True)) or "–",
                     *(str(entry.get(k, "–")) for k in ("wins", "losses", "ties"))])
        classes.append(verdict_class(entry))
    note = (f"<p>Intervals: paired bootstrap over examples ({results.get('bootstrap', {}).get('resamples', '?')} "
            "resamples). Green: tuned better and the interval excludes 0; red: worse and excludes 0; loss and "
            f"perplexity, which have no interval: a change of more than {RELATIVE_MARGIN:.0%} of the base.</p>")
    return _table(head, rows, classes) + note


RELATIVE_MARGIN = 0.05  # loss and perplexity have no interval: a change under 5% of the base is not coloured


def verdict_class(entry: dict[str, Any]) -> str:
    """'better' / 'worse' when the whole interval lies on one side of 0; for loss and perplexity, which have none,
    when the change is more than RELATIVE_MARGIN of the base (the forgetting probes' perplexity margin: 17.39 → 17.48
    is not "worse"); a score compared over too few examples for an interval is neither."""
    if entry.get("ci95") is None:
        base = abs(entry.get("base") or 0.0)
        if entry.get("higher_is_better", True) or abs(entry["delta"]) <= RELATIVE_MARGIN * base:
            return ""
    low, high = entry.get("ci95") or (entry["delta"], entry["delta"])
    sign = 1 if entry.get("higher_is_better", True) else -1
    if sign * low > 0 and sign * high > 0:
        return "better"
    if sign * low < 0 and sign * high < 0:
        return "worse"
    return ""


def examples_table(results: dict[str, Any]) -> str:
    """Each sample with both outputs; the tuned words that differ from base are marked, rows coloured by score.

    Per-field scores are left out here (field_accuracy sums them up) to keep the table readable.
    """
    samples = results.get("samples", [])
    per_example = results.get("per_example", {})
    metrics = [m for m in per_example.get("tuned", {})
               if not m.startswith("field/") and ("base" not in per_example or m in per_example["base"])]
    head = ["#", "prompt", "reference", "base output", "tuned output", *metrics]
    rows, classes = [], []
    for index, sample in enumerate(samples):
        base, tuned = sample.get("base", ""), sample.get("tuned", "")
        scores = [[per_example.get(v, {}).get(m, [])[index:index + 1] for v in ("base", "tuned")] for m in metrics]
        rows.append([str(index + 1), _pre(sample["prompt"]), _pre(sample["reference"]), _pre(base),
                     f"<pre>{mark_changes(base, tuned)}</pre>", *(score_cell(b, t) for b, t in scores)])
        classes.append(row_class(scores))
    caption = f"<h2>Examples ({len(samples)} of {results.get('examples', '?')})</h2>"
    return caption + _table(head, rows, classes, raw=True)


def pairs_table(results: dict[str, Any]) -> str:
    """Preference pairs (DPO-family and reward evals): each prompt with its chosen and rejected answer and every
    variant's margin (log-probability or reward score of chosen − rejected), green where the tuned margin grew."""
    samples = results["samples"]
    variants = [name for name in ("base", "tuned") if f"margin_{name}" in samples[0]]
    rows, classes = [], []
    for index, sample in enumerate(samples):
        margins = [sample[f"margin_{name}"] for name in variants]
        rows.append([str(index + 1), _pre(sample["prompt"]), _pre(sample["chosen"]), _pre(sample["rejected"]),
                     *(_num(margin) for margin in margins)])
        grew = len(margins) == 2 and margins[1] - margins[0]
        classes.append("" if not grew else "better" if grew > 0 else "worse")
    caption = (f"<h2>Pairs ({len(samples)} of {results.get('examples', '?')}): margin = chosen − rejected</h2>")
    return caption + _table(["#", "prompt", "chosen", "rejected", *(f"margin {name}" for name in variants)], rows,
                            classes, raw=True)


def mark_changes(base: str, tuned: str) -> str:
    """The tuned text, escaped, with the words that are not in the base text wrapped in <mark>."""
    base_words, tuned_words = re.split(r"(\s+)", base), re.split(r"(\s+)", tuned)
    out = []
    for op, _, _, j1, j2 in difflib.SequenceMatcher(a=base_words, b=tuned_words, autojunk=False).get_opcodes():
        text = _e("".join(tuned_words[j1:j2]))
        out.append(text if op == "equal" or not text.strip() else f"<mark>{text}</mark>")
    return "".join(out)


def score_cell(base: list[float], tuned: list[float]) -> str:
    """'base → tuned' for one example's score, in bold when they differ."""
    if not tuned:
        return "<td class='num'>–</td>"
    if not base:
        return f"<td class='num'>{_num(tuned[0])}</td>"
    changed = " changed" if abs(tuned[0] - base[0]) > 1e-12 else ""
    return f"<td class='num{changed}'>{_num(base[0])} → {_num(tuned[0])}</td>"


def row_class(scores: list[list[list[float]]]) -> str:
    """'better' when some score rose and none fell from base to tuned, 'worse' the other way round."""
    deltas = [tuned[0] - base[0] for base, tuned in scores if base and tuned]
    rose, fell = any(d > 1e-12 for d in deltas), any(d < -1e-12 for d in deltas)
    if rose != fell:
        return "better" if rose else "worse"
    return ""


def _table(head: list[str], rows: list[list[str]], classes: list[str] | None = None, raw: bool = False) -> str:
    """An HTML table; cells are escaped text, or (raw) ready-made HTML where a cell starting <td is used as is."""
    lines = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for index, row in enumerate(rows):
        css = f" class='{classes[index]}'" if classes and classes[index] else ""
        cells = [c if raw and c.startswith("<td") else f"<td dir=\"auto\">{c if raw else _e(c)}</td>" for c in row]
        lines.append(f"<tr{css}>" + "".join(cells) + "</tr>")
    return "\n".join([*lines, "</table>"])


def _pre(text: str) -> str:
    return f"<pre>{_e(text)}</pre>"


def _num(value: Any, signed: bool = False) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return str(value)
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)
