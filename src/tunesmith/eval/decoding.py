"""What several eval modules share: batching with padding, greedy generation, summed log-probabilities, progress.

A leaf of `tunesmith.eval`: it imports no other eval module, so eval's modules depend on it without cycles.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from tunesmith.data.template import IGNORE_INDEX, prompt_turns, render, render_with_loss_mask
from tunesmith.models.generation import Generated, generate_from_prompts, pad_right, tokens_before_end
from tunesmith.scoring import THINK_CLOSE

__all__ = ["Generated", "generate_from_prompts", "pad_right", "tokens_before_end"]  # re-exported for eval's modules


def heldout_loss(model: Any, tokenizer: Any, rows: list[dict], max_length: int, batch_size: int) -> float:
    """Mean cross-entropy per assistant token (the tokens training puts loss on)."""
    encoded = [render_with_loss_mask(tokenizer, r["messages"], max_length, r.get("tools")) for r in rows]
    total, count = 0.0, 0
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start : start + batch_size]
        ids, labels, mask = pad_right(batch, tokenizer.pad_token_id)
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
        logits = logits[:, -ids.shape[1]:]  # prompt/p-tuning prepend virtual tokens' logits
        shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:].to(model.device)
        losses = torch.nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
            ignore_index=IGNORE_INDEX, reduction="sum")
        total += losses.item()
        count += int((shift_labels != IGNORE_INDEX).sum())
    return total / max(count, 1)


def prompt_texts(tokenizer: Any, rows: list[dict]) -> list[str]:
    """Each row's prompt turns (all but the last, the answer; a prompt-only row's prompt) rendered with the
    generation prompt."""
    return [render(tokenizer, prompt_turns(r), generation_prompt=True, tools=r.get("tools")) for r in rows]


AUTO_ANSWER_SLACK = 1.25  # eval.max_new_tokens auto: the longest reference answer x this + AUTO_ANSWER_EXTRA
AUTO_ANSWER_EXTRA = 8
AUTO_ANSWER_TOKENS = (16, 1024)  # ... kept within these bounds
AUTO_REASONING_TOKENS = 4096  # the upper bound where the references reason first (<think>...</think>)


def resolve_max_new_tokens(section: Any, tokenizer: Any, references: list[str]) -> dict[str, Any]:
    """Fill eval.max_new_tokens when it is `auto` (in place: generation reads it next) from the references' lengths
    in tokens (`data.template.expected_output`: a reasoning row's reasoning counts, the model writes it first), and
    say what it is and why (results.json `max_new_tokens`). An answer longer than every reference
    plus the slack cannot match one; an untuned base that rambles on would otherwise spend most of eval's time
    writing tokens no metric can use."""
    if section.max_new_tokens != "auto":
        return {"value": section.max_new_tokens, "why": "eval.max_new_tokens in the recipe"}
    section.max_new_tokens, why = auto_max_new_tokens(tokenizer, references)
    progress(f"max_new_tokens: {section.max_new_tokens} ({why})")
    return {"value": section.max_new_tokens, "why": why}


def sampled_answer_limit(recipe: Any) -> dict[str, Any]:
    """eval.max_new_tokens for held-out prompts without answers (no reference length to go by): as written, or under
    `auto` a GRPO run's method.max_completion_length, the longest answer training sampled (filled in place)."""
    section = recipe.eval
    if section.max_new_tokens != "auto":
        return {"value": section.max_new_tokens, "why": "eval.max_new_tokens in the recipe"}
    section.max_new_tokens = getattr(recipe.method, "max_completion_length", AUTO_ANSWER_TOKENS[1])
    why = "auto: prompts without answers are answered at the length training sampled (method.max_completion_length)"
    progress(f"max_new_tokens: {section.max_new_tokens} ({why})")
    return {"value": section.max_new_tokens, "why": why}


def auto_max_new_tokens(tokenizer: Any, references: list[str]) -> tuple[int, str]:
    """The answer length `auto` gives for these reference answers (the longest, in tokens, x AUTO_ANSWER_SLACK +
    AUTO_ANSWER_EXTRA, within AUTO_ANSWER_TOKENS, or up to AUTO_REASONING_TOKENS where they reason first), and why,
    in words."""
    longest = max((len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in references), default=0)
    low, high = AUTO_ANSWER_TOKENS
    reasoning = any(THINK_CLOSE in text for text in references)
    if reasoning:  # a reasoning cut off has no answer to score
        high = AUTO_REASONING_TOKENS
    value = min(high, max(low, round(longest * AUTO_ANSWER_SLACK) + AUTO_ANSWER_EXTRA))
    counted = " (their reasoning included: the model writes it before the answer)" if reasoning else ""
    return value, (f"auto: the longest of {len(references)} reference answers is {longest} tokens{counted} "
                   f"(x {AUTO_ANSWER_SLACK:g} + {AUTO_ANSWER_EXTRA}, within {low}-{high})")


def progress(message: str) -> None:
    """One line on stderr saying which slow step runs now (stdout stays free for --json)."""
    print(message, file=sys.stderr, flush=True)


LOGPROB_BATCH_TOKENS = 4096  # padded tokens per forward pass; its fp32 logits take this x vocabulary x 4 bytes


def sequence_logprobs(model: Any, encoded: list[dict], pad_id: int, batch_size: int) -> list[tuple[float, int]]:
    """(summed log-probability, token count) of each sequence's labelled tokens, in `encoded`'s order.

    Scored longest first, in batches of at most `batch_size` rows and LOGPROB_BATCH_TOKENS padded tokens (the fp32
    logits of 4,096 positions over SmolLM2's 49k vocabulary are 0.8 GB; a batch of 20 documents of 8k tokens would
    be 32 GB), with a progress bar on stderr."""
    from rich.progress import track

    from tunesmith.models.generation import _stderr_console

    order = sorted(range(len(encoded)), key=lambda index: -len(encoded[index]["input_ids"]))
    scores: list[tuple[float, int]] = [(0.0, 0)] * len(encoded)
    batches = token_batches([len(encoded[index]["input_ids"]) for index in order], batch_size, LOGPROB_BATCH_TOKENS)
    for positions in track(batches, description="scoring", console=_stderr_console(), transient=True):
        indices = [order[position] for position in positions]
        ids, labels, mask = pad_right([encoded[index] for index in indices], pad_id)
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
        logits = logits[:, -ids.shape[1]:-1].float()  # prompt/p-tuning prepend virtual tokens' logits
        targets = labels[:, 1:].to(model.device)
        keep = targets != IGNORE_INDEX
        token_logps = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        sums = (token_logps * keep).sum(dim=1)
        for index, total, count in zip(indices, sums, keep.sum(dim=1), strict=True):
            scores[index] = (float(total), int(count))
    return scores


def token_batches(lengths: list[int], max_rows: int, max_tokens: int) -> list[list[int]]:
    """Consecutive positions of `lengths` (longest first) grouped so that no batch has more than `max_rows` rows or
    more than `max_tokens` padded tokens (rows x its first, longest, row); a row longer than that goes alone."""
    batches: list[list[int]] = []
    for position in range(len(lengths)):
        current = batches[-1] if batches else None
        if current is None or len(current) >= max_rows or (len(current) + 1) * lengths[current[0]] > max_tokens:
            batches.append([position])
        else:
            current.append(position)
    return batches


def encode_document(tokenizer: Any, text: str, max_length: int) -> dict[str, list[int]]:
    """The document and its end-of-text token, as training saw it, cut at `max_length` tokens; every token is
    scored."""
    return document_windows(tokenizer, text, max_length)[0]


def document_windows(tokenizer: Any, text: str, max_length: int) -> list[dict[str, list[int]]]:
    """The document and its end-of-text token in consecutive windows of at most `max_length` tokens, each scored on
    its own (no context carried between them), as continued pre-training packs text into blocks of that length:
    all of a long document is scored, not only its first `max_length` tokens."""
    ids = tokenizer(text + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    return [{"input_ids": ids[start:start + max_length], "labels": ids[start:start + max_length]}
            for start in range(0, max(len(ids), 1), max_length)]
