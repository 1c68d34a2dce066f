"""Does the replay anchor keep the base for the methods beyond SFT? Each bundled recipe with and without it.

For each recipe (recipes/NAME.yaml, as it is) and each `data.replay.ratio`, the recipe is trained and evaluated
in process (`--set data.replay.ratio=R`; 0.5 is the default for dpo, kto, orpo and simpo), then asked the
held-out general questions (benchmarks/data/general_heldout.jsonl: kinds that neither the probes nor the replay
prompts hold) beside the bundled probes. `--score RUN...` scores runs trained earlier from those recipes instead
(their ratio read from the run's recipe). Writes benchmarks/results/method_replay.json, one entry per recipe and
ratio (a new measurement replaces its own), and prints one line each.

    .venv/bin/python benchmarks/method_replay.py --recipes dpo,kto --ratios 0,0.5
    .venv/bin/python benchmarks/method_replay.py --recipes dpo,orpo --ratios 0.5 --null-space 0.98
    .venv/bin/python benchmarks/method_replay.py --score /tmp/rm/runs/dpo-20261203-073220
    .venv/bin/python benchmarks/method_replay.py --recipes dpo,cpt --ratios 0.5 --frozen-matmuls bf16

`--frozen-matmuls bf16` trains with the frozen base's linear layers in bf16 (train/frozen_matmuls.py) for these
methods too, on a CPU with fast bf16, where the default keeps them fp32 outside SFT until measured: the entries say
which (`frozen_matmuls`), and one of each is kept.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train_and_score(name: str, ratio: float, runs_dir: Path, null_space: float | None = None) -> dict:
    from tunesmith.config import load_recipe
    from tunesmith.runs import create_run
    from tunesmith.train import run_training

    overrides = [f"data.replay.ratio={ratio}"]
    if null_space is not None:
        overrides.append(f"data.replay.null_space={null_space}")
    recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml", overrides)
    started = time.monotonic()
    run = create_run(recipe, runs_dir)
    run_training(recipe, run)
    return score(run.path, round(time.monotonic() - started, 1))


def score(run_path: Path, train_seconds: float | None = None) -> dict:
    """The run's eval (run now when missing), its probes and the held-out general questions."""
    from forgetting_settings import heldout_general

    from tunesmith.eval import run_eval
    from tunesmith.results import read_results
    from tunesmith.runs import open_run

    run = open_run(run_path)
    recipe = run.load_recipe()
    results_file = run.path / "eval" / "results.json"
    results = read_results(results_file if results_file.is_file() else run_eval(recipe, run))
    train = json.loads((run.path / "train.json").read_text(encoding="utf-8"))
    metric = results.headline_metric()
    return {"recipe": recipe.name, "method": recipe.method.kind, "replay_ratio": recipe.data.replay.ratio,
            "replay_weight": recipe.data.replay.weight, "null_space": recipe.data.replay.null_space or 0.0,
            "anchor_answer_tokens": (train.get("replay") or {}).get("anchor_answer_tokens"), "metric": metric,
            "base": results.base.get(metric) if results.base else None, "tuned": results.tuned.get(metric),
            "tuned_all": results.tuned,
            "probe_accuracy": {"base": results.probes.base.get("accuracy"),
                               "tuned": results.probes.tuned.get("accuracy")},
            "regression": results.probes.regression, "reasons": results.probes.reasons,
            "general_heldout": heldout_general(recipe, run),
            "train_seconds": train_seconds, "step_seconds": train["throughput"]["seconds"] / train["steps"],
            "replay": train.get("replay"), "run": str(run.path),
            "frozen_matmuls": (train.get("chosen", {}).get("frozen_matmuls") or {}).get("value", "fp32")}


def entry_key(entry: dict) -> tuple:
    """What one measurement is of: entries before data.replay.anchor_answer_tokens anchored the whole answers, and
    entries before data.replay.null_space had none."""
    return (entry["recipe"], entry["replay_ratio"], entry["replay_weight"], entry.get("anchor_answer_tokens"),
            entry.get("null_space", 0.0), entry.get("frozen_matmuls", "fp32"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="dpo,kto,orpo,simpo,cpt")
    parser.add_argument("--ratios", default="0,0.5")
    parser.add_argument("--null-space", type=float, help="data.replay.null_space (default: the method's default)")
    parser.add_argument("--frozen-matmuls", choices=("default", "bf16"), default="default",
                        help="bf16: the frozen base's linears in bf16 for these methods too (a CPU with fast bf16)")
    parser.add_argument("--score", nargs="+", type=Path, help="score these runs instead of training")
    parser.add_argument("--runs-dir", type=Path, default=Path("/tmp/tunesmith-method-replay"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/method_replay.json")
    args = parser.parse_args()
    entries = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else []
    if args.frozen_matmuls == "bf16":
        from tunesmith.config import load_recipe
        from tunesmith.plan import precision

        methods = {load_recipe(ROOT / "recipes" / f"{name}.yaml").method.kind for name in args.recipes.split(",")}
        precision.METHODS = (*precision.METHODS, *sorted(methods))
    if args.score:
        measured = (score(path) for path in args.score)
    else:
        measured = (train_and_score(name, float(ratio), args.runs_dir, args.null_space)
                    for name in args.recipes.split(",") for ratio in args.ratios.split(","))
    for entry in measured:
        entries = [e for e in entries if entry_key(e) != entry_key(entry)] + [entry]
        args.out.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
        held = entry["general_heldout"]
        print(f"{entry['recipe']} replay {entry['replay_ratio']} (weight {entry['replay_weight']:g}, anchor answer "
              f"tokens {entry['anchor_answer_tokens'] or 'all'}, null space {entry['null_space']:g}): "
              f"{entry['metric']} {entry['base']} -> {entry['tuned']}, probes {entry['probe_accuracy']['base']} -> "
              f"{entry['probe_accuracy']['tuned']} (regression {entry['regression']}), held-out general "
              f"{held['base']} -> {held['tuned']}, {entry['step_seconds']:.1f} s a step, frozen matmuls "
              f"{entry['frozen_matmuls']}")


if __name__ == "__main__":
    main()
