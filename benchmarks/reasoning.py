"""Training answers with their reasoning vs the same answers without it, on two kinds of reasoning data.

Why: reasoning in a dataset's `reasoning_content` field was dropped without a word, and a reasoning model's answer
was scored with its thinking in it. Now the reasoning trains (as a <think> block for SmolLM2's template) and eval
scores the answer after </think>. This trains `recipes/reasoning.yaml` four times: on `totals/` (developed on;
reasoning in a field) and `clock/` (the held-out kind; reasoning as <think> blocks), each with its reasoning and
with the `plain/` copy of the same rows without, then reads each run's exact match (base and tuned), how many tuned
answers closed a <think> block, and the mean generated length.

    .venv/bin/python benchmarks/reasoning.py          # four runs, about 40 min on 2 idle CPU cores

Writes benchmarks/results/reasoning.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "reasoning.json"
DATA = REPO / "examples" / "data"


def train(runs_dir: Path, kind: str, with_reasoning: bool) -> Path:
    """`tunesmith train recipes/reasoning.yaml --evaluate` on `kind`, its rows with or without reasoning (probes
    off: the task is what is compared)."""
    train_file = DATA / kind / ("train.jsonl" if with_reasoning else "plain/train.jsonl")
    sets = [f"data.train={train_file}", f"data.eval={DATA / kind / 'eval.jsonl'}", "eval.probes=false",
            f"name={kind}-{'reasoning' if with_reasoning else 'plain'}"]
    subprocess.run([sys.executable, "-m", "tunesmith", "train", str(REPO / "recipes" / "reasoning.yaml"),
                    "--evaluate", "--runs-dir", str(runs_dir), *[arg for item in sets for arg in ("--set", item)]],
                   check=True)
    return max(runs_dir.iterdir(), key=lambda path: path.stat().st_mtime)


def figures(run_dir: Path) -> dict:
    results = json.loads((run_dir / "eval" / "results.json").read_text(encoding="utf-8"))
    outputs = [sample["tuned"] for sample in results["samples"]]  # the first 50 held-out rows' generations
    return {"exact_match": {variant: results[variant].get("exact_match") for variant in ("base", "tuned")},
            "max_new_tokens": results.get("max_new_tokens"),
            "tuned_closed_think": sum("</think>" in text for text in outputs),
            "tuned_answers": len(outputs),
            "tuned_sample": outputs[:2]}


def main() -> None:
    measured = {}
    with tempfile.TemporaryDirectory() as folder:
        for with_reasoning in (True, False):  # both kinds with reasoning first: the plain runs are the comparison
            for kind in ("totals", "clock"):
                run_dir = train(Path(folder), kind, with_reasoning)
                measured[f"{kind}/{'reasoning' if with_reasoning else 'plain'}"] = figures(run_dir)
                print(json.dumps(measured, indent=1), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(measured, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
