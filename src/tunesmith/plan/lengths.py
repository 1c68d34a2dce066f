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
from tunesmith.data.formats import METHOD_SHAPES
from tunesmith.data.lengths import auto_max_length, encoded_sequences, length_limit
from tunesmith.data.shapes import SHAPES
from tunesmith.errors import TunesmithError
from tunesmith.plan.workload import RowLengths


def longest_row(recipe: Recipe, tokenizer: Any, context: int | None = None) -> RowLengths:
    """The longest encoded training sequence, at most data.max_length (`auto`: the model's `context`, None when
    unknown); the limit itself when the data cannot be read (the reason is kept in `source`)."""
    max_length = length_limit(recipe.data.max_length, context)
    if recipe.data.max_length == "auto":  # sized as auto would resolve for data nobody could read: its floor
        unread = auto_max_length(0, context, packed_text=recipe.method.kind == "cpt")
    else:
        unread = max_length
    try:
        kind = recipe.method.kind  # a shape the method does not train is the data problem train would stop at
        splits = load_splits(recipe, accept=METHOD_SHAPES.get(kind, SHAPES), purpose=f"method.kind {kind}")
    except TunesmithError as exc:
        return RowLengths(unread, f"data.max_length, as the data did not load: {exc.message}",
                          problem=f"the data did not load: {exc}")
    try:
        encoded = encoded_sequences(splits.train, splits.shape, tokenizer, max_length)
    except (TunesmithError, TemplateError) as exc:  # train's template-contract check explains these
        return RowLengths(unread, f"data.max_length, as the rows did not encode: {exc}",
                          problem=f"the rows did not encode: {exc}")
    if not encoded:
        return RowLengths(unread, "data.max_length, as no training row encodes",
                          problem="no training row encodes (every row is empty or cut)")
    sizes = [len(e.input_ids) for e in encoded]
    cut = [e.total_tokens for e in encoded if e.total_tokens > max_length]
    return RowLengths(min(max(sizes), max_length), f"the longest of {len(encoded):,} training sequences",
                      len(splits.train), max(e.loss_tokens for e in encoded), sum(sizes) / len(sizes),
                      sum(e.loss_tokens for e in encoded) / len(encoded), cut_rows=len(cut),
                      longest_uncut=max(cut) if cut else None, uncut_tokens=sum(e.total_tokens for e in encoded))
