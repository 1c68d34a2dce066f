"""Do you need to fine-tune? Every baseline beside the tuned model on the bundled tasks, measured in one run.

For each bundled task (the quickstart's order → JSON, and the tickets classifier), the bundled recipe is trained
as it is, then evaluated with all four baselines (zero-shot, few-shot, constrained, few-shot + constrained) and
the tuned model; the forgetting probes are left out (they do not depend on the baselines). Writes
benchmarks/results/baselines.json and prints a Markdown table per task with scores, tuned − option (95% CI),
tokens and seconds per answer, and the verdict.

    .venv/bin/python benchmarks/baselines.py [--tasks quickstart tickets] [--max-examples 100]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINES = "[zero_shot, few_shot, constrained, few_shot_constrained]"


def measure(task: str, max_examples: int, runs_dir: Path) -> dict:
    from tunesmith.config import load_recipe
    from tunesmith.eval import run_eval
    from tunesmith.results import read_results
    from tunesmith.runs import create_run
    from tunesmith.train import run_training

    recipe = load_recipe(ROOT / "recipes" / f"{task}.yaml", [f"eval.baselines={BASELINES}", "eval.probes=false",
                                                              f"eval.max_examples={max_examples}"])
    run = create_run(recipe, runs_dir)
    started = time.monotonic()
    run_training(recipe, run)
    trained = time.monotonic() - started
    started = time.monotonic()
    results = read_results(run_eval(recipe, run))
    return {"task": task, "run": str(run.path), "train_seconds": round(trained, 1),
            "eval_seconds": round(time.monotonic() - started, 1), "examples": results.examples,
            "metrics": results.metrics, "task_metric": results.task_metric, "tuned": results.tuned,
            "baselines": results.baselines, "constraint": results.constraint,
            "baseline_comparison": {name: {m: c.model_dump() for m, c in entry.items()}
                                    for name, entry in results.baseline_comparison.items()},
            "verdict": results.verdict}


def markdown(entry: dict) -> str:
    from tunesmith.eval.verdict import option_rows

    head, rows = option_rows(entry["baselines"], entry["tuned"], entry["baseline_comparison"], entry["metrics"],
                             entry["task_metric"])
    lines = [f"**{entry['task']}** ({entry['examples']} held-out rows; training {entry['train_seconds']:.0f} s, "
             f"eval with all baselines {entry['eval_seconds']:.0f} s)", "",
             "| " + " | ".join(head) + " |", "|---" * len(head) + "|", *("| " + " | ".join(r) + " |" for r in rows),
             "", entry["verdict"] or ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["quickstart", "tickets"])
    parser.add_argument("--max-examples", type=int, default=100)
    parser.add_argument("--runs-dir", type=Path, default=Path("/tmp/tunesmith-baselines"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/baselines.json")
    args = parser.parse_args()
    entries = [measure(task, args.max_examples, args.runs_dir) for task in args.tasks]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    print("\n\n".join(markdown(entry) for entry in entries))


if __name__ == "__main__":
    main()
