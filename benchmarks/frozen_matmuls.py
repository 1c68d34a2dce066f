"""One LoRA training step of SmolLM2-135M three ways, side by side: fp32 throughout, the frozen base's linear layers
in bf16 (tunesmith's CPU default where bf16 is fast: train/frozen_matmuls.py), and bf16 autocast
(`training.precision: bf16`). 8 rows of 100 tokens, the last 30 of each carrying loss, LoRA r 16 on every linear
with a trained-looking B; each way in its own subprocess, three timed steps after two warm-ups (the fastest
counts), and the LoRA gradients' relative error and cosine against fp32's. Prints one line per way and writes
benchmarks/results/frozen_matmuls.json.

    .venv/bin/python benchmarks/frozen_matmuls.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WAYS = ("fp32", "frozen-bf16", "autocast-bf16")
RESULTS = Path(__file__).parent / "results" / "frozen_matmuls.json"
ROWS, LENGTH, ANSWER = 8, 100, 30


def step(way: str, grads_file: Path) -> dict[str, float]:
    import torch
    import trl.trainer.utils as trl_utils
    from peft import LoraConfig, get_peft_model

    from tunesmith.models import load_model, resolve_model_source
    from tunesmith.plan.devices import matmul_peak
    from tunesmith.train.frozen_matmuls import cast_frozen_linears
    from tunesmith.train.upstream import score_only_labelled_positions

    score_only_labelled_positions()
    model = load_model(resolve_model_source("smollm2-135m-instruct"))
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.01)
    if way == "frozen-bf16":
        cast_frozen_linears(model)
    model.train()
    ids = torch.randint(0, 49000, (ROWS, LENGTH), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :-ANSWER] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    times = []
    for _ in range(5):
        model.zero_grad()
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=way == "autocast-bf16"):
            loss = model(**batch, fused_lm_head=True).loss
        loss.backward()
        times.append(time.perf_counter() - started)
    torch.save(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]), grads_file)
    peaks = {name: round(matmul_peak(getattr(torch, name)) / 1e9, 1) for name in ("float32", "bfloat16")}
    return {"step_s": round(min(times[2:]), 3), "loss": round(loss.item(), 5), "matmul_peak_gflops": peaks}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--way":
        print(json.dumps(step(sys.argv[2], Path(sys.argv[3]))))
        return
    import torch

    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for way in WAYS:
            grads = Path(folder) / f"{way}.pt"
            done = subprocess.run([sys.executable, __file__, "--way", way, str(grads)], capture_output=True, text=True)
            if done.returncode:
                results[way] = {"failed": done.stderr[-500:]}
                continue
            results[way] = json.loads(done.stdout.strip().splitlines()[-1])
            if way != "fp32":
                reference, these = torch.load(Path(folder) / "fp32.pt").double(), torch.load(grads).double()
                results[way]["grad_relative_error"] = round(float((these - reference).norm() / reference.norm()), 4)
                results[way]["grad_cosine"] = round(float(torch.nn.functional.cosine_similarity(
                    these, reference, dim=0)), 5)
                results[way]["speedup"] = round(results["fp32"]["step_s"] / results[way]["step_s"], 2)
            print(f"{way:14s} {results[way]}", flush=True)
    RESULTS.write_text(json.dumps({"rows": ROWS, "length": LENGTH, "answer_tokens": ANSWER, "ways": results},
                                  indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
