"""Many adapters (and the base) side by side on the same prompts: `tunesmith compare`.

The base model is loaded once and every adapter is attached to the same PeftModel under its own name;
switching is `set_adapter`, the base is the adapter switched off. N fine-tunes then cost one model in
memory plus N small adapters, and every variant sees the same prompts, greedy decoding and batches. PEFT holds
adapters of one kind together (LoRA, DoRA and rsLoRA are one; IA3, AdaLoRA and prompt tuning are others), so
adapters of several kinds are answered a kind at a time, the base loaded again for each.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunesmith.data.constraint import Constraint
from tunesmith.data.template import answer_text, require_chat_template
from tunesmith.errors import DataError, TunesmithError
from tunesmith.eval.constrained import processor_factory
from tunesmith.eval.stats import compare_metric
from tunesmith.results import interval_text

DEFAULT_METRICS = ("exact_match", "chrf")
NO_REFERENCE_ANSWER_TOKENS = 128  # answer length when the prompts file has no reference answers to size it by
BASE = "base"


@dataclass(frozen=True)
class PromptRow:
    """The turns a model answers, and the answer expected (None for prompt-only rows: shown, not scored)."""

    messages: list[dict[str, Any]]
    reference: str | None


@dataclass(frozen=True)
class AdapterSource:
    """One thing to compare: a display name, its PEFT adapter folder and the base model it was trained on."""

    name: str
    adapter_dir: Path
    base_model: Path


def load_prompts(path: Path, reference_key: str | None = None) -> list[PromptRow]:
    """Rows of any shape tunesmith reads. Messages rows are answered up to their last assistant turn (the
    reference), prompt-completion rows use the completion; rows with only a prompt are allowed, unscored.
    `reference_key` names a column of the raw record to use as the reference instead."""
    try:
        return read_prompt_rows(path, reference_key)
    except DataError as exc:  # the loaders' hints speak of a recipe's data keys, which compare does not take
        if exc.hint and ("--set" in exc.hint or "data." in exc.hint):
            exc.hint = PROMPTS_HINT
        raise


PROMPTS_HINT = ("compare --prompts reads the shapes training reads: messages, ShareGPT or Alpaca rows, prompt and "
                "completion columns, or prompts alone (a 'prompt' column). Rename the file's columns to those (compare "
                "has no data.columns), fix or leave out the rows named, and name another answer column with "
                "--reference-key COLUMN.")


def read_prompt_rows(path: Path, reference_key: str | None) -> list[PromptRow]:
    from tunesmith.data.formats import load_conversations
    from tunesmith.data.readers import read_records

    _, records = read_records(Path(path))
    values = [r.value for r in records if isinstance(r.value, dict)]
    if values and all(is_prompt_only(value) for value in values):
        rows = [PromptRow(prompt_messages(r.value, r.where), None) for r in records if isinstance(r.value, dict)]
    elif any(is_prompt_only(value) for value in values):  # some rows with answers, some without: each as it is
        rows = [prompt_row(record.value, record.where) for record in records if isinstance(record.value, dict)]
    else:
        rows = [PromptRow(row["messages"][:-1], answer_text(row["messages"][-1])) for row in load_conversations(path)]
    if reference_key is not None:
        rows = with_reference_column(rows, values, reference_key, path)
    return rows


def prompt_row(value: dict[str, Any], where: str) -> PromptRow:
    """One row of a file that mixes prompts with and without answers: a prompt alone is answered unscored, any
    other shape tunesmith reads is answered up to its answer, the reference."""
    from tunesmith.data.shapes import RowProblem, as_conversation, detect_layout, normalise_record

    if is_prompt_only(value):
        return PromptRow(prompt_messages(value, where), None)
    layout = detect_layout(value)
    try:
        if layout is None:
            raise RowProblem("unknown_shape", f"cannot tell its shape from keys {sorted(value)[:8]}.")
        messages = as_conversation(normalise_record(value, layout))["messages"]
    except RowProblem as problem:
        raise TunesmithError(f"{where}: {problem.message}", "Give each row a prompt (and, to score it, an answer: "
                             "completion, or messages ending with the assistant).") from None
    return PromptRow(messages[:-1], answer_text(messages[-1]))


def is_prompt_only(value: dict[str, Any]) -> bool:
    """A prompt with no answer: {"prompt": ...} without completion, or messages that end on a user turn."""
    if "prompt" in value and "completion" not in value:
        return True
    messages = value.get("messages")
    return (isinstance(messages, list) and bool(messages) and isinstance(messages[-1], dict)
            and messages[-1].get("role") != "assistant")


def prompt_messages(value: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """A prompt-only row's conversation: its messages, or its prompt (text, or messages). Raises TunesmithError
    naming the row (`where`: file and line) when it is neither text nor messages of a role and text content."""
    prompt = value["messages"] if "messages" in value else value["prompt"]
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if not (isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str)
            and (isinstance(m.get("content"), str) or m.get("tool_calls")) for m in messages)):
        raise TunesmithError(f"{where}: the prompt is neither text nor a list of messages with a role and text "
                             f"content (got {json.dumps(prompt, ensure_ascii=False)[:80]}).",
                             'Write it as {"prompt": "..."} or {"messages": [{"role": "user", "content": "..."}]}.')
    return messages


def with_reference_column(rows: list[PromptRow], values: list[dict], key: str, path: Path) -> list[PromptRow]:
    if len(values) != len(rows) or not all(key in value for value in values):
        raise TunesmithError(f"--reference-key {key!r}: not every row of {path} has that column.",
                             "Name a column every row has, or leave the option out to use the answer turn.")
    return [PromptRow(row.messages, reference_text(value[key])) for row, value in zip(rows, values, strict=True)]


def reference_text(value: Any) -> str:
    """A reference column's text: a string as it is, a list of turns (a conversational pair's `chosen`) as its last
    assistant turn's text, anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        said = [turn.get("content") for turn in value if isinstance(turn, dict) and turn.get("role") == "assistant"]
        if said and isinstance(said[-1], str):
            return said[-1]
    return json.dumps(value, ensure_ascii=False)


def adapter_source(target: str | Path) -> AdapterSource:
    """A run directory (its adapter/ and recipe's model) or a PEFT adapter folder (its adapter_config.json)."""
    from tunesmith.models.tuned import adapter_base, is_adapter, require_language_model, run_base_model
    from tunesmith.runs import Run, require_weights

    path = Path(target).expanduser()
    run = Run(path)
    if run.recipe_file.is_file():
        require_language_model(run, "compare")
        artifact = run.trained_artifact()
        if not is_adapter(artifact):
            raise TunesmithError(f"{path} is a whole-model run (model/), not an adapter: it has no base to share.",
                                 "Compare adapter runs of one base here; score a whole-model run with `tunesmith eval "
                                 "RUN` (against its base), and compare runs' scores with `tunesmith runs diff RUN "
                                 "OTHER`.")
        return AdapterSource(path.resolve().name, artifact, run_base_model(run))
    if not (path / "adapter_config.json").is_file() and (path / "adapter" / "adapter_config.json").is_file():
        path = path / "adapter"  # `tunesmith merge --into-base`'s output: the whole model, its combined adapter beside
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise TunesmithError(f"{path} is neither a run directory (recipe.yaml) nor a PEFT adapter "
                             "(adapter_config.json).", "Pass run directories or adapter folders.")
    require_weights(path, "adapter_config.json")
    base = adapter_base(path)
    folder = path.resolve()
    # RUN/adapter and RUN/exports/adapter are named after the run, not "adapter" or "exports"
    owner = folder.parent.parent if folder.parent.name == "exports" else folder.parent
    name = owner.name if folder.name == "adapter" else folder.name
    return AdapterSource(name, path, base.resolve())


def shared_base(sources: list[AdapterSource]) -> Path:
    """The one base every adapter was trained on; adapters of different bases cannot share one model."""
    bases = {source.base_model for source in sources}
    if len(bases) != 1:
        listing = "; ".join(f"{s.name}: {s.base_model}" for s in sources)
        raise TunesmithError(f"The adapters were trained on different base models ({listing}).",
                             "Compare adapters of one base at a time.")
    return bases.pop()


def shared_chat_template(sources: list[AdapterSource], base_template: str | None) -> str | None:
    """The one chat template the adapters were trained with (saved beside each; the base's own where none was
    saved), which base and adapters are all prompted with; adapters trained with different ones are refused."""
    from tunesmith.models.templates import saved_chat_template

    templates = {source.name: saved_chat_template(source.adapter_dir) or base_template for source in sources}
    if len(set(templates.values())) > 1:
        raise TunesmithError(f"The adapters were trained with different chat templates ({', '.join(templates)}), so "
                             "one prompt cannot be rendered for all of them.",
                             "Compare the adapters of one template (model.chat_template) at a time.")
    return next(iter(templates.values()))


def unique_names(sources: list[AdapterSource], include_base: bool) -> list[str]:
    """Column names: folder names, numbered where two are alike, never clashing with 'base'."""
    taken, names = {BASE} if include_base else set(), []
    for source in sources:
        name, suffix = source.name, 1
        while name in taken:
            suffix += 1
            name = f"{source.name}-{suffix}"
        taken.add(name)
        names.append(name)
    return names


def peft_name(index: int, name: str) -> str:
    """PEFT keys adapters in module dicts: no dots, so a safe name of our own."""
    return f"a{index}_" + re.sub(r"\W", "_", name)


def attach_adapters(model: Any, sources: list[AdapterSource], numbers: list[int] | None = None) -> Any:
    """One PeftModel on `model` holding every adapter (all of one PEFT type: `peft_type_groups`), named a0_...,
    a1_... (`numbers`: the number each is named by; their order by default)."""
    from peft import PeftModel

    numbers = numbers if numbers is not None else list(range(len(sources)))
    (first, *others), (number, *rest) = sources, numbers
    peft_model = PeftModel.from_pretrained(model, first.adapter_dir, adapter_name=peft_name(number, first.name))
    for index, source in zip(rest, others, strict=True):
        peft_model.load_adapter(source.adapter_dir, adapter_name=peft_name(index, source.name))
    return peft_model.eval()


def peft_type(source: AdapterSource) -> str:
    """The adapter's PEFT type (LORA for LoRA, DoRA, rsLoRA and QLoRA; IA3, ADALORA, PROMPT_TUNING, ...)."""
    from tunesmith.runs import read_adapter_config

    return str(read_adapter_config(source.adapter_dir).get("peft_type") or "LORA")


def peft_type_groups(sources: list[AdapterSource]) -> list[list[int]]:
    """The sources' indices grouped by PEFT type (one PeftModel can hold adapters of one type only), in the order
    each type first appears."""
    groups: dict[str, list[int]] = {}
    for index, source in enumerate(sources):
        groups.setdefault(peft_type(source), []).append(index)
    return list(groups.values())


@contextmanager
def active_adapter(model: Any, adapter_name: str) -> Iterator[None]:
    model.set_adapter(adapter_name)
    yield


def generate_for(model: Any, tokenizer: Any, prompts: list[PromptRow], max_new_tokens: int,
                 batch_size: int, constraint: Constraint | None = None) -> list[str]:
    """Greedy batched answers to every prompt's turns (`constraint`: decoding held to it)."""
    from tunesmith.eval.decoding import generate_from_prompts, prompt_texts

    rows = [{"messages": [*p.messages, {"role": "assistant", "content": ""}]} for p in prompts]
    processor = processor_factory(constraint, tokenizer, model) if constraint is not None else None
    with torch.no_grad():
        return generate_from_prompts(model, tokenizer, prompt_texts(tokenizer, rows), max_new_tokens, batch_size,
                                     processor).answers


def run_compare(targets: list[str | Path], prompts_file: Path, include_base: bool = False,
                metrics: list[str] | None = None, reference_key: str | None = None, max_new_tokens: int | None = None,
                batch_size: int = 8, device: str = "auto", constraint: Constraint | None = None,
                regex: str | None = None, schema_file: Path | None = None) -> dict[str, Any]:
    """Answer every prompt with each adapter (and the base), score where references exist; the results dict
    (`constraint`: every variant decodes held to it). `max_new_tokens` None: from the references' lengths as eval's
    `auto` (NO_REFERENCE_ANSWER_TOKENS without references)."""
    from tunesmith.eval.decoding import auto_max_new_tokens, progress
    from tunesmith.models import load_model, load_tokenizer, pick_device
    from tunesmith.scoring import build_scorer

    if not targets:
        raise TunesmithError("Name at least one run directory or adapter folder to compare.")
    prompts = load_prompts(prompts_file, reference_key)
    sources = [adapter_source(target) for target in targets]
    base_dir = shared_base(sources)
    chosen = list(metrics or runs_own_metrics(targets) or DEFAULT_METRICS)
    if not metrics:
        progress(f"metrics: {', '.join(chosen)} (--metric sets them)")
    scorer = build_scorer(chosen, regex, schema_file, Path.cwd())  # a bad metric fails before any model loads
    tokenizer = load_tokenizer(base_dir)
    tokenizer.chat_template = shared_chat_template(sources, tokenizer.chat_template)
    require_chat_template(tokenizer)  # a base model's runs (raw text, no template): refused before any weights load
    if max_new_tokens is None:
        references = [prompt.reference for prompt in prompts if prompt.reference is not None]
        max_new_tokens, why = (auto_max_new_tokens(tokenizer, references) if references
                               else (NO_REFERENCE_ANSWER_TOKENS, "no reference answers to size it by"))
        progress(f"max_new_tokens: {max_new_tokens} ({why}; --max-new-tokens sets it)")
    names = unique_names(sources, include_base)
    outputs, seconds = {}, {}
    for number, group in enumerate(peft_type_groups(sources)):  # one model in memory at a time
        model = attach_adapters(load_model(base_dir, torch.float32, pick_device(device)).eval(),
                                [sources[index] for index in group], group)
        contexts = {BASE: model.disable_adapter} if include_base and number == 0 else {}
        contexts.update({names[index]: functools.partial(active_adapter, model, peft_name(index, sources[index].name))
                         for index in group})
        for name, context in contexts.items():
            started = time.monotonic()
            with context():
                outputs[name] = generate_for(model, tokenizer, prompts, max_new_tokens, batch_size, constraint)
            seconds[name] = round(time.monotonic() - started, 2)
        del model, contexts, context  # every reference: the next kind's base loads into the memory this one held
    order = [BASE, *names] if include_base else names
    outputs, seconds = {name: outputs[name] for name in order}, {name: seconds[name] for name in order}
    return {**comparison_results(prompts, outputs, seconds, scorer, chosen, base_dir, prompts_file),
            "max_new_tokens": max_new_tokens}


def runs_own_metrics(targets: list[str | Path]) -> list[str] | None:
    """The answer metrics the runs' own eval scored (eval/results.json `metrics`; loss and perplexity aside, and those
    that need the run's own settings: a user's metric file, named relative to its recipe, regex and json_schema, whose
    pattern and schema --regex and --json-schema give) where every target is an evaluated run and they agree; None
    otherwise (DEFAULT_METRICS then)."""
    from tunesmith.results import NOT_TASK_METRICS

    chosen = []
    for target in targets:
        results = Path(target).expanduser() / "eval" / "results.json"
        if not results.is_file():
            return None
        try:
            metrics = json.loads(results.read_text(encoding="utf-8")).get("metrics") or []
        except (OSError, ValueError):
            return None
        chosen.append(tuple(m for m in metrics if m not in NOT_TASK_METRICS and ":" not in m
                            and m not in ("regex", "json_schema")))  # these need the run's pattern or schema
    return list(chosen[0]) if chosen and chosen[0] and len(set(chosen)) == 1 else None


def comparison_results(prompts: list[PromptRow], outputs: dict[str, list[str]], seconds: dict[str, float],
                       scorer: Any, metrics: list[str], base_dir: Path, prompts_file: Path) -> dict[str, Any]:
    """Per-row outputs and scores, and per-variant means over the rows scored: those with a reference, and every row
    when each metric judges an answer alone (json_valid, regex, json_schema, a user function, given '')."""
    from tunesmith.scoring import REFERENCE_FREE_METRICS, aggregate, final_answer

    alone = all(metric in REFERENCE_FREE_METRICS or ":" in metric for metric in metrics)
    variants = list(outputs)
    rows, summary = [], {}
    for index, prompt in enumerate(prompts):
        row: dict[str, Any] = {"prompt": prompt.messages[-1]["content"] if prompt.messages else "",
                               "reference": prompt.reference, "outputs": {v: outputs[v][index] for v in variants}}
        if prompt.reference is not None or alone:
            row["scores"] = {v: numeric(scorer(final_answer(outputs[v][index]), prompt.reference or ""))
                             for v in variants}
        rows.append(row)
    for variant in variants:
        scored = [row["scores"][variant] for row in rows if "scores" in row]
        summary[variant] = {**aggregate(scored), "seconds": seconds[variant]}
    return {"prompts_file": str(prompts_file), "base_model": str(base_dir), "variants": variants,
            "metrics": metrics, "examples": len(rows), "scored": sum("scores" in row for row in rows),
            "summary": summary, "paired": paired_against_first(rows, variants), "rows": rows}


def paired_against_first(rows: list[dict[str, Any]], variants: list[str]) -> dict[str, dict[str, Any]]:
    """Each variant after the first (the base, where it is compared) against the first, per metric, over the same
    scored prompts: the difference of means, its paired bootstrap 95% interval and the wins/losses/ties
    (`eval.stats.compare_metric`, as eval compares tuned with base)."""
    scored = [row["scores"] for row in rows if "scores" in row]
    if not scored or len(variants) < 2:
        return {}
    first = variants[0]
    return {variant: {metric: compare_metric([s[first][metric] for s in scored], [s[variant][metric] for s in scored])
                      for metric in scored[0][first] if all(metric in s[first] and metric in s[variant]
                                                            for s in scored)}
            for variant in variants[1:]}


def numeric(scores: dict[str, Any]) -> dict[str, float]:
    """The float scores only (json_fields' per-field dict is summed up by field_accuracy)."""
    return {key: value for key, value in scores.items() if isinstance(value, float)}


COMPARE_STYLE = """
td.differs { background: #fffbe6; } td.same { color: #555; } .scores { color: #555; font-size: 12px; }
"""


def write_compare_html(results: dict[str, Any], path: Path) -> Path:
    """One self-contained page (inline CSS, no links out): the outputs in columns, differences marked."""
    from tunesmith.runs import atomic_write_text

    return atomic_write_text(path, render_compare_html(results))


def render_compare_html(results: dict[str, Any]) -> str:
    from tunesmith.eval.html_report import STYLE

    title = f"{len(results['variants'])} variants on {results['examples']} prompts"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>",
             f"<style>{STYLE}{COMPARE_STYLE}</style></head><body><h1>{_e(title)}</h1>",
             f"<p>Base model: <code>{_e(results['base_model'])}</code>; prompts: "
             f"<code>{_e(results['prompts_file'])}</code>; greedy decoding. Words that differ from the first "
             f"column ({_e(results['variants'][0])}) are marked.</p>",
             summary_html(results), outputs_html(results), "</body></html>"]
    return "\n".join(parts)


def paired_rows(results: dict[str, Any]) -> list[list[str]]:
    """[variant, metric, delta, 95% CI, wins/losses/ties] per variant after the first and metric (`paired`)."""
    return [[variant, metric, f"{entry['delta']:+.4f}", interval_text(entry, "{:+.4f}".format) or "–",
             f"{entry['wins']}/{entry['losses']}/{entry['ties']}"]
            for variant, metrics in (results.get("paired") or {}).items() for metric, entry in metrics.items()]


def print_paired(results: dict[str, Any], console: Any) -> None:
    rows = paired_rows(results)
    if not rows:
        return
    from rich.table import Table

    table = Table(title=f"each against {results['variants'][0]}, paired over the same prompts")
    for column in ("variant", "metric", "delta", "95% CI", "wins/losses/ties"):
        table.add_column(column, justify="left" if column in ("variant", "metric") else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


SECONDS_TITLE = "wall time, all prompts (s)"  # a cost beside the scores, not a score


def summary_cell(key: str, value: Any) -> str:
    """A mean score to 4 decimals; the wall time to 0.1 s."""
    return f"{value:.1f}" if key == "seconds" and isinstance(value, int | float) else _fmt(value)


def summary_html(results: dict[str, Any]) -> str:
    """Mean score per metric (rows) and variant (columns), over the prompts that have a reference."""
    variants, summary = results["variants"], results["summary"]
    keys = [k for k in summary[variants[0]] if k != "seconds"] + ["seconds"]
    head = "<tr><th>metric</th>" + "".join(f"<th>{_e(v)}</th>" for v in variants) + "</tr>"
    body = ["<tr><td>" + _e(SECONDS_TITLE if key == "seconds" else key) + "</td>" + "".join(
        f"<td class='num'>{_e(summary_cell(key, summary[v].get(key)))}</td>" for v in variants) + "</tr>"
        for key in keys]
    note = (f"<p>All {results['examples']} prompts have a reference answer and are scored.</p>"
            if results["scored"] == results["examples"] else
            f"<p>{results['scored']} of {results['examples']} prompts are scored (the others have no reference "
            "answer: only metrics that judge an answer alone score them).</p>")
    paired = paired_rows(results)
    versus = ("" if not paired else f"<h2>Each against {_e(results['variants'][0])}</h2><table><tr>" + "".join(
        f"<th>{c}</th>" for c in ("variant", "metric", "delta", "95% CI", "wins/losses/ties")) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{_e(cell)}</td>" for cell in row) + "</tr>" for row in paired) + "</table>"
        "<p>Paired bootstrap over the scored prompts: an interval that excludes 0 is a difference these prompts "
        "show.</p>")
    return "<h2>Scores</h2><table>" + head + "\n".join(body) + "</table>" + note + versus


def outputs_html(results: dict[str, Any]) -> str:
    """One row per prompt, one column per variant; cells that differ from the first column are tinted."""
    from tunesmith.eval.html_report import mark_changes

    variants = results["variants"]
    head = "<tr><th>#</th><th>prompt</th><th>reference</th>" + "".join(f"<th>{_e(v)}</th>" for v in variants)
    lines = [head + "</tr>"]
    for index, row in enumerate(results["rows"], start=1):
        first = row["outputs"][variants[0]]
        cells = [f"<td>{index}</td>", f"<td><pre>{_e(row['prompt'])}</pre></td>",
                 f"<td><pre>{_e(row['reference'] if row['reference'] is not None else '–')}</pre></td>"]
        for position, variant in enumerate(variants):
            text = row["outputs"][variant]
            css = "" if position == 0 else (" class='same'" if text == first else " class='differs'")
            body = _e(text) if position == 0 else mark_changes(first, text)
            scores = row.get("scores", {}).get(variant, {})
            score_line = " · ".join(f"{k} {_fmt(v)}" for k, v in scores.items())
            cells.append(f"<td{css}><pre>{body}</pre>"
                         + (f"<div class='scores'>{_e(score_line)}</div>" if score_line else "") + "</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    return "<h2>Outputs</h2><table>" + "\n".join(lines) + "</table>"


def print_compare(results: dict[str, Any], console: Any, width: int = 300) -> None:
    """The outputs side by side (long answers cut to `width` characters), then the mean scores."""
    from rich.markup import escape
    from rich.table import Table

    variants = results["variants"]
    table = Table(title=f"{len(variants)} variants on {results['examples']} prompts", show_lines=True)
    for column in ("#", "prompt", "reference", *variants):
        table.add_column(column, overflow="fold")
    for index, row in enumerate(results["rows"], start=1):
        cells = []
        for variant in variants:
            scores = row.get("scores", {}).get(variant, {})
            line = " ".join(f"{k}={_fmt(v)}" for k, v in scores.items())
            suffix = f"\n[dim]{escape(line)}[/dim]" if line else ""
            cells.append(escape(_cut(row["outputs"][variant], width)) + suffix)
        reference = row["reference"] if row["reference"] is not None else "–"
        table.add_row(str(index), escape(_cut(row["prompt"], width)), escape(_cut(reference, width)), *cells)
    console.print(table)
    summary = Table(title=f"mean scores ({results['scored']} scored prompts)")
    summary.add_column("metric")
    for variant in variants:
        summary.add_column(variant, justify="right")
    for key in [k for k in results["summary"][variants[0]] if k != "seconds"] + ["seconds"]:
        summary.add_row(SECONDS_TITLE if key == "seconds" else key,
                        *(summary_cell(key, results["summary"][v].get(key)) for v in variants))
    console.print(summary)
    print_paired(results, console)
    if not results["scored"]:
        console.print(escape(f"No prompt has a reference answer to score {', '.join(results['metrics'])} against: "
                             "--metric json_valid, or a check of your own (--metric file.py:function), scores "
                             "answers alone; --reference-key COLUMN scores against a column of the file (a "
                             "preference file's preferred answer: --reference-key chosen --metric chrf)."),
                      highlight=False, soft_wrap=True)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value if value is not None else "–")


def _e(text: Any) -> str:
    import html

    return html.escape(str(text), quote=True)
