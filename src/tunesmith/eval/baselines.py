"""Do you need to fine-tune at all? The cheaper alternatives, scored on the same held-out rows as the tuned model.

The ladder the guides teach (prompt first, then structured output, then fine-tune; e.g. OpenAI's and Anthropic's
prompt-engineering guides, and Brown et al. 2020, "Language Models are Few-Shot Learners", for few-shot prompting):

- `zero_shot`: the base model with the row's prompt as it is (eval's `base` column);
- `few_shot`: `eval.few_shot_k` training examples put in front of the prompt as earlier chat turns, the same ones for
  every prompt (`seeded`, drawn with training.seed) or the most similar to each prompt (`similar`: the training
  prompts sharing the most words, Jaccard similarity of word sets; Liu et al. 2022, "What Makes Good In-Context
  Examples for GPT-3?", pick neighbours the same way with embeddings). A training row whose prompt is also an
  eval prompt is never used, so no example gives an answer away;
- `constrained`: the base model decoding only answers of the task's structure (eval/constrained.py);
- `few_shot_constrained`: both.

Each is timed, and its prompt and answer lengths are counted: few-shot prompts cost tokens on every request.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from statistics import fmean
from typing import Any

from tunesmith.config import Recipe
from tunesmith.data.constraint import Constraint
from tunesmith.data.shapes import Row
from tunesmith.eval.constrained import processor_factory
from tunesmith.eval.decoding import Generated, generate_from_prompts, progress, prompt_texts

BASELINES = ("zero_shot", "few_shot", "constrained", "few_shot_constrained")
# Cheapest first: no training and no extra prompt tokens, then structure only, then examples, then both.
COST_ORDER = ("zero_shot", "constrained", "few_shot", "few_shot_constrained", "tuned")
WORD = re.compile(r"\w+")


def prompt_text(row: Row) -> str:
    """The text a row asks: its non-system turns before the answer, joined."""
    return "\n".join(str(m.get("content") or "") for m in row["messages"][:-1] if m.get("role") != "system")


def few_shot_pool(train_rows: list[Row], eval_rows: list[Row]) -> list[Row]:
    """The training rows that may serve as examples: conversations ending in an answer whose prompt is not one of
    the eval prompts (a duplicate across the split would hand the model the reference answer)."""
    asked = {prompt_text(row) for row in eval_rows}
    return [row for row in train_rows
            if row.get("messages") and row["messages"][-1].get("role") == "assistant" and prompt_text(row) not in asked]


def words(text: str) -> frozenset[str]:
    return frozenset(WORD.findall(text.lower()))


def pick_examples(pool: list[Row], rows: list[Row], k: int, select: str, seed: int) -> list[list[Row]]:
    """For each row, the k examples in front of its prompt: one seeded draw shared by every row, or (`similar`) each
    row's k nearest training prompts by Jaccard similarity of lower-cased word sets (ties: training order)."""
    k = min(k, len(pool))
    if select == "seeded":
        shared = random.Random(seed).sample(pool, k)
        return [shared for _ in rows]
    pool_words = [words(prompt_text(example)) for example in pool]

    def nearest(row: Row) -> list[Row]:
        asked = words(prompt_text(row))
        similarity = [len(asked & seen) / max(len(asked | seen), 1) for seen in pool_words]
        order = sorted(range(len(pool)), key=lambda i: -similarity[i])
        return [pool[i] for i in order[:k]]

    return [nearest(row) for row in rows]


def with_examples(row: Row, examples: list[Row]) -> Row:
    """The row with the examples' turns (each example's system turn left out) between its system turn and its
    own turns; the answer stays last, as scoring expects."""
    system = [m for m in row["messages"][:1] if m.get("role") == "system"]
    shots = [m for example in examples for m in example["messages"] if m.get("role") != "system"]
    own = [m for m in row["messages"] if m.get("role") != "system"]
    return {**row, "messages": system + shots + own}


@dataclass(frozen=True)
class BaselinePlan:
    """What the baselines need besides the model: the training rows (few-shot examples) and the constraint."""

    names: list[str]
    train_rows: list[Row]
    constraint: Constraint | None


def run_baseline(name: str, model: Any, tokenizer: Any, rows: list[Row], recipe: Recipe, plan: BaselinePlan,
                 context: Callable[[], AbstractContextManager]) -> tuple[dict[str, Any], list[str]]:
    """One baseline's answers and its cost: seconds, seconds per answer, mean prompt and answer tokens (and k)."""
    import torch

    asked = rows
    summary: dict[str, Any] = {}
    if name.startswith("few_shot"):
        pool = few_shot_pool(plan.train_rows, rows)
        chosen = pick_examples(pool, rows, recipe.eval.few_shot_k, recipe.eval.few_shot_select, recipe.training.seed)
        asked = [with_examples(row, examples) for row, examples in zip(rows, chosen, strict=True)]
        summary["few_shot_k"] = min(recipe.eval.few_shot_k, len(pool))
    processor = processor_factory(plan.constraint, tokenizer, model) if name.endswith("constrained") else None
    progress(f"baseline {name}: {len(rows)} answers")
    started = time.monotonic()
    with context(), torch.no_grad():
        generated = generate_from_prompts(model, tokenizer, prompt_texts(tokenizer, asked),
                                          recipe.eval.max_new_tokens, recipe.eval.batch_size, processor)
    summary.update(generation_cost(generated, time.monotonic() - started))
    return summary, generated.answers


def generation_cost(generated: Generated, seconds: float) -> dict[str, float]:
    """seconds (total), seconds_per_answer, prompt_tokens and answer_tokens (means per answer)."""
    count = max(len(generated.answers), 1)
    return {"seconds": round(seconds, 1), "seconds_per_answer": round(seconds / count, 3),
            "prompt_tokens": round(fmean(generated.prompt_tokens or [0]), 1),
            "answer_tokens": round(fmean(generated.answer_tokens or [0]), 1)}
