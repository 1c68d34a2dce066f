"""The regression gate: `tunesmith eval RUN --fail-if-worse METRIC[:margin]` fails a CI job when tuning hurt.

The decision reads only the comparisons in eval/results.json (the task's, and those of the probes, judge and
lm-eval blocks), so it can be re-checked without re-running a model.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from tunesmith.config import EVAL_METRICS
from tunesmith.errors import TunesmithError
from tunesmith.results import Comparison, EvalResults, ProbesBlock

EXIT_WORSE = 3
# The comparison names eval writes apart from those only it can tell: user metrics' own keys, probe categories
# (probe/<category>), GRPO rewards (reward/<name>) and lm-eval's <task>/<metric>.
KNOWN_NAMES = (*EVAL_METRICS, "field_accuracy", "probes", "probe_accuracy", "probe_perplexity", "judge_score",
               "judge_preference", "reward", "signed_logp", "preference_accuracy", "mean_margin")
# Those scored from 0 to 1 (a share of examples, or a mean of per-example scores in [0, 1]).
BOUNDED_NAMES = tuple(name for name in KNOWN_NAMES if name not in ("loss", "perplexity", "probes", "probe_perplexity",
                                                                    "judge_score", "reward", "signed_logp",
                                                                    "mean_margin"))


@dataclass(frozen=True)
class GateRule:
    """Fail when tuned is worse than base by more than `margin` (a negative margin demands an improvement)."""

    metric: str
    margin: float = 0.0


@dataclass(frozen=True)
class GateVerdict:
    rule: GateRule
    passed: bool
    message: str


def parse_gate_rule(text: str) -> GateRule:
    """`exact_match` or `exact_match:0.02`; a last `:part` that is no number belongs to the name."""
    name, _, margin = text.rpartition(":")
    try:
        return GateRule(name, float(margin)) if name else GateRule(text)
    except ValueError:
        return GateRule(text)  # an unknown name is reported, with the valid ones, by check_gate


def check_rule_names(rules: list[GateRule], user_metrics: bool) -> None:
    """Before eval runs, refuse what the command line already shows: a margin that is no number after a known name
    (`exact_match:0.o2`), a margin a 0-to-1 metric can never meet (`chrf:5`) and a near miss of a known name
    (`exatc_match`), with the fix.

    Other names (a user metric's key, `probe/<category>`, `reward/<name>`, an lm-eval `<task>/<metric>`) are known
    only once eval has run; `check_gate` checks them then. With user metrics (`eval.metrics` entries `module:function`)
    any plain name may be one of their keys, so only margins are checked here.
    """
    for rule in rules:
        if rule.metric in BOUNDED_NAMES and abs(rule.margin) >= 1:
            raise TunesmithError(f"--fail-if-worse {rule.metric}:{rule.margin:g}: {rule.metric} lies between 0 and 1, "
                                 f"so a margin of {rule.margin:g} can never {'trip' if rule.margin > 0 else 'pass'}.",
                                 "Give the margin as a fraction of 1, e.g. exact_match:0.02 (two points).")
        if rule.metric in KNOWN_NAMES or "/" in rule.metric:
            continue
        name, _, margin = rule.metric.rpartition(":")
        if name in KNOWN_NAMES:
            raise TunesmithError(f"--fail-if-worse {rule.metric}: the margin {margin!r} is not a number.",
                                 "Write METRIC or METRIC:MARGIN, e.g. exact_match:0.02.")
        close = difflib.get_close_matches(rule.metric, KNOWN_NAMES, n=1, cutoff=0.8)
        if close and not user_metrics:
            raise TunesmithError(f"--fail-if-worse: unknown metric {rule.metric!r}; did you mean {close[0]!r}?",
                                 f"Metrics eval can compare: {', '.join(KNOWN_NAMES)}, and probe/<category>, "
                                 "reward/<name>, an lm-eval <task>/<metric> where those ran.")


def is_worse(entry: Comparison, margin: float) -> bool:
    """tuned < base − margin, or tuned > base + margin where lower is better (loss, perplexity)."""
    if entry.higher_is_better:
        return entry.tuned < entry.base - margin
    return entry.tuned > entry.base + margin


def check_gate(results: EvalResults, rules: list[GateRule]) -> list[GateVerdict]:
    """One verdict per rule; an unknown metric or a run without a base is a user error (exit 2).

    The rule `probes` fails on the forgetting probes' own regression flag (the recipe's probe margins).
    """
    comparison = results.all_comparisons()
    if not comparison:
        raise TunesmithError("--fail-if-worse needs a base-vs-tuned comparison, and this eval has none.",
                             "Set eval.compare_base: true (a CPT eval has no comparison yet).")
    probes = results.probes if results.probes is not None and results.probes.regression is not None else None
    names = [*comparison, *(["probes"] if probes is not None else [])]
    unknown = [rule.metric for rule in rules if rule.metric not in names]
    bad_margins = [name for name in unknown if name.rpartition(":")[0] in names]
    if bad_margins:
        raise TunesmithError(f"--fail-if-worse {bad_margins[0]}: the margin {bad_margins[0].rpartition(':')[2]!r} is "
                             "not a number.", "Write METRIC or METRIC:MARGIN, e.g. exact_match:0.02.")
    if unknown:
        close = difflib.get_close_matches(unknown[0], names, n=1)
        probes_off = "probes" in unknown and results.probes is None
        raise TunesmithError(f"--fail-if-worse: unknown metric {', '.join(map(repr, unknown))}"
                             + (" (this eval ran no forgetting probes: eval.probes is off)" if probes_off else "")
                             + (f"; did you mean {close[0]!r}?" if close else "."),
                             f"Available metrics: {', '.join(names)}.")
    base_name = results.against.name if results.against is not None else "base"  # --against: the other run
    return [probes_verdict(rule, probes) if rule.metric == "probes" and probes is not None
            else verdict(rule, comparison[rule.metric], base_name) for rule in rules]


def probes_verdict(rule: GateRule, probes: ProbesBlock) -> GateVerdict:
    """Worse when the forgetting probes flagged a regression; the message gives the reasons or the numbers."""
    if probes.regression:
        return GateVerdict(rule, False, "WORSE: probes: " + "; ".join(probes.reasons))
    base, tuned = probes.base or {}, probes.tuned
    return GateVerdict(rule, True, f"ok: probes accuracy base {base['accuracy']:.4f}, tuned {tuned['accuracy']:.4f}, "
                                   f"perplexity base {base['perplexity']:.3f}, tuned {tuned['perplexity']:.3f} "
                                   f"(margins {probes.margin:g} and {probes.perplexity_margin:.0%})")


def verdict(rule: GateRule, entry: Comparison, base_name: str = "base") -> GateVerdict:
    """`base_name`: what plays the base's part (the other run's name under `eval --against`). A failed rule with a
    negative margin whose tuned model is no worse than the base is said as NOT ENOUGH: it demanded an improvement."""
    failed = is_worse(entry, rule.margin)
    label = "ok" if not failed else "WORSE" if is_worse(entry, 0.0) else "NOT ENOUGH"
    direction = "higher is better" if entry.higher_is_better else "lower is better"
    ci = f", 95% CI [{entry.ci95[0]:+.4f}, {entry.ci95[1]:+.4f}]" if entry.ci95 else ""
    demand = (f"margin {rule.margin:g}" if rule.margin >= 0 else
              f"margin {rule.margin:g}: tuned must beat {base_name} by {-rule.margin:g}")
    message = (f"{label}: {rule.metric} {base_name} {entry.base:.4f}, tuned {entry.tuned:.4f}, "
               f"delta {entry.delta:+.4f}{ci}, {demand} ({direction})")
    return GateVerdict(rule, not failed, message)


class WorseThanBase(TunesmithError):
    """Tuning made a gated metric worse: the CLI exits 3, apart from user errors (2) and crashes (1)."""

    exit_code = EXIT_WORSE


def raise_if_worse(verdicts: list[GateVerdict], report: str = "eval/report.html") -> None:
    """Exit 3 (WorseThanBase) when a rule failed; `report`: the page that shows the examples, as the user reaches it."""
    failed = [v.message for v in verdicts if not v.passed]
    if failed:
        raise WorseThanBase("\n".join(failed), f"Look at {report} to see the examples base and tuned answered.")
