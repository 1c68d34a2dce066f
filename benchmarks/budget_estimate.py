"""How close is the time budget's first estimate of a step to the steps' own times, where micro-batches of long rows
carry fewer replay rows than a step has micro-batches? The bench's spread rows (24 rows of 40-1,024 tokens, batch 8
at max_length 1,024, planned as train plans them: micro-batches of one row, 2 replay rows a step), trained with
`training.time_budget` so that the budget measures before the first step, twice: as tunesmith does it (the anchor
timed apart and counted on the micro-batches that carry it) and as it did before 2026-12-05 (the anchor on every
measured micro-batch, `--as-before`). Prints and writes benchmarks/results/budget_estimate.json: the measured step
seconds against the mean of the steps' own.

    .venv/bin/python benchmarks/budget_estimate.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "budget_estimate.json"


def train_once(as_before: bool, work: Path) -> dict:
    from tunesmith.bench import dataset_files
    from tunesmith.config import validate_recipe
    from tunesmith.models import resolve_model_source
    from tunesmith.plan.fit import fit_recipe
    from tunesmith.runs import create_run
    from tunesmith.train import budget, run_training

    if as_before:  # the measurement as it was: every measured micro-batch with its replay row
        measure = budget.measure_step_seconds

        def measure_as_before(trainer, grad_accum):
            carrying, trainer.replay_micro_batches = trainer.replay_micro_batches, None
            try:
                return measure(trainer, grad_accum)
            finally:
                trainer.replay_micro_batches = carrying

        budget.measure_step_seconds = measure_as_before
    train, held = dataset_files("spread", 24, work / "data")
    recipe, _ = fit_recipe(validate_recipe({
        "name": "budget", "model": {"source": str(resolve_model_source("smollm2-135m-instruct"))},
        "data": {"train": str(train), "eval": str(held), "max_length": 1024},
        "training": {"batch_size": 8, "time_budget": "4m", "save_steps": 100_000}}))
    run = create_run(recipe, work / "runs")
    run_training(recipe, run)
    report = json.loads((run.path / "train.json").read_text())
    return {"micro_batch": recipe.training.batch_size, "grad_accum": recipe.training.grad_accum,
            "replay_rows_per_step": report["replay"]["rows_per_step"],
            "measured_step_s": report["time_budget"]["measured_step_s"], "steps": report["steps"],
            "steps_mean_s": round(report["throughput"]["seconds"] / report["steps"], 3)}


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        print(json.dumps(train_once(sys.argv[2] == "before", Path(sys.argv[3]))))
        return
    results = {}
    for way in ("now", "before"):
        with tempfile.TemporaryDirectory() as tmp:
            done = subprocess.run([sys.executable, __file__, "--worker", way, tmp], capture_output=True, text=True,
                                  check=True)
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        figures["estimate_over_steps"] = round(figures["measured_step_s"] / figures["steps_mean_s"], 3)
        results[way] = figures
        print(f"{way}: measured {figures['measured_step_s']} s a step, the steps' own {figures['steps_mean_s']} s "
              f"({figures['estimate_over_steps']}x), {figures['steps']} steps", flush=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
