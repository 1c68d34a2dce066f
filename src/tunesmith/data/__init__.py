"""Data stage: load the recipe's files, hold out an eval split, fingerprint what was trained on."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config import Recipe
from tunesmith.data.formats import SFT_SHAPES, Row, as_conversation, load_rows, with_system_prompt


@dataclass
class Splits:
    train: list[Row]
    eval: list[Row]
    source: dict[str, str]
    skipped: dict[str, int] = field(default_factory=dict)
    shape: str = "messages"


def row_hash(row: Row) -> str:
    return hashlib.sha256(json.dumps(row, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def holds_out(row: Row, fraction: float) -> bool:
    """Stable split by content hash: adding rows never moves an old row between splits."""
    return int(row_hash(row)[:8], 16) / 0xFFFFFFFF < fraction


def load_splits(recipe: Recipe, accept: tuple[str, ...] = SFT_SHAPES,
                purpose: str = "supervised fine-tuning") -> Splits:
    """Train and eval rows in one canonical shape from `accept`.

    Conversational shapes (SFT's) become `messages` rows with the recipe's system prompt; other shapes
    (preference, unpaired preference, text) stay as the loaders made them, for their own trainers.
    """
    data = recipe.data
    skipped: dict[str, int] = {}
    shapes: set[str] = set()

    def load(path: Path) -> list[Row]:
        shape, rows = load_rows(path, accept, purpose, data.format, data.columns, data.skip_invalid,
                                data.file_format, skipped)
        shapes.add(shape)
        if shape in SFT_SHAPES:
            return [with_system_prompt(as_conversation(row), data.system_prompt) for row in rows]
        return rows

    train_path = recipe.resolve_path(data.train)
    rows = load(train_path)
    source = {"train": str(train_path)}
    if data.eval:
        eval_path = recipe.resolve_path(data.eval)
        source["eval"] = str(eval_path)
        held, kept = load(eval_path), rows
    else:
        held = [row for row in rows if holds_out(row, data.eval_fraction)]
        kept = [row for row in rows if not holds_out(row, data.eval_fraction)]
        source["eval"] = f"{data.eval_fraction:.0%} of train, held out by content hash"
    shape = "messages" if shapes <= set(SFT_SHAPES) else "/".join(sorted(shapes))
    return Splits(kept, held, source, skipped, shape)


def fingerprint(splits: Splits) -> dict[str, Any]:
    """What data.json records: a hash of the training rows (order-sensitive) and simple counts."""
    digest = hashlib.sha256()
    for row in splits.train:
        digest.update(row_hash(row).encode())
    return {
        "train_sha256": digest.hexdigest(),
        "train_rows": len(splits.train),
        "eval_rows": len(splits.eval),
        "sources": splits.source,
        "skipped_rows": splits.skipped,
        "shape": splits.shape,
        "turns_per_row": _mean([len(r["messages"]) for r in splits.train if "messages" in r]),
    }


def _mean(values: list[int]) -> float:
    return round(sum(values) / len(values), 3) if values else 0.0
