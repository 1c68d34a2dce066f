"""`tunesmith plan`'s memory estimate against the measured peak, on recipes across methods, adapter kinds and
lengths: each case runs `tunesmith train` for two optimizer steps in its own subprocess (its peak RSS, read from
VmHWM, is its own), beside `plan_recipe(..., "cpu")` for the same recipe. Length-grouped batches put the
longest batch first, so two steps reach the run's peak.

    .venv/bin/python benchmarks/plan_memory.py [--only NAME,...]

Writes benchmarks/results/plan_memory.json and prints the README's table. The target: every estimate within
±25% of the measured peak.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from tunesmith.plan.devices import peak_rss_of_tunesmith

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "plan_memory.json"
STEPS = ["training.max_steps=2", "training.save_steps=1000", "training.logging_steps=1"]
# name: (recipe, --set overrides)
CASES: dict[str, tuple[str, list[str]]] = {
    "sft-lora-short": ("recipes/quickstart.yaml", []),
    "sft-lora-long": ("recipes/tickets.yaml", ["data.train={spread}", "data.eval={held}", "data.max_length=512"]),
    "sft-lora-long-checkpointed": ("recipes/tickets.yaml", ["data.train={spread}", "data.eval={held}",
                                                            "data.max_length=512",
                                                            "training.gradient_checkpointing=true"]),
    "sft-lora-long-b2": ("recipes/tickets.yaml", ["data.train={spread}", "data.eval={held}", "data.max_length=1024",
                                                  "training.batch_size=2"]),
    "sft-full": ("recipes/quickstart.yaml", ["adapter=full", "training.lr=1e-5", "training.batch_size=4"]),
    "sft-qlora": ("recipes/quickstart.yaml", ["adapter=qlora"]),
    "dpo-lora": ("recipes/dpo.yaml", []),
    "grpo-lora": ("recipes/grpo.yaml", []),
}


def recipe_file(recipe: str, sets: list[str], folder: Path) -> tuple[Path, list[str]]:
    """The recipe to run, and the overrides left: `adapter=KIND` replaces the whole adapter section (a copy of
    the recipe with absolute data paths is written to `folder`), since --set cannot drop the LoRA keys."""
    whole = [s.split("=", 1)[1] for s in sets if s.startswith("adapter=")]
    if not whole:
        return REPO / recipe, sets
    import yaml

    raw = yaml.safe_load((REPO / recipe).read_text(encoding="utf-8"))
    raw["adapter"] = {"kind": whole[0]}
    for key in ("train", "eval"):
        raw["data"][key] = str((REPO / recipe).parent / raw["data"][key])
    path = folder / f"{Path(recipe).stem}-{whole[0]}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path, [s for s in sets if not s.startswith("adapter=")]


def measured_peak(recipe: Path, sets: list[str], runs_dir: Path) -> tuple[float, int]:
    """Peak RSS in bytes of one `tunesmith train` process (its own VmHWM), and its exit code."""
    args = ["train", str(recipe), "--runs-dir", str(runs_dir)]
    for item in [*sets, *STEPS]:
        args += ["--set", item]
    peak, code, tail = peak_rss_of_tunesmith(args, runs_dir)
    if code:
        print(tail, file=sys.stderr)
    return peak, code


def estimated(recipe: Path, sets: list[str]) -> dict:
    from tunesmith.config import load_recipe
    from tunesmith.plan import plan_recipe

    report = plan_recipe(load_recipe(recipe, [*sets, *STEPS]), "cpu")
    return {"peak_bytes": report.peak_bytes, "components": {c.name: c.bytes for c in report.components},
            "sequences": report.sequences, "length": report.length}


def spread_files(folder: Path) -> dict[str, Path]:
    """Rows of 40 to ~1,000 tokens (tunesmith.bench's spread set): long rows that make activations count."""
    from tunesmith.bench import spread_rows

    files = {"spread": folder / "spread.jsonl", "held": folder / "held.jsonl"}
    for path, seed in zip(files.values(), (0, 1), strict=True):
        path.write_text("".join(json.dumps(row) + "\n" for row in spread_rows(32, seed)), encoding="utf-8")
    return files


def previous_peak(case: str) -> tuple[float, int]:
    saved = json.loads(RESULTS.read_text())[case]
    return saved["measured_bytes"], saved["exit_code"]


def save(row: dict) -> dict:
    """Add one case to benchmarks/results/plan_memory.json (kept per case across invocations); all cases."""
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    old[row["case"]] = row
    RESULTS.write_text(json.dumps(old, indent=2) + "\n")
    return old


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="")
    parser.add_argument("--estimate-only", action="store_true",
                        help="Recompute the estimates beside the peaks measured before (no training runs).")
    args = parser.parse_args()
    names = [n for n in CASES if not args.only or n in args.only.split(",")]
    old: dict = {}
    with tempfile.TemporaryDirectory() as runs:
        files = spread_files(Path(runs))
        for name in names:
            recipe, sets = recipe_file(CASES[name][0], [s.format(**files) for s in CASES[name][1]], Path(runs))
            plan = estimated(recipe, sets)
            peak, code = (previous_peak(name) if args.estimate_only else measured_peak(recipe, sets, Path(runs)))
            row = {"case": name, "recipe": CASES[name][0], "sets": CASES[name][1],
                   "estimated_bytes": plan["peak_bytes"],
                   "measured_bytes": peak, "exit_code": code, "ratio": round(plan["peak_bytes"] / peak, 3),
                   "components": plan["components"], "tokens": f"{plan['sequences']} x {plan['length']}"}
            print(f"{name:24} estimated {plan['peak_bytes'] / 2**30:6.2f} GiB  measured {peak / 2**30:6.2f} GiB  "
                  f"ratio {row['ratio']:.2f}  ({row['tokens']}){'  FAILED' if code else ''}", flush=True)
            old = save(row)
    print("\n| case | micro-batch | estimated GiB | measured GiB | estimate / measured |\n|---|---|---|---|---|")
    for r in old.values():
        print(f"| {r['case']} | {r['tokens']} | {r['estimated_bytes'] / 2**30:.2f} | "
              f"{r['measured_bytes'] / 2**30:.2f} | {r['ratio']:.2f} |")


if __name__ == "__main__":
    main()
