"""Write benchmarks/data/tone/{train,eval}.jsonl: preference pairs on the tone of a support reply, written as plain
strings (`prompt`, `chosen`, `rejected`), the shape that trained outside the chat template before the data stage
turned such rows into chat rows. Support tickets, unlike the bundled order-to-JSON pairs.

    .venv/bin/python benchmarks/data/make_tone_pairs.py
    .venv/bin/tunesmith train benchmarks/data/tone_dpo.yaml --evaluate
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ASKS = ["Can you help me reset my password?", "My order is late.", "How do I cancel my subscription?",
        "The app crashes on start.", "Can I get a refund?", "Where is my invoice?", "I forgot my username.",
        "How do I change my email?", "The checkout page shows an error.", "Can I move my plan to another account?"]
KIND = ["Thanks for reaching out! I'm happy to help with that.", "Sorry about the trouble, let's sort it out together.",
        "Thank you for your patience, here is what we can do.", "Good question! I can walk you through it."]
CURT = ["Whatever. Read the docs yourself.", "Not my problem.", "Figure it out.", "We don't do that. Bye."]


def pair(rng: random.Random) -> dict[str, str]:
    ask = f"{rng.choice(ASKS)} (ticket {rng.randint(100, 999)})"
    return {"prompt": ask, "chosen": rng.choice(KIND), "rejected": rng.choice(CURT)}


def main() -> None:
    rng = random.Random(7)
    folder = Path(__file__).resolve().parent / "tone"
    folder.mkdir(exist_ok=True)
    for name, count in (("train", 48), ("eval", 16)):
        rows = [pair(rng) for _ in range(count)]
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


if __name__ == "__main__":
    main()
