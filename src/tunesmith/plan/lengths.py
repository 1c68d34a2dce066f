"""The longest training sequence of a recipe's data, tokenized as training will (the chat template included).

A length-grouped batch pads to its longest row, so the longest row sizes the activations of the heaviest step.
When the data cannot be read yet (a wrong path, a shape the method refuses), the plan sizes for
`data.max_length` and says so; `train` reports the data problem itself.
"""

from __future__ import annotations

from typing import Any

from jinja2.exceptions import TemplateError

from tunesmith.config import Recipe
from tunesmith.data import load_splits
from tunesmith.data.shapes import SHAPES
from tunesmith.data.template import encode_preference_split, encode_sequence, encode_split
from tunesmith.errors import DataError, TunesmithError
from tunesmith.plan.workload import RowLengths


def longest_row(recipe: Recipe, tokenizer: Any) -> RowLengths:
    """The longest encoded training sequence, at most data.max_length; max_length itself when the data
    cannot be read (the reason is kept in `source`)."""
    max_length = recipe.data.max_length
    try:
        splits = load_splits(recipe, accept=SHAPES, purpose="the memory plan")
    except TunesmithError as exc:
        return RowLengths(max_length, f"data.max_length (the data did not load: {exc.message})",
                          problem=f"the data did not load: {exc}")
    try:
        encoded = encoded_sequences(splits.train, splits.shape, tokenizer, max_length)
    except (TunesmithError, TemplateError) as exc:  # train's template-contract check explains these
        return RowLengths(max_length, f"data.max_length (the rows did not encode: {exc})",
                          problem=f"the rows did not encode: {exc}")
    if not encoded:
        return RowLengths(max_length, "data.max_length (no training row encodes)",
                          problem="no training row encodes (every row is empty or cut)")
    sizes = [len(e.input_ids) for e in encoded]
    return RowLengths(min(max(sizes), max_length), f"the longest of {len(encoded):,} training sequences",
                      len(splits.train), max(e.loss_tokens for e in encoded), sum(sizes) / len(sizes),
                      sum(e.loss_tokens for e in encoded) / len(encoded))


def encoded_sequences(rows: list[dict[str, Any]], shape: str, tokenizer: Any, max_length: int) -> list[Any]:
    """Each trained sequence, encoded: conversations through the template, preference sides with their prompt,
    raw text (continued pre-training) as plain tokens. GRPO's prompts count with their reference answers, an
    upper bound. `shape` is load_splits's: one shape, or the shapes of the files joined by "/" (KTO's unpaired
    training rows beside paired held-out ones: "preference/unpaired_preference").

    Raises DataError when the files hold shapes no one method trains on together."""
    shapes = set(shape.split("/"))
    if shapes <= {"preference", "unpaired_preference"}:
        return encode_preference_split(tokenizer, rows, max_length).examples
    if shapes == {"text"}:
        return [encode_sequence(tokenizer, row["text"], max_length) for row in rows]
    if shapes == {"messages"}:
        return encode_split(tokenizer, rows, max_length).examples
    raise DataError(f"the recipe's data files hold rows of different shapes ({shape})",
                    "Give data.train and data.eval rows of the shape the method trains on (tunesmith data preview "
                    "shows how each file is read)")
