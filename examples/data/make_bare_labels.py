"""Generate two classification datasets whose prompts are the bare input, with no instruction and no label list.

Why this exists: many users' first dataset is a column of texts and a column of labels. Trained on it as is,
a model learns that *any* message is answered with one of the labels ("Repeat after me: The cat sat on the
mat." -> "negative"), which the forgetting probes catch. tunesmith's data check names this shape before training
(README, "Keeping what the base could do": bare inputs). Two kinds, so a remedy chosen on one is checked on
the other:

- ``weather/``: a sentence describing the weather -> sunny, rainy, snowy or windy, uneven (60/45/25/20 rows in
  train); the kind the remedy was developed on.
- ``reviews/``: a short product review -> positive, negative or mixed (50 each); the held-out kind, never used
  to choose a setting.

Rows are ``messages`` (user: the text alone, assistant: the label).

Every text appears once across both splits of its dataset. Deterministic, stdlib only::

    weather/train.jsonl  150 rows    weather/eval.jsonl  40 rows
    reviews/train.jsonl  150 rows    reviews/eval.jsonl  45 rows

Usage::

    python examples/data/make_bare_labels.py
"""

import json
import random
from collections.abc import Callable
from pathlib import Path

SEED = 1771
HERE = Path(__file__).resolve().parent

WEATHER = {
    "sunny": ["Not a cloud in the sky over {place} {when}.", "The sun is blazing {when} and {place} is bright.",
              "Clear blue skies {when}, perfect for a walk around {place}.", "{When} it is warm and bright in {place}.",
              "Sunglasses weather {when} in {place}.", "The sun came out early {when} and stayed all day in {place}."],
    "rainy": ["It has been pouring {when} in {place}.", "Puddles everywhere in {place} {when}, bring an umbrella.",
              "A steady drizzle over {place} {when}.", "{When} the rain hasn't stopped in {place}.",
              "Heavy showers are soaking {place} {when}."],
    "snowy": ["Snow is piling up on the roads of {place} {when}.", "Big flakes falling over {place} {when}.",
              "{When} {place} woke up under a white blanket.", "The kids are building snowmen in {place} {when}."],
    "windy": ["Strong gusts are bending the trees in {place} {when}.",
              "{When} the wind nearly took my hat off in {place}.", "A gale is blowing through {place} {when}.",
              "Bins rolling down the street in {place} {when}, what a gust."],
}
PLACES = ["the valley", "the harbour", "town", "the park", "our street", "the village", "the city centre",
          "the coast", "the hills", "the campsite", "the old town", "the lake"]
WHENS = ["today", "this morning", "this afternoon", "tonight", "all week", "since dawn", "right now"]
WEATHER_COUNTS = {"sunny": (60, 12), "rainy": (45, 12), "snowy": (25, 8), "windy": (20, 8)}

REVIEWS = {
    "positive": ["The {item} works perfectly and {good}.", "Really happy with this {item}: {good}.",
                 "Best {item} I have owned, {good}.", "Five stars. The {item} {good_verb}.",
                 "Would buy this {item} again, {good}."],
    "negative": ["The {item} broke after a week and {bad}.", "Very disappointed with this {item}: {bad}.",
                 "Avoid this {item}, {bad}.", "One star. The {item} {bad_verb}.",
                 "Sent the {item} back because {bad}."],
    "mixed": ["The {item} {good_verb}, but {bad}.", "Decent {item}: {good}, although {bad}.",
              "Some things I like about the {item}, {good}, yet {bad}.", "The {item} is okay; {good}, but {bad}."],
}
ITEMS = ["kettle", "backpack", "desk lamp", "blender", "phone case", "rain jacket", "toaster", "keyboard",
         "water bottle", "headphones"]
GOOD = ["it feels well made", "it arrived quickly", "it looks great", "the price was fair", "it is easy to clean"]
BAD = ["the lid leaks", "it is far too loud", "the strap snapped", "it stopped charging", "the colour faded fast"]
GOOD_VERB = ["does exactly what it promises", "feels sturdy", "looks lovely on the shelf"]
BAD_VERB = ["stopped working within days", "arrived scratched", "feels cheap"]
REVIEW_COUNTS = {"positive": (50, 15), "negative": (50, 15), "mixed": (50, 15)}


def weather_text(rng: random.Random, label: str) -> str:
    """One sentence describing `label`'s weather somewhere, some time."""
    when = rng.choice(WHENS)
    return rng.choice(WEATHER[label]).format(place=rng.choice(PLACES), when=when, When=when[0].upper() + when[1:])


def review_text(rng: random.Random, label: str) -> str:
    """One short review of an item, praising (positive), faulting (negative) or both (mixed)."""
    return rng.choice(REVIEWS[label]).format(item=rng.choice(ITEMS), good=rng.choice(GOOD), bad=rng.choice(BAD),
                                             good_verb=rng.choice(GOOD_VERB), bad_verb=rng.choice(BAD_VERB))


Maker = Callable[[random.Random, str], str]
RowOf = Callable[[str, str], dict]


def distinct_texts(rng: random.Random, make: Maker, label: str, count: int, seen: set[str]) -> list[str]:
    """`count` texts of `label` not in `seen` (added to it)."""
    texts: list[str] = []
    while len(texts) < count:
        text = make(rng, label)
        if text not in seen:
            seen.add(text)
            texts.append(text)
    return texts


def split_rows(rng: random.Random, make: Maker, counts: dict[str, tuple[int, int]],
               row: RowOf) -> tuple[list[dict], list[dict]]:
    """(train, eval) rows: per label, (train, eval) counts of distinct texts, none in both; each split shuffled."""
    seen: set[str] = set()
    train, held = [], []
    for label, (n_train, n_eval) in counts.items():
        texts = distinct_texts(rng, make, label, n_train + n_eval, seen)
        train += [row(text, label) for text in texts[:n_train]]
        held += [row(text, label) for text in texts[n_train:]]
    rng.shuffle(train)
    rng.shuffle(held)
    return train, held


def chat_row(text: str, label: str) -> dict:
    return {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": label}]}


def write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main(out_dir: Path = HERE) -> None:
    rng = random.Random(SEED)
    train, held = split_rows(rng, weather_text, WEATHER_COUNTS, chat_row)
    write_rows(out_dir / "weather" / "train.jsonl", train)
    write_rows(out_dir / "weather" / "eval.jsonl", held)
    train, held = split_rows(rng, review_text, REVIEW_COUNTS, chat_row)
    write_rows(out_dir / "reviews" / "train.jsonl", train)
    write_rows(out_dir / "reviews" / "eval.jsonl", held)


if __name__ == "__main__":
    main()
