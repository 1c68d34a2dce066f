"""Generate the bundled ``number_prompts`` dataset: arithmetic questions without answers, for GRPO on prompts alone.

Why this exists: GRPO samples its own answers, so prompts are enough when a reward can judge an answer from the
prompt itself. `recipes/rewards/arithmetic.py` computes the result each question asks for, so the rows carry no
answer. Training and held-out prompts ask "What is a + b?" (as ``arith``, another seed, no answers); the second
held-out file asks in other words ("Add 23 and 83.", "Subtract 5 from 40.", "What is the product of 6 and 9?"),
so what the tuned model learnt can be checked on phrasings it never trained on.

Writes (deterministic, stdlib only)::

    number_prompts/train.jsonl             240 rows {"prompt": "What is 23 + 83? Answer with the number only."}
    number_prompts/eval.jsonl               40 rows (no question shared with train)
    number_prompts/heldout_phrasings.jsonl  40 rows {"prompt": "Subtract 5 from 40. Answer with the number only."}

Usage::

    python examples/data/make_number_prompts.py
"""

import json
import random
from pathlib import Path

from make_arith import INSTRUCTION, unique_questions

SEED = 8642
N_TRAIN = 240
N_EVAL = 40
N_PHRASINGS = 40
OUT_DIR = Path(__file__).resolve().parent / "number_prompts"
PHRASINGS = ["Add {a} and {b}.", "What is the sum of {a} and {b}?", "Subtract {b} from {a}.",
             "Take {b} away from {a}.", "Multiply {s} by {t}.", "What is the product of {s} and {t}?"]


def other_phrasings(count: int, rng: random.Random) -> list[str]:
    """Sums and differences up to 99, products up to 12 x 12, asked in words the training prompts never use."""
    seen: list[str] = []
    while len(seen) < count:
        text = rng.choice(PHRASINGS).format(a=rng.randint(1, 99), b=rng.randint(1, 99), s=rng.randint(2, 12),
                                            t=rng.randint(2, 12))
        if text not in seen:
            seen.append(text)
    return [f"{text} {INSTRUCTION}" for text in seen]


def write_prompts(path: Path, prompts: list[str]) -> None:
    path.write_text("".join(json.dumps({"prompt": text}) + "\n" for text in prompts), encoding="utf-8")


def main() -> None:
    rng = random.Random(SEED)
    questions = [text for text, _ in unique_questions(N_TRAIN + N_EVAL, rng)]
    OUT_DIR.mkdir(exist_ok=True)
    write_prompts(OUT_DIR / "train.jsonl", questions[:N_TRAIN])
    write_prompts(OUT_DIR / "eval.jsonl", questions[N_TRAIN:])
    write_prompts(OUT_DIR / "heldout_phrasings.jsonl", other_phrasings(N_PHRASINGS, rng))
    print(f"wrote {N_TRAIN} train, {N_EVAL} eval and {N_PHRASINGS} held-out prompts in other words to {OUT_DIR}")


if __name__ == "__main__":
    main()
