"""Held-out perplexity of base and tuned on raw text: what continued pre-training is meant to lower."""

from __future__ import annotations

import math
from typing import Any

import torch

from tunesmith.config import Recipe
from tunesmith.eval.decoding import document_windows, progress, sequence_logprobs
from tunesmith.models.tuned import Variant


def perplexity_results(variants: dict[str, Variant], tokenizer: Any, recipe: Recipe,
                       rows: list[dict]) -> dict[str, Any]:
    """Mean loss per token and perplexity over the held-out documents (`rows`), each scored on its own in windows of
    data.max_length tokens (`document_windows`: all of it, as training packs it), for every (model, context)
    variant."""
    encoded = [window for row in rows for window in document_windows(tokenizer, row["text"], recipe.data.max_length)]
    progress(f"perplexity: {len(rows)} held-out documents, {sum(len(e['input_ids']) for e in encoded):,} tokens in "
             f"windows of up to {recipe.data.max_length}, for {' and '.join(variants)}")
    results: dict[str, Any] = {"examples": len(rows), "task_metric": "perplexity"}
    for name, (model, context) in variants.items():
        with context(), torch.no_grad():
            scores = sequence_logprobs(model, encoded, tokenizer.pad_token_id, recipe.eval.batch_size)
        loss = -sum(total for total, _ in scores) / max(sum(count for _, count in scores), 1)
        results[name] = {"loss": round(loss, 4), "perplexity": round(math.exp(min(loss, 50)), 3)}
    return results


