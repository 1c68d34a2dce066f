"""Conversations for supervised fine-tuning, from any file `load_records` reads.

SFT trains on conversations, so the shapes that hold one answer per row are accepted: `messages`
(OpenAI chat, ShareGPT, Alpaca) and prompt-completion (turned into a user turn and an assistant turn).
Preference and raw-text data belong to other methods and are refused with a clear message.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.data.loaders import LoadResult, load_records
from tunesmith.data.shapes import Row, as_conversation
from tunesmith.errors import DataError

__all__ = ["SFT_SHAPES", "Row", "as_chat_preference", "as_conversation", "load_conversations", "load_rows"]

SFT_SHAPES = ("messages", "prompt_completion")
PAIR_SHAPES = ("preference",)
# The row shapes each method.kind trains on: the one table training, doctor and plan read.
METHOD_SHAPES: dict[str, tuple[str, ...]] = {
    "sft": SFT_SHAPES, "cpt": ("text",), "grpo": ("prompt_completion", "messages", "prompt"), "reward": PAIR_SHAPES,
    "dpo": PAIR_SHAPES, "orpo": PAIR_SHAPES, "simpo": PAIR_SHAPES, "kto": ("unpaired_preference", "preference"),
}


def load_conversations(path: Path, fmt: str = "auto", system_prompt: str | None = None,
                       columns: dict[str, str] | None = None, skip_invalid: bool = False,
                       file_format: str = "auto", skipped: dict[str, int] | None = None) -> list[Row]:
    """Canonical `{"messages": [...]}` rows; `fmt` forces a shape ("messages", "prompt_completion", ...).

    With `skip_invalid`, unusable rows are dropped and their counts by reason added into `skipped`.
    """
    rows = load_rows(path, SFT_SHAPES, "supervised fine-tuning", fmt, columns, skip_invalid, file_format,
                     skipped).rows
    return [with_system_prompt(as_conversation(row), system_prompt) for row in rows]


def load_rows(path: Path | str, accept: tuple[str, ...], purpose: str, fmt: str = "auto",
              columns: dict[str, str] | None = None, skip_invalid: bool = False, file_format: str = "auto",
              skipped: dict[str, int] | None = None) -> LoadResult:
    """The file's canonical rows (`.rows`, `.shape`, `.place(i)`: where the i-th is in the file), of a shape in
    `accept`, or a DataError saying which shape `purpose` needs."""
    result = load_records(path, fmt=file_format, columns=columns, skip_invalid=skip_invalid, shape=fmt, prefer=accept)
    for reason, count in result.skipped.items():
        if skipped is not None:
            skipped[reason] = skipped.get(reason, 0) + count
    if result.shape not in accept:
        raise shape_refusal(path, result.shape, accept, purpose, result.unused_columns)
    return result


def shape_refusal(path: Path | str, shape: str, accept: tuple[str, ...], purpose: str,
                  unused_columns: list[str] | None = None) -> DataError:
    """A file of rows `shape` given to a method that trains on `accept` shapes: what it needs, and which method
    takes what the file holds; or, where the file has half of what a shape in `accept` reads (`chosen` without
    `rejected`: read as prompts, since those columns go unread), the column it lacks."""
    message = f"{path} holds {shape} rows; {purpose} needs {' or '.join(accept)} rows."
    half = half_of_a_shape(shape, accept, set(unused_columns or ()))
    if half:
        have, lacking = half
        label = " (true for a desirable answer, false for an undesirable one)" if lacking == "label" else ""
        return DataError(f"{message} Its rows have '{have}' but no '{lacking}'{label}.",
                         f"Add the '{lacking}' column, or map a column of another name onto it "
                         f"(`--set data.columns.NAME={lacking}`; data.columns in the recipe).")
    return DataError(message, SHAPE_HINTS.get(shape, "Convert the file, or pick a method that takes this shape."))


def half_of_a_shape(shape: str, accept: tuple[str, ...], unused: set[str]) -> tuple[str, str] | None:
    """(a column the rows have, the one they lack) where rows of `shape` hold half of what a preference shape in
    `accept` reads: `chosen` without `rejected` (read as prompts, the answer column unread), a prompt and completion
    without KTO's `label`."""
    if "preference" in accept and shape == "prompt":
        for have, lacking in (("chosen", "rejected"), ("rejected", "chosen")):
            if have in unused and lacking not in unused:
                return have, lacking
    if "unpaired_preference" in accept and shape in ("prompt", "prompt_completion"):
        if shape == "prompt_completion":
            return "completion", "label"
        if "label" in unused:
            return "label", "completion"
    return None


SHAPE_HINTS = {
    "preference": "chosen/rejected pairs train with method.kind dpo, orpo, simpo or reward.",
    "unpaired_preference": "prompt/completion/label rows train with method.kind kto.",
    "text": "raw text trains with method.kind cpt (continued pre-training).",
    "messages": "conversations train with method.kind sft (or grpo, the last answer as reference).",
    "prompt_completion": "prompt-completion pairs train with method.kind sft or grpo.",
    "prompt": "prompts without answers train with method.kind grpo, which samples the answers and scores them with "
              "method.rewards; to train on answers, give each row its 'completion' (data.columns maps a column of "
              "another name onto it, e.g. `--set data.columns.answer=completion`).",
}


PREFERENCE_ANSWER_KEYS = ("chosen", "rejected", "completion")


def as_chat_preference(row: Row) -> Row:
    """A preference row (paired or unpaired) whose prompt and answers are plain strings, as one in the chat format:
    the prompt a user turn, each answer an assistant turn. TRL trains a plain-text row as plain text (prompt, answer,
    EOS), never through the chat template that `chat`, `serve` and eval prompt the tuned model with, so the
    preference it learns would not carry over to them; SFT's prompt-completion rows become conversations the same
    way (`as_conversation`). Rows already in the chat format pass through."""
    prompt = row.get("prompt")
    answers = [key for key in PREFERENCE_ANSWER_KEYS if key in row]
    if not isinstance(prompt, str) or not answers or not all(isinstance(row[key], str) for key in answers):
        return row
    return {**row, "prompt": [{"role": "user", "content": prompt}],
            **{key: [{"role": "assistant", "content": row[key]}] for key in answers}}


def with_system_prompt(row: Row, system_prompt: str | None) -> Row:
    """The recipe's system prompt as the first turn of a conversation (`messages`) or of a preference row's
    conversational `prompt`; a row that has a system turn, a plain-text prompt and raw text stay as they are.
    The data stage applies it to every split, so training, eval and the saved rows see the same prompt."""
    key = "messages" if "messages" in row else "prompt"
    turns = row.get(key)
    if not system_prompt or not isinstance(turns, list) or not turns or turns[0].get("role") == "system":
        return row
    return {**row, key: [{"role": "system", "content": system_prompt}, *turns]}
