"""The `tunesmith data` commands as plain functions: inspect (read-only), prepare (clean + write + report),
preview (what the loss sees). Each takes a recipe; a bare data file becomes a one-line recipe around it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tunesmith.config import Recipe, apply_override, load_recipe, validate_recipe
from tunesmith.data import data_source, drop_eval_overlap, load_splits, recipe_tokenizer, with_places
from tunesmith.data.answers import bare_input_warnings
from tunesmith.data.contract import judge_template
from tunesmith.data.formats import METHOD_SHAPES, SFT_SHAPES, as_conversation, shape_refusal
from tunesmith.data.lengths import auto_max_length, length_limit
from tunesmith.data.loaders import LoadResult, load_records
from tunesmith.data.prepare import clean_rows, steps_report, token_lengths
from tunesmith.data.preview import Preview, preview_rows, require_rows
from tunesmith.data.report import data_stats, report_html, token_length_figure
from tunesmith.data.shapes import SHAPES, feedback_warnings, is_prompt_only, preference_warnings, tool_warnings
from tunesmith.errors import DataError
from tunesmith.runs import atomic_directory, check_replaceable_output

RECIPE_SUFFIXES = {".yaml", ".yml"}


def data_recipe(target: Path, model: str | None = None, shape: str | None = None,
                overrides: list[str] | None = None) -> Recipe:
    """The recipe to work from: TARGET itself when it is a recipe, else a default one around the file."""
    if target.suffix.lower() in RECIPE_SUFFIXES:
        recipe = load_recipe(target, overrides)
        updates = {"model": recipe.model.model_copy(update={"source": model})} if model else {}
        if shape:
            updates["data"] = recipe.data.model_copy(update={"format": shape})
        return recipe.model_copy(update=updates)
    raw: dict[str, Any] = {"name": safe_name(target), "data": {"train": str(target)}, "base_dir": str(Path.cwd())}
    if model:
        raw["model"] = {"source": model}
    if shape:
        raw["data"]["format"] = shape
    for item in overrides or []:
        apply_override(raw, item)
    return validate_recipe(raw)


def safe_name(target: Path) -> str:
    stem = "".join(c if c.isalnum() or c in "._-" else "-" for c in (target.stem or "data"))
    return stem.strip("-.") or "data"


def inspect_data(recipe: Recipe, examples: int = 3, method_chosen: bool = True) -> dict[str, Any]:
    """Shape, counts, every problem (bad rows are collected, not fatal), a dry run of cleaning, examples; and, per
    file, `method_fit` where recipe.method.kind does not train on the file's shape: a problem where the method was
    chosen (a recipe, or --set method.kind), as train refuses it; else (a bare file, SFT assumed) the methods that
    take it."""
    data = recipe.data
    tokenizer = recipe_tokenizer(recipe)
    files = {"train": data.train, **({"eval": data.eval} if data.eval else {})}
    report: dict[str, Any] = {"name": recipe.name, "files": {}, "pii": data.clean.pii}
    usable: list[dict[str, Any]] = []
    sources = {split: data_source(recipe, value) for split, value in files.items()}
    prefer = METHOD_SHAPES.get(recipe.method.kind, ()) if method_chosen else ()  # read as the method would
    records = {split: load_records(source, fmt=data.file_format, columns=data.columns, skip_invalid=True,
                                   shape=data.format, prefer=prefer) for split, source in sources.items()}
    recipe, assumed = method_for_shape(recipe, records["train"].shape, method_chosen)
    # lengths as training renders the rows: the recipe's system prompt and fallbacks (a Hermes tools block) included
    as_trained = {split: conformed(loaded.rows, recipe) for split, loaded in records.items()}
    lengths_of = {split: token_lengths(tokenizer, as_trained[split]) for split in records}
    max_length = recipe_max_length(recipe, lengths_of.values())
    for split, loaded in records.items():
        source, lengths = sources[split], lengths_of[split]
        cleaned = clean_rows(loaded.rows, data.clean.model_copy(update={"pii": "redact"}), tokenizer)
        report["files"][split] = {
            "source": str(source),
            "file_format": loaded.file_format,
            "layout": loaded.source_shape,
            "shape": loaded.shape,
            "skipped": loaded.skipped,
            "problems": loaded.problems,
            "unused_columns": loaded.unused_columns,
            "warnings": (feedback_warnings(loaded.feedback_columns, loaded.source_shape)
                         if loaded.shape in SFT_SHAPES and recipe.method.kind == "sft" else []) +
                        preference_warnings(loaded.rows, loaded.place) + tool_warnings(loaded.rows, loaded.place) +
                        (bare_input_warnings(as_trained[split]) if split == "train" and
                         all(is_sft_row(row) for row in loaded.rows) else []),
            "other_layouts": loaded.other_layouts,
            "length_fit": length_fit(tokenizer, as_trained[split], max_length, loaded.place),
            "stats": data_stats([as_conversation(r) if is_sft_row(r) else r for r in loaded.rows], lengths,
                                max_length),
            "cleaning_dry_run": with_places(steps_report(cleaned.steps), loaded.place),
            "examples": [rendered(tokenizer, row) for row in as_trained[split][:examples]],
            **method_fit(recipe.method.kind, loaded, method_chosen),
            **({"kto_rows": 2 * len(loaded.rows)} if recipe.method.kind == "kto" and loaded.shape == "preference"
               else {}),  # train.preference.unpair: each pair a desirable and an undesirable row
            **({"method_assumed": assumed} if assumed else {}),
            "packed": loaded.shape == "text" and packs_text(recipe),
        }
        usable += loaded.rows
    if not all("text" in row for row in usable):  # raw text (CPT) never goes through the chat template
        report["template_contract"] = judge_template(tokenizer, conformed(usable, recipe), recipe.model.source,
                                                      recipe.model.chat_template)
        report["template_contract"]["tool_format"] = data.tool_format  # hermes: tools reach the model as text
    if "eval" in records and data.clean.dedup != "off":  # what prepare and train remove before training
        _, overlap = drop_eval_overlap(records["train"].rows, records["eval"].rows, data.clean)
        report["train_eval_overlap"] = overlap["removed"]  # exact copies, and near ones under dedup: near
    return report


def method_for_shape(recipe: Recipe, shape: str, method_chosen: bool) -> tuple[Recipe, str | None]:
    """The recipe to report a bare file under: where no method was chosen and SFT (the default) does not train on the
    file's shape but exactly one method does (text: cpt, prompts: grpo, unpaired preferences: kto), that method, so
    that max_length and the counts are the ones it would train with; with the method's name, else None."""
    if method_chosen or shape in METHOD_SHAPES.get(recipe.method.kind, (shape,)):
        return recipe, None
    taking = [kind for kind, shapes in METHOD_SHAPES.items() if shape in shapes]
    if len(taking) != 1:
        return recipe, None
    return recipe.model_copy(update={"method": recipe.method.model_copy(update={"kind": taking[0]})}), taking[0]


def method_fit(method: str, loaded: LoadResult, method_chosen: bool) -> dict[str, Any]:
    """{} where `method` trains on the rows' shape; else `method_refusal` (train's own refusal, `shape_refusal`)
    where the method was chosen, or `methods_taking` (the methods that train on the shape) where it was assumed."""
    accept = METHOD_SHAPES.get(method, ())
    if not accept or loaded.shape in accept:
        return {}
    if method_chosen:
        refusal = shape_refusal(loaded.path, loaded.shape, accept, f"method.kind {method}", loaded.unused_columns)
        return {"method_refusal": {"error": refusal.message, "hint": refusal.hint}}
    return {"methods_taking": [kind for kind, shapes in METHOD_SHAPES.items() if loaded.shape in shapes]}


def length_fit(tokenizer: Any, rows: list[dict[str, Any]], max_length: int,
               place: Callable[[int], str | None] | None = None) -> dict[str, Any]:
    """What data.max_length does to `rows` as training encodes them: `left_out`, the rows with no answer token
    inside it (by reason: training drops them), `left_out_at`, where the first LEFT_OUT_SHOWN of them are (`place`:
    a row's index to its file and line), and `answer_tokens_cut` from rows that still train. {} for rows
    that are not encoded one by one (raw text: packed into blocks) and where the chat template cannot render them
    (the template contract says why)."""
    from tunesmith.data.template import encode_preference_split, encode_split

    if rows and all("messages" in row for row in rows):
        encode = encode_split
    elif rows and all("chosen" in row or "label" in row for row in rows):
        encode = encode_preference_split
    else:
        return {}
    try:
        encoded = encode(tokenizer, rows, max_length)
    except Exception:  # the template's own error: judge_template reports it with the fix
        return {}
    at = [place(index) or f"row {index + 1}" for index in encoded.dropped_rows[:LEFT_OUT_SHOWN]] if place else []
    return {"left_out": dict(encoded.dropped), "left_out_at": at, "answer_tokens_cut": encoded.answer_tokens_cut}


LEFT_OUT_SHOWN = 20  # rows data.max_length leaves out, named by file and line in `data inspect`


def recipe_max_length(recipe: Recipe, lengths: Iterable[list[int]]) -> int:
    """data.max_length as training will resolve it (to its rounding: these `lengths`, per file or split, are the
    rendered rows' tokens), for the data reports."""
    if isinstance(recipe.data.max_length, int):
        return recipe.data.max_length
    from tunesmith.models import resolve_model_source
    from tunesmith.models.loading import context_length

    context = context_length(resolve_model_source(recipe.model.source, recipe.model.revision, Path(recipe.base_dir)))
    longest = max((max(split, default=0) for split in lengths), default=0)
    return auto_max_length(longest, context, packed_text=packs_text(recipe))


def packs_text(recipe: Recipe) -> bool:
    """Whether training packs raw text into blocks of max_length (cpt, training.packing true or auto), so that a
    document longer than max_length runs on into the next block rather than being cut."""
    return recipe.method.kind == "cpt" and recipe.training.packing in (True, "auto")


def conformed(rows: list[dict[str, Any]], recipe: Recipe) -> list[dict[str, Any]]:
    """Rows as training renders them: SFT rows as conversations, plain-text preference rows in the chat format; the
    recipe's system prompt and fallbacks on all."""
    from tunesmith.data.fallbacks import apply_fallbacks
    from tunesmith.data.formats import as_chat_preference, with_system_prompt

    data = recipe.data
    return [apply_fallbacks(with_system_prompt(as_conversation(row) if is_sft_row(row) else as_chat_preference(row),
                                               data.system_prompt), data) for row in rows]


def is_sft_row(row: dict[str, Any]) -> bool:
    """A row `as_conversation` turns into turns: a conversation, a prompt-completion pair, or a prompt alone."""
    return "messages" in row or ("completion" in row and "label" not in row) or is_prompt_only(row)


def rendered(tokenizer: Any, row: dict[str, Any]) -> str:
    """The row's text through the chat template; a template error is shown in its place, not raised."""
    from tunesmith.data.preview import conversations_of, message_of
    from tunesmith.data.template import render_sequence

    parts = []
    for side, sequence in conversations_of(row):
        try:
            text = sequence if isinstance(sequence, str) else render_sequence(tokenizer, sequence, row.get("tools"))
        except Exception as exc:  # the template's own error: the contract check reports it with the fix
            text = f"(cannot be rendered: {message_of(exc)})"
        parts.append(f"[{side}]\n{text}" if side else text)
    return "\n".join(parts)


def prepare_data(recipe: Recipe, out_dir: Path) -> dict[str, Any]:
    """Clean and split as training would, then write rows, data_report.json, report.html and the histogram.

    `out_dir` must be new, empty or an earlier `data prepare` output (`check_replaceable_output`)."""
    check_replaceable_output(out_dir, "data_report.json", PREPARE_OUTPUTS)
    tokenizer = recipe_tokenizer(recipe)
    splits = load_splits(recipe, accept=SHAPES, purpose="prepare", tokenizer=tokenizer)
    lengths = {"train": token_lengths(tokenizer, splits.train), "eval": token_lengths(tokenizer, splits.eval)}
    max_length = recipe_max_length(recipe, lengths.values())
    report = {
        "name": recipe.name,
        "shape": splits.shape,
        "sources": splits.source,
        "skipped_rows": splits.skipped,
        "splits": {name: data_stats(rows, lengths[name], max_length, labelled_by=splits.train)
                   for name, rows in (("train", splits.train), ("eval", splits.eval))},
        "cleaning": splits.cleaning,
        "outputs": {"train": "train.jsonl", "eval": "eval.jsonl", "report": "report.html",
                    "histogram": "token_lengths.png"},
    }
    histogram = token_length_figure(lengths, max_length, f"{recipe.name}: tokens per row")
    with atomic_directory(out_dir) as tmp:
        write_jsonl(tmp / "train.jsonl", splits.train)
        write_jsonl(tmp / "eval.jsonl", splits.eval)
        (tmp / "token_lengths.png").write_bytes(histogram)
        (tmp / "data_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
        (tmp / "report.html").write_text(report_html(report, histogram), encoding="utf-8")
    return report


PREPARE_OUTPUTS = ("train.jsonl", "eval.jsonl", "token_lengths.png", "data_report.json", "report.html")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def preview_data(recipe: Recipe, count: int = 3, skip: int = 0) -> Preview:
    """Render rows skip+1 … skip+count of the training file as training will, with the contract checks."""
    from tunesmith.models import resolve_model_source
    from tunesmith.models.loading import context_length, load_tokenizer
    from tunesmith.models.templates import recipe_chat_template

    data = recipe.data
    model_dir = resolve_model_source(recipe.model.source, recipe.model.revision, Path(recipe.base_dir))
    tokenizer = load_tokenizer(model_dir, fill_pad=False, chat_template=recipe_chat_template(recipe))
    pad_missing = tokenizer.pad_token is None
    if pad_missing:
        tokenizer.pad_token = tokenizer.eos_token
    source = data_source(recipe, data.train)
    # rows train would refuse are listed, not fatal: the rows asked for are shown around them (`data inspect` lists
    # every problem of the file; rows are numbered among the usable ones)
    loaded = load_records(source, fmt=data.file_format, columns=data.columns, skip_invalid=True, shape=data.format,
                          prefer=METHOD_SHAPES.get(recipe.method.kind, ()))
    shown = loaded.rows[skip:skip + count]
    if loaded.rows and not shown:
        raise DataError(f"{source} holds {len(loaded.rows)} usable rows; --skip {skip} passes all of them.",
                        f"Use --skip below {len(loaded.rows)}.")
    rows = conformed(require_rows(shown, str(source)), recipe)
    limit = length_limit(data.max_length, context_length(model_dir))  # auto cuts a row only at the model's context
    preview = preview_rows(tokenizer, rows, limit, pad_missing, first_row=skip + 1, model=recipe.model.source,
                           all_rows=conformed(loaded.rows, recipe), template_key=recipe.model.chat_template)
    if loaded.problems and not data.skip_invalid:  # train stops on the first of them
        preview.problems += [f"{problem} (rows are numbered among the {len(loaded.rows)} usable ones)"
                             for problem in loaded.problems[:PREVIEW_PROBLEMS]]
        if len(loaded.problems) > PREVIEW_PROBLEMS:
            preview.problems.append(f"... and {len(loaded.problems) - PREVIEW_PROBLEMS} more: tunesmith data inspect "
                                    "lists them all")
    return preview


PREVIEW_PROBLEMS = 10  # rows train would refuse, listed by `data preview` (`data inspect` lists every one)
