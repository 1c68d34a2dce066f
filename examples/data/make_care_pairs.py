"""Generate the ``care_pairs`` preference dataset: questions about looking after things, a full answer chosen
over a curt, unhelpful one.

Why this exists: the bundled ``prefs`` pairs differ in one JSON field, so chosen and rejected are about as long.
Preference data people bring is mostly the other kind (helpful-vs-unhelpful, as Anthropic HH and UltraFeedback):
the chosen answer is a few sentences, the rejected one a few words. Summed over its tokens, the longer answer is
the less likely one under any model, which is what made eval's preference accuracy read 0 for base and tuned
alike on a newcomer's data. This set is the held-out kind for that claim, never used to choose a setting.

Each pair: a question built from a subject (a bicycle, a cast-iron pan, a wool coat, ...) and a concern (cleaning,
storing, a fault), the chosen answer two or three sentences of concrete steps written per concern, the rejected
answer one of a list of curt dismissals. Seed 1357, stdlib only.

Writes (deterministic)::

    care_pairs/train.jsonl   160 pairs {"prompt", "chosen", "rejected"} (plain strings)
    care_pairs/eval.jsonl     40 pairs, no subject-and-concern question shared with train

Usage::

    python examples/data/make_care_pairs.py            # writes care_pairs/*.jsonl
    python examples/data/make_care_pairs.py --show 3   # ... and prints 3 sample pairs
"""

import argparse
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "care_pairs"
SEED = 1357

SUBJECTS = {
    "bicycle": ("chain", "frame", "a dry shed"),
    "cast-iron pan": ("surface", "handle", "a dry cupboard"),
    "wool coat": ("fabric", "lining", "a breathable garment bag"),
    "leather boots": ("leather", "soles", "a cool, airy cupboard"),
    "wooden cutting board": ("wood", "edges", "an upright rack"),
    "acoustic guitar": ("strings", "body", "its case, away from radiators"),
    "kayak": ("hull", "seat", "a rack, hull side up, out of the sun"),
    "sourdough starter": ("jar", "flour mix", "the fridge between bakes"),
    "electric kettle": ("element", "spout", "a dry counter, unplugged"),
    "tent": ("fly sheet", "poles", "a loose sack, fully dry"),
}
CONCERNS = {
    "clean": ("How should I clean my {s}?",
              "Start by removing loose dirt from the {a} with a soft brush. Then wipe it with a damp cloth and a "
              "little mild soap, paying attention to the {b}, and let it dry completely before you put it away."),
    "store": ("What is the best way to store a {s} over the winter?",
              "Clean and dry the {s} first so nothing is sealed in with it. Keep it in {c}, check the {a} once a "
              "month, and avoid places where the temperature swings a lot."),
    "smell": ("My {s} has started to smell musty. What can I do?",
              "A musty smell usually means moisture got trapped. Air the {s} outside on a dry day, clean the {a} "
              "gently, and let everything dry fully; keep it in {c} afterwards so it does not come back."),
    "crack": ("I noticed a small crack near the {b} of my {s}. Is it still safe to use?",
              "Stop using it until you have looked closely: a crack near the {b} can spread under load or heat. "
              "Photograph it, check whether it grows over a few days, and ask a repair shop before relying on it."),
    "often": ("How often does a {s} need maintenance?",
              "A quick check after every few uses is enough for most people: look over the {a} and the {b}. Once "
              "a season, give it a proper clean and inspection, and fix small problems before they grow."),
}
CURT = ["Just buy a new one.", "Don't bother.", "It doesn't matter.", "Ask someone else.", "No idea, google it.",
        "Whatever works.", "Throw it away.", "That's not important."]


def pairs() -> list[dict[str, str]]:
    """Every subject-and-concern question with its full answer chosen over a curt one, in a shuffled order."""
    rng = random.Random(SEED)
    rows = []
    for subject, (part_a, part_b, place) in SUBJECTS.items():
        for question, answer in CONCERNS.values():
            fill = {"s": subject, "a": part_a, "b": part_b, "c": place}
            for curt in rng.sample(CURT, 4):  # the same question with four different curt rejections: 200 pairs
                rows.append({"prompt": question.format(**fill), "chosen": answer.format(**fill), "rejected": curt})
    rng.shuffle(rows)
    return rows


def split(rows: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """40 held-out pairs whose questions are not in train (a question's four pairs stay together)."""
    questions = sorted({row["prompt"] for row in rows})
    held = set(random.Random(SEED + 1).sample(questions, 10))
    return [r for r in rows if r["prompt"] not in held], [r for r in rows if r["prompt"] in held]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--show", type=int, default=0, help="print this many sample pairs")
    args = parser.parse_args()
    train, held = split(pairs())
    OUT.mkdir(exist_ok=True)
    for name, rows in (("train", train), ("eval", held)):
        (OUT / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    print(f"wrote {len(train)} train and {len(held)} eval pairs to {OUT}")
    for row in train[: args.show]:
        print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
