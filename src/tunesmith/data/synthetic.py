"""Synthetic conversational rows with planted near-duplicates and fake PII, for the data stage's benchmarks
(`benchmarks/data_prepare.py`, `tunesmith bench all`).

Rows are ~300-character user/assistant exchanges built from templates and random fillers, so unrelated
rows share little beyond common phrases. A near-duplicate is an earlier row with one or two small edits
(a word swapped, punctuation, letter case), always placed after its original. Fake PII uses reserved or
test values only (example.com addresses, 555-01xx numbers, card test numbers that pass the Luhn check).
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Any

Row = dict[str, Any]

SYLLABLES = ("ka", "lo", "mi", "ra", "ten", "vo", "shi", "ne", "dar", "pel", "qu", "ix", "zo", "bel", "fen", "gru",
             "hal", "jor", "mun", "sta", "tri", "ul", "wen", "yam")
OPENERS = ("Can you help me", "How do I", "What is the best way to", "Could you explain how to", "I need to",
           "Please show me how to", "Is it possible to", "Any tips on how to", "Where should I start if I want to")
VERBS = ("configure", "install", "debug", "rewrite", "translate", "summarize", "compare", "repair", "plan", "cook",
         "clean", "organize", "measure", "train", "update", "test", "design", "schedule", "calculate", "improve",
         "replace", "paint", "store", "sort", "label", "back up", "tune", "water", "pack", "move")
NOUNS = ("router", "garden", "spreadsheet", "bicycle", "invoice", "recipe", "printer", "budget", "playlist",
         "kitchen", "laptop", "resume", "database", "fence", "aquarium", "camera", "itinerary", "thermostat",
         "essay", "website", "closet", "engine", "contract", "guitar", "balcony", "schedule", "server", "sofa",
         "newsletter", "backpack", "compost bin", "workshop", "calendar", "heater", "manuscript", "greenhouse")
ADJECTIVES = ("old", "new", "noisy", "tiny", "shared", "broken", "cheap", "shiny", "slow", "remote", "wooden",
              "cluttered", "digital", "rented", "seasonal", "fragile", "borrowed", "quiet", "heavy", "spare")
CONTEXTS = ("It started acting up after {name} borrowed it last {day}.", "I tried twice already and gave up.",
            "My {adj} {noun} is involved too, if that matters.", "I have about {number} minutes a day for this.",
            "The manual from {name} did not help at all.", "Nothing I found online covers the {adj} version.")
ANSWERS = ("First, {verb} the {adj} {noun} and check that the {noun2} is {adj2}.",
           "If the {noun} still gives trouble, try a {adj} {noun2} instead.",
           "Most people {verb} their {noun} every {number} days, which is usually enough.",
           "A {adj} {noun} tends to cost about {number} dollars, so compare prices before buying.",
           "You could also ask {name} how they handle the {noun2}.",
           "Remember to {verb} the {noun} before you {verb2} the {noun2}.",
           "Write down each step, because the {adj} {noun} is easy to forget about.",
           "Set aside {number} minutes on {day} and {verb} one part at a time.",
           "Keep the {noun2} away from the {adj} {noun}; they interfere with each other.")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
SYSTEM_PROMPT = "You are a patient assistant who gives short, practical, step-by-step advice."
CARD_PREFIXES = ("4111", "5500", "5105", "6011")  # 16-digit brands (Amex 34xx is 15 digits)
TARGET_CHARS = 270  # user + assistant; the last sentence overshoots to ~300 on average


@dataclass
class SyntheticRows:
    rows: list[Row]
    near_duplicates: list[tuple[int, int]]  # (original, duplicate), original first in `rows`
    pii: dict[int, list[str]] = field(default_factory=dict)  # row index -> the fake PII values it holds


def make_rows(n: int, near_dup_fraction: float = 0.1, pii_fraction: float = 0.0,
              seed: int = 0) -> tuple[list[Row], list[tuple[int, int]]]:
    """`n` rows and the planted (original, duplicate) index pairs; see `make_dataset` for the PII too."""
    dataset = make_dataset(n, near_dup_fraction, pii_fraction, seed)
    return dataset.rows, dataset.near_duplicates


def make_dataset(n: int, near_dup_fraction: float = 0.1, pii_fraction: float = 0.0, seed: int = 0) -> SyntheticRows:
    if not 0 <= near_dup_fraction <= 0.5:
        raise ValueError("near_dup_fraction must be between 0 and 0.5: each duplicate needs its own original.")
    rng = random.Random(seed)
    n_duplicates = round(n * near_dup_fraction)
    originals = [conversation(rng) for _ in range(n - n_duplicates)]
    pii = {index: add_pii(rng, originals[index]) for index in rng.sample(range(len(originals)),
                                                                          round(len(originals) * pii_fraction))}
    sources = rng.sample(range(len(originals)), n_duplicates)
    items = originals + [near_duplicate(rng, originals[source]) for source in sources]
    pairs = [(source, len(originals) + offset) for offset, source in enumerate(sources)]
    position = placed_after_originals(rng, len(items), pairs)
    rows: list[Row] = [{}] * len(items)
    for item, row in enumerate(items):
        rows[position[item]] = row
    item_pii = {**pii, **{duplicate: pii[original] for original, duplicate in pairs if original in pii}}
    return SyntheticRows(rows, [(position[original], position[duplicate]) for original, duplicate in pairs],
                         {position[item]: values for item, values in item_pii.items()})


def placed_after_originals(rng: random.Random, count: int, pairs: list[tuple[int, int]]) -> list[int]:
    """A random position for each item, swapped where needed so every original comes before its copy."""
    position = list(range(count))
    rng.shuffle(position)
    for original, duplicate in pairs:
        if position[original] > position[duplicate]:
            position[original], position[duplicate] = position[duplicate], position[original]
    return position


def conversation(rng: random.Random) -> Row:
    fill = fillers(rng)
    question = f"{rng.choice(OPENERS)} {fill['verb']} my {fill['adj']} {fill['noun']}?"
    user = f"{question} {rng.choice(CONTEXTS).format(**fill)}"
    sentences: list[str] = []
    while len(user) + sum(len(sentence) + 1 for sentence in sentences) < TARGET_CHARS:
        sentences.append(rng.choice(ANSWERS).format(**fillers(rng)))
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": " ".join(sentences)}]
    if rng.random() < 0.3:
        messages.insert(0, {"role": "system", "content": SYSTEM_PROMPT})
    return {"messages": messages}


def fillers(rng: random.Random) -> dict[str, str]:
    return {"verb": rng.choice(VERBS), "verb2": rng.choice(VERBS), "noun": rng.choice(NOUNS),
            "noun2": rng.choice(NOUNS), "adj": rng.choice(ADJECTIVES), "adj2": rng.choice(ADJECTIVES),
            "name": made_up_name(rng), "number": str(rng.randint(2, 90)), "day": rng.choice(DAYS)}


def made_up_name(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def near_duplicate(rng: random.Random, row: Row) -> Row:
    """A copy of `row` with one or two small edits in one of its non-system turns."""
    duplicate = copy.deepcopy(row)
    turn = rng.choice([message for message in duplicate["messages"] if message["role"] != "system"])
    for _ in range(rng.randint(1, 2)):
        turn["content"] = rng.choice((swap_word, change_punctuation, change_case))(rng, turn["content"])
    return duplicate


def swap_word(rng: random.Random, text: str) -> str:
    words = text.split(" ")
    index = rng.randrange(len(words))
    words[index] = rng.choice(NOUNS + ADJECTIVES)
    return " ".join(words)


def change_punctuation(rng: random.Random, text: str) -> str:
    stops = [index for index, char in enumerate(text) if char in ".?"]
    if not stops:
        return text + "."
    index = rng.choice(stops)
    return text[:index] + rng.choice(("!", ",", ";", "...", "")) + text[index + 1:]


def change_case(rng: random.Random, text: str) -> str:
    words = text.split(" ")
    index = rng.randrange(len(words))
    words[index] = words[index].upper() if rng.random() < 0.5 else words[index].swapcase()
    return " ".join(words)


def add_pii(rng: random.Random, row: Row) -> list[str]:
    """Append a sentence with a fake email, phone number or card number to the user turn; returns the value."""
    kind = rng.choice(("email", "phone", "card"))
    value = {"email": fake_email, "phone": fake_phone, "card": fake_card}[kind](rng)
    sentence = {"email": "You can email me at {}.", "phone": "Call me on {} if easier.",
                "card": "I paid with card {} last time."}[kind].format(value)
    user = next(message for message in row["messages"] if message["role"] == "user")
    user["content"] += " " + sentence
    return [value]


def fake_email(rng: random.Random) -> str:
    return f"{made_up_name(rng).lower()}.{made_up_name(rng).lower()}@example.com"


def fake_phone(rng: random.Random) -> str:
    line = f"555-01{rng.randint(0, 99):02d}"
    return rng.choice((f"(201) {line}", f"+1 312 {line}", f"212-{line}"))


def fake_card(rng: random.Random) -> str:
    """A 16-digit number with a test-card prefix and a valid Luhn check digit, grouped by four."""
    digits = [int(char) for char in rng.choice(CARD_PREFIXES)] + [rng.randint(0, 9) for _ in range(11)]
    digits.append(luhn_check_digit(digits))
    text = "".join(map(str, digits))
    return " ".join(text[start:start + 4] for start in range(0, 16, 4))


def luhn_check_digit(digits: list[int]) -> int:
    total = 0
    for position, digit in enumerate(reversed(digits)):
        doubled = digit * 2 if position % 2 == 0 else digit
        total += doubled - 9 if doubled > 9 else doubled
    return (10 - total % 10) % 10
