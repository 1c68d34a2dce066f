"""Short rows with a long tail: what a fixed micro-batch size costs, and what per-step micro-batches could win.

The data: the first 62 bundled tickets rows (~100 tokens) and the two longest of the benchmark's spread rows
(~960 tokens), shuffled; 32 held-out tickets rows. `tunesmith train` twice, replay off, one epoch at batch 8:
- `unmerged`: 8 micro-batches of one row a step, as the plan sizes them by the longest row (`plan/fit.py`
  `cpu_micro_batches`: up to 1,024 tokens), the short-row steps too: the default before micro-batch merging, and
  what a recipe that sets training.grad_accum itself runs;
- `default`: those micro-batches merged by length into fewer passes of up to the tokens one was sized for
  (`train/micro_batches.py`);
- `whole`: `training.grad_accum: 1`, each step one micro-batch of 8 rows padded to its longest.
For each: tokens/s (not padding), padding share, wall seconds of the steps, and the seconds of each optimizer step
(from the trainer's log). Writes benchmarks/results/long_tail_batches.json.

    .venv/bin/python benchmarks/long_tail_batches.py
"""

from __future__ import annotations

import itertools
import json
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "long_tail_batches.json"
SETTINGS = {"unmerged": "  batch_size: 1\n  grad_accum: 8\n", "default": "", "whole": "  grad_accum: 1\n"}


def write_data(folder: Path) -> tuple[Path, Path]:
    from tunesmith.bench import spread_rows

    tickets = ROOT / "examples" / "data" / "tickets"
    rows = [json.loads(line) for line in (tickets / "train.jsonl").read_text().splitlines()[:62]]
    rows += sorted(spread_rows(24, seed=3), key=lambda r: -len(r["messages"][0]["content"]))[:2]
    random.Random(0).shuffle(rows)
    held = [json.loads(line) for line in (tickets / "eval.jsonl").read_text().splitlines()[:32]]
    train, evaluation = folder / "train.jsonl", folder / "eval.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    evaluation.write_text("".join(json.dumps(r) + "\n" for r in held), encoding="utf-8")
    return train, evaluation


def step_seconds(log: str, steps: int) -> list[float]:
    """Seconds of each of the `steps` optimizer steps, from the training progress bar's elapsed times (`3/8
    [00:43<`, the first bar of that total in the log), whole seconds."""
    elapsed: dict[int, int] = {}
    for step, total, minutes, seconds in re.findall(r"(\d+)/(\d+) \[(\d+):(\d+)<", log):
        if int(total) != steps:
            continue
        elapsed[int(step)] = int(minutes) * 60 + int(seconds)
        if int(step) == steps:
            break
    marks = [0] + [elapsed[s] for s in sorted(elapsed) if s > 0]
    return [b - a for a, b in itertools.pairwise(marks)]


def main() -> None:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        train, evaluation = write_data(folder)
        for name, extra in SETTINGS.items():
            recipe = folder / f"{name}.yaml"
            recipe.write_text(f"name: tail-{name}\nmodel:\n  source: smollm2-135m-instruct\ndata:\n  train: {train}\n"
                              f"  eval: {evaluation}\n  replay:\n    ratio: 0\ntraining:\n  epochs: 1\n"
                              f"  save_steps: 100000\n{extra}", encoding="utf-8")
            done = subprocess.run([str(Path(sys.executable).parent / "tunesmith"), "train", str(recipe), "--runs-dir",
                                   str(folder / "runs")], capture_output=True, text=True, check=True)
            log = done.stdout + done.stderr
            run = sorted((folder / "runs").glob(f"tail-{name}-*"))[-1]
            report = json.loads((run / "train.json").read_text())
            speed = report["throughput"]
            results[name] = {key: speed[key] for key in ("real_tokens", "real_tokens_per_s", "padding_share",
                                                         "seconds")}
            results[name]["step_seconds"] = step_seconds(log, report["steps"])
            print(f"{name}: {speed['real_tokens_per_s']} tokens/s, {speed['padding_share']:.0%} padding, "
                  f"{speed['seconds']} s; steps {results[name]['step_seconds']}", flush=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
