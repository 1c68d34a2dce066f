"""The one-paragraph answer to "do I need to fine-tune?": the cheapest option within the interval of the best.

Options are ordered by what they cost (eval/baselines.py COST_ORDER: zero-shot, constrained, few-shot, few-shot +
constrained, then the tuned model, which needs training). The best is the option with the highest headline score;
an option is within its interval when the paired bootstrap 95% interval of (best − option) reaches 0, i.e. the
held-out rows cannot tell the two apart.
"""

from __future__ import annotations

from typing import Any

from tunesmith.eval.baselines import COST_ORDER
from tunesmith.eval.stats import MIN_INTERVAL_EXAMPLES, compare_metric
from tunesmith.results import headline_of

# An interval of (best − option) wider than this, on a 0-1 score, decides nothing: with 4 rows a tuned model at 0.50
# and zero-shot at 0.00 are "within the interval" of each other, and the cheaper option would be recommended.
WIDE_INTERVAL = 0.5
LABELS = {"zero_shot": "zero-shot (the base as it is)", "few_shot": "few-shot", "constrained": "constrained decoding",
          "few_shot_constrained": "few-shot + constrained decoding", "tuned": "the tuned model"}


def option_label(name: str, scores: dict[str, Any]) -> str:
    """How the verdict names an option (few-shot with its k)."""
    k = scores.get("few_shot_k")
    return LABELS[name].replace("few-shot", f"{k}-shot") if k else LABELS[name]


def verdict(results: dict[str, Any]) -> str | None:
    """The paragraph for results.json `verdict`; None when there is no task metric or no baseline to weigh."""
    options = {name: scores for name, scores in (results.get("baselines") or {}).items()}
    if "tuned" in results:
        options["tuned"] = results["tuned"]
    metrics = [*results.get("metrics", []), results.get("task_metric", "")]
    metric = headline_of(metrics, next(iter(options.values()), {}))
    per_example = results.get("per_example") or {}
    columns = {name: per_example.get("base" if name == "zero_shot" else name, {}).get(metric) for name in options}
    if metric is None or len(options) < 2 or any(values is None for values in columns.values()):
        return None
    best = max(options, key=lambda name: (options[name][metric], -COST_ORDER.index(name)))
    if len(columns[best]) < MIN_INTERVAL_EXAMPLES:  # no interval: nothing to weigh the options by
        return (f"On {metric} over {len(columns[best])} held-out row the best is {option_label(best, options[best])} "
                f"at {options[best][metric]:.2f}, but one row cannot tell options apart. Evaluate on more held-out "
                "rows (`tunesmith eval RUN --data FILE`, eval.max_examples) before choosing.")
    gaps = {name: compare_metric(columns[name], columns[best]) for name in options}  # best − option, paired
    cheapest = next(name for name in COST_ORDER if name in options and gaps[name]["ci95"][0] <= 0)
    rows = results.get("examples", len(columns[best]))
    text = (f"On {metric} over {rows} held-out rows the best is {option_label(best, options[best])} at "
            f"{options[best][metric]:.2f}.")
    if "tuned" in options and "tuned" not in (best, cheapest):  # the question the baselines answer: said outright
        low, high = gaps["tuned"]["ci95"]
        text += (f" The tuned model reaches {options['tuned'][metric]:.2f} (best − it: {gaps['tuned']['delta']:+.2f}, "
                 f"95% CI [{low:+.2f}, {high:+.2f}]).")
    if cheapest != best:
        gap = gaps[cheapest]
        low, high = gap["ci95"]
        interval = f"best − it: {gap['delta']:+.2f}, 95% CI [{low:+.2f}, {high:+.2f}]"
        if high - low > WIDE_INTERVAL:
            return text + (f" {rows} rows cannot tell it from {option_label(cheapest, options[cheapest])} at "
                           f"{options[cheapest][metric]:.2f} ({interval}): the interval is too wide to decide on. "
                           f"Evaluate on more held-out rows (`tunesmith eval RUN --data FILE`, eval.max_examples) "
                           f"before choosing.")
        text += (f" The cheapest option within its 95% interval is {option_label(cheapest, options[cheapest])} at "
                 f"{options[cheapest][metric]:.2f} ({interval}).")
    return text + " " + conclusion(cheapest, options, metric)


def conclusion(cheapest: str, options: dict[str, Any], metric: str) -> str:
    """What to do: train (nothing cheaper holds up), or try the cheaper option first, with what it costs."""
    untrained = {name: scores for name, scores in options.items() if name != "tuned"}
    best_untrained = max(untrained, key=lambda name: untrained[name][metric])
    if cheapest == "tuned":
        return (f"No option without training comes within that interval: fine-tuning is worth it here (the best "
                f"without training, {option_label(best_untrained, untrained[best_untrained])}, reaches "
                f"{untrained[best_untrained][metric]:.2f}).")
    if "tuned" not in options:
        return ("Train the recipe and evaluate the run with these baselines (`tunesmith eval RUN --baselines ...`) "
                "to see whether fine-tuning beats it.")
    return f"It needs no training: try it before fine-tuning{cost_note(options[cheapest], options['tuned'])}."


def cost_note(option: dict[str, Any], tuned: dict[str, Any]) -> str:
    """`; it costs N× the tuned model's prompt tokens and M× its seconds per answer` (when both were measured)."""
    ratios = []
    for key, what in (("prompt_tokens", "prompt tokens"), ("seconds_per_answer", "seconds per answer")):
        if option.get(key) and tuned.get(key):
            ratios.append(f"{option[key] / tuned[key]:.1f}× the tuned model's {what}")
    return f"; it costs {' and '.join(ratios)}" if ratios else ""


def constraint_phrase(constraint: dict[str, Any]) -> str:
    """results.json's `constraint` in words: `one of 8 labels (inferred from 480 training answers)`."""
    spec = constraint.get("spec")
    what = {"choices": f"one of {len(spec) if isinstance(spec, list) else 'the'} labels",
            "json_schema": "JSON valid against the schema", "regex": f"the regex {spec}"}[constraint["kind"]]
    return f"{what} ({constraint['source']})"


def constrained_tuned_note(results: dict[str, Any]) -> str:
    """What a reader of base-vs-tuned scores must know when the tuned model alone decoded constrained
    (eval.constrain_tuned): part of the difference is the constraint's; "" otherwise."""
    if not results.get("tuned_constrained") or not results.get("constraint"):
        return ""
    return (f"The tuned model's answers were decoded constrained to {constraint_phrase(results['constraint'])} "
            "(eval.constrain_tuned); the base's were not, so part of the difference is the constraint's, not "
            "training's (--baselines constrained scores the base held to it too).")


def option_rows(baselines: dict[str, Any], tuned: dict[str, Any] | None, comparisons: dict[str, Any],
                metrics: list[str], task_metric: str = "") -> tuple[list[str], list[list[str]]]:
    """The baselines table (terminal, HTML report, model card): one row per option, cheapest first, with its task
    scores, the tuned model's paired lead on the headline score, and what each answer costs."""
    from tunesmith.eval.report import SCORE_METRICS

    options = {**baselines, **({"tuned": tuned} if tuned is not None else {})}
    first = next(iter(options.values()), {})
    headline = headline_of([*metrics, task_metric], first)
    shown = [m for m in first if m in SCORE_METRICS]
    head = ["option", *shown, *([f"tuned − it on {headline} (95% CI)"] if tuned is not None and headline else []),
            "prompt tokens", "answer tokens", "s / answer"]
    rows = []
    for name in [n for n in COST_ORDER if n in options]:
        scores = options[name]
        cells = [option_label(name, scores), *(_number(scores.get(m)) for m in shown)]
        if tuned is not None and headline:
            cells.append(lead_cell(comparisons.get(name, {}).get(headline)))
        cells += [_number(scores.get("prompt_tokens"), 0), _number(scores.get("answer_tokens"), 1),
                  _number(scores.get("seconds_per_answer"), 3)]
        rows.append(cells)
    return head, rows


def lead_cell(entry: Any) -> str:
    """`+0.12 [+0.05, +0.19]`: tuned − the option, with its paired 95% interval (a dict or a Comparison)."""
    if entry is None:
        return ""
    entry = entry if isinstance(entry, dict) else entry.model_dump()
    if not entry.get("ci95"):  # one example: no interval
        return f"{entry['delta']:+.2f}"
    low, high = entry["ci95"]
    return f"{entry['delta']:+.2f} [{low:+.2f}, {high:+.2f}]"


def _number(value: Any, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"
