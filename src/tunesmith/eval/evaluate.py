"""Evaluate the tuned model against its untuned base on the held-out split.

One base model is loaded; the adapter is switched off to score the base, so the comparison costs
one model in memory. Both see the same prompts, greedy decoding, the same batches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from tunesmith.config import Recipe, any_constrained
from tunesmith.data.answers import AnswerSummary, check_metrics_fit_answers, classify_answers, prompt_only_metrics
from tunesmith.data.constraint import recipe_constraint
from tunesmith.data.formats import METHOD_SHAPES
from tunesmith.data.shapes import is_prompt_only
from tunesmith.data.template import context_text, expected_output, prompt_turns, reference_answer
from tunesmith.errors import TunesmithError
from tunesmith.eval.add_ons import judge_block, prepare_add_ons, refuse_failed_add_ons, run_add_ons
from tunesmith.eval.against import against_dir, against_variants
from tunesmith.eval.baselines import (
    BASELINES,
    BaselinePlan,
    generation_cost,
    run_baseline,
)
from tunesmith.eval.constrained import processor_factory
from tunesmith.eval.decoding import (
    generate_from_prompts,
    heldout_loss,
    progress,
    prompt_texts,
    resolve_max_new_tokens,
    sampled_answer_limit,
)
from tunesmith.eval.grpo_rewards import rewards_block
from tunesmith.eval.rows import held_out_rows, results_dir, write_eval_outputs
from tunesmith.eval.stats import RESAMPLES, SEED, compare_metric, compare_variants
from tunesmith.eval.verdict import verdict
from tunesmith.models import pick_device
from tunesmith.models.tuned import Variant, run_tokenizer, tuned_variants
from tunesmith.runs import Run, read_json
from tunesmith.scoring import Scorer, aggregate, label_report, recipe_scorer, score_answers, score_columns


def run_eval(recipe: Recipe, run: Run, against: Path | None = None, data: Path | None = None,
             baselines: list[str] | None = None) -> Path:
    """Score base (or, `against` another run, that run's tuned model) and tuned on the held-out rows the run saved
    (`data`: that file's rows instead), the cheaper alternatives in `baselines` (default: eval.baselines), plus the
    recipe's add-ons (probes, judge, lm-eval); writes results.json (returned) and report.html."""
    from tunesmith.eval.preference import LIKELIHOOD_KINDS, run_likelihood_eval

    if baselines and recipe.method.kind in (*LIKELIHOOD_KINDS, "reward"):
        raise TunesmithError(f"--baselines {','.join(baselines)}: the baselines answer the held-out prompts to be "
                             f"scored against reference answers, and a {recipe.method.kind} run is scored by "
                             "likelihoods (preference accuracy, margins, loss) instead.",
                             "Drop --baselines; they apply to runs that generate answers (sft, grpo).")
    if recipe.method.kind in LIKELIHOOD_KINDS:  # preference and raw-text runs have no one answer to generate
        return run_likelihood_eval(recipe, run, against, data)
    if recipe.method.kind == "reward":  # a reward model scores answers; it writes none
        from tunesmith.eval.reward import run_reward_eval

        return run_reward_eval(recipe, run, against, data)

    tokenizer = run_tokenizer(run)
    held_out = held_out_rows(recipe, run, accept=METHOD_SHAPES[recipe.method.kind], data_file=data)
    rows = held_out.rows[: recipe.eval.max_examples]
    prompts_only = any(is_prompt_only(row) for row in rows)
    note_unscored_tool_calls(rows)
    device = pick_device(recipe.training.device)
    # JSON metrics on answers that are not JSON fail here, before anything generates
    answers, choice = choose_metrics(recipe, run, rows, from_file=held_out.file is not None)
    scorer = recipe_scorer(recipe, choice["metrics"])  # so do a bad schema or user metric, before any model loads
    add_ons = prepare_add_ons(recipe)  # so do missing probe or rubric files and a missing lm-eval
    asked = list(recipe.eval.baselines if baselines is None else baselines) if against is None else []
    refuse_baselines_without_references(asked, prompts_only)
    plan = baseline_plan(recipe, run, against, baselines)  # so does a constraint that cannot be inferred
    references = [reference_answer(row) or "" for row in rows]
    answer_limit = (sampled_answer_limit(recipe) if prompts_only
                    else resolve_max_new_tokens(recipe.eval, tokenizer, [expected_output(row) for row in rows]))
    variants, who = eval_variants(recipe, run, device, against, with_base=bool(plan.names))
    results: dict[str, Any] = {"examples": len(rows), "rows_from": held_out.rows_from,
                               "task_metric": recipe.eval.task_metric,
                               "metrics": choice["metrics"], "metrics_chosen": choice,
                               "max_new_tokens": answer_limit,
                               **({"against": who} if who else {})}
    outputs: dict[str, list[str]] = {}
    tuned_processor = None
    if recipe.eval.constrain_tuned and plan.constraint is not None:
        tuned_processor = processor_factory(plan.constraint, tokenizer, variants["tuned"][0])
        results["tuned_constrained"] = True
        results["constraint"] = plan.constraint.describe()  # said beside the scores (verdict.constrained_tuned_note)
    for name, (model, context) in variants.items():
        progress(f"{name}: {'held-out loss and ' if not prompts_only else ''}{len(rows)} greedy answers "
                 f"(up to {answer_limit['value']} tokens each)")  # a line where no progress bar shows (a log file)
        results[name], outputs[name] = evaluate_variant(model, tokenizer, rows, recipe, context,
                                                        tuned_processor if name == "tuned" else None,
                                                        with_loss=not prompts_only)
    add_scores(results, outputs, references, scorer, answers.labels)
    results.update(rewards_block(recipe, rows, outputs, tokenizer))
    shown = dict(outputs)  # the samples show the baselines' answers too
    if plan.names:
        base_model, base_context = variants["base"]
        baseline_outputs = {name: run_baseline(name, base_model, tokenizer, rows, recipe, plan, base_context)
                            for name in plan.names if name != "zero_shot"}
        add_baseline_scores(results, baseline_outputs, references, scorer, plan)
        shown.update({name: answers for name, (_, answers) in baseline_outputs.items()})
    results.update(judge_block(add_ons, recipe, rows, outputs))  # the judge grades base and tuned, as before
    for name, block in run_add_ons(add_ons, variants, tokenizer, recipe).items():
        results[name] = {**results.get(name, {}), **block} if name == "add_on_errors" else block
    results["samples"] = sample_table(rows, shown, limit=50)
    folder = results_dir(against_dir(run, who), held_out)
    own = folder == run.eval_dir  # the run's own base-vs-tuned chart lives in plots/, the others beside results
    path = write_eval_outputs(run, folder, results,
                              chart=run.plots_dir / "base_vs_tuned.png" if own else folder / "base_vs_tuned.png")
    refuse_failed_add_ons(results.get("add_on_errors"), path)
    return path


def note_unscored_tool_calls(rows: list[dict]) -> int:
    """Say that the tool calls of held-out conversations are context, not scored: each row is answered from all
    but its last assistant turn, which is the reference. The number of such rows."""
    calls = sum(any(turn.get("tool_calls") for turn in row.get("messages", [])[:-1]) for row in rows)
    if calls:
        progress(f"note: {calls} of {len(rows)} held-out rows make tool calls before their last answer; eval scores "
                 "the last answer (its own tool calls too), given the earlier calls and their results as context, "
                 "not the earlier calls (a held-out row that ends at a call scores that call)")
    return calls


def choose_metrics(recipe: Recipe, run: Run, rows: list[dict], from_file: bool = False
                   ) -> tuple[AnswerSummary, dict[str, Any]]:
    """The metrics to score with, and why (results.json `metrics_chosen`), printed on stderr.

    What the answers look like comes from the run's data.json (the training answers, recorded by the data
    stage); a run written before data.json had `answers` falls back to the eval rows' answers. Rows from
    `eval --data FILE` (`from_file`) are scored as the training answers where they are that kind of answer (labels
    from the training label set, JSON objects, ...), else by their own kind (`file_answers`).
    """
    answers, source = run_answers(run, rows)
    how = "eval.metrics" if recipe.eval.metrics else f"eval.task_metric: {recipe.eval.task_metric}"
    if any(is_prompt_only(row) for row in rows):  # nothing to compare answers with: metrics that judge them alone
        metrics = prompt_only_metrics(recipe.eval)
        choice = {"metrics": metrics, "by": how, "kind": "prompts", "from": "held-out rows",
                  "reason": "prompts without answers: scored by metrics that judge an answer alone"
                            + (", and by the run's GRPO rewards" if recipe.method.kind == "grpo" else "")}
        progress(f"metrics: {', '.join(metrics) or 'none by reference'} ({how}; {choice['reason']})")
        return answers, choice
    if from_file:
        answers, source = file_answers(answers, source, rows)
    check_metrics_fit_answers(recipe.eval, answers)
    metrics = recipe.eval.chosen_metrics(answers.kind)
    choice = {"metrics": metrics, "by": how, "kind": answers.kind, "reason": answers.reason, "from": source}
    progress(f"metrics: {', '.join(metrics)} ({how}; {source}: {answers.kind}, {answers.reason})")
    return answers, choice


def file_answers(trained: AnswerSummary, source: str, rows: list[dict]) -> tuple[AnswerSummary, str]:
    """The answers an `eval --data` file is scored as: the training answers' kind where the file's answers fit it (a
    few rows of the trained labels are too few to be classified as labels themselves), else the file's own kind, so
    that a file of another task gets metrics that can score it (json_fields on labels failed after generating)."""
    own = classify_answers(rows)
    references = {(reference_answer(row) or "").strip() for row in rows}
    fits = (references <= set(trained.labels) if trained.kind == "labels"
            else own.kind == trained.kind or (trained.kind == "json" and own.json_objects == own.rows))
    return (trained, source) if fits else (own, "--data answers")


def run_answers(run: Run, rows: list[dict]) -> tuple[AnswerSummary, str]:
    """data.json's `answers` and where they came from (`training answers`), else the eval rows' (`eval answers`)."""
    data_file = run.path / "data.json"
    recorded = read_json(data_file).get("answers") if data_file.is_file() else None
    if recorded:
        return AnswerSummary.model_validate(recorded), "training answers"
    return classify_answers(rows), "eval answers"


def eval_variants(recipe: Recipe, run: Run, device: str, against: Path | None,
                  with_base: bool = False) -> tuple[dict[str, Variant], dict[str, str] | None]:
    """The variants to score, and (against another run) which run plays the `base` side; `with_base`: the base is
    scored even when eval.compare_base is off (the baselines need it)."""
    if against is None:
        return tuned_variants(run, device, recipe.eval.compare_base or with_base), None
    return against_variants(run, against, device)


def baseline_plan(recipe: Recipe, run: Run, against: Path | None, names: list[str] | None) -> BaselinePlan:
    """The baselines to run (`names`, else eval.baselines; none against another run, whose tuned model is the
    base side), with the training rows for few-shot examples and the constraint, resolved before any model loads."""
    names = list(recipe.eval.baselines if names is None else names)
    if against is not None:
        names = []
    unknown = [name for name in names if name not in BASELINES]
    if unknown:
        raise TunesmithError(f"Unknown baseline {', '.join(map(repr, unknown))}.",
                             f"Choose from {', '.join(BASELINES)}.")
    wants_constraint = any_constrained(names) or recipe.eval.constrain_tuned
    train_rows = (run.train_rows() or []) if names or wants_constraint else []
    constraint = recipe_constraint(recipe, train_rows) if wants_constraint else None
    if constraint is not None:
        progress(f"constraint: {constraint.kind} ({constraint.source})")
    return BaselinePlan(names, train_rows, constraint)


def add_baseline_scores(results: dict[str, Any], outputs: dict[str, tuple[dict[str, Any], list[str]]],
                        references: list[str], scorer: Scorer, plan: BaselinePlan) -> None:
    """Score the baselines' answers (zero_shot is the base column), pair each with the tuned model's scores, and
    write the verdict: results.json `baselines`, `baseline_comparison`, `constraint`, `verdict`."""
    columns = {"zero_shot": results["base"]} if "zero_shot" in plan.names else {}
    per_example = results["per_example"]
    for name, (summary, answers) in outputs.items():
        scores = score_answers(scorer, answers, references)
        columns[name] = {**aggregate(scores), **summary}
        per_example[name] = score_columns(scores)
    per_example_names = {"zero_shot": "base"}
    results["baselines"] = columns
    results["baseline_comparison"] = {
        name: {metric: compare_metric(values, per_example["tuned"][metric])
               for metric, values in per_example[per_example_names.get(name, name)].items()
               if metric in per_example["tuned"]}
        for name in columns}
    if plan.constraint is not None:
        results["constraint"] = plan.constraint.describe()
    results["verdict"] = verdict(results)


def add_scores(results: dict[str, Any], outputs: dict[str, list[str]], references: list[str],
               scorer: Scorer, labels: list[str] | None = None) -> None:
    """Score every answer: each variant's means, the per-example scores, and (with a base) the paired comparison;
    with label_accuracy, the accuracy per label and the confusion matrix (`labels`: the training label set)."""
    per_example, all_scores = {}, {}
    for name, answers in outputs.items():
        scores = score_answers(scorer, answers, references)
        seconds = results[name].pop("seconds")
        results[name].update({**aggregate(scores), "seconds": seconds})
        per_example[name], all_scores[name] = score_columns(scores), scores
    results["per_example"] = per_example
    if any(scores and "label" in scores[0] for scores in all_scores.values()):
        results["label_accuracy"] = label_report(all_scores, labels)
    if "base" in per_example:
        results["comparison"] = compare_variants(per_example["base"], per_example["tuned"], results["base"],
                                                 results["tuned"])
        results["comparison"].update(optional_field_comparisons(all_scores["base"], all_scores["tuned"]))
        results["bootstrap"] = {"resamples": RESAMPLES, "seed": SEED, "level": 0.95}


def optional_field_comparisons(base: list[dict[str, Any]], tuned: list[dict[str, Any]]) -> dict[str, Any]:
    """`field/NAME` comparisons of the JSON fields only some references have (per_example holds the fields every
    row has): paired over the rows whose reference has the field, the same rows on both sides, so that a field one
    variant lost has its delta, interval and tally, and a name --fail-if-worse takes."""
    names = dict.fromkeys(name for score in tuned for name in score.get("fields", {}))
    comparisons = {}
    for name in names:
        pairs = [(float(b["fields"][name]), float(t["fields"][name])) for b, t in zip(base, tuned, strict=True)
                 if name in b.get("fields", {}) and name in t.get("fields", {})]
        if pairs and len(pairs) < len(tuned):
            comparisons[f"field/{name}"] = {**compare_metric([b for b, _ in pairs], [t for _, t in pairs]),
                                            "examples": len(pairs)}
    return comparisons


def evaluate_variant(model: Any, tokenizer: Any, rows: list[dict], recipe: Recipe,
                     context: Callable[[], AbstractContextManager],
                     processor: Callable[[], Any] | None = None, with_loss: bool = True) -> tuple[dict[str, Any],
                                                                                                list[str]]:
    """Held-out loss (`with_loss`: rows with reference answers) and greedy answers (`processor`: constrained
    decoding), with what answering cost: seconds (loss and answers), seconds_per_answer, prompt_tokens and
    answer_tokens (means per answer)."""
    started = time.monotonic()
    summary: dict[str, Any] = {}
    with context(), torch.no_grad():
        if with_loss:
            loss = heldout_loss(model, tokenizer, rows, recipe.data.max_length, recipe.eval.batch_size)
            summary = {"loss": round(loss, 4), "perplexity": round(math.exp(min(loss, 50)), 3)}
        answering = time.monotonic()
        generated = generate_from_prompts(model, tokenizer, prompt_texts(tokenizer, rows),
                                          recipe.eval.max_new_tokens, recipe.eval.batch_size, processor)
    summary.update(generation_cost(generated, time.monotonic() - answering))
    summary["seconds"] = round(time.monotonic() - started, 1)
    return summary, generated.answers


def refuse_baselines_without_references(names: list[str], prompts_only: bool) -> None:
    """The baselines are scored against the rows' reference answers (and few-shot shows training answers): held-out
    prompts without answers have none."""
    if names and prompts_only:
        raise TunesmithError(f"Baselines {', '.join(names)}: they are scored against the held-out rows' reference "
                             "answers, and these rows are prompts without answers.",
                             "Drop --baselines (and eval.baselines), or hold out rows with answers (data.eval: a file "
                             "of prompt-completion rows); base against tuned is scored either way.")


def sample_table(rows: list[dict], outputs: dict[str, list[str]], limit: int) -> list[dict[str, str]]:
    samples = []
    for index, row in enumerate(rows[:limit]):
        sample = {"prompt": context_text(prompt_turns(row)), "reference": reference_answer(row) or ""}
        sample.update({name: texts[index] for name, texts in outputs.items()})
        samples.append(sample)
    return samples


