"""One LoRA training step of SmolLM2-135M on completion-only rows, five ways, side by side in one run.

What the training defaults rest on (tunesmith/train/upstream.py, tunesmith/train/common.py):
- `full`: TRL 1.16's fused LM head as it runs on a CPU, scoring every position;
- `compact`: the same head scoring only the labelled positions (tunesmith's shim);
- `compact-bf16`: compact, under bf16 autocast (`training.precision: bf16`);
- `flat`: compact, with the batch flattened into one padding-free row, as packing does;
- `compact-dropout`: compact, with LoRA dropout 0.05 (the old `adapter.dropout` default; today's is PEFT's 0);
- `compact-compiled` (only with `--compile`, ~6 minutes on 2 cores): compact, with the decoder blocks under
  `torch.compile(dynamic=True)` (inductor), as training's varying batch lengths need; its first step's time,
  compilation included, is reported apart as `first_step_s`.
Each variant runs in its own subprocess (so its peak RSS is its own), in training mode: 8 rows of 128 tokens, the
last 8 of each carrying loss, three steps after one warm-up; the fastest is reported, and all of them are written
to benchmarks/results/train_step_paths.json.

    .venv/bin/python benchmarks/train_step_paths.py [--compile]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("full", "compact", "compact-bf16", "flat", "compact-dropout")
RESULTS = Path(__file__).parent / "results" / "train_step_paths.json"
ROWS, LENGTH, ANSWER = 8, 128, 8


def step(variant: str) -> dict[str, float]:
    import torch
    import trl.trainer.utils as trl_utils
    from peft import LoraConfig, get_peft_model

    from tunesmith.models import load_model, resolve_model_source
    from tunesmith.train.upstream import score_only_labelled_positions

    if variant != "full":
        score_only_labelled_positions()
    model = load_model(resolve_model_source("smollm2-135m-instruct"))
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    torch.manual_seed(0)
    dropout = 0.05 if variant.endswith("dropout") else 0.0
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout, target_modules="all-linear"))
    model.train()
    if variant.endswith("compiled"):
        model.base_model.model.model = torch.compile(model.base_model.model.model, dynamic=True)
    ids = torch.randint(0, 49000, (ROWS, LENGTH), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :-ANSWER] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    if variant == "flat":
        batch = {"input_ids": ids.reshape(1, -1), "position_ids": torch.arange(LENGTH).repeat(ROWS)[None],
                 "labels": labels.reshape(1, -1)}
    times = []
    for _ in range(4):
        model.zero_grad()
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant.endswith("bf16")):
            loss = model(**batch, fused_lm_head=True).loss
        loss.backward()
        times.append(time.perf_counter() - started)
    best = min(times[1:])
    return {"step_s": round(best, 3), "first_step_s": round(times[0], 1),
            "tokens_per_s": round(ROWS * LENGTH / best, 1), "loss": round(loss.item(), 5),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--variant":
        print(json.dumps(step(sys.argv[2])))
        return
    results = {}
    for variant in VARIANTS + (("compact-compiled",) if "--compile" in sys.argv else ()):
        done = subprocess.run([sys.executable, __file__, "--variant", variant], capture_output=True, text=True)
        figures = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else done.stderr[-500:]
        print(f"{variant:15s} {figures}", flush=True)
        results[variant] = figures
    RESULTS.write_text(json.dumps({"rows": ROWS, "length": LENGTH, "answer_tokens": ANSWER, "variants": results},
                                  indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
