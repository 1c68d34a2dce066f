"""Where the plan's activation figures come from, and what activation checkpointing saves on a CPU.

1. `saved`: what autograd keeps for the backward pass of SmolLM2's blocks with LoRA on every linear, counted with
   `torch.autograd.graph.saved_tensors_hooks` (unique storages), in fp32 values per token per block; with LoRA
   dropout 0 and 0.05, and with activation checkpointing.
2. `allocator`: peak RSS (the process's own VmHWM) and real tokens/s of three `tunesmith train` steps on the
   40-1,000-token spread set at 8 x 511 tokens, side by side: with and without checkpointing, each with glibc's
   default allocator and with MALLOC_MMAP_THRESHOLD_=65536 (what tunesmith sets itself when checkpointing on a CPU).

    .venv/bin/python benchmarks/activation_memory.py [saved|allocator]

Writes benchmarks/results/activation_memory.json.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import plan_memory  # the same harness and dataset as the plan's table

from tunesmith.plan.devices import peak_rss_of_tunesmith

RESULTS = plan_memory.REPO / "benchmarks" / "results" / "activation_memory.json"
TOKENS, LAYERS = (2, 256), 30


def saved_values_per_token_block(dropout: float, checkpointing: bool) -> float:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunesmith.models import resolve_model_source

    model = AutoModelForCausalLM.from_pretrained(resolve_model_source("smollm2-135m-instruct"), dtype=torch.float32)
    if checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout, target_modules="all-linear"))
    model.train()
    ids = torch.randint(0, 49000, TOKENS)
    storages: dict[int, int] = {}

    def keep(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model.base_model.model.model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return sum(storages.values()) / 4 / (TOKENS[0] * TOKENS[1]) / LAYERS


def allocator_runs() -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        files = plan_memory.spread_files(Path(folder))
        base = [s.format(**files) for s in plan_memory.CASES["sft-lora-long"][1]]
        for checkpointing in (False, True):
            for threshold in (None, "65536"):
                env_before = os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
                if threshold:
                    os.environ["MALLOC_MMAP_THRESHOLD_"] = threshold
                runs = Path(folder) / f"gc{checkpointing}-{threshold}"
                args = ["train", str(plan_memory.REPO / "recipes" / "tickets.yaml"), "--runs-dir", str(runs)]
                for item in [*base, f"training.gradient_checkpointing={str(checkpointing).lower()}",
                             "training.max_steps=3", "training.save_steps=1000"]:
                    args += ["--set", item]
                peak, code, _ = peak_rss_of_tunesmith(args, folder)
                os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
                if env_before:
                    os.environ["MALLOC_MMAP_THRESHOLD_"] = env_before
                speed = json.loads(next(runs.glob("*/train.json")).read_text())["throughput"] if not code else {}
                row = {"checkpointing": checkpointing, "mmap_threshold": threshold, "exit_code": code,
                       "peak_gib": round(peak / 2**30, 2), "real_tokens_per_s": speed.get("real_tokens_per_s")}
                print(row, flush=True)
                rows.append(row)
    return rows


def main() -> None:
    parts = sys.argv[1:] or ["saved", "allocator"]
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    if "saved" in parts:
        results["saved_fp32_values_per_token_per_block"] = {
            "lora_dropout_0": round(saved_values_per_token_block(0.0, False)),
            "lora_dropout_0.05": round(saved_values_per_token_block(0.05, False)),
            "checkpointing": round(saved_values_per_token_block(0.0, True))}
        print(results["saved_fp32_values_per_token_per_block"], flush=True)
    if "allocator" in parts:
        results["allocator_8x511"] = allocator_runs()
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
