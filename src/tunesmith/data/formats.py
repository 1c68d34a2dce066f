"""Conversations for supervised fine-tuning, from any file `load_records` reads.

SFT trains on conversations, so the shapes that hold one answer per row are accepted: `messages`
(OpenAI chat, ShareGPT, Alpaca) and prompt-completion (turned into a user turn and an assistant turn).
Preference and raw-text data belong to other methods and are refused with a clear message.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.data.loaders import load_records
from tunesmith.data.shapes import Row
from tunesmith.errors import DataError

__all__ = ["Row", "as_conversation", "load_conversations"]


def load_conversations(path: Path, fmt: str = "auto", system_prompt: str | None = None,
                       columns: dict[str, str] | None = None, skip_invalid: bool = False,
                       file_format: str = "auto", skipped: dict[str, int] | None = None) -> list[Row]:
    """Canonical `{"messages": [...]}` rows; `fmt` forces a shape ("messages", "prompt_completion", ...).

    With `skip_invalid`, unusable rows are dropped and their counts by reason added into `skipped`.
    """
    result = load_records(path, fmt=file_format, columns=columns, skip_invalid=skip_invalid, shape=fmt)
    for reason, count in result.skipped.items():
        if skipped is not None:
            skipped[reason] = skipped.get(reason, 0) + count
    if result.shape not in ("messages", "prompt_completion"):
        raise DataError(f"{path} holds {result.shape} rows; supervised fine-tuning needs conversations "
                        "('messages') or prompt-completion pairs.",
                        "Use a preference method for chosen/rejected data, or convert the file.")
    return [with_system_prompt(as_conversation(row), system_prompt) for row in result.rows]


def as_conversation(row: Row) -> Row:
    """A prompt-completion row as one conversation; conversational rows pass through."""
    if "messages" in row:
        return row
    prompt, completion = row["prompt"], row["completion"]
    if isinstance(prompt, str):
        return {"messages": [{"role": "user", "content": prompt},
                             {"role": "assistant", "content": completion}]}
    conversation: Row = {"messages": [*prompt, *completion]}
    if "tools" in row:
        conversation["tools"] = row["tools"]
    return conversation


def with_system_prompt(row: Row, system_prompt: str | None) -> Row:
    if not system_prompt or row["messages"][0]["role"] == "system":
        return row
    return {**row, "messages": [{"role": "system", "content": system_prompt}, *row["messages"]]}
