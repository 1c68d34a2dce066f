"""Greedy, batched generation from already rendered prompts: what eval scores and what training's replay
rows are made of (the base model's own answers), in one place below both stages."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Generated:
    """Answers (stripped text) with what they cost: prompt tokens and generated tokens (up to end-of-sequence),
    and how firmly the model chose each answer's first token: its probability minus the runner-up's (0 to 1),
    from the model's own distribution before any constraint."""

    answers: list[str]
    prompt_tokens: list[int]
    answer_tokens: list[int]
    first_token_margin: list[float] = field(default_factory=list)


class FirstTokenMargin:
    """A logits processor that changes nothing and records, at the first generated position, each row's top-1
    minus top-2 probability. Greedy decoding keeps the top-1 token; a lead of a few hundredths is a coin toss
    that a small change to the weights can flip."""

    def __init__(self) -> None:
        self.margins: list[float] | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.margins is None:
            top = scores.float().softmax(dim=-1).topk(2, dim=-1).values
            self.margins = [round(float(a - b), 4) for a, b in top.tolist()]
        return scores


def generate_from_prompts(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch_size: int,
                          processor: Callable[[], Any] | None = None) -> Generated:
    """Greedy answers to rendered prompts, batched with left padding; `processor` makes a fresh logits processor
    for each batch (constrained decoding)."""
    from rich.progress import track
    from transformers import LogitsProcessorList

    from tunesmith.models.loading import stop_token_ids

    tokenizer.padding_side = "left"
    stops = stop_token_ids(tokenizer, getattr(getattr(model, "generation_config", None), "eos_token_id", None))
    result = Generated([], [], [])
    batches = range(0, len(prompts), batch_size)
    for start in track(batches, description="generating", console=_stderr_console(), transient=True):
        enc = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True,
                        add_special_tokens=False).to(model.device)
        margin = FirstTokenMargin()
        processors = LogitsProcessorList([margin, processor()] if processor else [margin])
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, logits_processor=processors,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=stops)
        new_tokens = out[:, enc["input_ids"].shape[1]:]
        result.answers.extend(without_cut_character(a) for a in tokenizer.batch_decode(new_tokens,
                                                                                       skip_special_tokens=True))
        result.prompt_tokens.extend(int(n) for n in enc["attention_mask"].sum(dim=1))
        result.answer_tokens.extend(tokens_before_end(row.tolist(), stops) for row in new_tokens)
        result.first_token_margin.extend(margin.margins or [])
    return result


def without_cut_character(answer: str) -> str:
    """The decoded answer stripped, less the U+FFFD a byte-level tokenizer decodes when the token limit stops the
    answer inside a character (CJK, Arabic, emoji are several tokens each): the report showed `…アニューグ�`."""
    return answer.strip().rstrip("\ufffd").rstrip()


def tokens_before_end(tokens: list[int], stop_ids: int | list[int] | None) -> int:
    """Generated tokens up to (not counting) the first end-of-sequence token (any of `stop_ids`)."""
    stops = set(stop_ids if isinstance(stop_ids, list) else [stop_ids])
    return next((index for index, token in enumerate(tokens) if token in stops), len(tokens))


IGNORE_INDEX = -100  # PyTorch cross-entropy's ignore_index: positions that carry no loss


def pad_right(batch: list[dict], pad_id: int) -> tuple[Any, Any, Any]:
    """Encoded rows (`input_ids`, `labels`) as right-padded (ids, labels, attention mask) tensors of one width;
    padding carries IGNORE_INDEX labels."""
    import torch

    width = max(len(e["input_ids"]) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(e["input_ids"]), torch.tensor(e["labels"]), 1
    return ids, labels, mask


def _stderr_console():
    from rich.console import Console

    return Console(file=sys.stderr, emoji=False)
