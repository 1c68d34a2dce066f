"""Generate the bundled ``prefs`` preference dataset (shop order request -> JSON, chosen vs rejected).

Why this exists: preference methods (DPO, ORPO, KTO, SimPO) need pairs where one answer is clearly
better. The ``orders`` task gives that for free: the chosen answer is the exact JSON; the rejected one
is a plausible mistake a small model makes: one field wrong (quantity, colour, size, day, item), a
value invented for a field the request never mentions, renamed keys, or a chatty prose reply instead
of JSON. Orders come from ``make_orders.py`` with a different seed, so requests are new.

Writes (deterministic)::

    prefs/train.jsonl       240 conversational pairs {"prompt", "chosen", "rejected"}
    prefs/eval.jsonl         60 pairs (no request shared with train)
    prefs/unpaired.jsonl    240 unpaired rows {"prompt", "completion", "label"} for KTO: one
                            answer per request, good or bad at random (about half each)

Usage::

    python examples/data/make_prefs.py            # writes prefs/*.jsonl
    python examples/data/make_prefs.py --show 3   # ... and prints 3 sample pairs
"""

import argparse
import json
import random
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_orders import (  # noqa: E402
    COLORS,
    INSTRUCTION,
    ITEMS,
    SIZES,
    WHENS,
    Order,
    check_derivable,
    generate,
    noun,
)

SEED = 2468
N_TRAIN = 240
N_EVAL = 60
OUT_DIR = HERE / "prefs"


def other(value: object, choices: tuple | list, rng: random.Random) -> object:
    return rng.choice([c for c in choices if c != value])


def wrong_qty(o: Order, rng: random.Random) -> str:
    qty = o.qty + rng.choice([-1, 1, 2]) if o.qty > 1 else o.qty + rng.choice([1, 2])
    return replace(o, qty=qty).to_json()


def wrong_color(o: Order, rng: random.Random) -> str:
    return replace(o, color=other(o.color, COLORS, rng)).to_json()


def wrong_size(o: Order, rng: random.Random) -> str:
    return replace(o, size=other(o.size, SIZES, rng)).to_json()


def wrong_when(o: Order, rng: random.Random) -> str:
    return replace(o, when=other(o.when, WHENS, rng)).to_json()


def wrong_item(o: Order, rng: random.Random) -> str:
    return replace(o, item=other(o.item, list(ITEMS), rng)).to_json()


def renamed_keys(o: Order, rng: random.Random) -> str:
    names = rng.choice([("product", "quantity"), ("name", "count"), ("item_name", "amount")])
    obj = {names[0]: o.item, names[1]: o.qty, "size": o.size, "color": o.color, "when": o.when}
    return json.dumps(obj, separators=(", ", ": "))


def prose(o: Order, rng: random.Random) -> str:
    details = [v for v in (o.size, o.color) if v]
    what = " ".join([str(o.qty), *details, noun(o)])
    when = f" for {o.when.capitalize() if o.when not in ('today', 'tomorrow') else o.when}" if o.when else ""
    return rng.choice([
        f"Sure! Your order is {what}{when}. Is there anything else I can help you with?",
        f"Got it, {what}{when}. I'll pass this on to the shop.",
        f"Here is the order: {what}{when}.",
    ])


MISTAKES: tuple[Callable[[Order, random.Random], str], ...] = (
    wrong_qty, wrong_color, wrong_size, wrong_when, wrong_item, renamed_keys, prose,
)


def rejected_answer(o: Order, rng: random.Random) -> str:
    """A plausible wrong answer; a field the request leaves out gets an invented value instead."""
    mistake = rng.choice(MISTAKES)
    if mistake in (wrong_color, wrong_size, wrong_when) and getattr(o, mistake.__name__[6:]) is None:
        field = mistake.__name__[6:]
        pool = {"color": COLORS, "size": SIZES, "when": WHENS}[field]
        return replace(o, **{field: rng.choice(pool)}).to_json()
    return mistake(o, rng)


def pair(request: str, o: Order, rng: random.Random) -> dict:
    chosen, rejected = o.to_json(), rejected_answer(o, rng)
    assert chosen != rejected
    return {
        "prompt": [{"role": "user", "content": f"{INSTRUCTION}\n{request}"}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def unpaired(row: dict, rng: random.Random) -> dict:
    good = rng.random() < 0.5
    return {"prompt": row["prompt"], "completion": row["chosen" if good else "rejected"], "label": good}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--show", type=int, default=0, help="print this many sample pairs")
    args = parser.parse_args()
    rng = random.Random(SEED)
    orders = generate(N_TRAIN + N_EVAL, rng)
    for request, o in orders:
        check_derivable(request, o)
    rows = [pair(request, o, rng) for request, o in orders]
    train, held = rows[:N_TRAIN], rows[N_TRAIN:]
    write_jsonl(OUT_DIR / "train.jsonl", train)
    write_jsonl(OUT_DIR / "eval.jsonl", held)
    write_jsonl(OUT_DIR / "unpaired.jsonl", [unpaired(r, rng) for r in train])
    print(f"wrote {len(train)} train / {len(held)} eval pairs and {len(train)} unpaired rows to {OUT_DIR}")
    for row in train[: args.show]:
        print(json.dumps(row, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
