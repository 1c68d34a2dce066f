"""What the loss sees: rows rendered through the chat template exactly as training renders them,
token by token, with the tokens that carry loss marked, and the tokenizer/template/trainer contract
checked before any compute is spent.

The checks catch the silent failures practitioners report most: a template that drops the system
prompt, answers that never end in EOS (the model never learns to stop), text that does not survive a
tokenize/decode round trip, and rows cut off inside the answer by `max_length`.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

from tunesmith.data.contract import judge_template
from tunesmith.data.shapes import is_prompt_only
from tunesmith.data.template import (
    IGNORE_INDEX,
    PREFERENCE_SIDES,
    AnswerNotLocatable,
    EncodedSequence,
    assistant_spans,
    encode_completion,
    encode_sequence,
    render_sequence,
)
from tunesmith.errors import DataError

Row = dict[str, Any]


@dataclass
class TokenView:
    text: str
    token_id: int
    loss: bool


@dataclass
class RenderedExample:
    """One rendered sequence: `label` says which row (and, for preference rows, which side)."""

    label: str
    tokens: list[TokenView]
    total_tokens: int
    truncated_answer_tokens: int = 0
    drop_reason: str | None = None  # why training leaves it out (encode_sequence's verdict)

    @property
    def loss_tokens(self) -> int:
        return sum(token.loss for token in self.tokens)


@dataclass
class Preview:
    examples: list[RenderedExample]
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what makes `train` refuse this data
    contract: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "problems": self.problems,
            "warnings": self.warnings,
            "template_contract": self.contract,
            "examples": [
                {"label": e.label, "tokens": e.total_tokens, "loss_tokens": e.loss_tokens,
                 "truncated_answer_tokens": e.truncated_answer_tokens, "dropped": e.drop_reason,
                 "loss_text": "".join(t.text for t in e.tokens if t.loss)}
                for e in self.examples
            ],
        }


Sequence = list[dict[str, Any]] | str


def conversations_of(row: Row) -> list[tuple[str, Sequence]]:
    """The sequences a row trains on: a conversation, both sides of a preference pair, or raw text."""
    if "messages" in row:
        return [("", row["messages"])]
    if "text" in row:
        return [("", row["text"])]
    prompt = row["prompt"]
    prompt_turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    sides = [(side_name(row, key), row[key]) for key in ("chosen", "rejected", "completion") if key in row]
    if not sides:  # a prompt-only row: the turns the model answers
        return [("", prompt_turns)]
    return [(key, [*prompt_turns, *as_turns(reply)]) for key, reply in sides]


def side_name(row: Row, key: str) -> str:
    """How a preview heads a preference side: `chosen`, `rejected`, or KTO's `completion (desirable)` /
    `completion (undesirable)`, so a user can see that their labels were read as they meant."""
    if key == "completion" and isinstance(row.get("label"), bool):
        return f"completion ({'desirable' if row['label'] else 'undesirable'})"
    return key


def as_turns(reply: Any) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": reply}] if isinstance(reply, str) else list(reply)


def encoded_sides(tokenizer: Any, row: Row, max_length: int) -> list[tuple[str, EncodedSequence]]:
    """The row's sequences exactly as training encodes them: `encode_sequence` for conversations and raw text
    (what the SFT and CPT trainers get), `encode_completion` for preference sides (TRL's DPO/KTO tokenization)."""
    if "messages" in row or "text" in row or is_prompt_only(row):
        [(_, sequence)] = conversations_of(row)
        return [("", encode_sequence(tokenizer, sequence, max_length, row.get("tools")))]
    return [(key, encode_completion(tokenizer, row["prompt"], row[key], max_length, row.get("tools")))
            for key in PREFERENCE_SIDES if key in row]


def rendered_example(tokenizer: Any, label: str, encoded: EncodedSequence) -> RenderedExample:
    tokens = [TokenView(text, token, label != IGNORE_INDEX) for text, token, label
              in zip(token_texts(tokenizer, encoded.input_ids), encoded.input_ids, encoded.labels, strict=True)]
    return RenderedExample(label, tokens, encoded.total_tokens, encoded.answer_tokens_cut, encoded.drop_reason)


UTF8_MAX_BYTES = 4  # a character split across byte-level tokens spans at most this many


def token_texts(tokenizer: Any, ids: list[int]) -> list[str]:
    """Each token's text, one per id. A character that a byte-level tokenizer splits across tokens (CJK, Arabic,
    Cyrillic and emoji in GPT-2-style vocabularies) decodes to U+FFFD piece by piece; it is shown whole at the token
    that completes it, the tokens before it showing nothing, so the preview reads as the text does."""
    texts: list[str] = []
    pending: list[int] = []
    for token in ids:
        pending.append(token)
        text = tokenizer.decode(pending)
        if text.endswith("\ufffd") and len(pending) < UTF8_MAX_BYTES:
            texts.append("")
            continue
        texts.append(text)
        pending = []
    if pending:  # the sequence ends inside a character (cut at max_length): show what there is
        texts[-1] = tokenizer.decode(pending)
    return texts


def preview_rows(tokenizer: Any, rows: list[Row], max_length: int, pad_token_was_missing: bool = False,
                 first_row: int = 1, model: str = "this model", all_rows: list[Row] | None = None,
                 template_key: str | None = None) -> Preview:
    """Render `rows` and run every contract check; warnings name the row they come from.

    The template contract (data/contract.py) is checked first, against `all_rows` (the whole file, so that its
    counts, "N rows use tools", are the file's and not the preview's; default `rows`): when it refuses the data,
    `problems` says why and rows that cannot render are reported instead of rendered.
    """
    raw_text = all("text" in row for row in rows)  # CPT's text: no template, no answer spans, no padding
    preview = Preview([], [] if raw_text else contract_warnings(tokenizer, pad_token_was_missing))
    if any(not isinstance(sequence, str) for row in rows for _, sequence in conversations_of(row)):
        preview.contract = judge_template(tokenizer, all_rows or rows, model, template_key)
        preview.problems += preview.contract["problems"]
        preview.warnings += preview.contract["warnings"]
    for number, row in enumerate(rows, start=first_row):
        try:
            sides = encoded_sides(tokenizer, row, max_length)
        except Exception as exc:  # DataError, or the template's own error (jinja raises anything)
            if not (isinstance(exc, AnswerNotLocatable) and preview.contract and preview.contract["problems"]):
                preview.problems.append(f"row {number} cannot be rendered for training: {message_of(exc)}")
            continue  # else the contract's problem above says it, once for the file
        preview.examples += [rendered_example(tokenizer, f"row {number}" + (f" ({side})" if side else ""), encoded)
                             for side, encoded in sides]
    for example in preview.examples:
        preview.warnings += [text for text in (truncation_warning(example, max_length),
                                               drop_warning(example, max_length)) if text]
    if not preview.problems:
        preview.warnings += eos_warnings(tokenizer, rows, first_row)
        preview.warnings += round_trip_warnings(tokenizer, rows, first_row)
    preview.warnings += plain_prompt_warnings(tokenizer, rows, model)
    return preview


def plain_prompt_warnings(tokenizer: Any, rows: list[Row], model: str) -> list[str]:
    """Rows whose `prompt` is a string train as plain text (prompt + answer + EOS: TRL's rule for non-conversational
    rows, trl/trainer/dpo_trainer.py `add_eos`), never through the chat template that `chat` and `serve` prompt a
    chat model with. Said once, with the count, when the model has a template."""
    plain = sum(isinstance(row.get("prompt"), str) and not is_prompt_only(row) for row in rows)
    if not plain or not getattr(tokenizer, "chat_template", None):
        return []
    return [f"{plain} row(s) have a plain-text prompt: they train as plain text (prompt, answer, EOS, as TRL does), "
            f"without the chat template of {model}, while `tunesmith chat` and `serve` prompt the tuned model through "
            'that template. To train in the chat format, write the prompt as messages: [{"role": "user", "content": '
            "...}] (and each answer as [{\"role\": \"assistant\", \"content\": ...}])."]


def message_of(exc: Exception) -> str:
    return exc.message if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}"


def contract_warnings(tokenizer: Any, pad_token_was_missing: bool) -> list[str]:
    """Checks on the tokenizer itself, independent of any row."""
    warnings = []
    if pad_token_was_missing:
        warnings.append(f"The tokenizer has no pad token; batches are padded with EOS "
                        f"({tokenizer.eos_token!r}). Labels come from assistant spans, so EOS still carries loss.")
    elif tokenizer.pad_token_id is not None and tokenizer.pad_token_id == tokenizer.eos_token_id:
        warnings.append(f"pad == eos ({tokenizer.eos_token!r}). tunesmith masks by assistant spans, so the EOS "
                        "after each answer keeps its label; tools that mask by pad id would hide it.")
    return warnings


def truncation_warning(example: RenderedExample, max_length: int) -> str | None:
    if not example.truncated_answer_tokens or example.drop_reason:
        return None
    return (f"{example.label}: {example.total_tokens} tokens > max_length {max_length}; "
            f"{example.truncated_answer_tokens} answer tokens are cut off and never trained. "
            "Raise data.max_length, or shorten the row.")


def drop_warning(example: RenderedExample, max_length: int) -> str | None:
    if not example.drop_reason:
        return None
    return (f"{example.label}: no answer token lies inside max_length {max_length} ({example.total_tokens} tokens): "
            f"training leaves this row out ({example.drop_reason}). Raise data.max_length, or shorten the prompt.")


def eos_warnings(tokenizer: Any, rows: list[Row], first_row: int) -> list[str]:
    """Each assistant turn's trained tokens should include a token generation stops at (the tokenizer's EOS or the
    generation config's, `stop_token_ids`), or generation never learns to stop."""
    from tunesmith.models.loading import stop_token_ids

    stops = stop_token_ids(tokenizer)
    warnings = []
    for number, row in enumerate(rows, start=first_row):
        if isinstance(row.get("prompt"), str):
            continue  # a plain-text pair trains without the chat template (TRL appends EOS itself)
        for side, sequence in conversations_of(row):
            if isinstance(sequence, str):
                continue
            text, spans = assistant_spans(tokenizer, sequence, row.get("tools"))
            missing = sum(not any(token in stops for token in tokenizer(text[start:end],
                                                                         add_special_tokens=False)["input_ids"])
                          for start, end in spans)
            if missing:
                where = f"row {number}" + (f" ({side})" if side else "")
                warnings.append(f"{where}: {missing} assistant turn(s) end without EOS ({tokenizer.eos_token!r}) "
                                "in the trained tokens; the model will not learn to stop. Check the chat template "
                                "and the tokenizer's eos_token.")
    return warnings


def round_trip_warnings(tokenizer: Any, rows: list[Row], first_row: int) -> list[str]:
    """Rendered text must decode back to itself, or training sees different text than the data holds."""
    warnings = []
    for number, row in enumerate(rows, start=first_row):
        if isinstance(row.get("prompt"), str):
            continue  # a plain-text pair trains without the chat template (TRL appends EOS itself)
        for side, sequence in conversations_of(row):
            text = sequence if isinstance(sequence, str) else render_sequence(tokenizer, sequence, row.get("tools"))
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            decoded = tokenizer.decode(ids)
            if decoded != text:
                at = first_difference(text, decoded)
                where = f"row {number}" + (f" ({side})" if side else "")
                warnings.append(f"{where}: the rendered text does not survive tokenize→decode (first difference at "
                                f"character {at}: {text[at:at + 20]!r} became {decoded[at:at + 20]!r}). "
                                "Normalize the text (data.clean) or check the tokenizer.")
    return warnings


def first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def print_preview(preview: Preview, console: Any) -> None:
    """Loss tokens in bold green on a dark background, prompt tokens dim; warnings in yellow."""
    from rich.text import Text

    for example in preview.examples:
        console.rule(f"{example.label}: {example.loss_tokens} of {example.total_tokens} tokens carry loss")
        text = Text()
        for token in example.tokens:
            text.append(token.text, style="bold green on grey15" if token.loss else "dim")
        console.print(text)
    for warning in preview.warnings:
        console.print(Text(f"warning: {warning}", style="yellow"))
    for problem in preview.problems:
        console.print(Text(f"error (train refuses this): {problem}", style="bold red"))
    if not preview.warnings and not preview.problems:
        console.print(Text("Template contract: no problems found.", style="green"))


def preview_html(preview: Preview, title: str) -> str:
    """A self-contained page with the same view: one span per token, loss tokens highlighted."""
    blocks = []
    for example in preview.examples:
        spans = "".join(
            f'<span class="{"loss" if t.loss else "ctx"}" title="id {t.token_id}">{html.escape(t.text)}</span>'
            for t in example.tokens)
        blocks.append(f"<h2>{html.escape(example.label)} — {example.loss_tokens} of {example.total_tokens} "
                      f"tokens carry loss</h2><pre>{spans}</pre>")
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in [*preview.problems, *preview.warnings]) or "<li>none</li>"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:70em}pre{white-space:pre-wrap;line-height:1.6}"
            ".loss{background:#c8f7c5;color:#064}.ctx{color:#777}span{border-right:1px solid #eee}"
            ".warn li{color:#a60}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>Green tokens carry loss; grey ones are context only.</p>"
            f"<h2>Warnings</h2><ul class='warn'>{warnings}</ul>{''.join(blocks)}</body></html>")


def require_rows(rows: list[Row], source: str) -> list[Row]:
    if not rows:
        raise DataError(f"{source}: no rows to preview.", "Check the file, or lower --skip.")
    return rows
