"""Generate the bundled ``routing`` dataset: messages to a town council, each routed to the one team that must act.

Why this exists: a classification task that is *not* separable by keywords. Most messages name two problems:
the one the writer asks the council to act on, and another one mentioned in passing (already fixed, not the
reason for writing, someone else's business). Both problems are written with the same phrases whichever role
they play, and the framing sentences ("Could someone deal with ...", "... was fixed last month") are shared by
all teams, so the words alone say which two teams are involved but not which of them must act. A bag-of-words
classifier (TF-IDF unigrams and bigrams + logistic regression, `python examples/data/make_routing.py --check`)
scores 0.66 on the held-out split (a fifth of the messages name one problem only); the answer depends on which
phrase sits in the request.

Writes (deterministic, stdlib only)::

    routing/train.jsonl   480 rows {"messages": [user: instruction + message, assistant: team]}
    routing/eval.jsonl    120 rows (no message shared with train)

Usage::

    python examples/data/make_routing.py [--check]
"""

import argparse
import json
import random
from pathlib import Path

SEED = 2026
N_TRAIN_PER_LABEL = 60
N_EVAL_PER_LABEL = 15
SINGLE_SHARE = 0.2  # messages with no second problem
OUT_DIR = Path(__file__).resolve().parent / "routing"

# Each problem phrase starts with "the" so that no word pair across a frame's edge names the team.
PROBLEMS = {
    "roads": ["the pothole outside {addr}", "the cracked road surface on {street}",
              "the sunken manhole cover near {addr}", "the broken kerb at the corner of {street}",
              "the road markings that have worn away on {street}", "the loose paving slabs along {street}"],
    "water": ["the burst pipe flooding {street}", "the water leaking from the hydrant by {addr}",
              "the brown tap water in our building at {addr}", "the low water pressure on {street}",
              "the blocked drain that overflows on {street}", "the water meter leak outside {addr}"],
    "waste": ["the bins on {street} that were not collected {day}", "the recycling left behind at {addr}",
              "the overflowing litter bin by the bus stop on {street}", "the fly-tipped mattress on {street}",
              "the garden waste collection we missed {day}", "the broken wheelie bin the crew left at {addr}"],
    "noise": ["the loud music from the flat at {addr}", "the building work on {street} that starts at 6am",
              "the barking dog next door at {addr}", "the car alarm that goes off every night on {street}",
              "the noisy generator behind the shop on {street}", "the parties at {addr} every {day}"],
    "parking": ["the resident parking permit for {addr}", "the parking fine I got on {street} {day}",
                "the car that has been abandoned on {street} for weeks", "the van blocking my driveway at {addr}",
                "the broken pay-and-display machine on {street}", "the disabled parking bay outside {addr}"],
    "lighting": ["the streetlight that is out on {street}", "the flickering lamp post outside {addr}",
                 "the dark footpath behind {street} where the lights failed",
                 "the street lamp that stays on all day by {addr}", "the broken light in the underpass on {street}",
                 "the lamp post a lorry knocked over on {street}"],
    "parks": ["the broken swing in the playground off {street}", "the overgrown grass in the park by {addr}",
              "the fallen tree branch across the path in the park on {street}",
              "the graffiti on the park benches near {addr}", "the locked gates of the park on {street}",
              "the dog waste bins in the park off {street}"],
    "planning": ["the extension my neighbour is building at {addr} without permission",
                 "the planning application for {addr}", "the new fence at {addr} that blocks the pavement",
                 "the building permit for our loft at {addr}", "the shop sign on {street} put up without consent",
                 "the hedge at {addr} that the planning notice says must go"],
}
LABELS = sorted(PROBLEMS)
# What the writer asks the council to act on.
REQUESTS = ["Could someone deal with {p}?", "Please send somebody about {p}.", "I'm writing to report {p}.",
            "Can you look into {p} this week?", "What I need help with is {p}.", "My request today is about {p}.",
            "Nobody has fixed {p} yet, please act on it.", "I want to complain about {p}.",
            "Please do something about {p}.", "Can the right team take care of {p}?"]
# A second problem, named in passing: no action asked.
MENTIONS = ["{P} was sorted out last month, thank you.", "You already handled {p}, so that's fine.",
            "This is not about {p}; that one is resolved.", "Someone from your office dealt with {p} already.",
            "Ignore my earlier email about {p}.", "My neighbour wrote to you about {p}, but that's their business.",
            "{P} is fine now.", "I'm not asking about {p}, that was fixed."]
OPENINGS = ["", "", "Hello, ", "Hi, ", "Dear council, ", "Good afternoon, "]
CLOSINGS = ["", "", " Thanks.", " Many thanks, {name}", " Regards, {name}", " -- {name}"]
SLOTS = {
    "street": ["Mill Lane", "Station Road", "Church Street", "Oak Avenue", "Harbour Way", "Kings Road",
               "Elm Grove", "Bridge Street", "Park Terrace", "Victoria Close"],
    "addr": ["{n} Mill Lane", "{n} Station Road", "{n} Church Street", "{n} Oak Avenue", "{n} Harbour Way",
             "{n} Elm Grove", "{n} Bridge Street"],
    "day": ["on Monday", "on Tuesday", "last week", "on Friday", "this morning", "twice this month"],
    "name": ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun"],
}
INSTRUCTION = ("Route the message to the council team that must act on it: " + ", ".join(LABELS)
               + ". Answer with the team name only.")


def fill(text: str, rng: random.Random) -> str:
    """Fill every {slot} (slot values may have their own {n})."""
    while "{" in text:
        start = text.index("{")
        end = text.index("}", start)
        slot = text[start + 1 : end]
        value = str(rng.randint(2, 120)) if slot == "n" else rng.choice(SLOTS[slot])
        text = text[:start] + value + text[end + 1 :]
    return text


def sentence(frame: str, problem: str) -> str:
    return frame.replace("{P}", problem[0].upper() + problem[1:]).replace("{p}", problem)


def message(label: str, rng: random.Random) -> str:
    parts = [sentence(rng.choice(REQUESTS), rng.choice(PROBLEMS[label]))]
    if rng.random() >= SINGLE_SHARE:
        other = rng.choice([name for name in LABELS if name != label])
        mention = sentence(rng.choice(MENTIONS), rng.choice(PROBLEMS[other]))
        parts.insert(rng.randrange(2), mention)
    opening = rng.choice(OPENINGS)
    body = " ".join(parts)
    if opening and not body.startswith("I"):
        body = body[0].lower() + body[1:]
    return fill(opening + body + rng.choice(CLOSINGS), rng)


def unique_messages(label: str, count: int, rng: random.Random, seen: set[str]) -> list[str]:
    messages: list[str] = []
    while len(messages) < count:
        text = message(label, rng)
        key = " ".join(text.casefold().split())
        if key not in seen:
            seen.add(key)
            messages.append(text)
    return messages


def row(text: str, label: str) -> dict:
    return {"messages": [{"role": "user", "content": f"{INSTRUCTION}\nMessage: {text}"},
                         {"role": "assistant", "content": label}]}


def write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def build() -> tuple[list[dict], list[dict]]:
    rng = random.Random(SEED)
    seen: set[str] = set()
    train, held = [], []
    for label in LABELS:
        messages = unique_messages(label, N_TRAIN_PER_LABEL + N_EVAL_PER_LABEL, rng, seen)
        train += [row(text, label) for text in messages[:N_TRAIN_PER_LABEL]]
        held += [row(text, label) for text in messages[N_TRAIN_PER_LABEL:]]
    rng.shuffle(train)
    rng.shuffle(held)
    return train, held


def keyword_baseline(train: list[dict], held: list[dict]) -> float:
    """Held-out accuracy of TF-IDF (unigrams and bigrams) + logistic regression on the text after the instruction
    line (needs scikit-learn). Works on any bundled classifier's rows, e.g. tickets/."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    def split(rows: list[dict]) -> tuple[list[str], list[str]]:
        return ([r["messages"][0]["content"].split("\n", 1)[1] for r in rows],  # the text after the instruction
                [r["messages"][1]["content"] for r in rows])

    (texts, labels), (held_texts, held_labels) = split(train), split(held)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2))
    classifier = LogisticRegression(max_iter=2000).fit(vectorizer.fit_transform(texts), labels)
    predicted = classifier.predict(vectorizer.transform(held_texts))
    return sum(p == t for p, t in zip(predicted, held_labels, strict=True)) / len(held_labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="also print the bag-of-words baseline's accuracy")
    train, held = build()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    write_rows(OUT_DIR / "train.jsonl", train)
    write_rows(OUT_DIR / "eval.jsonl", held)
    print(f"wrote {len(train)} train and {len(held)} eval rows to {OUT_DIR}")
    if parser.parse_args().check:
        print(f"bag-of-words baseline (TF-IDF 1-2 grams + logistic regression): {keyword_baseline(train, held):.3f}")


if __name__ == "__main__":
    main()
