"""Held-out perplexity of base and tuned on raw text: what continued pre-training is meant to lower."""

from __future__ import annotations

import math
from typing import Any

import torch

from tunesmith.config import Recipe
from tunesmith.eval.decoding import encode_document, progress, sequence_logprobs
from tunesmith.models.tuned import Variant


def perplexity_results(variants: dict[str, Variant], tokenizer: Any, recipe: Recipe,
                       rows: list[dict]) -> dict[str, Any]:
    """Mean loss per token and perplexity over the held-out documents (`rows`), each scored on its own, for
    every (model, context) variant."""
    encoded = [encode_document(tokenizer, row["text"], recipe.data.max_length) for row in rows]
    progress(f"perplexity: {len(rows)} held-out documents, {sum(len(e['input_ids']) for e in encoded):,} tokens, "
             f"for {' and '.join(variants)}")
    results: dict[str, Any] = {"examples": len(rows), "task_metric": "perplexity"}
    for name, (model, context) in variants.items():
        with context(), torch.no_grad():
            scores = sequence_logprobs(model, encoded, tokenizer.pad_token_id, recipe.eval.batch_size)
        loss = -sum(total for total, _ in scores) / max(sum(count for _, count in scores), 1)
        results[name] = {"loss": round(loss, 4), "perplexity": round(math.exp(min(loss, 50)), 3)}
    return results


