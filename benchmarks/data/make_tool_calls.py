"""Write benchmarks/data/tools/: rows that end in a tool call (or, one in five, in a plain answer that needs no
tool), to measure that eval scores the calls (tool_call_match) and that LLaMA-Factory's ShareGPT tool rows train.

- `train.jsonl`, `eval.jsonl`: OpenAI chat rows with `tools` (weather, currency, timer), the developed-on kind;
- `heldout_llamafactory.json`: another kind, written in LLaMA-Factory's ShareGPT layout (`function_call` turns,
  a `tools` JSON string of bare schemas): a calendar and a unit converter the model never trained on, so only the
  schemas in the prompt tell it what to call.

    .venv/bin/python benchmarks/data/make_tool_calls.py
    .venv/bin/tunesmith train benchmarks/data/tool_calls.yaml --evaluate
    .venv/bin/tunesmith eval runs/tool-calls-* --data benchmarks/data/tools/heldout_llamafactory.json
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CITIES = ["Oslo", "Lima", "Cairo", "Perth", "Quito", "Dakar", "Hanoi", "Porto", "Tunis", "Riga", "Accra", "Bern"]
CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF", "NOK"]


def schema(name: str, description: str, **properties: str) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": {key: {"type": kind} for key, kind in properties.items()},
        "required": list(properties)}}}


TRAIN_TOOLS = [schema("get_weather", "Current weather in a city.", city="string"),
               schema("convert_currency", "Convert an amount of money.", amount="number", source="string",
                      target="string"),
               schema("set_timer", "Start a countdown timer.", minutes="integer")]
HELDOUT_TOOLS = [schema("add_event", "Add an event to the calendar.", title="string", date="string"),
                 schema("convert_units", "Convert a length or weight.", value="number", source="string",
                        target="string")]
SMALL_TALK = [("Hi there!", "Hello! How can I help?"), ("Thanks a lot.", "You're welcome!"),
              ("Who are you?", "I'm an assistant that can check weather, convert money and set timers."),
              ("Good morning", "Good morning! What can I do for you?")]


def call(name: str, **arguments: object) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def train_kind_row(rng: random.Random) -> dict:
    """A weather, currency or timer request and its call; one in five is small talk answered in words."""
    pick = rng.randrange(5)
    if pick == 0:
        question, answer = rng.choice(SMALL_TALK)
        return {"tools": TRAIN_TOOLS, "messages": [{"role": "user", "content": question},
                                                   {"role": "assistant", "content": answer}]}
    if pick in (1, 2):
        city = rng.choice(CITIES)
        question = rng.choice([f"What's the weather in {city}?", f"Is it raining in {city} right now?",
                               f"How warm is it in {city}?"])
        tool_call = call("get_weather", city=city)
    elif pick == 3:
        amount, source, target = rng.randint(5, 900), *rng.sample(CURRENCIES, 2)
        question = rng.choice([f"Convert {amount} {source} to {target}.",
                               f"How much is {amount} {source} in {target}?"])
        tool_call = call("convert_currency", amount=amount, source=source, target=target)
    else:
        minutes = rng.randint(1, 90)
        question = rng.choice([f"Set a timer for {minutes} minutes.", f"Remind me in {minutes} minutes."])
        tool_call = call("set_timer", minutes=minutes)
    return {"tools": TRAIN_TOOLS, "messages": [{"role": "user", "content": question},
                                               {"role": "assistant", "content": "", "tool_calls": [tool_call]}]}


def llamafactory_row(rng: random.Random) -> dict:
    """A calendar or unit request in LLaMA-Factory's ShareGPT layout, with tools the training never saw."""
    if rng.random() < 0.5:
        title = rng.choice(["Dentist", "Team lunch", "Gym", "Call mum", "Book club"])
        date = f"2027-0{rng.randint(1, 9)}-{rng.randint(10, 28)}"
        question, payload = f"Put '{title}' in my calendar on {date}.", {"name": "add_event",
                                                                         "arguments": {"title": title, "date": date}}
    else:
        value = rng.randint(2, 500)
        source, target = rng.choice([("km", "miles"), ("kg", "pounds"), ("cm", "inches")])
        question = f"How many {target} is {value} {source}?"
        payload = {"name": "convert_units", "arguments": {"value": value, "source": source, "target": target}}
    return {"conversations": [{"from": "human", "value": question},
                              {"from": "function_call", "value": json.dumps(payload)}],
            "tools": json.dumps([tool["function"] for tool in HELDOUT_TOOLS])}


def main() -> None:
    rng = random.Random(11)
    folder = Path(__file__).resolve().parent / "tools"
    folder.mkdir(exist_ok=True)
    for name, count in (("train", 120), ("eval", 24)):
        rows = [train_kind_row(rng) for _ in range(count)]
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    rows = [llamafactory_row(rng) for _ in range(24)]
    (folder / "heldout_llamafactory.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
