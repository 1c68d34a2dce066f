"""`eval/results.json`, typed: what the eval stage writes and the CLI tables, model card, gate and sweep read.

One pydantic model (`EvalResults`) is the contract: eval validates what it writes (a misspelt or mistyped key
fails where it is written, not in the reader), and readers get attributes instead of string keys. The blocks
inside (a variant's scores, a comparison, an add-on) keep extra keys, because each metric adds its own
(`label/<name>`, lm-eval's `task/metric`), but the fields every reader relies on are typed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunesmith.errors import TunesmithError
from tunesmith.manifest import validated_versioned

RESULTS_VERSION = 1
Scores = dict[str, float | int | None]  # metric name → mean score (or seconds, examples) for one variant
HEADLINE_KEYS = {"json_fields": "field_accuracy"}  # a metric whose headline score has another name
NOT_TASK_METRICS = ("none", "loss", "perplexity")  # scored for every run: never a task's headline
# What answering cost, beside the scores of a variant: wall-clock seconds (all of eval's work, and per answer) and
# the mean prompt and answer tokens; tables show them after the scores.
COST_KEYS = ("seconds", "seconds_per_answer", "prompt_tokens", "answer_tokens")
COST_FORMATS = {"seconds": "{:,.1f}", "seconds_per_answer": "{:.3g}", "prompt_tokens": "{:,.1f}",
                "answer_tokens": "{:,.1f}"}


def score_text(metric: str, value: Any) -> str:
    """A variant's value of `metric` as tables show it: scores to 4 decimals, what answering cost (COST_KEYS: seconds,
    mean token counts) to the precision that means something; "—" where it was not measured."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return COST_FORMATS.get(metric, "{:.4f}" if isinstance(value, float) else "{}").format(value)


NO_EXAMPLE_DIFFERS = "(no example differs)"


def interval_text(entry: dict[str, Any], number: Callable[[float], str]) -> str:
    """A comparison's 95% interval as tables show it, each end through `number`; "" where it has none. Where every
    example tied (no win, no loss) the bootstrap interval has width 0, which reads as certainty: said as what it is."""
    ci = entry.get("ci95")
    if "wins" in entry and entry["wins"] == entry.get("losses") == 0:
        return NO_EXAMPLE_DIFFERS
    return f"[{number(ci[0])}, {number(ci[1])}]" if ci else ""


class Comparison(BaseModel):
    """Tuned against base on one metric: the means, the paired difference and (task metrics) its interval."""

    model_config = ConfigDict(extra="allow")

    base: float
    tuned: float
    delta: float
    higher_is_better: bool = True
    ci95: list[float] | None = Field(None, description="Paired bootstrap 95% interval of tuned − base.")


class Against(BaseModel):
    """The other run that took base's place (`tunesmith eval RUN --against OTHER`)."""

    name: str
    path: str


class AddOnBlock(BaseModel):
    """An add-on's results (forgetting probes, judge, lm-eval): per-variant scores and their comparison."""

    model_config = ConfigDict(extra="allow")

    base: Scores | None = None
    tuned: Scores
    comparison: dict[str, Comparison] = Field(default_factory=dict)


class ProbesBlock(AddOnBlock):
    """The forgetting probes, with the regression verdict the recipe's margins give."""

    count: int
    margin: float
    perplexity_margin: float
    regression: bool | None = None
    reasons: list[str] = Field(default_factory=list)
    lost: list[dict[str, Any]] = Field(default_factory=list, description="The probes base passed and tuned fails: "
                                       "id, base_first_token_margin, near_tie (the base's lead under 0.05).")
    asked_as: str | None = Field(None, description="The text each probe was asked in, where the model has no chat "
                                                   "template (else its own template renders a user turn).")
    file: dict[str, Any] | None = Field(None, description="The probe file asked: path, bundled (the general set "
                                        "tunesmith ships) and sha256; None in results written before it was kept.")


class EvalResults(BaseModel):
    """One eval's results. `base` and `tuned` hold each variant's mean scores; `comparison` pairs them."""

    model_config = ConfigDict(extra="forbid")

    version: int = RESULTS_VERSION
    examples: int = Field(ge=0, description="Held-out rows scored.")
    task_metric: str = Field(description="The headline metric (or `auto`, resolved in metrics_chosen).")
    rows_from: str | None = Field(None, description="`run` (saved rows), `recipe` (older run) or `file:<path>`.")
    metrics: list[str] = Field(default_factory=list)
    metrics_chosen: dict[str, Any] | None = None
    max_new_tokens: dict[str, Any] | None = Field(None, description="Tokens generated per answer, and why "
                                                  "(`value`, `why`: eval.max_new_tokens or its auto rule).")
    against: Against | None = None
    base: Scores | None = None
    base_note: str | None = Field(None, description="What `base` means where it is not the untuned model's skill.")
    tuned: Scores
    per_example: dict[str, dict[str, list[Any]]] | None = None
    label_accuracy: dict[str, Any] | None = None
    comparison: dict[str, Comparison] = Field(default_factory=dict)
    bootstrap: dict[str, Any] | None = None
    probes: ProbesBlock | None = None
    judge: AddOnBlock | None = None
    lm_eval: AddOnBlock | None = None
    add_on_errors: dict[str, dict[str, str | None]] | None = Field(
        None, description="An add-on that failed after the answers were generated (judge, lm_eval): its error and "
                          "fix; the other results stand.")
    rewards: AddOnBlock | None = Field(None, description="A GRPO run's own rewards on the held-out answers: `reward` "
                                       "(their weighted sum) and `reward/<name>` per variant, tuned against base.")
    samples: list[dict[str, Any]] = Field(default_factory=list)
    tuned_constrained: bool = Field(False, description="The tuned model decoded under `constraint`.")
    baselines: dict[str, Scores] | None = Field(None, description="The cheaper alternatives' scores and costs "
                                                "(zero_shot, few_shot, constrained, few_shot_constrained).")
    baseline_comparison: dict[str, dict[str, Comparison]] = Field(
        default_factory=dict, description="Per baseline and metric: the baseline (`base`) against the tuned model.")
    constraint: dict[str, Any] | None = Field(None, description="What constrained decoding held answers to.")
    verdict: str | None = Field(None, description="Which option is cheapest within the interval of the best.")

    @property
    def variants(self) -> list[str]:
        """The variants scored, in table order: base (when there is one), then tuned."""
        return [*(["base"] if self.base is not None else []), "tuned"]

    def scores(self, variant: str) -> Scores:
        return self.tuned if variant == "tuned" else (self.base or {})

    def headline_metric(self) -> str | None:
        """The score a one-number summary (sweep tables) shows: the first chosen task metric's headline score
        (json_fields reports field_accuracy); None when only loss and perplexity were scored."""
        return headline_of([*self.metrics, self.task_metric], self.tuned)

    def metric_title(self, metric: str) -> str:
        """`metric` as a table names it: a per-label score with the held-out rows of that label ("label/snowy (1
        row)"), since 0 → 1 on one row reads like 0 → 1 on ten otherwise."""
        label = metric.removeprefix("label/")
        if label == metric or not self.label_accuracy:
            return metric
        entry = ((self.label_accuracy.get("per_label") or {}).get("tuned") or {}).get(label) or {}
        rows = entry.get("examples")
        return f"{metric} ({rows} row{'s' if rows != 1 else ''})" if isinstance(rows, int) else metric

    def add_on_blocks(self) -> dict[str, AddOnBlock]:
        """The add-ons that ran, by results.json key (rewards, probes, judge, lm_eval)."""
        blocks = {"rewards": self.rewards, "probes": self.probes, "judge": self.judge, "lm_eval": self.lm_eval}
        return {name: block for name, block in blocks.items() if block is not None}

    def all_comparisons(self) -> dict[str, Comparison]:
        """The task metrics' comparisons and every add-on's (probe_accuracy, judge_score, lm-eval task/metric)."""
        merged = dict(self.comparison)
        for block in self.add_on_blocks().values():
            merged.update(block.comparison)
        return merged


def headline_of(metrics: list[str], scores: Scores) -> str | None:
    """The first of `metrics` that is a task metric with a score in `scores`, by its headline name."""
    for name in metrics:
        if name not in NOT_TASK_METRICS and HEADLINE_KEYS.get(name, name) in scores:
            return HEADLINE_KEYS.get(name, name)
    return None


def validate_results(results: dict[str, Any], where: Path) -> EvalResults:
    """Check a results dict against the contract before it is written; a failure is a bug in the writer."""
    try:
        return EvalResults.model_validate(results)
    except ValidationError as exc:
        raise TunesmithError(f"The eval results for {where} do not fit the results.json contract: {exc}",
                             "This is a bug in the eval stage that wrote them; please report it.") from None


def read_results(path: Path) -> EvalResults:
    """Read and validate a results.json; a missing or foreign file is named with the fix."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TunesmithError(f"Missing file: {path}", "Evaluate the run first: tunesmith eval RUN.") from None
    except json.JSONDecodeError as exc:
        raise TunesmithError(f"{path} is not valid JSON ({exc}).", "Evaluate the run again: tunesmith eval RUN.") \
            from None
    return validated_versioned(EvalResults, raw, path, RESULTS_VERSION, "tunesmith results.json",
                               "Evaluate the run again with this tunesmith: tunesmith eval RUN.")
