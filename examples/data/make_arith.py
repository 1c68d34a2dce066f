"""Generate the bundled ``arith`` dataset: short arithmetic questions with exact integer answers.

Why this exists: GRPO needs a task whose answers a program can check. Sums, differences and products
of small numbers have one right integer each, so ``exact_match`` is a verifiable reward and the
held-out split scores the same way. Each question is asked only once across both splits.

Writes (deterministic, stdlib only)::

    arith/train.jsonl   320 rows {"prompt": "...", "completion": "<integer>"}
    arith/eval.jsonl     60 rows (no question shared with train)

Usage::

    python examples/data/make_arith.py
"""

import json
import random
from pathlib import Path

SEED = 4321
N_TRAIN = 320
N_EVAL = 60
OUT_DIR = Path(__file__).resolve().parent / "arith"
INSTRUCTION = "Answer with the number only."
OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def question(rng: random.Random) -> tuple[str, int]:
    """One question and its answer: sums and differences up to 99, products up to 12 x 12."""
    op = rng.choice(list(OPERATIONS))
    a, b = (rng.randint(2, 12), rng.randint(2, 12)) if op == "*" else (rng.randint(1, 99), rng.randint(1, 99))
    return f"What is {a} {op} {b}? {INSTRUCTION}", OPERATIONS[op](a, b)


def unique_questions(count: int, rng: random.Random) -> list[tuple[str, int]]:
    seen: dict[str, int] = {}
    while len(seen) < count:
        text, answer = question(rng)
        seen.setdefault(text, answer)
    return list(seen.items())


def write_rows(path: Path, rows: list[tuple[str, int]]) -> None:
    lines = [json.dumps({"prompt": text, "completion": str(answer)}) for text, answer in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    rows = unique_questions(N_TRAIN + N_EVAL, random.Random(SEED))
    OUT_DIR.mkdir(exist_ok=True)
    write_rows(OUT_DIR / "train.jsonl", rows[:N_TRAIN])
    write_rows(OUT_DIR / "eval.jsonl", rows[N_TRAIN:])
    print(f"wrote {N_TRAIN} train and {N_EVAL} eval rows to {OUT_DIR}")


if __name__ == "__main__":
    main()
