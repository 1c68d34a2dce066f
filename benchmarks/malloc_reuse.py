"""glibc's malloc keeping freed blocks for the next step (train/upstream.py `keep_freed_blocks_for_reuse`, set when
training on a CPU without activation checkpointing) against glibc's defaults: the same `tunesmith train`, side by
side, each in its own subprocess, on two bundled tasks of different kinds (order-to-JSON: recipes/quickstart.yaml;
ticket labels: recipes/tickets.yaml), the recipe as bundled with `training.max_steps` steps (12 by default), and
with `--tasks spread` on `tunesmith bench train`'s spread rows (24 rows of 40-1,000 tokens, batch 8 at max_length
1,024: one epoch, 3 steps).

    .venv/bin/python benchmarks/malloc_reuse.py [--tasks quickstart,tickets,spread] [--steps 12] [--repeats 1]
        [--out NAME.json]

The "glibc-default" variant replaces the setting with a no-op, which is how training ran before it. Each repeat
runs glibc-default then kept, task by task. Reports seconds of training, tokens/s, MFU, the process's CPU seconds
in user space and in the kernel (page faults: zeroing fresh pages), peak RSS, and the logged losses (the same
arithmetic either way, so they must match). Writes benchmarks/results/malloc_reuse.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from replay_reference import child_script  # benchmarks/ is on sys.path when a script in it runs

from tunesmith.runs import atomic_write_json, environment_snapshot

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "malloc_reuse.json"
TASKS = {"quickstart": "recipes/quickstart.yaml", "tickets": "recipes/tickets.yaml"}
VARIANTS = ("glibc-default", "kept")
# The malloc setting made a no-op when the first argument says so
CHILD = child_script("""
import sys
import tunesmith.train.common as common
if sys.argv[1] == "glibc-default":
    common.keep_freed_blocks_for_reuse = lambda: False
""")


def spread_overrides(folder: Path) -> list[str]:
    """The quickstart recipe pointed at `tunesmith bench train`'s spread rows, at its batch and max_length."""
    from tunesmith.bench import dataset_files

    train, held = dataset_files("spread", 24, folder)
    return [f"data.train={train}", f"data.eval={held}", "data.max_length=1024", "training.batch_size=8",
            "training.max_steps=-1", "eval.task_metric=exact_match"]


def train(variant: str, recipe: str, overrides: list[str], runs: Path) -> dict:
    flags = [flag for item in ["training.logging_steps=1", "training.save_steps=100000", *overrides]
             for flag in ("--set", item)]
    command = [sys.executable, "-c", CHILD, variant, "train", str(REPO / recipe), "--runs-dir", str(runs), *flags]
    with tempfile.TemporaryFile() as err:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        return {"failed": f"exit code {os.waitstatus_to_exitcode(status)}: {stderr[-2000:]}"}
    run = max(runs.iterdir(), key=lambda p: p.stat().st_mtime)
    speed = json.loads((run / "train.json").read_text())["throughput"]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    peak = re.search(r"VmHWM_kB (\d+)", stderr)
    return {"seconds": speed["seconds"], "real_tokens_per_s": speed["real_tokens_per_s"], "mfu": speed["mfu"],
            "user_s": round(usage.ru_utime, 1), "kernel_s": round(usage.ru_stime, 1),
            "minor_page_faults": usage.ru_minflt,
            "peak_rss_mb": round(int(peak.group(1)) / 1024, 1) if peak else None,
            "losses": [m["loss"] for m in metrics if "loss" in m and "eval_loss" not in m]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="quickstart,tickets")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", help="a file name in benchmarks/results/ instead of malloc_reuse.json")
    args = parser.parse_args()
    results = {"steps": args.steps, "tasks_run": args.tasks, "environment": environment_snapshot(), "tasks": {}}
    with tempfile.TemporaryDirectory(prefix="tunesmith-malloc-reuse-") as tmp:
        for task in args.tasks.split(","):
            recipe = TASKS.get(task, TASKS["quickstart"])
            overrides = spread_overrides(Path(tmp) / "spread") if task == "spread" else \
                [f"training.max_steps={args.steps}"]
            runs = [{name: train(name, recipe, overrides, Path(tmp) / f"{task}-{name}-{repeat}")
                     for name in VARIANTS} for repeat in range(args.repeats)]
            for variants in runs:
                before, after = variants["glibc-default"], variants["kept"]
                if "failed" not in before and "failed" not in after:
                    variants["speedup"] = round(before["seconds"] / after["seconds"], 3)
                    variants["same_losses"] = before["losses"] == after["losses"]
                print(task, json.dumps({k: variants.get(k) for k in ("speedup", "same_losses")}), flush=True)
            results["tasks"][task] = runs
    print("| task | malloc | training s | tokens/s | MFU | kernel CPU s | minor page faults | peak RSS MB |")
    for task, runs in results["tasks"].items():
        for variants in runs:
            for name in VARIANTS:
                v = variants[name]
                print(f"| {task} | {name} | {v.get('seconds')} | {v.get('real_tokens_per_s')} | {v.get('mfu')} | "
                      f"{v.get('kernel_s')} | {v.get('minor_page_faults')} | {v.get('peak_rss_mb')} |")
    atomic_write_json(RESULTS.with_name(args.out) if args.out else RESULTS, results)


if __name__ == "__main__":
    main()
