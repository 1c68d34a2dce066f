"""Accuracy and speed of the PII scanner: per-kind precision/recall/F1 on the labelled fixture, and `find`
throughput on the fixture and on synthetic PII-free chat messages (~300 characters, digits included, as in
real conversational data). The synthetic messages also count as a false-positive check: any finding is wrong.

    .venv/bin/python benchmarks/pii_accuracy.py [--rows 20000] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

from tunesmith.data.pii import PII_KINDS, PiiScanner, score_findings

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "pii_labelled.jsonl"

SENTENCES = (
    "Sure, I can help with that.", "Thanks for reaching out!", "Let me know if anything else comes up.",
    "Your order from {date} shipped on {date2} and should arrive within {n} days.",
    "The total was ${price}, including {pct}% tax.", "Version {ver} fixes the crash you reported.",
    "Try restarting the app; it usually takes {n} or {n2} minutes.", "The meeting moved to {time} on {date}.",
    "Invoice INV-{year}-{id4} lists {n} items.", "Set the learning rate to {lr} and train for {steps} steps.",
    "Chapter {n} explains gradient descent with {n2} worked examples.", "We sold {big} units in {year}.",
    "The recipe needs {n} eggs, {n2} cups of flour and {half} cups of milk.", "Room {n}{n2}, floor {n}, is free.",
    "Order ORD-{year}-{id6} is waiting for pickup.", "Reboot the router, then wait {n2} seconds.",
    "In {year} we moved to a new provider, so older links won't work.", "It's {temp} degrees in Paris today.",
    "Use batch size {pow2} with {n} gradient accumulation steps.", "The flight departs at {time} from gate B{n2}.",
    "Python {ver} and Node {ver} are installed on the runner.", "Section {n}.{n2} covers the edge cases.",
    "The score was {n}-{n2} at half time.", "About {pct}% of the rows were duplicates, so we dropped {big}.",
    "Please open Settings, choose Security and click Reset.", "Could you summarize this article in three sentences?",
)


def synthetic_chat(count: int, seed: int = 0) -> list[str]:
    """PII-free chat messages of roughly 300 characters, each made of sentences from SENTENCES."""
    rng = random.Random(seed)
    messages = []
    for _ in range(count):
        parts: list[str] = []
        while sum(map(len, parts)) < 280:
            parts.append(fill(rng.choice(SENTENCES), rng))
        messages.append(" ".join(parts))
    return messages


def fill(template: str, rng: random.Random) -> str:
    values = {
        "date": f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "date2": f"{rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}/2024", "n": rng.randint(1, 9),
        "n2": rng.randint(10, 60), "price": f"{rng.randint(1, 2999):,}.{rng.randint(0, 99):02d}",
        "pct": rng.randint(1, 30), "ver": f"{rng.randint(1, 20)}.{rng.randint(0, 12)}.{rng.randint(0, 9)}",
        "time": f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}", "year": rng.randint(1990, 2025),
        "id4": f"{rng.randint(1, 9999):04d}", "id6": f"{rng.randint(1, 999999):06d}",
        "lr": rng.choice(["2e-4", "1e-5"]), "steps": rng.randint(100, 5000), "big": f"{rng.randint(1000, 999999):,}",
        "half": rng.choice(["1.5", "0.5"]),
        "temp": round(rng.uniform(-5, 35), 1), "pow2": rng.choice([8, 16, 32, 64]),
    }
    return template.format(**values)


def strings_per_second(find: Callable[[str], object], texts: list[str], min_calls: int = 20_000) -> dict[str, float]:
    """Wall-clock and CPU-time rates: on a shared machine the CPU rate is what one core of the pipeline gets."""
    repeats = max(1, -(-min_calls // len(texts)))
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        for text in texts:
            find(text)
    calls = repeats * len(texts)
    return {"wall": calls / (time.perf_counter() - wall), "cpu": calls / (time.process_time() - cpu)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="synthetic PII-free chat messages to scan")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    scanner = PiiScanner(engine="regex")
    labelled = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]
    scores = score_findings(scanner, labelled)
    print(f"{'kind':<12} {'TP':>4} {'FP':>4} {'FN':>4} {'precision':>9} {'recall':>7} {'F1':>6}")
    for kind in (*PII_KINDS, "ALL"):
        s = scores[kind]
        print(f"{kind:<12} {s.true_positives:>4} {s.false_positives:>4} {s.false_negatives:>4} "
              f"{s.precision:>9.3f} {s.recall:>7.3f} {s.f1:>6.3f}")

    chat = synthetic_chat(args.rows)
    fixture_texts = [row["text"] for row in labelled]
    throughput = {"fixture": strings_per_second(scanner.find, fixture_texts),
                  "synthetic_chat": strings_per_second(scanner.find, chat, min_calls=len(chat))}
    false_alarms = sum(len(scanner.find(text)) for text in chat)
    mean_chars = sum(map(len, chat)) / len(chat)
    print(f"\n{'find throughput':<42} {'wall':>12} {'CPU time':>12}")
    for name, label in (("fixture", f"fixture ({len(fixture_texts)} strings)"),
                        ("synthetic_chat", f"synthetic chat ({len(chat)} x {mean_chars:.0f} chars)")):
        rate = throughput[name]
        print(f"{label:<42} {rate['wall']:>10,.0f}/s {rate['cpu']:>10,.0f}/s")
    print(f"findings in the PII-free chat (all false positives): {false_alarms}")
    if args.json:
        result = {"scores": {kind: {"precision": s.precision, "recall": s.recall, "f1": s.f1,
                                    "tp": s.true_positives, "fp": s.false_positives, "fn": s.false_negatives}
                             for kind, s in scores.items()},
                  "strings_per_second": throughput, "synthetic_false_positives": false_alarms}
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
