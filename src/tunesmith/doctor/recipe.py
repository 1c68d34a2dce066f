"""A recipe's data: its shape, its problem rows, the chat-template contract for these rows, and the warnings
`tunesmith data preview` gives on its first rows (cut answers, missing EOS, text that does not round-trip).

`recipe_checks` is the one hook for everything doctor says about a recipe; `plan`'s memory checks join it.
Nothing is downloaded: the tokenizer comes from the model folder already on this machine, and a Hub dataset
is left to `tunesmith data inspect`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.config import Recipe, RewardSpec
from tunesmith.data import data_source
from tunesmith.data.contract import judge_template
from tunesmith.data.formats import METHOD_SHAPES, shape_refusal
from tunesmith.data.lengths import length_limit
from tunesmith.data.loaders import LoadResult, load_records
from tunesmith.data.preview import conversations_of, preview_rows
from tunesmith.data.shapes import is_prompt_only
from tunesmith.data.workflow import conformed
from tunesmith.doctor.access import classify_source, local_model_dir
from tunesmith.doctor.model_checks import load_local_tokenizer
from tunesmith.doctor.report import Check
from tunesmith.errors import TunesmithError
from tunesmith.models.loading import context_length
from tunesmith.models.templates import recipe_chat_template
from tunesmith.plan.fit import fit_message, plan_as_trained
from tunesmith.scoring import load_user_function

SECTION = "recipe"
PREVIEW_ROWS = 20


def recipe_checks(recipe: Recipe) -> list[Check]:
    """Everything doctor checks about a recipe beyond its model: data files, then template fit on that data.

    The hook `plan` appends its memory checks to.
    """
    checks, by_split = data_checks(recipe)
    rows = [row for split in by_split.values() for row in split]
    return (checks + template_fit_checks(recipe, rows) + metric_checks(recipe, by_split.get("train", []),
                                                                       by_split.get("eval"))
            + memory_checks(recipe))


def metric_checks(recipe: Recipe, rows: list[dict[str, Any]],
                  held_out: list[dict[str, Any]] | None = None) -> list[Check]:
    """The checks `train` makes before loading the model (train/common.py): the eval metrics fit the answers
    (json_fields needs JSON objects; conversational rows only, as train checks them), and prompts without answers
    are not given rewards or metrics that need answers (the held-out rows taken to be like `rows` where data.eval
    names no file of its own: `held_out` None); [] when they pass."""
    from tunesmith.config import GRPOMethod
    from tunesmith.data.answers import (
        check_metrics_fit_answers,
        check_rewards_fit_rows,
        classify_answers,
        prompt_only_metrics,
    )

    checks = []
    if isinstance(recipe.method, GRPOMethod):
        checks += failed("GRPO rewards", check_rewards_fit_rows, recipe.method.rewards, rows, recipe.data.train)
        checks += [check for spec in recipe.method.rewards
                   for check in failed("GRPO rewards", check_reward_loads, spec, Path(recipe.base_dir),
                                       rows[0] if rows else None)]
    for metric in (m for m in recipe.eval.metrics or [] if ":" in m):  # as train loads them before the model
        checks += failed("eval metrics", load_user_function, metric, Path(recipe.base_dir))
    if any(is_prompt_only(row) for row in (rows if held_out is None else held_out)):
        checks += failed("eval metrics", prompt_only_metrics, recipe.eval)
    conversations = [row for row in rows if "messages" in row]
    if conversations and len(conversations) == len(rows):
        checks += failed("eval metrics", lambda: check_metrics_fit_answers(recipe.eval,
                                                                          classify_answers(conversations)))
    return checks


def check_reward_loads(spec: RewardSpec, base_dir: Path, row: dict[str, Any] | None = None) -> None:
    """What train checks of a reward before the model loads: a user function found, importable and callable as a
    reward, and (given the first training `row`, with an answer) returning a finite number on its reference answer; a
    json_schema file that is a schema; a reward_model path that exists (its weights are not loaded here)."""
    from tunesmith.data.template import context_text, prompt_turns, reference_answer
    from tunesmith.scoring import json_schema_scorer, try_user_reward

    if ":" in spec.name:
        load_user_function(spec.name, base_dir, "reward")
        reference = reference_answer(row) if row is not None else None
        if reference is not None:
            prompt = prompt_turns(row)
            try_user_reward(spec.name, base_dir, reference, prompt if isinstance(prompt, str) else context_text(prompt))
    elif spec.name == "json_schema":
        schema = Path(spec.json_schema or "").expanduser()
        json_schema_scorer(schema if schema.is_absolute() else base_dir / schema,
                           "method.rewards (the json_schema reward's json_schema)")
    elif spec.name == "reward_model":
        path = Path(spec.path or "").expanduser()
        path = path if path.is_absolute() else base_dir / path
        if not path.exists():
            here = Path(spec.path or "").expanduser()
            found = (f" {here} exists from the current folder: write it as {os.path.relpath(here.resolve(), base_dir)}"
                     " or as an absolute path." if not here.is_absolute() and here.exists() else "")
            raise TunesmithError(f"method.rewards: reward_model path {path} does not exist (a path in a recipe is "
                                 f"relative to the recipe's folder, {base_dir}).{found}",
                                 "Name a `method.kind: reward` run directory (or its adapter/ or model/ folder), "
                                 "relative to the recipe.")


def failed(name: str, check: Callable[..., Any], *args: Any) -> list[Check]:
    """`check(*args)`'s refusal as a failed doctor check named `name`; [] when it passes."""
    try:
        check(*args)
    except TunesmithError as exc:
        return [Check(name=name, section=SECTION, status="fail", detail=exc.message, fix=exc.hint)]
    return []


def memory_checks(recipe: Recipe) -> list[Check]:
    """`tunesmith plan`'s verdict for the device the recipe trains on, as `plan` shows it (the recipe as train runs
    it: on a CPU, a batch of long rows in micro-batches): fits or not (the fix); and the rows data.max_length cuts."""
    try:
        report, as_trained = plan_as_trained(recipe, recipe.training.device)
    except TunesmithError as exc:
        return [Check(name="memory plan", section=SECTION, status="warn", detail=exc.message, fix=exc.hint)]
    gib = 2**30
    checks = []
    if report.cut_rows:
        checks.append(Check(name="rows past max_length", section=SECTION, status="warn",
                            detail=f"{report.cut_rows:,} training row(s) are longer than data.max_length "
                                   f"{report.length:,} (the longest {report.longest_uncut:,} tokens) and are cut: "
                                   "what they hold past it never trains",
                            fix="Raise data.max_length (or set it to auto); `tunesmith data inspect RECIPE` names "
                                "the rows."))
    peak = (f"estimated peak {report.peak_bytes / gib:,.1f} GiB"
            + (f" + {report.outside_bytes / gib:,.1f} GiB CUDA context" if report.outside_bytes else "")
            + f" of {report.device_memory_bytes / gib:,.1f} GiB on {report.device}")
    if report.fits:
        detail = peak + (f", as train runs it ({as_trained})" if as_trained else "")
        return [Check(name="memory plan", section=SECTION, status="pass", detail=detail), *checks]
    will = next((a for a in report.advice if a.what == "train will use"), None)
    if will is None:
        message, hint = fit_message(report)
        return [Check(name="memory plan", section=SECTION, status="fail", detail=message, fix=hint), *checks]
    return [Check(name="memory plan", section=SECTION, status="warn",
                  detail=f"{peak} as written; train will fit it with {will.value}",
                  fix="Nothing to do; or set training.grad_accum / training.gradient_checkpointing yourself."),
            *checks]


def data_checks(recipe: Recipe) -> tuple[list[Check], dict[str, list[dict[str, Any]]]]:
    """One check per data file (train, and eval when given); returns them with each file's usable rows, conformed,
    by split."""
    data = recipe.data
    checks: list[Check] = []
    rows: dict[str, list[dict[str, Any]]] = {}
    for split, value in {"train": data.train, **({"eval": data.eval} if data.eval else {})}.items():
        source = data_source(recipe, value)
        if isinstance(source, str):
            checks.append(Check(name=f"{split} data", section=SECTION, status="warn", detail=f"Hub dataset {source}: "
                                "not loaded by doctor (it would download it)",
                                fix="`tunesmith data inspect RECIPE` loads and checks it."))
            continue
        try:
            loaded = load_records(source, fmt=data.file_format, columns=data.columns, skip_invalid=True,
                                  shape=data.format)
        except TunesmithError as exc:
            checks.append(Check(name=f"{split} data", section=SECTION, status="fail", detail=exc.message, fix=exc.hint))
            continue
        accept = METHOD_SHAPES.get(recipe.method.kind, ())
        if accept and loaded.shape not in accept:  # train would refuse the file before loading the model
            refusal = shape_refusal(loaded.path, loaded.shape, accept, f"method.kind {recipe.method.kind}",
                                    loaded.unused_columns)
            checks.append(Check(name=f"{split} data", section=SECTION, status="fail", detail=refusal.message,
                                fix=refusal.hint))
            continue
        checks.append(rows_check(split, loaded, data.skip_invalid))
        rows[split] = conformed(loaded.rows, recipe)
    return checks, rows


def rows_check(split: str, loaded: LoadResult, skip_invalid: bool) -> Check:
    """The shape and count; problem rows fail unless data.skip_invalid skips them."""
    shape = f"{len(loaded.rows)} usable rows, shape {loaded.shape} ({loaded.source_shape} in {loaded.file_format})"
    name = f"{split} data"
    if not loaded.problems:
        return Check(name=name, section=SECTION, status="pass", detail=f"{shape}: {loaded.path}")
    bad = f"{len(loaded.problems)} problem row(s) in {loaded.path}, e.g. {loaded.problems[0]}"
    if skip_invalid:
        return Check(name=name, section=SECTION, status="warn", detail=f"{shape}; data.skip_invalid skips {bad}",
                     fix="`tunesmith data inspect RECIPE` lists each; fix them to train on them.")
    return Check(name=name, section=SECTION, status="fail", detail=f"{shape}; train stops at {bad}",
                 fix="Fix the rows (`tunesmith data inspect RECIPE` lists each), or set data.skip_invalid: true.")


def template_fit_checks(recipe: Recipe, rows: list[dict[str, Any]]) -> list[Check]:
    """The template contract judged against these rows, then the preview's warnings on the first rows."""
    if not rows:
        return []
    model = recipe.model.source
    if not any(not isinstance(sequence, str) for row in rows for _, sequence in conversations_of(row)):
        return [Check(name="template fit", section=SECTION, status="pass",
                      detail="raw text rows: trained without the chat template")]
    model_dir = local_model_dir(classify_source(model, Path(recipe.base_dir)), recipe.model.revision)
    if model_dir is None:
        return [Check(name="template fit", section=SECTION, status="warn", detail=f"{model} is not on this machine "
                      "yet, so the template was not checked against the data",
                      fix="Fetch the model once (see the model access check), then run doctor again.")]
    tokenizer = load_local_tokenizer(model_dir)
    try:
        template = recipe_chat_template(recipe)
    except TunesmithError as exc:
        return [Check(name="template fit", section=SECTION, status="fail", detail=exc.message, fix=exc.hint or "")]
    if template is not None:
        tokenizer.chat_template = template
    checks = contract_fit_checks(judge_template(tokenizer, rows, model, recipe.model.chat_template))
    if not tokenizer.chat_template:  # nothing to preview: the contract's check says why and what to set
        return checks
    return [*checks, preview_check(tokenizer, recipe, rows, context_length(model_dir))]


def contract_fit_checks(record: dict[str, Any]) -> list[Check]:
    """What train refuses (problems) and warns about for this data, one check each."""
    checks = [Check(name="template fit", section=SECTION, status="fail", detail=problem,
                    fix="Apply the recipe key or model the message names.") for problem in record["problems"]]
    checks += [Check(name="template fit", section=SECTION, status="warn", detail=warning)
               for warning in record["warnings"]]
    return checks or [Check(name="template fit", section=SECTION, status="pass",
                            detail="the chat template fits this data: train would accept it")]


def preview_check(tokenizer: Any, recipe: Recipe, rows: list[dict[str, Any]], context: int | None) -> Check:
    """`data preview`'s row warnings (cut answers, dropped rows, missing EOS, round trip) on the first rows;
    `context`: the model's position range, where `data.max_length: auto` cuts."""
    pad_missing = tokenizer.pad_token is None
    if pad_missing:
        tokenizer.pad_token = tokenizer.eos_token
    limit = length_limit(recipe.data.max_length, context)
    preview = preview_rows(tokenizer, rows[:PREVIEW_ROWS], limit, pad_missing, model=recipe.model.source,
                           template_key=recipe.model.chat_template)
    findings = [text for text in preview.problems + preview.warnings if text.startswith("row ")]
    count = min(PREVIEW_ROWS, len(rows))
    if not findings:
        answers = ("prompts without answers, each ending at the generation prompt"
                   if all(is_prompt_only(row) for row in rows[:count]) else "each answer ending in EOS")
        return Check(name="rendered rows", section=SECTION, status="pass", detail=f"the first {count} rows render "
                     f"within max_length {limit}, {answers}")
    status = "fail" if any(text.startswith("row ") for text in preview.problems) else "warn"
    return Check(name="rendered rows", section=SECTION, status=status,
                 detail=f"{len(findings)} finding(s) on the first {count} rows, e.g. {findings[0]}",
                 fix="`tunesmith data preview RECIPE` shows each row as training sees it.")
