"""A LoRA whose input side cannot see the directions general text uses, measured against the defaults (not a default).

InfLoRA (Liang & Li 2024, "InfLoRA: Interference-Free Low-Rank Adaptation for Continual Learning", CVPR,
arXiv:2404.00228) fixes each adapted linear's LoRA A to directions orthogonal to what earlier tasks' inputs span
and trains B alone, so the update B·A·x is zero for inputs in that span. Here the "earlier task" is what the
base could do: the inputs of each adapted linear on the replay rows (general prompts and the base's answers).
Before training, for every adapted linear:
- G = sum of x·xᵀ over the replay rows' tokens, its eigenvectors U_k that hold `--energy` of G's trace;
- T = the same over the task's training rows, projected off that span: Q·T·Q with Q = I - U_k·U_kᵀ;
- A = the top `r` eigenvectors of Q·T·Q (the task's own directions that general text does not use), at the row norm
  of PEFT's default initialisation, frozen; B starts at zero as usual, so training starts from the base.

Why it might help: per token, the routing prompts put 1.6-18% of their input energy outside the span that holds
99% of the replay prompts' (probes and held-out general questions: 0.7-4.6%; layers 2/10/20/28, q_proj and
down_proj inputs, benchmarks/null_space_energy.py), so the same B moves the probes' outputs about half as much
as the task's. Why it might not: the task
must then be learnt through that small share of its inputs.

    .venv/bin/python benchmarks/null_space_lora.py --only routing --label null_space_99 [--energy 0.99]

Takes benchmarks/defaults.py's arguments; its entries go to benchmarks/results/defaults.json under --label.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def lora_linears(model: Any) -> dict[str, Any]:
    """name -> PEFT LoRA layer (one with `lora_A` and a `base_layer`)."""
    return {name: module for name, module in model.named_modules()
            if hasattr(module, "lora_A") and hasattr(module, "base_layer") and len(module.lora_A)}


def input_second_moments(model: Any, rows: list[list[int]], layers: dict[str, Any]) -> dict[str, Any]:
    """name -> sum over every token of `rows` (one row at a time: no padding) of x·xᵀ, x the layer's input."""
    import torch

    sums: dict[str, Any] = {}
    hooks = []
    for name, layer in layers.items():
        def hook(module: Any, inputs: tuple, output: Any, key: str = name) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
            sums[key] = sums.get(key, 0) + x.T @ x
        hooks.append(layer.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            for ids in rows:
                model(input_ids=torch.tensor([ids], device=device))
    finally:
        for handle in hooks:
            handle.remove()
        model.train(was_training)
    return sums


def null_space_a(general: Any, task: Any, rank: int, energy: float) -> tuple[Any, int, float]:
    """(A: [rank, in] rows orthonormal then scaled to PEFT's default row norm, k: the general span's size, the
    task's share of energy outside that span)."""
    import torch

    values, vectors = torch.linalg.eigh(general.double())
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
    k = int((values.cumsum(0) / values.sum() < energy).sum()) + 1
    span = vectors[:, :k]
    q = torch.eye(general.shape[0], dtype=torch.float64) - span @ span.T
    outside = q @ task.double() @ q
    share = float(outside.trace() / task.double().trace())
    _, task_vectors = torch.linalg.eigh(outside)
    rows = task_vectors.flip(1)[:, :rank].T
    # PEFT's default A: kaiming_uniform_(a=sqrt(5)), entries U(-1/sqrt(in), 1/sqrt(in)): row norm sqrt(1/3)
    return (rows * (1 / 3) ** 0.5).float(), k, share


def constrain_adapter(trainer: Any, energy: float) -> dict[str, Any]:
    """Set and freeze every LoRA A of `trainer.model` as the module docstring says; returns what it did."""
    model = trainer.model
    layers = lora_linears(model)
    replay = [e["input_ids"] for e in trainer.replay_batches.examples]
    task = list(trainer.train_dataset["input_ids"])[:200]
    general, own = input_second_moments(model, replay, layers), input_second_moments(model, task, layers)
    spans, shares = [], []
    for name, layer in layers.items():
        weight = layer.lora_A["default"].weight
        a, k, share = null_space_a(general[name], own[name], weight.shape[0], energy)
        weight.data.copy_(a.to(weight.device))
        weight.requires_grad_(False)
        spans.append(k)
        shares.append(share)
    report = {"energy": energy, "linears": len(layers), "replay_rows": len(replay), "task_rows": len(task),
              "general_span_mean": sum(spans) / len(spans), "task_share_outside_mean": sum(shares) / len(shares)}
    print(f"null-space LoRA: {report}", file=sys.stderr, flush=True)
    return report


def main() -> None:
    import defaults

    import tunesmith.train.sft as sft

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--energy", type=float, default=0.99)
    known, rest = parser.parse_known_args()
    original = sft.fit_and_save

    def fit_and_save(trainer: Any, setup: Any, recipe: Any, run: Any, choices: dict[str, Any] | None = None) -> Any:
        report = constrain_adapter(trainer, known.energy)
        return original(trainer, setup, recipe, run, {**(choices or {}), "null_space_lora": report})

    sft.fit_and_save = fit_and_save
    sys.argv = [sys.argv[0], *rest]
    defaults.main()


if __name__ == "__main__":
    main()
