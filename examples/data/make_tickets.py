"""Generate the bundled ``tickets`` dataset: customer support tickets, each labelled with one of 8 queues.

Why this exists: a classifier's answers are a small closed set of labels, not JSON and not free prose, so
``eval.task_metric: auto`` scores it with exact_match and accuracy per label (with a confusion matrix).
The tickets are written from hand-made templates for a fictional software-and-hardware shop: each label
has several ways of saying the problem, filled with products, order numbers, devices and amounts, and
wrapped in varied openings and sign-offs. Every ticket text appears once across both splits, and each
split holds every label equally often.

Writes (deterministic, stdlib only)::

    tickets/train.jsonl   480 rows {"messages": [user: instruction + ticket, assistant: label]}
    tickets/eval.jsonl    120 rows (no ticket shared with train)

Usage::

    python examples/data/make_tickets.py
"""

import json
import random
from pathlib import Path

SEED = 808
N_TRAIN_PER_LABEL = 60
N_EVAL_PER_LABEL = 15
OUT_DIR = Path(__file__).resolve().parent / "tickets"

TEMPLATES = {
    "billing": [
        "I was charged {amount} twice this month for my {plan} plan.",
        "My invoice {invoice} shows {amount} but my plan is supposed to cost less.",
        "Why did my card get billed {amount} on the {day}? I didn't upgrade anything.",
        "The VAT on invoice {invoice} looks wrong, can someone fix the amount?",
        "Can I change the card you charge for the {plan} plan? The old one expired.",
        "There's a charge of {amount} from you on my statement that I don't recognise.",
        "Please send me a proper invoice with our company address for the last payment.",
        "I switched to yearly billing but I'm still being charged every month.",
    ],
    "bug_report": [
        "The {app} app crashes every time I open the settings page on my {device}.",
        "Since the last update, {feature} doesn't save anything; the spinner just keeps going.",
        "I get error code {code} when I try to export a report.",
        "The dashboard shows yesterday's numbers twice, looks like a display bug.",
        "On {device}, the {feature} button does nothing when I tap it.",
        "Sync between my {device} and the web app stopped working, data is out of date.",
        "The search returns nothing even for items I know are there. Error {code} in the console.",
        "Dark mode makes the text in {feature} invisible, white on white.",
    ],
    "cancel_subscription": [
        "Please cancel my {plan} subscription at the end of this billing period.",
        "I'd like to stop my subscription, we don't need the service anymore.",
        "How do I cancel? I can't find the option anywhere in my account.",
        "Cancel the {plan} plan for account {account}, effective immediately.",
        "We're moving to another tool, please end our subscription and don't renew it.",
        "Don't renew my {plan} plan next month, I want to cancel.",
        "Our team is shutting down, please close the subscription on {account}.",
        "I want to cancel my membership before the trial converts into a paid plan.",
    ],
    "feature_request": [
        "It would be great if {feature} could export to CSV as well.",
        "Could you add a dark mode to the {app} app?",
        "Please consider adding keyboard shortcuts for {feature}.",
        "We'd love an integration with our calendar so {feature} syncs automatically.",
        "Any plans to support more than one currency in reports? That would help us a lot.",
        "Suggestion: let us schedule {feature} to run every {day} automatically.",
        "Would you consider an API endpoint for {feature}? We want to automate it.",
        "Can you add the option to share a dashboard with people outside our team?",
    ],
    "login_problem": [
        "I can't log in, it says my password is wrong but I just reset it.",
        "The two-factor code never arrives on my {device}, so I'm locked out.",
        "My account {account} got locked after a few failed login attempts.",
        "The password reset email never shows up, not even in spam.",
        "Single sign-on stopped working for our team this morning, nobody can get in.",
        "When I log in on my {device} it just sends me back to the login page.",
        "I changed my email address and now I can't sign in with either one.",
        "Login fails with error {code} after I enter my password.",
    ],
    "refund_request": [
        "I'd like a refund for order {order}, the {product} isn't what I expected.",
        "Please refund the {amount} I paid for the {plan} plan, I cancelled on day one.",
        "The {product} from order {order} arrived broken. I want my money back.",
        "Can I get a refund? I bought the {plan} plan by mistake.",
        "I returned the {product} two weeks ago and still haven't got my refund.",
        "You charged me after I cancelled; please refund {amount}.",
        "I want to return the {product} (order {order}) for a full refund.",
        "The {product} stopped working after a week, I'd like a refund rather than a replacement.",
    ],
    "shipping_delay": [
        "My order {order} was supposed to arrive on {day} and it's still not here.",
        "Tracking for order {order} hasn't updated in five days. Where is my {product}?",
        "The {product} I ordered shows 'in transit' for over two weeks now.",
        "When will order {order} ship? It's been sitting at 'processing' since {day}.",
        "The courier says delivered but I never received the {product}.",
        "My package is stuck in customs, can you tell me what's going on with order {order}?",
        "I paid for express delivery and the {product} still hasn't arrived.",
        "Order {order} is late, I need the {product} by {day} at the latest.",
    ],
    "how_to": [
        "How do I add a new user to our team account?",
        "Where can I find the setting to turn on {feature}?",
        "How do I connect the {product} to my {device}?",
        "Is there a guide for setting up {feature} for the first time?",
        "How can I change the language of the {app} app?",
        "What's the right way to move my data from the old {app} app to the new one?",
        "How do I set up the {product} so it works with {feature}?",
        "Can you explain how to share a report with my colleagues?",
    ],
}
LABELS = sorted(TEMPLATES)
INSTRUCTION = ("Classify the support ticket into one of these queues: " + ", ".join(LABELS)
               + ". Answer with the queue name only.")
OPENINGS = ["", "", "Hi, ", "Hello, ", "Hi there, ", "Good morning, ", "Hey team, ", "Dear support, ", "Urgent: "]
CLOSINGS = ["", "", " Thanks.", " Thanks in advance!", " Cheers, {name}", " Regards, {name}", " Please help.",
            " -- {name}", " Thank you for your help."]
SLOTS = {
    "amount": ["$9.99", "$19", "$49.00", "EUR 29", "$120", "£15", "$4.50", "$299"],
    "plan": ["Basic", "Pro", "Team", "Business", "Starter", "Premium"],
    "invoice": ["INV-{n}"],
    "order": ["#{n}", "{n}", "ORD-{n}"],
    "account": ["acct-{n}", "team-{n}", "ws-{name}-{n}"],
    "code": ["E{n}", "500", "403", "ERR_{n}", "0x{n}"],
    "day": ["Monday", "Tuesday", "Friday", "the 3rd", "the 15th", "last week", "the weekend"],
    "app": ["iOS", "Android", "desktop", "Mac", "Windows", "web"],
    "device": ["iPhone", "Android phone", "iPad", "laptop", "Chromebook", "work PC", "tablet"],
    "feature": ["the report builder", "auto-backup", "the calendar view", "bulk import", "invoicing",
                "the team chat", "offline mode", "scheduled exports"],
    "product": ["wireless keyboard", "USB-C hub", "webcam", "desk lamp", "headset", "docking station",
                "mouse", "monitor stand"],
    "name": ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun"],
}


def fill(text: str, rng: random.Random) -> str:
    """Fill every {slot} (slot values may have their own {n} or {name})."""
    while "{" in text:
        start = text.index("{")
        slot = text[start + 1 : text.index("}", start)]
        value = str(rng.randint(1000, 99999)) if slot == "n" else rng.choice(SLOTS[slot])
        text = text[:start] + value + text[text.index("}", start) + 1 :]
    return text


def ticket(label: str, rng: random.Random) -> str:
    body = rng.choice(TEMPLATES[label])
    opening = rng.choice(OPENINGS)
    keep_case = not opening.endswith(", ") or body.startswith(("I ", "I'"))
    text = opening + (body if keep_case else body[0].lower() + body[1:]) + rng.choice(CLOSINGS)
    return fill(text, rng)


def unique_tickets(label: str, count: int, rng: random.Random, seen: set[str]) -> list[str]:
    tickets: list[str] = []
    while len(tickets) < count:
        text = ticket(label, rng)
        key = " ".join(text.casefold().split())
        if key not in seen:
            seen.add(key)
            tickets.append(text)
    return tickets


def row(text: str, label: str) -> dict:
    return {"messages": [{"role": "user", "content": f"{INSTRUCTION}\nTicket: {text}"},
                         {"role": "assistant", "content": label}]}


def write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    rng = random.Random(SEED)
    seen: set[str] = set()
    train, held = [], []
    for label in LABELS:
        tickets = unique_tickets(label, N_TRAIN_PER_LABEL + N_EVAL_PER_LABEL, rng, seen)
        train += [row(text, label) for text in tickets[:N_TRAIN_PER_LABEL]]
        held += [row(text, label) for text in tickets[N_TRAIN_PER_LABEL:]]
    rng.shuffle(train)
    rng.shuffle(held)
    OUT_DIR.mkdir(exist_ok=True)
    write_rows(OUT_DIR / "train.jsonl", train)
    write_rows(OUT_DIR / "eval.jsonl", held)
    print(f"wrote {len(train)} train and {len(held)} eval rows ({len(LABELS)} labels) to {OUT_DIR}")


if __name__ == "__main__":
    main()
