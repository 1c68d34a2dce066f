"""What tunesmith's defaults reach on each bundled task from a recipe that names only the data and a time budget.

For each task below, a recipe with `data.train`, `data.eval` and `training.time_budget` (nothing else: the
model, adapter, learning rate, steps, packing, replay and metrics are tunesmith's defaults) is trained and
evaluated, then asked the held-out general questions (benchmarks/data/general_heldout.jsonl) beside the
bundled forgetting probes. Writes benchmarks/results/defaults.json and prints one line per task: the task's
headline metric base -> tuned, probes base -> tuned, the regression flag, what the defaults chose and the
minutes it took (train + eval, as a user waits for them).

    .venv/bin/python benchmarks/defaults.py [--only routing] [--budget 10m]
    .venv/bin/python benchmarks/defaults.py --only routing --label no_replay --set data.replay.ratio=0
    .venv/bin/python benchmarks/defaults.py --only routing --rows 120 --budget none --label small-120

Entries are kept per task and label: a new measurement replaces only its own.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = {
    "routing": "examples/data/routing",  # a council message -> the one of 8 teams that must act (not keyword-separable)
    "tickets": "examples/data/tickets",  # a ticket -> one of 8 queues (classification, keyword-separable)
    "orders": "examples/data/orders",    # an order request -> JSON (the quickstart's data)
}


def minimal_recipe(task: str, budget: str | None, folder: Path, label: str, rows: int | None = None) -> Path:
    """The task's recipe with the data paths (the first `rows` training rows only, when given) and the budget
    (none: `budget` None, so the recipe says nothing of how long to train)."""
    data = ROOT / TASKS[task]
    recipe = folder / f"{task}-{label}.yaml"
    recipe.parent.mkdir(parents=True, exist_ok=True)
    train = data / "train.jsonl"
    if rows:
        lines = train.read_text(encoding="utf-8").splitlines()[:rows]
        train = folder / f"{task}-first-{rows}.jsonl"
        train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    timing = f"training:\n  time_budget: {budget}\n" if budget else ""
    recipe.write_text(f"name: {task}-{label}\ndata:\n  train: {train}\n  eval: {data / 'eval.jsonl'}\n{timing}",
                      encoding="utf-8")
    return recipe


def measure(task: str, budget: str | None, runs_dir: Path, overrides: list[str], label: str,
            trained_run: Path | None = None, rows: int | None = None) -> dict:
    """Train (or take `trained_run`, already trained from the same recipe: then only eval is timed) and score."""
    from forgetting_settings import heldout_general

    from tunesmith.config import load_recipe
    from tunesmith.eval import run_eval
    from tunesmith.results import headline_of, read_results
    from tunesmith.runs import create_run, open_run
    from tunesmith.train import run_training

    recipe = load_recipe(minimal_recipe(task, budget, runs_dir, label, rows), overrides)
    started = time.monotonic()
    if trained_run is None:
        run = create_run(recipe, runs_dir)
        run_training(recipe, run)
    else:
        run = open_run(trained_run)
    trained = time.monotonic() - started
    results = read_results(run_eval(recipe, run))
    minutes = round((time.monotonic() - started) / 60, 2)
    train = json.loads((run.path / "train.json").read_text(encoding="utf-8"))
    probes = results.probes
    metric = headline_of(results.metrics, results.tuned)
    return {"task": task, "label": label, "overrides": overrides, "budget": budget, "train_rows": rows,
            "minutes": minutes,
            "train_minutes": round(trained / 60, 2) if trained_run is None else None,  # None: trained earlier
            "metric": metric, "base": results.base.get(metric) if results.base else None,
            "tuned": results.tuned.get(metric), "tuned_all": results.tuned,
            "probe_accuracy": {"base": probes.base.get("accuracy"), "tuned": probes.tuned.get("accuracy")},
            "regression": probes.regression, "reasons": probes.reasons,
            "general_heldout": heldout_general(recipe, run),
            "chosen": {**train["chosen"], "metrics": results.metrics, "steps": train["steps"]},
            "time_budget": train.get("time_budget"), "replay": train.get("replay"),
            "eval_max_new_tokens": results.max_new_tokens,
            "run": str(run.path)}


def main() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(TASKS), default=list(TASKS))
    parser.add_argument("--budget", default="10m", help="training.time_budget; 'none': the recipe gives no budget")
    parser.add_argument("--rows", type=int, help="train on the first ROWS training rows only (a small dataset)")
    parser.add_argument("--runs-dir", type=Path, default=Path("/tmp/tunesmith-defaults"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe override (another setting to compare with the defaults)")
    parser.add_argument("--label", default="defaults", help="the entry's name in the results (with --set)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/defaults.json")
    parser.add_argument("--trained-run", type=Path, help="score this run, already trained with the same task, "
                        "budget and --set (its eval is timed alone)")
    args = parser.parse_args()
    entries = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else []
    for task in args.only:
        budget = None if args.budget == "none" else args.budget
        entry = measure(task, budget, args.runs_dir, args.overrides, args.label, args.trained_run, args.rows)
        entries = [e for e in entries if (e["task"], e.get("label", "defaults")) != (task, args.label)] + [entry]
        print(f"{task}: {entry['metric']} {entry['base']} -> {entry['tuned']}, probes "
              f"{entry['probe_accuracy']['base']} -> {entry['probe_accuracy']['tuned']} (regression "
              f"{entry['regression']}), held-out general {entry['general_heldout']['base']} -> "
              f"{entry['general_heldout']['tuned']}, {entry['chosen']['steps']} steps, {entry['minutes']} min",
              flush=True)
        args.out.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
