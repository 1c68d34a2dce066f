"""Replay prompts (`data.replay`): the bundled general set, or a user's file of prompts with optional answers.

The bundled set (`general.jsonl`) is built by examples/data/make_general.py; it holds prompts only, kept apart
from the forgetting probes, and the base model answers them at training time (train/replay.py).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from tunesmith.data.readers import read_jsonl
from tunesmith.errors import DataError

BUNDLED_REPLAY = Path(__file__).resolve().parent / "general.jsonl"
# The embedded models' own greedy answers to the bundled prompts, made once (examples/data/make_replay_answers.py)
SHIPPED_ANSWERS = Path(__file__).resolve().parent / "answers"


def shipped_answers(model_name: str, max_new_tokens: int) -> dict[str, str | None]:
    """prompt -> the embedded model `model_name`'s greedy fp32 answer (None: unfinished) to the bundled prompts,
    as shipped with tunesmith; {} when none is shipped for that model and answer length limit."""
    path = SHIPPED_ANSWERS / f"{model_name}.json"
    if not path.is_file():
        return {}
    shipped = json.loads(path.read_text(encoding="utf-8"))
    return shipped["answers"] if shipped.get("max_new_tokens") == max_new_tokens else {}


def load_replay_prompts(source: str, resolve: Any) -> list[dict[str, Any]]:
    """Rows of `{"prompt": str, "answer": str | None}` from `bundled` or a JSONL file (`resolve` turns a recipe path
    into an absolute one). Raises DataError naming the file and line of a row without a text `prompt`."""
    path = BUNDLED_REPLAY if source == "bundled" else resolve(source)
    if not path.is_file():
        raise DataError(f"data.replay.source: no such file {path}.",
                        "Give `bundled`, or a JSONL file of {\"prompt\": ..., \"answer\": ...} rows relative to the "
                        "recipe.")
    rows = []
    for record in read_jsonl(path):
        row = record.value
        if record.problem is not None:
            raise DataError(f"{record.where}: {record.problem.message}", record.problem.hint)
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise DataError(f"{record.where}: a replay row needs a text `prompt`.",
                            'Write rows like {"prompt": "Explain rain in one sentence.", "answer": "..."} '
                            "(leave out `answer` to have the base model answer).")
        answer = row.get("answer")
        if answer is not None and not isinstance(answer, str):
            raise DataError(f"{record.where}: `answer` must be text or left out.")
        rows.append({"prompt": row["prompt"], "answer": answer})
    if not rows:
        raise DataError(f"data.replay.source: {path} has no rows.")
    return rows


def replay_count(ratio: float, train_rows: int, available: int) -> int:
    """How many replay rows go beside `train_rows` training rows: round(ratio x train_rows), at most `available`."""
    return min(round(ratio * train_rows), available)


def pick_replay(rows: list[dict[str, Any]], count: int, seed: int) -> list[dict[str, Any]]:
    """A seeded sample of `count` rows, in the file's order (the same rows for the same seed)."""
    chosen = sorted(random.Random(seed).sample(range(len(rows)), count))
    return [rows[i] for i in chosen]


def as_messages(prompt: str, answer: str) -> dict[str, Any]:
    """One replay row in the canonical `messages` shape: a single user turn and its answer, no system prompt
    (the forgetting probes ask the same way)."""
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}
