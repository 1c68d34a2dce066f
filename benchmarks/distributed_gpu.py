"""FSDP and DeepSpeed for real, on a GPU: the same recipe with `training.distributed` none, fsdp, deepspeed-zero2
and deepspeed-zero3, one process each (`--nproc 1`: accelerate's launcher, the strategy's own engine), issue 21.

A small random llama (SmolLM2's tokenizer) trains a LoRA for the same steps on the same rows under each strategy.
Reported per strategy: exit code, wall seconds, per-step losses and their largest difference from `none`, the
saved adapter's tensor names (they must be the one-process format, so that eval/merge/export need no change) and
its largest weight difference from `none`'s, and whether `load_tuned` loads it. Needs a CUDA GPU (accelerate turns
FSDP and DeepSpeed off on a CPU); DeepSpeed from `pip install 'tunesmith[distributed]'`.

    python benchmarks/distributed_gpu.py --tokenizer DIR [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from random_llama import build_random_llama

REPO = Path(__file__).resolve().parents[1]
ORDERS = REPO / "examples" / "data" / "orders"
STRATEGIES = ("none", "fsdp", "deepspeed-zero3", "deepspeed-zero2")  # none first: the reference
RECIPE = """name: distributed-{strategy}
model:
  source: {model}
data:
  train: {data}/train.jsonl
  eval: {data}/eval.jsonl
  max_length: 256
  replay:
    ratio: 0
adapter:
  r: 16
  alpha: 32
  dropout: 0.0
training:
  max_steps: 12
  batch_size: 8
  lr: 1.0e-3
  logging_steps: 1
  save_steps: 6
  packing: false
  warmup_ratio: 0.0
  distributed: {strategy}
eval:
  probes: false
"""


def run_strategy(strategy: str, model: Path, data: Path, root: Path, timeout: float) -> dict[str, Any]:
    recipe = root / f"{strategy}.yaml"
    recipe.write_text(RECIPE.format(strategy=strategy, model=model, data=data), encoding="utf-8")
    run_dir = root / "runs" / strategy
    launch = [] if strategy == "none" else ["--nproc", "1"]
    command = [sys.executable, "-m", "tunesmith", "train", str(recipe), "--run-dir", str(run_dir), *launch]
    started = time.monotonic()
    # its own process group, so that a launch that hangs is stopped with every rank it started
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root,
                               env=os.environ.copy(), start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        stderr += f"\n(stopped after {timeout:.0f} s)"
    result: dict[str, Any] = {"exit_code": process.returncode, "seconds": round(time.monotonic() - started, 1)}
    if process.returncode != 0:
        result["stderr_tail"] = stderr[-4000:]
        return result
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    result["losses"] = [r["loss"] for r in records if "loss" in r]
    train = json.loads((run_dir / "train.json").read_text())
    result["tokens_per_s"] = train.get("throughput", {}).get("real_tokens_per_s")
    result["files"] = sorted(p.name for p in (run_dir / "adapter").iterdir())
    result["launch_files"] = sorted(p.name for p in (run_dir / "launch").iterdir()) if (run_dir / "launch").is_dir() \
        else []
    result["run_dir"] = str(run_dir)
    return result


def adapter_tensors(run_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def compare_with_one_process(results: dict[str, dict[str, Any]]) -> None:
    from tunesmith.models.tuned import load_tuned
    from tunesmith.runs import Run

    reference = results.get("none", {"exit_code": None})
    ref_tensors = adapter_tensors(Path(reference["run_dir"])) if reference["exit_code"] == 0 else None
    for strategy, result in results.items():
        if result["exit_code"] != 0 or "load_tuned" in result:  # failed, or compared already
            continue
        tensors = adapter_tensors(Path(result["run_dir"]))
        result["adapter_tensors"] = len(tensors)
        try:
            load_tuned(Run(Path(result["run_dir"])))
            result["load_tuned"] = "ok"
        except Exception as error:  # recorded: whether it loads is the figure this check is for
            result["load_tuned"] = f"{type(error).__name__}: {error}"
        if ref_tensors is None or strategy == "none":
            continue
        result["same_tensor_names"] = sorted(tensors) == sorted(ref_tensors)
        # an adapter saved without gathering holds ZeRO-3's empty placeholders: other shapes, no difference to take
        result["same_shapes"] = result["same_tensor_names"] and all(
            tensors[k].shape == ref_tensors[k].shape for k in tensors)
        if result["same_shapes"]:
            result["max_weight_difference"] = max(
                float((tensors[k].float() - ref_tensors[k].float()).abs().max()) for k in tensors)
        steps = min(len(result["losses"]), len(reference["losses"]))
        result["max_loss_difference"] = max(abs(a - b) for a, b in zip(result["losses"][:steps],
                                                                         reference["losses"][:steps], strict=True))


def versions() -> dict[str, str]:
    from importlib import metadata

    import torch

    found = {"torch": torch.__version__, "cuda": str(torch.version.cuda),
             "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    for name in ("transformers", "accelerate", "peft", "trl", "deepspeed"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, required=True, help="a folder with a tokenizer (SmolLM2's)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--timeout", type=float, default=50.0, help="seconds each strategy's run may take")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "distributed_gpu.json")
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="tunesmith-distributed-") as tmp:
        root = Path(tmp)
        model = build_random_llama(args.tokenizer, root / "model", "small")
        for strategy in args.strategies.split(","):
            results[strategy] = run_strategy(strategy, model, ORDERS, root, args.timeout)
            print(strategy, {k: v for k, v in results[strategy].items() if k != "losses"}, flush=True)
            compare_with_one_process(results)
            write_report(args.out, results)  # after each strategy: a run stopped midway keeps what it measured
    print(json.dumps(json.loads(args.out.read_text()), indent=1))


def write_report(out: Path, results: dict[str, dict[str, Any]]) -> None:
    strategies = {name: {k: v for k, v in result.items() if k != "run_dir"} for name, result in results.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"versions": versions(), "strategies": strategies}, indent=1), encoding="utf-8")

if __name__ == "__main__":
    main()
