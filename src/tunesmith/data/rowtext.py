"""The human-readable texts of a canonical row, for cleaning, deduplication and filters.

Cleaning rewrites message contents and string fields but never roles, labels, tool schemas or tool-call
arguments; filters look either at everything a row says (`row_text`) or only at what it teaches the model
to answer (`answer_texts`). One place knows the five canonical shapes, so the cleaning stage does not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunesmith.data.shapes import Row

# Fields that hold either a string or a list of messages, in the order a reader meets them.
TEXT_FIELDS = ("prompt", "completion", "chosen", "rejected", "text")


def map_row_texts(row: Row, fn: Callable[[str], str], tool_arguments: bool = False) -> Row:
    """A new row with `fn` applied to every message content and string text field, and with `tool_arguments` to
    the arguments of every tool call too (PII redaction: an address in a call is trained as much as one in prose);
    the input is left as it was."""
    mapped = dict(row)
    if "messages" in row:
        mapped["messages"] = map_messages(row["messages"], fn, tool_arguments)
    for key in TEXT_FIELDS:
        if key in row:
            mapped[key] = map_field(row[key], fn, tool_arguments)
    return mapped


def map_field(value: Any, fn: Callable[[str], str], tool_arguments: bool = False) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return map_messages(value, fn, tool_arguments)
    return value


def map_messages(messages: list[dict], fn: Callable[[str], str], tool_arguments: bool = False) -> list[dict]:
    """Copies of the messages with their content mapped (and their tool calls' arguments, with `tool_arguments`:
    a JSON string as text, a mapping value by value); tool names are kept as they are."""
    mapped = [{**message, "content": fn(message["content"])} if isinstance(message.get("content"), str)
              else dict(message) for message in messages]
    if tool_arguments:
        for message in mapped:
            if isinstance(message.get("tool_calls"), list):
                message["tool_calls"] = [map_call(call, fn) for call in message["tool_calls"]]
    return mapped


def map_call(call: Any, fn: Callable[[str], str]) -> Any:
    """A tool call with `fn` applied to its arguments (OpenAI's `function.arguments`, a JSON string or a mapping)."""
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        return call
    function = dict(call["function"])
    function["arguments"] = map_value(function.get("arguments"), fn)
    return {**call, "function": function}


def map_value(value: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {key: map_value(item, fn) for key, item in value.items()}
    if isinstance(value, list):
        return [map_value(item, fn) for item in value]
    return value


def row_text(row: Row, include_system: bool = True) -> str:
    """Every text of the row joined by newlines, in reading order.

    Dedup leaves system turns out (`include_system=False`): many datasets repeat one long system prompt
    on every row, which would make unrelated rows look alike.
    """
    return "\n".join(field_texts(row, include_system))


def field_texts(row: Row, include_system: bool = True) -> list[str]:
    texts = message_texts(row.get("messages", []), include_system)
    for key in TEXT_FIELDS:
        value = row.get(key)
        texts += [value] if isinstance(value, str) else message_texts(value or [], include_system)
    return texts


def message_texts(messages: list[dict], include_system: bool = True, roles: tuple[str, ...] | None = None) -> list[str]:
    return [message["content"] for message in messages
            if isinstance(message.get("content"), str)
            and (include_system or message.get("role") != "system")
            and (roles is None or message.get("role") in roles)]


def answer_texts(row: Row) -> list[str]:
    """The texts the row teaches the model to produce: what a refusal or boilerplate filter should read.

    That is assistant turns, `completion` and `chosen`, and all of a raw `text` row (continued pretraining
    learns every word). `rejected`, and the completion of an unpaired row labelled false, are answers the
    model is taught to avoid, so a refusal there is no reason to drop the row.
    """
    if "text" in row and isinstance(row["text"], str):
        return [row["text"]]
    texts = message_texts(row.get("messages", []), roles=("assistant",))
    keys = ("chosen",) if row.get("label") is False else ("completion", "chosen")
    for key in keys:
        value = row.get(key)
        texts += [value] if isinstance(value, str) else message_texts(value or [], roles=("assistant",))
    return texts
