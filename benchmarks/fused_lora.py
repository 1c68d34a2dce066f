"""PEFT's LoRA layers against tunesmith's fused ones (train/fused_lora.py), one training step side by side in one run.

SmolLM2-135M with LoRA r 16 on every linear layer, the last 30 tokens of each row carrying loss; each way in its own
subprocess (so its peak RSS is its own), the fastest of four timed steps after a warm-up:
- `peft-bf16` / `fused-bf16`: the frozen linears in bf16 (`training.precision: auto` on a CPU with fast bf16);
- `peft-fp32` / `fused-fp32`: fp32 throughout (`training.precision: fp32`).
Cases: one row of 1,000 tokens, 8 rows of 112. Reports step seconds, peak RSS, the fused way's speed-up and memory
ratio to PEFT's, and its LoRA gradients' relative distance from PEFT's in the same dtype. Writes
benchmarks/results/fused_lora.json.

    .venv/bin/python benchmarks/fused_lora.py
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).parent / "results" / "fused_lora.json"
CASES = ((1000, 1), (112, 8))  # (tokens a row, rows)
WAYS = ("peft-bf16", "fused-bf16", "peft-fp32", "fused-fp32")
ANSWER = 30


def step(way: str, length: int, rows: int, grads_file: Path) -> dict[str, float]:
    from lora_step import answer_batch, fastest_step, lora_smollm2, save_grads

    from tunesmith.train.frozen_matmuls import cast_frozen_linears
    from tunesmith.train.fused_lora import fuse_lora_linears
    from tunesmith.train.upstream import score_only_labelled_positions

    score_only_labelled_positions()
    model = lora_smollm2()
    if way.endswith("bf16"):
        cast_frozen_linears(model)
    if way.startswith("fused"):
        fuse_lora_linears(model)
    model.train()
    best, loss = fastest_step(model, answer_batch(rows, length, ANSWER), timed=4)
    save_grads(model, grads_file)
    return {"step_s": round(best, 3), "loss": round(loss, 5),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    from lora_step import as_worker, run_ways

    if as_worker(step):
        return
    import torch

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for length, rows in CASES:
            case = run_ways(__file__, WAYS, length, rows, Path(tmp))
            for dtype in ("bf16", "fp32"):
                peft, fused = (torch.load(Path(tmp) / f"{w}-{dtype}-{length}.pt") for w in ("peft", "fused"))
                figures = case[f"fused-{dtype}"]
                figures["grad_relative_to_peft"] = float(f"{((fused - peft).norm() / peft.norm()).item():.2e}")
                figures["speedup"] = round(case[f"peft-{dtype}"]["step_s"] / figures["step_s"], 3)
                figures["memory_ratio"] = round(figures["peak_rss_mb"] / case[f"peft-{dtype}"]["peak_rss_mb"], 3)
                print(f"{rows} x {length} tokens, {dtype}: PEFT {case[f'peft-{dtype}']['step_s']} s "
                      f"{case[f'peft-{dtype}']['peak_rss_mb']:,.0f} MB, fused {figures['step_s']} s "
                      f"{figures['peak_rss_mb']:,.0f} MB ({figures['speedup']}x, memory {figures['memory_ratio']}), "
                      f"LoRA grads {figures['grad_relative_to_peft']} from PEFT's", flush=True)
            results[f"{rows}x{length}"] = case
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
