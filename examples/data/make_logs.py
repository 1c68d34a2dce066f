"""Generate the bundled ``logs`` dataset: a service log of 22 lines, and which service logged the first ERROR.

Why this exists: rows longer than 512 tokens with their answer at the end, the case a fixed `data.max_length: 512`
silently left out of training (every row's answer lay past the cut) and `data.max_length: auto` keeps. Each log
mixes INFO, DEBUG and WARN lines from six services; one or two ERROR lines come late (after line 12), and the
answer is the service of the first. With SmolLM2's tokenizer a row is ~800 tokens.

Writes (deterministic, stdlib only)::

    logs/train.jsonl   48 rows {"messages": [user: instruction + log, assistant: service]}
    logs/eval.jsonl    16 rows

Usage::

    python examples/data/make_logs.py
"""

import json
import random
from pathlib import Path

SEED = 2026
N_TRAIN = 48
N_EVAL = 16
LINES = 22
FIRST_ERROR_AFTER = 12
OUT_DIR = Path(__file__).resolve().parent / "logs"
INSTRUCTION = "Here is a service log. Which service logged the first ERROR? Answer with the service name only."

SERVICES = ["billing", "search", "checkout", "inventory", "auth", "mailer"]
ROUTINE = {
    "INFO": ["request {rid} served in {ms} ms", "cache warmed with {n} keys", "health check passed",
             "worker {n} started", "config reloaded from disk", "user session {rid} renewed"],
    "DEBUG": ["retry budget at {n} of 10", "queue depth {n}", "pool has {n} idle connections",
              "span {rid} closed after {ms} ms"],
    "WARN": ["slow query took {ms} ms", "disk usage at {n} percent", "rate limit near for client {rid}",
             "certificate expires in {n} days"],
}
ERRORS = ["connection refused by database at 10.0.{n}.7", "timeout after {ms} ms waiting for upstream",
          "unhandled exception in handler {rid}", "payment provider answered 502 for order {rid}",
          "out of memory while building index {n}"]


def line(draw: random.Random, second: int, service: str, level: str, templates: list[str]) -> str:
    text = draw.choice(templates).format(rid=f"{draw.randrange(16**6):06x}", ms=draw.randint(3, 4000),
                                         n=draw.randint(1, 99))
    return f"2026-11-{draw.randint(1, 28):02d}T10:{second // 60:02d}:{second % 60:02d}Z {level:<5} [{service}] {text}"


def make_row(draw: random.Random) -> dict:
    """One log and its answer: the service of the first ERROR line."""
    first_error = draw.randint(FIRST_ERROR_AFTER, LINES - 3)
    culprit = draw.choice(SERVICES)
    later = {draw.randint(first_error + 1, LINES - 1)} if draw.random() < 0.5 else set()
    lines = []
    for index in range(LINES):
        second = index * 7 + draw.randint(0, 6)
        if index == first_error:
            lines.append(line(draw, second, culprit, "ERROR", ERRORS))
        elif index in later:
            lines.append(line(draw, second, draw.choice([s for s in SERVICES if s != culprit]), "ERROR", ERRORS))
        else:
            level = draw.choices(["INFO", "DEBUG", "WARN"], weights=[6, 3, 2])[0]
            lines.append(line(draw, second, draw.choice(SERVICES), level, ROUTINE[level]))
    prompt = INSTRUCTION + "\n\n" + "\n".join(lines)
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": culprit}]}


def main() -> None:
    draw = random.Random(SEED)
    OUT_DIR.mkdir(exist_ok=True)
    for name, count in (("train.jsonl", N_TRAIN), ("eval.jsonl", N_EVAL)):
        rows = [make_row(draw) for _ in range(count)]
        (OUT_DIR / name).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        print(f"{OUT_DIR / name}: {count} rows")


if __name__ == "__main__":
    main()
