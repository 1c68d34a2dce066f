"""`tunesmith baseline RECIPE`: the cheaper alternatives scored before any training, so a user learns in minutes
whether fine-tuning is needed at all.

A run directory is made as training would make it (recipe snapshot, the data stage's split rows in data/ and
run.json, data.json), and the base model answers the held-out rows as each baseline asks. Results go to
`RUN/baseline/results.json` (typed by `BaselineResults`), beside a verdict naming the best option without training.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tunesmith.config import Recipe, any_constrained
from tunesmith.data import fingerprint, load_splits
from tunesmith.data.answers import check_metrics_fit_answers, classify_answers
from tunesmith.data.constraint import recipe_constraint
from tunesmith.data.contract import check_template_contract
from tunesmith.data.lengths import resolve_max_length
from tunesmith.data.template import answer_text, context_text, expected_output
from tunesmith.errors import DataError, TunesmithError
from tunesmith.eval.baselines import BASELINES, BaselinePlan, run_baseline
from tunesmith.eval.decoding import resolve_max_new_tokens
from tunesmith.eval.verdict import verdict
from tunesmith.models import load_model, load_tokenizer, pick_device, resolve_model_source
from tunesmith.models.loading import context_length
from tunesmith.models.templates import recipe_chat_template
from tunesmith.results import Scores
from tunesmith.runs import Run, atomic_write_json, create_run, record_data_stage, removed_if_unstarted
from tunesmith.scoring import aggregate, recipe_scorer, score_answers, score_columns
from tunesmith.train.common import small_split_warnings


class BaselineResults(BaseModel):
    """`baseline/results.json`: each baseline's scores and costs on the held-out rows, and the verdict."""

    model_config = ConfigDict(extra="forbid")

    examples: int = Field(ge=0)
    task_metric: str
    metrics: list[str]
    metrics_chosen: dict[str, Any]
    max_new_tokens: dict[str, Any] | None = Field(None, description="Tokens generated per answer, and why.")
    baselines: dict[str, Scores]
    constraint: dict[str, Any] | None = None
    left_out: dict[str, str] = Field(default_factory=dict, description="Default baselines that could not run, and "
                                     "why (constrained ones on answers with no structure to infer).")
    verdict: str | None = None
    per_example: dict[str, dict[str, list[Any]]] = Field(
        default_factory=dict, description="Per-example scores; zero_shot's under `base`, as in eval/results.json.")
    samples: list[dict[str, Any]] = Field(default_factory=list)


def run_baselines_before_training(recipe: Recipe, names: list[str] | None = None,
                                  runs_dir: Path | None = None) -> tuple[Run, Path]:
    """Split the data as training would, then score `names` (default: eval.baselines, else all four) with the base
    model on the held-out rows; returns the new run and its baseline/results.json."""
    import torch

    asked = names or recipe.eval.baselines
    names = list(asked or BASELINES)
    splits = load_splits(recipe, purpose="scoring baselines against reference answers")
    print(f"held-out rows: {splits.source['eval']}", file=sys.stderr, flush=True)
    if not splits.eval:  # scored on nothing, every baseline would read 0 and the verdict rest on no row
        raise DataError(f"{splits.source['eval']}: no held-out rows, so there is nothing to score the baselines on.",
                        "Hold out rows: data.eval (a file of rows with answers), or a larger data.eval_fraction.")
    for warning in small_split_warnings(len(splits.train), len(splits.eval), splits.shape):  # as train says it
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    answers = classify_answers(splits.train)
    check_metrics_fit_answers(recipe.eval, answers)
    metrics = recipe.eval.chosen_metrics(answers.kind)
    scorer = recipe_scorer(recipe, metrics)
    left_out: dict[str, str] = {}
    try:
        constraint = recipe_constraint(recipe, splits.train) if any_constrained(names) else None
    except TunesmithError as exc:
        if asked:  # asked for by name: the user must give the structure
            raise
        left_out = {name: f"{exc.message} {exc.hint or ''}".strip() for name in names if "constrained" in name}
        names, constraint = [name for name in names if name not in left_out], None
        print(f"constrained baselines left out: {exc.message}", file=sys.stderr, flush=True)
    model_dir = resolve_model_source(recipe.model.source, recipe.model.revision, Path(recipe.base_dir))
    tokenizer = load_tokenizer(model_dir, chat_template=recipe_chat_template(recipe))
    # the template must render these rows as train would (a base model without one, a template that cannot), before
    # a run directory is made or any weights load
    check_template_contract(tokenizer, splits.train + splits.eval, recipe.model.source, recipe.model.chat_template)
    run = create_run(recipe, runs_dir)
    with removed_if_unstarted(run):  # a failure or Ctrl-C before the results are written leaves no run behind
        resolve_max_length(recipe.data, splits.train + splits.eval, splits.shape, tokenizer, context_length(model_dir),
                           packed=False)
        atomic_write_json(run.path / "data.json", fingerprint(splits))
        record_data_stage(run, recipe.data, splits.train, splits.eval, splits.shape, splits.source)
        model = load_model(model_dir, torch.float32, pick_device(recipe.training.device)).eval()
        rows = splits.eval[: recipe.eval.max_examples]
        references = [answer_text(row["messages"][-1]) for row in rows]
        answer_limit = resolve_max_new_tokens(recipe.eval, tokenizer, [expected_output(row) for row in rows])
        plan = BaselinePlan(names, splits.train, constraint)
        chosen = {"metrics": metrics, "kind": answers.kind, "reason": answers.reason}
        results: dict[str, Any] = {"examples": len(rows), "task_metric": recipe.eval.task_metric, "metrics": metrics,
                                   "metrics_chosen": chosen, "max_new_tokens": answer_limit, "baselines": {},
                                   "per_example": {}}
        outputs: dict[str, list[str]] = {}
        for name in names:
            summary, outputs[name] = run_baseline(name, model, tokenizer, rows, recipe, plan, _no_context)
            scores = score_answers(scorer, outputs[name], references)
            results["baselines"][name] = {**aggregate(scores), **summary}
            results["per_example"]["base" if name == "zero_shot" else name] = score_columns(scores)
        if constraint is not None:
            results["constraint"] = constraint.describe()
        if left_out:
            results["left_out"] = left_out
        results["verdict"] = verdict(results)
        results["samples"] = [{"prompt": context_text(row["messages"][:-1]), "reference": reference,
                               **{name: answers[index] for name, answers in outputs.items()}}
                              for index, (row, reference) in enumerate(zip(rows[:50], references, strict=False))]
        path = run.path / "baseline" / "results.json"
        atomic_write_json(path, BaselineResults.model_validate(results).model_dump(mode="json"))
        return run, path  # the command says where (`Results: PATH`, after the table)


def _no_context() -> Any:
    from contextlib import nullcontext

    return nullcontext()
