"""Read dataset files into canonical conversational rows, naming the file and line of any bad row.

Two shapes are understood here: conversational (`messages`) and prompt-completion (plain strings,
turned into one user turn and one assistant turn).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.errors import DataError

ROLES = {"system", "user", "assistant"}
Row = dict[str, Any]


def read_jsonl(path: Path) -> list[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line; BOM and CRLF tolerated."""
    if not path.is_file():
        raise DataError(f"Dataset file not found: {path}", "Check data.train / data.eval in the recipe.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start}).",
                        "Re-save the file as UTF-8.") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {number}: not valid JSON ({exc.msg}, column {exc.colno}).",
                            "Each line of a JSONL file must be one JSON object.") from None
    if not rows:
        raise DataError(f"{path} holds no rows.", "Add at least one example.")
    return rows


def detect_format(value: Any) -> str:
    if isinstance(value, dict) and "messages" in value:
        return "messages"
    if isinstance(value, dict) and "prompt" in value and "completion" in value:
        return "prompt_completion"
    return "unknown"


def load_conversations(path: Path, fmt: str = "auto", system_prompt: str | None = None) -> list[Row]:
    """Load a JSONL file as canonical `{"messages": [...]}` rows, validating every row."""
    entries = read_jsonl(path)
    if fmt == "auto":
        fmt = detect_format(entries[0][1])
        if fmt == "unknown":
            raise DataError(
                f"{path}, line {entries[0][0]}: cannot tell the dataset shape from keys "
                f"{sorted(entries[0][1]) if isinstance(entries[0][1], dict) else type(entries[0][1]).__name__}.",
                "Rows need a 'messages' list, or 'prompt' and 'completion' strings.",
            )
    rows = []
    for number, value in entries:
        where = f"{path}, line {number}"
        messages = to_messages(value, fmt, where)
        if system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system_prompt}, *messages]
        rows.append({"messages": messages})
    return rows


def to_messages(value: Any, fmt: str, where: str) -> list[dict[str, str]]:
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(value).__name__}.")
    if fmt == "prompt_completion":
        prompt, completion = value.get("prompt"), value.get("completion")
        for key, text in (("prompt", prompt), ("completion", completion)):
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{where}: '{key}' must be a non-empty string, got {text!r}.")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    return validate_messages(value.get("messages"), where)


def validate_messages(messages: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list.")
    clean = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise DataError(f"{where}: messages[{index}] must be an object with role and content.")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise DataError(f"{where}: messages[{index}] has unknown role {role!r}.",
                            f"Use one of {sorted(ROLES)}.")
        if not isinstance(content, str):
            raise DataError(f"{where}: messages[{index}].content must be a string, got {content!r}.")
        clean.append({"role": role, "content": content})
    if clean[-1]["role"] != "assistant" or not clean[-1]["content"].strip():
        raise DataError(f"{where}: the last message must be a non-empty assistant turn.",
                        "Every training row needs an answer for the model to learn.")
    return clean
