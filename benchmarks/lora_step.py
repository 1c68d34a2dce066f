"""What the one-step LoRA benchmarks share: SmolLM2-135M with a LoRA r 16 on every linear layer (B drawn as if
trained, so that A gets gradients too), rows of random tokens whose last `answer` carry loss, and the fastest of
several timed training steps after a warm-up (`benchmarks/fused_lora.py`, `benchmarks/attention_bf16.py`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def lora_smollm2(model: Any = None) -> Any:
    """`model` (default: the embedded SmolLM2-135M in fp32) under PEFT's LoRA r 16, alpha 32, on every linear
    layer, no dropout; B ~ N(0, 0.01), seed 0."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tunesmith.models import load_model, resolve_model_source

    if model is None:
        model = load_model(resolve_model_source("smollm2-135m-instruct"))
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.01)
    return model


def answer_batch(rows: int, length: int, answer: int) -> dict[str, Any]:
    """`rows` x `length` random token ids (seed 0), the last `answer` of each row carrying loss."""
    import torch

    ids = torch.randint(0, 49000, (rows, length), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :-answer] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def fastest_step(model: Any, batch: dict[str, Any], timed: int) -> tuple[float, float]:
    """(seconds of the fastest of `timed` forward+backward steps after one warm-up, the last loss)."""
    best = float("inf")
    for attempt in range(timed + 1):
        model.zero_grad()
        started = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        if attempt:
            best = min(best, time.perf_counter() - started)
    return best, loss.item()


def save_grads(model: Any, path: Path) -> None:
    """Every gradient of `model`, flattened into one tensor at `path` (torch.save)."""
    import torch

    torch.save(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]), path)


def as_worker(step: Callable[[str, int, int, Path], dict[str, Any]]) -> bool:
    """Run `step` and print its figures as JSON where this process is a worker (`--worker WAY LENGTH ROWS GRADS`);
    False otherwise."""
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":
        print(json.dumps(step(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]))))
        return True
    return False


def run_ways(script: str, ways: tuple[str, ...], length: int, rows: int, folder: Path) -> dict[str, dict[str, Any]]:
    """Each of `ways` stepped by `script` in its own subprocess (so that its peak RSS is its own); its figures by way,
    its gradients in folder/WAY-LENGTH.pt."""
    figures = {}
    for way in ways:
        grads = folder / f"{way}-{length}.pt"
        done = subprocess.run([sys.executable, script, "--worker", way, str(length), str(rows), str(grads)],
                              capture_output=True, text=True, check=True)
        figures[way] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures
