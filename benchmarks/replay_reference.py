"""The replay anchor's kept base log-probabilities (train/replay.py BaseReference) against a base pass at every
draw: the same `tunesmith train`, side by side, each in its own subprocess, on two bundled tasks of different
kinds (order-to-JSON: recipes/quickstart.yaml; ticket labels: recipes/tickets.yaml), 64 training rows each for
three epochs (24 steps of 8 rows, the time budget's epoch cap), so each of the 32 replay rows is drawn three times.

    .venv/bin/python benchmarks/replay_reference.py [--rows 64] [--steps 24]

The "every draw" variant sets the cache's limit to 0 bytes, which is how a run whose replay rows exceed the limit
runs. Reports seconds of training, tokens/s, MFU, base passes, peak RSS and the logged losses of both (they differ
only by float rounding: the kept rows were computed beside other rows, padded to another length). Writes
benchmarks/results/replay_reference.json.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from tunesmith.runs import atomic_write_json, environment_snapshot

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "replay_reference.json"
TASKS = {"quickstart": "recipes/quickstart.yaml", "tickets": "recipes/tickets.yaml"}


def child_script(patch: str) -> str:
    """A `python -c` script that runs `tunesmith ARGS...` (its arguments after the first) in its own process, after
    `patch` (Python lines that may read the first argument, sys.argv[1]), and prints its peak RSS as `VmHWM_kB N`
    to stderr at exit."""
    return patch + """
import atexit, re, sys
def peak():
    status = open("/proc/self/status").read()
    print("VmHWM_kB", re.search(r"VmHWM:\\s+(\\d+)", status).group(1), file=sys.stderr)
atexit.register(peak)
from tunesmith.cli.app import main
sys.argv = ["tunesmith", *sys.argv[2:]]
main()
"""


# The cache's limit replaced when the first argument is "every-draw"
CHILD = child_script("""
import sys
import tunesmith.train.replay as replay
if sys.argv[1] == "every-draw":
    replay.reference_cache_limit = lambda device: 0
""")


def first_rows(source: Path, count: int, target: Path) -> Path:
    lines = source.read_text(encoding="utf-8").splitlines()[:count]
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


def train(variant: str, recipe: str, overrides: list[str], runs: Path) -> dict:
    flags = [flag for item in overrides for flag in ("--set", item)]
    command = [sys.executable, "-c", CHILD, variant, "train", str(REPO / recipe), "--runs-dir", str(runs), *flags]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"failed": f"exit code {done.returncode}: {done.stderr[-2000:]}"}
    run = max(runs.iterdir(), key=lambda p: p.stat().st_mtime)
    report = json.loads((run / "train.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    speed = report["throughput"]
    peak = re.search(r"VmHWM_kB (\d+)", done.stderr)
    return {"seconds": speed["seconds"], "real_tokens_per_s": speed["real_tokens_per_s"], "mfu": speed["mfu"],
            "peak_rss_mb": round(int(peak.group(1)) / 1024, 1) if peak else None,
            "base_reference": report["replay"].get("base_reference"),
            "anchor_base_tokens": speed.get("anchor_base_tokens"), "anchor_tokens": speed.get("anchor_tokens"),
            "losses": [m["loss"] for m in metrics if "loss" in m and "eval_loss" not in m],
            "replay_kl": [round(m["replay_kl"], 5) for m in metrics if "replay_kl" in m]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--steps", type=int, default=24)
    args = parser.parse_args()
    results = {"rows": args.rows, "steps": args.steps, "environment": environment_snapshot(), "tasks": {}}
    with tempfile.TemporaryDirectory(prefix="tunesmith-replay-reference-") as tmp:
        for task, recipe in TASKS.items():
            data = REPO / "examples" / "data" / ("orders" if task == "quickstart" else task)
            subset = first_rows(data / "train.jsonl", args.rows, Path(tmp) / f"{task}.jsonl")
            overrides = [f"data.train={subset}", f"training.max_steps={args.steps}", "training.epochs=3",
                         "training.logging_steps=1", "training.save_steps=100000"]
            variants = {name: train(name, recipe, overrides, Path(tmp) / task / name)
                        for name in ("kept", "every-draw")}
            kept, every = variants["kept"], variants["every-draw"]
            if "failed" not in kept and "failed" not in every:
                variants["speedup"] = round(every["seconds"] / kept["seconds"], 3)
                variants["largest_loss_difference"] = max(
                    (abs(a - b) for a, b in zip(kept["losses"], every["losses"], strict=True)), default=0.0)
            results["tasks"][task] = variants
            print(task, json.dumps({k: v for k, v in variants.items() if k in ("speedup", "largest_loss_difference")}),
                  flush=True)
    atomic_write_json(RESULTS, results)
    for task, variants in results["tasks"].items():
        for name in ("kept", "every-draw"):
            v = variants[name]
            print(f"| {task} | {name} | {v.get('seconds')} | {v.get('real_tokens_per_s')} | {v.get('mfu')} | "
                  f"{v.get('peak_rss_mb')} | {(v.get('base_reference') or {}).get('base_passes')} |")


if __name__ == "__main__":
    main()
