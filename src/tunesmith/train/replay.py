"""Replay rows for supervised training (`data.replay`): general prompts answered by the base model itself.

Before the trainer wraps the model, the base answers the sampled prompts greedily; answers it does not finish
within `max_new_tokens` are left out (training them cut would teach stopping mid-sentence). The rows are
saved as data/replay.jsonl, recorded in run.json's train stage, and mixed into the training rows.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from tunesmith.config import Recipe
from tunesmith.data.replay import as_messages, load_replay_prompts, pick_replay, replay_count
from tunesmith.data.template import render
from tunesmith.manifest import RowsFile
from tunesmith.models.generation import generate_from_prompts
from tunesmith.runs import Run, save_rows


@dataclass
class Replay:
    """The replay rows as trained, their file in the run, and what data.json / train.json say about them."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    file: RowsFile | None = None
    report: dict[str, Any] = field(default_factory=dict)


def build_replay(recipe: Recipe, run: Run, model: Any, tokenizer: Any, train_rows: int) -> Replay:
    """Sample round(ratio x train_rows) replay prompts, answer those without an answer with `model` (the base,
    before any adapter), and save the finished rows. An empty Replay when data.replay.ratio is 0."""
    settings = recipe.data.replay
    if settings.ratio == 0:
        return Replay()
    prompts = load_replay_prompts(settings.source, recipe.resolve_path)
    count = replay_count(settings.ratio, train_rows, len(prompts))
    chosen = pick_replay(prompts, count, recipe.training.seed)
    started = time.monotonic()
    answers, unfinished = base_answers(model, tokenizer, [r for r in chosen if r["answer"] is None],
                                       settings.max_new_tokens, recipe.eval.batch_size)
    rows = [as_messages(r["prompt"], r["answer"] if r["answer"] is not None else answers.pop(0)) for r in chosen]
    rows = [row for row in rows if row["messages"][1]["content"] is not None]
    report = {"source": settings.source, "ratio": settings.ratio, "wanted": round(settings.ratio * train_rows),
              "available": len(prompts), "rows": len(rows), "left_out_unfinished": unfinished,
              "answered_by_base": count - sum(r["answer"] is not None for r in chosen),
              "seconds": round(time.monotonic() - started, 1)}
    print(f"replay: {len(rows)} general rows beside {train_rows} training rows ({report['answered_by_base']} "
          f"answered by the base model in {report['seconds']} s; {unfinished} unfinished left out)",
          file=sys.stderr, flush=True)
    return Replay(rows, save_rows(run, "replay", rows) if rows else None, report)


def base_answers(model: Any, tokenizer: Any, rows: list[dict[str, Any]], max_new_tokens: int,
                 batch_size: int) -> tuple[list[str | None], int]:
    """The model's greedy answer to each prompt as a single user turn; None where it did not stop within
    `max_new_tokens` (or answered nothing). Returns the answers and how many are None."""
    if not rows:
        return [], 0
    import torch

    prompts = [render(tokenizer, [{"role": "user", "content": r["prompt"]}], generation_prompt=True) for r in rows]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        generated = generate_from_prompts(model, tokenizer, prompts, max_new_tokens, batch_size)
    model.train(was_training)
    answers = [text if used < max_new_tokens and text else None
               for text, used in zip(generated.answers, generated.answer_tokens, strict=True)]
    return answers, sum(a is None for a in answers)
