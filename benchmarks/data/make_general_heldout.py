"""A second forgetting check, of kinds that neither the bundled probes nor the replay prompts contain.

Replay (`data.replay`) is tuned against nothing, but the bundled probes are what issue 19 was measured on, so
this set checks the same claim on other ground: opposites, plurals, what comes next in a sequence, animal
sounds, colours of things and what kind of animal something is. Same row format as the probes (prompt,
check, answer, category), so `eval.probe_file` can point at it. Written by hand for tunesmith (stdlib only,
no randomness).

    python benchmarks/data/make_general_heldout.py   # writes benchmarks/data/general_heldout.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent / "general_heldout.jsonl"

OPPOSITES = [("hot", "cold"), ("big", "small"), ("up", "down"), ("happy", "sad"), ("fast", "slow"),
             ("day", "night"), ("open", "close"), ("full", "empty")]
PLURALS = [("mouse", "mice"), ("child", "children"), ("foot", "feet"), ("tooth", "teeth"), ("box", "boxes"),
           ("city", "cities")]
NEXT = [("What day comes after Monday?", "Tuesday"), ("What day comes after Friday?", "Saturday"),
        ("Which month comes after March?", "April"), ("Which month comes after November?", "December"),
        ("What letter comes after B in the alphabet?", "C"), ("What season comes after winter?", "spring")]
SOUNDS = [("cow", "moo"), ("dog", "(woof|bark)"), ("cat", "meow"), ("duck", "quack"), ("sheep", "baa")]
COLOURS = [("a ripe banana", "yellow"), ("grass", "green"), ("snow", "white"), ("a ripe tomato", "red"),
           ("coal", "black")]
KINDS = [("a whale", "mammal", "fish"), ("a shark", "fish", "mammal"), ("an eagle", "bird", "reptile"),
         ("a snake", "reptile", "bird"), ("a frog", "amphibian", "mammal")]


def heldout_rows() -> list[dict]:
    rows = []
    rows += [{"category": "opposite", "prompt": f"What is the opposite of '{w}'? Answer with one word.",
              "check": "contains", "answer": a} for w, a in OPPOSITES]
    rows += [{"category": "plural", "prompt": f"What is the plural of '{w}'? Answer with one word.",
              "check": "contains", "answer": a} for w, a in PLURALS]
    rows += [{"category": "sequence", "prompt": f"{q} Answer with one word.", "check": "contains", "answer": a}
             for q, a in NEXT]
    rows += [{"category": "sound", "prompt": f"What sound does a {animal} make? Answer with one word.",
              "check": "regex", "answer": f"(?i){sound}"} for animal, sound in SOUNDS]
    rows += [{"category": "colour", "prompt": f"What colour is {thing}? Answer with one word.",
              "check": "contains", "answer": colour} for thing, colour in COLOURS]
    rows += [{"category": "kind", "prompt": f"Is {animal} a {wrong} or a {right}? Answer with one word.",
              "check": "contains", "answer": right} for animal, right, wrong in KINDS]
    return [{"id": f"{r['category']}-{i:02d}", **r} for i, r in enumerate(rows)]


if __name__ == "__main__":
    rows = heldout_rows()
    OUT.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} rows -> {OUT}")
