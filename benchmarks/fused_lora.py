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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "fused_lora.json"
CASES = ((1000, 1), (112, 8))  # (tokens a row, rows)
WAYS = ("peft-bf16", "fused-bf16", "peft-fp32", "fused-fp32")
ANSWER = 30


def step(way: str, length: int, rows: int, grads_file: Path) -> dict[str, float]:
    import torch
    from peft import LoraConfig, get_peft_model

    from tunesmith.models import load_model, resolve_model_source
    from tunesmith.train.frozen_matmuls import cast_frozen_linears
    from tunesmith.train.fused_lora import fuse_lora_linears
    from tunesmith.train.upstream import score_only_labelled_positions

    score_only_labelled_positions()
    torch.manual_seed(0)
    model = get_peft_model(load_model(resolve_model_source("smollm2-135m-instruct")),
                           LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:  # a trained-looking B, so that A gets gradients too
                parameter.normal_(0, 0.01)
    if way.endswith("bf16"):
        cast_frozen_linears(model)
    if way.startswith("fused"):
        fuse_lora_linears(model)
    model.train()
    ids = torch.randint(0, 49000, (rows, length), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :-ANSWER] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    best = float("inf")
    for attempt in range(5):
        model.zero_grad()
        started = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        if attempt:
            best = min(best, time.perf_counter() - started)
    torch.save(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]), grads_file)
    return {"step_s": round(best, 3), "loss": round(loss.item(), 5),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":
        way, length, rows, grads = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
        print(json.dumps(step(way, length, rows, grads)))
        return
    import torch

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for length, rows in CASES:
            case = {}
            for way in WAYS:
                grads = Path(tmp) / f"{way}-{length}.pt"
                done = subprocess.run([sys.executable, __file__, "--worker", way, str(length), str(rows), str(grads)],
                                      capture_output=True, text=True, check=True)
                case[way] = json.loads(done.stdout.strip().splitlines()[-1])
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
