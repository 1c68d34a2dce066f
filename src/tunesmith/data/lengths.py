"""How long the encoded rows are, and `data.max_length: auto`: a limit that cuts none of them.

A fixed 512 cut every longer row (and left out the rows whose answer lay past it) unless the user knew to raise
it. `auto` takes the longest training or held-out sequence, as training encodes it (chat template included),
rounded up to a multiple of 64, at least 512 (what a fixed default gave: short data is encoded as before), and at
most the model's context (`max_position_embeddings`), where a longer row is cut and said to be. Raw text
packed into blocks (continued pre-training with `training.packing`) keeps 512-token blocks: documents are split
across blocks there, not cut. An unpacked batch pads only to its own longest row, so a higher limit costs nothing
for the short rows; the memory plan sizes the heaviest step from the longest row and says when it does not fit.
"""

from __future__ import annotations

from typing import Any

from tunesmith.data.template import encode_preference_split, encode_sequence, encode_split
from tunesmith.errors import DataError

AUTO_MIN_LENGTH = 512  # the fixed default before auto; TRL's SFTConfig defaults to 1,024
AUTO_ROUND_TO = 64
TEXT_BLOCK_LENGTH = 512
UNCUT = 1 << 30  # a limit no row reaches, for models whose config names no context length


def encoded_sequences(rows: list[dict[str, Any]], shape: str, tokenizer: Any, max_length: int) -> list[Any]:
    """Each trained sequence, encoded: conversations through the template, preference sides with their prompt,
    raw text (continued pre-training) as plain tokens. GRPO's prompts count with their reference answers, an
    upper bound, or (prompts without answers) up to the generation prompt. `shape` is load_splits's: one shape, or
    the shapes of the files joined by "/" (KTO's unpaired training rows beside paired held-out ones:
    "preference/unpaired_preference").

    Raises DataError when the files hold shapes no one method trains on together."""
    shapes = set(shape.split("/"))
    if shapes <= {"preference", "unpaired_preference"}:
        return encode_preference_split(tokenizer, rows, max_length).examples
    if shapes == {"text"}:
        return [encode_sequence(tokenizer, row["text"], max_length) for row in rows]
    if shapes == {"messages"}:
        return encode_split(tokenizer, rows, max_length).examples
    if shapes <= {"messages", "prompt"}:  # GRPO's prompts without answers (held-out rows may have them)
        return [encode_sequence(tokenizer, row.get("messages") or row["prompt"], max_length, row.get("tools"))
                for row in rows]
    raise DataError(f"the recipe's data files hold rows of different shapes ({shape})",
                    "Give data.train and data.eval rows of the shape the method trains on (tunesmith data preview "
                    "shows how each file is read)")


def length_limit(max_length: int | str, context: int | None) -> int:
    """The cut `max_length` makes before `auto` is resolved against the rows: `auto` cuts only at the context."""
    return max_length if isinstance(max_length, int) else (context or UNCUT)


def auto_max_length(longest: int, context: int | None, packed_text: bool = False) -> int:
    """`data.max_length: auto` for data whose longest sequence is `longest` tokens (see the module doc)."""
    if packed_text:
        return min(TEXT_BLOCK_LENGTH, context or TEXT_BLOCK_LENGTH)
    covering = max(AUTO_MIN_LENGTH, -(-longest // AUTO_ROUND_TO) * AUTO_ROUND_TO)
    return min(covering, context) if context else covering


def resolve_max_length(data: Any, rows: list[dict[str, Any]], shape: str, tokenizer: Any, context: int | None,
                       packed: bool) -> dict[str, Any]:
    """Fill `data.max_length` (a DataSection) in place when it is `auto`, from `rows` (training and held-out,
    of load_splits's `shape`) encoded with `tokenizer`; `context`: the model's position range (None: unknown);
    `packed`: training.packing is on. Returns what was chosen and why (train.json `chosen`)."""
    if data.max_length != "auto":
        return {"value": data.max_length, "why": "data.max_length in the recipe"}
    text = set(shape.split("/")) == {"text"}
    if text and packed:
        data.max_length = auto_max_length(0, context, packed_text=True)
        return {"value": data.max_length, "why": f"auto: documents are joined and cut into {data.max_length}-token "
                                                 "blocks (packing), nothing is left out"}
    sizes = [e.total_tokens for e in encoded_sequences(rows, shape, tokenizer, UNCUT)]  # none cut, none dropped
    longest = max(sizes, default=0)
    data.max_length = auto_max_length(longest, context)
    within = f"the model's context ({context:,})" if context else "no known context length"
    if context and longest > context:
        cut = sum(size > context for size in sizes)
        why = f"auto: {cut} of {len(sizes):,} sequences are longer than {within} and are cut at it"
    else:
        why = (f"auto: every sequence fits (the longest is {longest:,} tokens; at least {AUTO_MIN_LENGTH}, in steps of "
               f"{AUTO_ROUND_TO}, within {within})")
    return {"value": data.max_length, "longest": longest, "why": why}
