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

from tunesmith.data.template import IGNORE_INDEX, assistant_spans, render_with_loss_mask
from tunesmith.errors import DataError

Row = dict[str, Any]
SYSTEM_PROBE = "tunesmith-system-probe-7431"


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

    @property
    def loss_tokens(self) -> int:
        return sum(token.loss for token in self.tokens)


@dataclass
class Preview:
    examples: list[RenderedExample]
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "warnings": self.warnings,
            "examples": [
                {"label": e.label, "tokens": e.total_tokens, "loss_tokens": e.loss_tokens,
                 "truncated_answer_tokens": e.truncated_answer_tokens,
                 "loss_text": "".join(t.text for t in e.tokens if t.loss)}
                for e in self.examples
            ],
        }


def conversations_of(row: Row) -> list[tuple[str, list[dict[str, Any]] | str]]:
    """The sequences a row trains on: a conversation, both sides of a preference pair, or raw text."""
    if "messages" in row:
        return [("", row["messages"])]
    if "text" in row:
        return [("", row["text"])]
    prompt = row["prompt"]
    prompt_turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    sides = [(key, row[key]) for key in ("chosen", "rejected", "completion") if key in row]
    return [(key, [*prompt_turns, *as_turns(reply)]) for key, reply in sides]


def as_turns(reply: Any) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": reply}] if isinstance(reply, str) else list(reply)


def render_example(tokenizer: Any, label: str, sequence: list[dict[str, Any]] | str,
                   max_length: int) -> RenderedExample:
    """Tokens and loss flags as training builds them (raw text: every token carries loss)."""
    if isinstance(sequence, str):
        ids = tokenizer(sequence, add_special_tokens=False)["input_ids"]
        labels = list(ids)
    else:
        encoded = render_with_loss_mask(tokenizer, sequence, max_length=1 << 30)
        ids, labels = encoded["input_ids"], encoded["labels"]
    cut = sum(label != IGNORE_INDEX for label in labels[max_length:])
    tokens = [TokenView(tokenizer.decode([token]), token, label != IGNORE_INDEX)
              for token, label in zip(ids[:max_length], labels[:max_length], strict=True)]
    return RenderedExample(label, tokens, len(ids), cut)


def preview_rows(tokenizer: Any, rows: list[Row], max_length: int, pad_token_was_missing: bool = False,
                 first_row: int = 1) -> Preview:
    """Render `rows` and run every contract check; warnings name the row they come from."""
    examples = []
    for number, row in enumerate(rows, start=first_row):
        for side, sequence in conversations_of(row):
            label = f"row {number}" + (f" ({side})" if side else "")
            examples.append(render_example(tokenizer, label, sequence, max_length))
    warnings = contract_warnings(tokenizer, pad_token_was_missing)
    warnings += [answer_warning for example in examples if (answer_warning := truncation_warning(example, max_length))]
    warnings += eos_warnings(tokenizer, rows, first_row)
    warnings += round_trip_warnings(tokenizer, rows, first_row)
    return Preview(examples, warnings)


def contract_warnings(tokenizer: Any, pad_token_was_missing: bool) -> list[str]:
    """Checks on the tokenizer and template themselves, independent of any row."""
    warnings = []
    if pad_token_was_missing:
        warnings.append(f"The tokenizer has no pad token; batches are padded with EOS "
                        f"({tokenizer.eos_token!r}). Labels come from assistant spans, so EOS still carries loss.")
    elif tokenizer.pad_token_id is not None and tokenizer.pad_token_id == tokenizer.eos_token_id:
        warnings.append(f"pad == eos ({tokenizer.eos_token!r}). tunesmith masks by assistant spans, so the EOS "
                        "after each answer keeps its label; tools that mask by pad id would hide it.")
    if system_prompt_dropped(tokenizer):
        warnings.append("The chat template drops the system role: system prompts in your data will not reach "
                        "the model. Put the instructions in the first user turn, or use a template with system.")
    return warnings


def system_prompt_dropped(tokenizer: Any) -> bool:
    probe = [{"role": "system", "content": SYSTEM_PROBE}, {"role": "user", "content": "hi"},
             {"role": "assistant", "content": "hello"}]
    try:
        text = tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception:  # templates raise anything (jinja's raise_exception) on roles they reject
        return True
    return SYSTEM_PROBE not in text


def truncation_warning(example: RenderedExample, max_length: int) -> str | None:
    if not example.truncated_answer_tokens:
        return None
    return (f"{example.label}: {example.total_tokens} tokens > max_length {max_length}; "
            f"{example.truncated_answer_tokens} answer tokens are cut off and never trained. "
            "Raise data.max_length, or shorten the row.")


def eos_warnings(tokenizer: Any, rows: list[Row], first_row: int) -> list[str]:
    """Each assistant turn's trained tokens should include EOS, or generation never learns to stop."""
    eos = tokenizer.eos_token_id
    warnings = []
    for number, row in enumerate(rows, start=first_row):
        for side, sequence in conversations_of(row):
            if isinstance(sequence, str):
                continue
            text, spans = assistant_spans(tokenizer, sequence)
            missing = sum(eos not in tokenizer(text[start:end], add_special_tokens=False)["input_ids"]
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
        for side, sequence in conversations_of(row):
            text = sequence if isinstance(sequence, str) else tokenizer.apply_chat_template(sequence, tokenize=False)
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
    if not preview.warnings:
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
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in preview.warnings) or "<li>none</li>"
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
