"""Data stage: load the recipe's files, hold out an eval split, fingerprint what was trained on."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config import Recipe
from tunesmith.data.answers import classify_answers
from tunesmith.data.fallbacks import apply_fallbacks
from tunesmith.data.formats import SFT_SHAPES, Row, as_chat_preference, as_conversation, load_rows, with_system_prompt
from tunesmith.data.prepare import clean_rows, steps_report
from tunesmith.data.shapes import feedback_warnings
from tunesmith.errors import DataError


@dataclass
class Splits:
    train: list[Row]
    eval: list[Row]
    source: dict[str, str]
    skipped: dict[str, int] = field(default_factory=dict)
    shape: str = "messages"
    cleaning: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # what the train file's columns say that reading it left out


def row_hash(row: Row) -> str:
    return hashlib.sha256(json.dumps(row, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def with_places(steps: list[dict[str, Any]], place: Callable[[int], str | None]) -> list[dict[str, Any]]:
    """The cleaning report's examples with where each row is in the file (`at`, `duplicate_of_at`: "FILE, line
    N"), beside `row`, its 1-based position among the file's usable rows (what the cleaning steps count; `place`
    takes a 0-based index)."""
    for step in steps:
        for example in step.get("examples", []):
            for key, label in (("row", "at"), ("duplicate_of", "duplicate_of_at")):
                if isinstance(example.get(key), int) and place(example[key] - 1) is not None:
                    example[label] = place(example[key] - 1)
    return steps


def holds_out(row: Row, fraction: float) -> bool:
    """Stable split by content hash: adding rows never moves an old row between splits."""
    return int(row_hash(row)[:8], 16) / 0xFFFFFFFF < fraction


# The recipe key behind each cleaning step (data/prepare.py's Step names), as an error names it
STEP_KEYS = {"token_length": "data.clean.min_tokens/max_tokens", "refusals": "data.clean.drop_refusals",
             "language": "data.clean.languages", "dedup_exact": "data.clean.dedup", "dedup_near": "data.clean.dedup"}


def load_splits(recipe: Recipe, accept: tuple[str, ...] = SFT_SHAPES,
                purpose: str = "supervised fine-tuning", tokenizer: Any = None) -> Splits:
    """Train and eval rows in one canonical shape from `accept`, cleaned as `data.clean` says.

    Conversational shapes (SFT's) become `messages` rows with the recipe's system prompt; other shapes
    (preference, unpaired preference, text) stay as the loaders made them, for their own trainers.
    Train rows that duplicate an eval row are dropped, so the held-out score is not inflated by leakage.
    """
    data = recipe.data
    skipped: dict[str, int] = {}
    shapes: set[str] = set()
    cleaning: dict[str, Any] = {}
    warnings: list[str] = []
    if tokenizer is None and (data.clean.min_tokens or data.clean.max_tokens):
        tokenizer = recipe_tokenizer(recipe)

    def load(path: Path | str, split: str) -> list[Row]:
        try:
            loaded = load_rows(path, accept, purpose, data.format, data.columns, data.skip_invalid,
                               data.file_format, skipped)
        except DataError as exc:
            written = str(getattr(data, split) or "")  # as the recipe has it
            if exc.message.startswith("Dataset file not found") and not Path(written).expanduser().is_absolute():
                exc.hint = (f"Check the path: relative paths in this recipe resolve from {recipe.base_dir} (the "
                            "recipe file's folder, or the base_dir a run's recipe.yaml records); a path given on the "
                            "command line (--data, --set), from the current folder.")
            if split == "eval" and exc.message.startswith(f"{path} holds ") and "but no '" not in exc.message:
                exc.hint = (f"data.eval is scored as the training rows are: give it rows of the shape data.train "
                            f"holds ({', '.join(sorted(shapes))}).")
            raise naming_key(exc, f"data.{split}") from None
        shapes.add(loaded.shape)
        if split == "train" and loaded.shape in SFT_SHAPES and recipe.method.kind == "sft":
            warnings.extend(feedback_warnings(loaded.feedback_columns, loaded.source_shape))
        cleaned = clean_rows(loaded.rows, data.clean, tokenizer)
        cleaning[split] = with_places(steps_report(cleaned.steps), loaded.place)
        if loaded.rows and not cleaned.rows:  # nothing would train (or be scored): said, not written out empty
            removed = "; ".join(f"{step.removed} by {STEP_KEYS.get(step.name, step.name)}" for step in cleaned.steps
                                if step.removed)
            raise DataError(f"data.{split}: cleaning removed all {len(loaded.rows)} rows of {path} ({removed}).",
                            "Loosen that step (data.clean.languages takes ISO 639-1 codes such as en; min_tokens "
                            "and max_tokens bound a row's tokens), or turn it off; `tunesmith data inspect` shows "
                            "what each step removes.")
        return cleaned.rows

    train_path = data_source(recipe, data.train)
    eval_path = data_source(recipe, data.eval) if data.eval else None
    refuse_same_file(train_path, eval_path)
    rows = load(train_path, "train")
    source = {"train": str(train_path)}
    if eval_path is not None:
        source["eval"] = str(eval_path)
        held, kept = load(eval_path, "eval"), rows
    else:
        in_eval = [holds_out(row, data.eval_fraction) for row in rows]  # one hash per row
        held = [row for row, out in zip(rows, in_eval, strict=True) if out]
        kept = [row for row, out in zip(rows, in_eval, strict=True) if not out]
        source["eval"] = (f"{len(held)} of {len(rows)} rows of train ({len(held) / max(len(rows), 1):.0%}; "
                          f"data.eval_fraction {data.eval_fraction:g}), held out by content hash")
        refuse_all_held_out(rows, kept, source["train"], data.eval_fraction)
    if data.clean.dedup != "off":
        kept, cleaning["train_eval_overlap"] = drop_eval_overlap(kept, held, data.clean)
        refuse_all_overlapping(kept, cleaning["train_eval_overlap"], source)
    if shapes <= {*SFT_SHAPES, "prompt"}:  # conversations, and GRPO's prompts as the turns the model answers
        kept, held = ([as_conversation(row) for row in part] for part in (kept, held))
    elif shapes <= {"preference", "unpaired_preference"}:  # plain-text pairs train in the chat format too
        kept, held = ([as_chat_preference(row) for row in part] for part in (kept, held))
    kept, held = ([apply_fallbacks(with_system_prompt(row, data.system_prompt), data) for row in part]
                  for part in (kept, held))
    shape = "/".join(sorted({"messages" if name in SFT_SHAPES else name for name in shapes}))
    return Splits(kept, held, source, skipped, shape, cleaning, warnings)


def naming_key(error: DataError, key: str) -> DataError:
    """`error` with the recipe key whose file it is about in front (`data.eval: ... holds no rows.`), unless its
    message names the key already."""
    if not error.message.startswith(key) and f"{key} " not in error.message:
        error.message = f"{key}: {error.message}"
        error.args = (error.message,)
    return error


def data_source(recipe: Recipe, value: str) -> Path | str:
    """A local path (relative to the recipe), or a Hub dataset id kept as written (`hf:owner/name`)."""
    from tunesmith.data.hub import is_hub_dataset

    return value if is_hub_dataset(value, recipe.resolve_path(value)) else recipe.resolve_path(value)


def refuse_same_file(train_path: Path | str, eval_path: Path | str | None) -> None:
    """data.eval naming the training file would hold out every row (and train on none)."""
    if eval_path is not None and str(train_path) == str(eval_path):
        raise DataError(f"data.eval names the same file as data.train ({train_path}): every training row would also "
                        "be an eval row, and tunesmith removes train rows that appear in the eval set.",
                        "Remove data.eval to hold out data.eval_fraction of the training file, or point data.eval "
                        "at a separate file.")


def refuse_all_held_out(rows: list[Row], kept: list[Row], train: str, eval_fraction: float) -> None:
    """On a handful of rows the content hash can put every one of them in the held-out share."""
    if rows and not kept:
        raise DataError(f"All {len(rows)} rows of {train} fell into the held-out share (data.eval_fraction "
                        f"{eval_fraction:g}, each row by a hash of its content), so none is left to train on.",
                        "Add rows (about data.eval_fraction of them are held out), or give data.eval a separate "
                        "file so that every row of data.train is trained on.")


def refuse_all_overlapping(kept: list[Row], overlap: dict[str, Any], source: dict[str, str]) -> None:
    if not kept and overlap["removed"]:
        raise DataError(f"All {overlap['removed']} training rows of {source['train']} also appear in the eval set "
                        f"({source['eval']}), so none is left to train on.",
                        "Use an eval file with different rows, or remove data.eval to hold out a fraction.")


def drop_eval_overlap(train: list[Row], held: list[Row], clean: Any = None) -> tuple[list[Row], dict[str, Any]]:
    """Train rows whose normalized text equals an eval row's would leak the answers into the score; under
    `data.clean.dedup: near` (`clean`, a CleanSection), so would near copies of eval rows (Jaccard >=
    near_threshold, as near dedup measures within a file)."""
    from tunesmith.data.dedup import dedup_key, dedup_text, near_copies_of

    eval_keys = {dedup_key(dedup_text(row)) for row in held}
    kept = [row for row in train if dedup_key(dedup_text(row)) not in eval_keys]
    exact = len(train) - len(kept)
    if clean is not None and clean.dedup == "near" and kept and held:
        near = set(near_copies_of([dedup_text(row) for row in kept], [dedup_text(row) for row in held],
                                  clean.near_threshold, clean.num_perm))
        kept = [row for index, row in enumerate(kept) if index not in near]
    return kept, {"removed": len(train) - len(kept), **({"near": len(train) - len(kept) - exact}
                                                         if clean is not None and clean.dedup == "near" else {})}


def recipe_tokenizer(recipe: Recipe) -> Any:
    from tunesmith.models import load_tokenizer, resolve_model_source
    from tunesmith.models.templates import recipe_chat_template

    return load_tokenizer(resolve_model_source(recipe.model.source, recipe.model.revision, Path(recipe.base_dir)),
                          chat_template=recipe_chat_template(recipe))


def fingerprint(splits: Splits) -> dict[str, Any]:
    """What data.json records: a hash of the training rows (order-sensitive), simple counts, and what the
    answers look like (`answers`: tool_calls / json / labels / numbers / short / free_text, from which eval picks its
    metrics)."""
    digest = hashlib.sha256()
    for row in splits.train:
        digest.update(row_hash(row).encode())
    return {
        "train_sha256": digest.hexdigest(),
        "train_rows": len(splits.train),
        "eval_rows": len(splits.eval),
        "sources": splits.source,
        "skipped_rows": splits.skipped,
        "cleaning": splits.cleaning,
        "shape": splits.shape,
        "turns_per_row": _mean([count for row in splits.train if (count := turn_count(row))]) or None,
        "answers": classify_answers(splits.train).model_dump(),
    }


def turn_count(row: Row) -> int:
    """The turns a row trains on: a conversation's, or a pair's or KTO row's prompt turns and one answer's (a plain
    text prompt and answer are one turn each, as they train in the chat format); 0 for raw text."""
    if "messages" in row:
        return len(row["messages"])
    answer = next((row[key] for key in ("chosen", "completion") if key in row), None)
    if "prompt" not in row or answer is None:
        return 0
    return sum(len(part) if isinstance(part, list) else 1 for part in (row["prompt"], answer))


def _mean(values: list[int]) -> float:
    return round(sum(values) / len(values), 3) if values else 0.0
