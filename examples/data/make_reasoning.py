"""Generate two small datasets of answers with reasoning before them: `totals/` and `clock/`.

Why this exists: a reasoning row trains the thinking and the answer; eval must score only the answer after it.
The two kinds are written the two ways reasoning data comes:

- `totals/`: a shopping sum (two items, a count and a price each) -> the total; the reasoning works out each
  item's cost and adds them. Reasoning in a `reasoning_content` field (DeepSeek's API, Qwen3's template).
  The kind `tunesmith`'s reasoning support was developed on.
- `clock/`: a start time and a duration in minutes -> the time it ends; the reasoning splits the minutes into
  hours and minutes and adds them, carrying past the hour. Reasoning as a leading `<think>` block of the content
  (DeepSeek-R1's and Open-R1's data). The held-out kind, never used to choose a setting.

Each kind also has a `plain/` copy of its training rows with the reasoning left out (the same answers), to compare
training with and without it. No question is in two splits of a kind.

Writes (deterministic, stdlib only)::

    totals/train.jsonl 400 rows, totals/eval.jsonl 60, totals/plain/train.jsonl 400
    clock/train.jsonl  400 rows, clock/eval.jsonl  60, clock/plain/train.jsonl  400

Usage::

    python examples/data/make_reasoning.py
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

SEED = 2718
N_TRAIN = 400
N_EVAL = 60
OUT_DIR = Path(__file__).resolve().parent
NAMES = ["Ann", "Ben", "Chloe", "Dev", "Ema", "Femi", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea", "Mo", "Nia", "Oto"]
ITEMS = [("notebook", "notebooks"), ("pen", "pens"), ("mug", "mugs"), ("plate", "plates"), ("candle", "candles"),
         ("towel", "towels"), ("lamp", "lamps"), ("cup", "cups"), ("bowl", "bowls"), ("card", "cards")]
EVENTS = ["film", "meeting", "lesson", "match", "concert", "train ride", "workshop", "bake", "hike", "talk"]

Row = tuple[str, str, str]  # question, reasoning, answer


def total_row(rng: random.Random) -> Row:
    (one, many), (other, others) = rng.sample(ITEMS, 2)
    count_a, count_b = rng.randint(2, 9), rng.randint(2, 9)
    price_a, price_b = rng.randint(2, 12), rng.randint(2, 12)
    name = rng.choice(NAMES)
    question = (f"{name} buys {count_a} {many} at {price_a} euros each and {count_b} {others} at {price_b} euros "
                "each. How much does that cost in total?")
    cost_a, cost_b = count_a * price_a, count_b * price_b
    reasoning = (f"{count_a} {many} x {price_a} euros = {cost_a} euros. {count_b} {others} x {price_b} euros = "
                 f"{cost_b} euros. {cost_a} + {cost_b} = {cost_a + cost_b}.")
    return question, reasoning, f"{cost_a + cost_b} euros"


def clock_row(rng: random.Random) -> Row:
    hour, minute = rng.randint(7, 20), rng.choice(range(0, 60, 5))
    duration = rng.choice(range(35, 180, 5))
    event = rng.choice(EVENTS)
    question = f"A {event} starts at {hour:02d}:{minute:02d} and lasts {duration} minutes. When does it end?"
    hours, minutes = divmod(duration, 60)
    end_hour, end_minute = hour + hours + (minute + minutes) // 60, (minute + minutes) % 60
    carry = (f"{minute} + {minutes} = {minute + minutes} minutes, which is 1 hour {minute + minutes - 60} minutes."
             if minute + minutes >= 60 else f"{minute} + {minutes} = {minute + minutes} minutes.")
    reasoning = (f"{duration} minutes is {hours} hour(s) and {minutes} minutes. {carry} "
                 f"{hour:02d}:{minute:02d} plus {duration} minutes is {end_hour:02d}:{end_minute:02d}.")
    return question, reasoning, f"{end_hour:02d}:{end_minute:02d}"


def unique_rows(make: Callable[[random.Random], Row], rng: random.Random, count: int) -> list[Row]:
    rows: dict[str, Row] = {}
    while len(rows) < count:
        row = make(rng)
        rows.setdefault(row[0], row)
    return list(rows.values())


def with_field(row: Row) -> dict:
    question, reasoning, answer = row
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": answer, "reasoning_content": reasoning}]}


def with_think_block(row: Row) -> dict:
    question, reasoning, answer = row
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": f"<think>\n{reasoning}\n</think>\n\n{answer}"}]}


def without_reasoning(row: Row) -> dict:
    question, _, answer = row
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def main() -> None:
    rng = random.Random(SEED)
    for name, make, shape in (("totals", total_row, with_field), ("clock", clock_row, with_think_block)):
        rows = unique_rows(make, rng, N_TRAIN + N_EVAL)
        train, held_out = rows[:N_TRAIN], rows[N_TRAIN:]
        write(OUT_DIR / name / "train.jsonl", [shape(row) for row in train])
        write(OUT_DIR / name / "eval.jsonl", [shape(row) for row in held_out])
        write(OUT_DIR / name / "plain" / "train.jsonl", [without_reasoning(row) for row in train])
        print(f"{name}: {len(train)} train, {len(held_out)} eval rows")


if __name__ == "__main__":
    main()
