"""Generate the bundled ``orders`` example dataset (shop order request -> JSON).

Why this exists: tunesmith's examples need a small, self-contained task on which a
tiny instruct model (SmolLM2-135M-Instruct) is poor before fine-tuning and clearly
better after a few CPU minutes of LoRA SFT. Turning a short free-text shop order
into a fixed JSON schema fits: answers are short, exactly derivable from the
request, and can be scored automatically by exact match on each JSON field.

The request text is built from many phrasing templates (number words, plurals,
S/M/L sizes, day casing, politeness, field order, omitted fields -> null) so the
mapping has to be learned rather than memorised. Output is fully deterministic.

Usage::

    python examples/data/make_orders.py            # writes orders/{train,eval}.jsonl
    python examples/data/make_orders.py --show 5   # ... and prints 5 sample rows
"""

import argparse
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SEED = 1234
N_TRAIN = 400
N_EVAL = 80
MAX_WORDS = 25
OUT_DIR = Path(__file__).resolve().parent / "orders"
INSTRUCTION = "Convert the order to JSON with keys item, qty, size, color, when."
KEYS = ("item", "qty", "size", "color", "when")

ITEMS: dict[str, str] = {
    "t-shirt": "t-shirts", "mug": "mugs", "backpack": "backpacks", "lamp": "lamps",
    "notebook": "notebooks", "hoodie": "hoodies", "cap": "caps", "scarf": "scarves",
    "pillow": "pillows", "candle": "candles", "umbrella": "umbrellas", "wallet": "wallets",
    "blanket": "blankets", "towel": "towels", "jacket": "jackets", "sweater": "sweaters",
    "vase": "vases", "poster": "posters", "keychain": "keychains", "apron": "aprons",
    "bottle": "bottles", "pen": "pens", "clock": "clocks", "beanie": "beanies",
    "tote": "totes",
}  # fmt: skip
COLORS = (
    "red", "blue", "green", "black", "white", "yellow",
    "orange", "purple", "pink", "grey", "brown", "navy",
)  # fmt: skip
SIZES = ("small", "medium", "large")
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
WHENS = ("today", "tomorrow", *DAYS)
NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six",
    "seven", "eight", "nine", "ten", "eleven", "twelve",
)  # fmt: skip


@dataclass(frozen=True)
class Order:
    """The structured target; field order matches the JSON key order."""

    item: str
    qty: int
    size: str | None
    color: str | None
    when: str | None

    def to_json(self) -> str:
        obj = {k: getattr(self, k) for k in KEYS}
        return json.dumps(obj, separators=(", ", ": "))


def random_order(rng: random.Random) -> Order:
    """Draw one order; optional fields are omitted (None) roughly a third of the time."""
    return Order(
        item=rng.choice(list(ITEMS)),
        qty=rng.randint(1, 12),
        size=rng.choice(SIZES) if rng.random() < 0.65 else None,
        color=rng.choice(COLORS) if rng.random() < 0.7 else None,
        when=rng.choice(WHENS) if rng.random() < 0.7 else None,
    )


# ---------------------------------------------------------------- field phrasing


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun(o: Order, plural: bool | None = None) -> str:
    """Item noun; plural by default when qty > 1."""
    use_plural = o.qty > 1 if plural is None else plural
    return ITEMS[o.item] if use_plural else o.item


def quantifier(qty: int, rng: random.Random, next_word: str) -> str:
    """Count written before a noun phrase: '3', 'three', 'a', 'a pair of', 'a dozen'..."""
    options = [str(qty), str(qty), NUMBER_WORDS[qty]]
    if qty == 1:
        options += [article(next_word)] * 3 + ["a single"]
    elif qty == 2:
        options.append("a pair of")
    elif qty == 6:
        options.append("half a dozen")
    elif qty == 12:
        options += ["a dozen", "a dozen"]
    return rng.choice(options)


def bare_number(qty: int, rng: random.Random) -> str:
    """Count standing alone ('I'll take four', 'qty 4')."""
    options = [str(qty), NUMBER_WORDS[qty]]
    if qty == 12:
        options.append("a dozen")
    elif qty == 6:
        options.append("half a dozen")
    return rng.choice(options)


def size_letter(size: str) -> str:
    return size[0].upper()


def size_tail(size: str, rng: random.Random) -> str:
    """Size as a trailing phrase: 'size M', 'in large', 'size: L'..."""
    letter = size_letter(size)
    return rng.choice(
        [f"size {letter}", f"size {size}", f"in {size}", f"{size} size", f"size: {letter}"]
    )


def color_tail(color: str, rng: random.Random) -> str:
    return rng.choice([f"in {color}", f"colour {color}", f"color: {color}", f"{color} ones"])


def day_text(day: str, rng: random.Random, allow_abbr: bool = False) -> str:
    """Weekday with varied casing, optionally abbreviated ('Fri')."""
    forms = [day.capitalize(), day.capitalize(), day, day.upper()]
    if allow_abbr:
        forms.append(day[:3].capitalize())
    return rng.choice(forms)


def when_phrase(when: str | None, rng: random.Random) -> str:
    """Delivery phrase ('by friday', 'tomorrow', 'asap today'); '' when unspecified."""
    if when is None:
        return ""
    if when == "today":
        return rng.choice(["today", "today", "asap today", "by today", "for today"])
    if when == "tomorrow":
        return rng.choice(["tomorrow", "tomorrow", "by tomorrow", "for tomorrow"])
    day = day_text(when, rng)
    prep = rng.choice(["by", "by", "on", "for", "this", "no later than", "arriving"])
    return f"{prep} {day}"


def when_bare(when: str, rng: random.Random) -> str:
    """Delivery value for list-style requests: 'Fri', 'tomorrow', 'Tuesday'."""
    return when if when in ("today", "tomorrow") else day_text(when, rng, allow_abbr=True)


def describe(o: Order, rng: random.Random) -> str:
    """Noun phrase with count, placing size/colour as adjectives or trailing phrases."""
    adjectives: list[str] = []
    tails: list[str] = []
    for value, tail_fn in ((o.size, size_tail), (o.color, color_tail)):
        if value is None:
            continue
        if rng.random() < 0.6:
            adjectives.append(value)
        else:
            tails.append(tail_fn(value, rng))
    head = adjectives + [noun(o)]
    phrase = f"{quantifier(o.qty, rng, head[0])} {' '.join(head)}"
    rng.shuffle(tails)
    return ", ".join([phrase, *tails])


def describe_when(o: Order, rng: random.Random) -> str:
    """describe() followed by the delivery phrase, comma-separated after trailing fields."""
    desc, when = describe(o, rng), when_phrase(o.when, rng)
    if not when:
        return desc
    return f"{desc}, {when}" if "," in desc else f"{desc} {when}"


def politeness(rng: random.Random) -> tuple[str, str]:
    """Optional greeting and sign-off (each present about a third of the time)."""
    prefix = rng.choice(["", "", "", "", "", "", "hi, ", "hello! ", "hey there, "])
    suffix = rng.choice(["", "", "", "", "", " please", " thanks", " thank you!", ", cheers"])
    return prefix, suffix


# ---------------------------------------------------------------- templates

Template = Callable[[Order, random.Random], str]


def t_id_like(o: Order, rng: random.Random) -> str:
    return f"I'd like {describe_when(o, rng)}"


def t_can_you_send(o: Order, rng: random.Random) -> str:
    verb = rng.choice(["send me", "get me", "ship me"])
    return f"can you {verb} {describe_when(o, rng)}?"


def t_need_asap(o: Order, rng: random.Random) -> str:
    text = f"need {describe_when(o, rng)}"
    return text if o.when else f"{text} asap"


def t_please_ship(o: Order, rng: random.Random) -> str:
    verb = rng.choice(["ship", "deliver", "send"])
    return f"please {verb} {describe_when(o, rng)}."


def t_when_first(o: Order, rng: random.Random) -> str:
    when = when_phrase(o.when, rng)
    lead = f"{when}: " if when else ""
    return f"{lead}{describe(o, rng)} please"


def t_could_i_get(o: Order, rng: random.Random) -> str:
    return f"Could I get {describe_when(o, rng)}?"


def t_add_to_order(o: Order, rng: random.Random) -> str:
    return f"add {describe(o, rng)} to my order {when_phrase(o.when, rng)}"


def t_office(o: Order, rng: random.Random) -> str:
    place = rng.choice(["the office", "our shop", "the team", "a party"])
    return f"we need {describe(o, rng)} for {place} {when_phrase(o.when, rng)}"


def t_want_to_buy(o: Order, rng: random.Random) -> str:
    return f"I want to buy {describe_when(o, rng)}."


def t_my_order(o: Order, rng: random.Random) -> str:
    when = when_phrase(o.when, rng)
    return f"my order: {describe(o, rng)}" + (f", {when}" if when else "")


def t_terse(o: Order, rng: random.Random) -> str:
    return describe_when(o, rng)


def labelled_fields(o: Order, rng: random.Random, letters: bool) -> list[str]:
    """Optional fields as short list entries ('green', 'size M', 'needed Tuesday')."""
    fields: list[str] = []
    if o.color is not None:
        fields.append(rng.choice([o.color, f"colour {o.color}", f"color: {o.color}"]))
    if o.size is not None:
        value = size_letter(o.size) if letters else o.size
        fields.append(rng.choice([f"size {value}", f"size: {value}"]))
    if o.when is not None:
        label = rng.choice(["needed", "deliver", "by", "for"])
        fields.append(f"{label} {when_bare(o.when, rng)}")
    rng.shuffle(fields)
    return fields


def t_order_colon(o: Order, rng: random.Random) -> str:
    head = rng.choice(["Order", "order", "New order", "ORDER"])
    entry = f"{o.item} x{o.qty}" if rng.random() < 0.5 else f"{o.qty} x {o.item}"
    return ", ".join([f"{head}: {entry}", *labelled_fields(o, rng, letters=True)])


def t_key_values(o: Order, rng: random.Random) -> str:
    pairs = [
        f"item: {o.item}",
        f"{rng.choice(['qty', 'quantity', 'amount'])}: {o.qty}",
    ]
    if o.size is not None:
        pairs.append(f"size: {rng.choice([o.size, size_letter(o.size)])}")
    if o.color is not None:
        pairs.append(f"{rng.choice(['colour', 'color'])}: {o.color}")
    if o.when is not None:
        pairs.append(f"{rng.choice(['when', 'day', 'delivery'])}: {when_bare(o.when, rng)}")
    rng.shuffle(pairs)
    return rng.choice(["; ", ", ", " | "]).join(pairs)


def t_n_x(o: Order, rng: random.Random) -> str:
    return ", ".join([f"{o.qty}x {noun(o)}", *labelled_fields(o, rng, letters=rng.random() < 0.5)])


def t_parens(o: Order, rng: random.Random) -> str:
    attrs = [v for v in (o.color, o.size) if v is not None]
    rng.shuffle(attrs)
    text = o.item.capitalize() + (f" ({', '.join(attrs)})" if attrs else "") + f" x {o.qty}"
    if o.when is not None:
        text += f", {when_phrase(o.when, rng)}"
    return text


def t_got_any(o: Order, rng: random.Random) -> str:
    colour = f"{o.color} " if o.color is not None else ""
    parts = [f"got any {colour}{noun(o, plural=True)}? I'll take {bare_number(o.qty, rng)}"]
    if o.size is not None:
        parts.append(size_tail(o.size, rng))
    if o.when is not None:
        parts.append(when_phrase(o.when, rng))
    return ", ".join(parts)


def t_in_stock(o: Order, rng: random.Random) -> str:
    text = f"do you have {noun(o, plural=True)} in stock? I need {bare_number(o.qty, rng)}"
    extras = [f(v, rng) for v, f in ((o.size, size_tail), (o.color, color_tail)) if v]
    rng.shuffle(extras)
    text = ", ".join([text, *extras])
    return f"{text} {when_phrase(o.when, rng)}"


def t_send_to_me(o: Order, rng: random.Random) -> str:
    return f"send {describe(o, rng)} to me {when_phrase(o.when, rng)}"


TEMPLATES: tuple[Template, ...] = (
    t_id_like, t_can_you_send, t_need_asap, t_please_ship, t_when_first, t_could_i_get,
    t_add_to_order, t_office, t_want_to_buy, t_my_order, t_terse, t_order_colon,
    t_key_values, t_n_x, t_parens, t_got_any, t_in_stock, t_send_to_me,
)  # fmt: skip


# ---------------------------------------------------------------- assembly


def tidy(text: str) -> str:
    """Collapse whitespace left by empty phrases and drop spaces before punctuation."""
    text = " ".join(text.split())
    return re.sub(r"\s+([,.?!:])", r"\1", text)


def render(o: Order, rng: random.Random) -> str:
    """Full request text: template + optional politeness + varied first-letter case."""
    body = tidy(rng.choice(TEMPLATES)(o, rng))
    prefix, suffix = politeness(rng)
    if "please" in body.lower():
        suffix = ""
    if suffix and body[-1] in ".?!":
        suffix = suffix.lstrip(", ")
        suffix = " " + suffix[0].upper() + suffix[1:]
    if prefix and not (body[:2].isupper() or body.startswith("I'")):
        body = body[0].lower() + body[1:]
    text = tidy(prefix + body + suffix)
    if text[:2].isupper():  # keep all-caps words like "ORDER" intact
        return text
    first = text[0].upper() if rng.random() < 0.6 else text[0].lower()
    return first + text[1:]


def make_row(request: str, o: Order) -> dict[str, list[dict[str, str]]]:
    return {
        "messages": [
            {"role": "user", "content": f"{INSTRUCTION}\n{request}"},
            {"role": "assistant", "content": o.to_json()},
        ]
    }


def generate(n: int, rng: random.Random) -> list[tuple[str, Order]]:
    """n orders with distinct request texts (compared case-insensitively)."""
    seen: set[str] = set()
    out: list[tuple[str, Order]] = []
    while len(out) < n:
        o = random_order(rng)
        request = render(o, rng)
        key = request.lower()
        if key in seen or len(request.split()) > MAX_WORDS:
            continue
        seen.add(key)
        out.append((request, o))
    return out


# ---------------------------------------------------------------- validation


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+(?:-[a-z]+)?", text.lower()))


def check_derivable(request: str, o: Order) -> None:
    """Independent sanity check that each field is stated (or absent) in the request."""
    toks = words(request)
    assert o.item in toks or ITEMS[o.item] in toks, (request, o)
    assert {c for c in COLORS if c in toks} == ({o.color} if o.color else set()), (request, o)
    size_words = {s for s in SIZES if s in toks}
    letters = set(re.findall(r"(?i:size):? ([SML])\b", request))
    stated_sizes = size_words | {s for s in SIZES if size_letter(s) in letters}
    assert stated_sizes == ({o.size} if o.size else set()), (request, o)
    days = {w for w in WHENS if w in toks or (w in DAYS and w[:3] in toks)}
    assert days == ({o.when} if o.when else set()), (request, o)


def check_rows(rows: list[dict], train_requests: set[str] | None = None) -> None:
    for row in rows:
        user, assistant = row["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        instruction, request = user["content"].split("\n", 1)
        assert instruction == INSTRUCTION
        obj = json.loads(assistant["content"])
        assert tuple(obj) == KEYS, obj
        check_derivable(request, Order(**obj))
        if train_requests is not None:
            assert request.lower() not in train_requests, request


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument("--show", type=int, default=0, help="print this many sample rows")
    args = parser.parse_args()

    pairs = generate(N_TRAIN + N_EVAL, random.Random(args.seed))
    train = [make_row(r, o) for r, o in pairs[:N_TRAIN]]
    evals = [make_row(r, o) for r, o in pairs[N_TRAIN:]]
    check_rows(train)
    check_rows(evals, train_requests={r.lower() for r, _ in pairs[:N_TRAIN]})

    write_jsonl(args.out_dir / "train.jsonl", train)
    write_jsonl(args.out_dir / "eval.jsonl", evals)
    print(f"wrote {len(train)} train / {len(evals)} eval rows to {args.out_dir}")
    for row in train[: args.show]:
        print(json.dumps(row, ensure_ascii=False))


if __name__ == "__main__":
    main()
