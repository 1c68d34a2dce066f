"""Render conversations through the tokenizer's chat template and mark which tokens carry loss.

Labels are built from character spans of the assistant turns, never by comparing token ids with
the pad token: with `pad == eos` (SmolLM2), id-based masking would also hide the end-of-turn token.
"""

from __future__ import annotations

from typing import Any

from tunesmith.errors import DataError

IGNORE_INDEX = -100


def render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )


def assistant_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of each assistant turn (with its end tokens).

    Relies on the template being prefix-stable: rendering the first k turns must be a prefix of
    rendering all of them. Templates that rewrite earlier turns are reported, not guessed at.
    """
    full = render(tokenizer, messages)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:index], generation_prompt=True) if index else ""
        through = render(tokenizer, messages[: index + 1])
        if not (full.startswith(through) and through.startswith(before)):
            raise DataError(
                "The chat template is not prefix-stable: rendering a conversation's first turns "
                "does not give a prefix of the whole, so assistant tokens cannot be located.",
                "Use a template that renders turns independently (ChatML, Llama-3 and most others do).",
            )
        spans.append((len(before), len(through)))
    return full, spans


def render_with_loss_mask(tokenizer: Any, messages: list[dict[str, str]], max_length: int) -> dict:
    """Token ids and labels: assistant tokens keep their id, everything else is IGNORE_INDEX."""
    text, spans = assistant_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    labels = [
        token if any(start <= begin < end for start, end in spans) else IGNORE_INDEX
        for token, (begin, _) in zip(ids, offsets, strict=True)
    ]
    return {"input_ids": ids[:max_length], "labels": labels[:max_length], "truncated": len(ids) > max_length}
