"""Merge whole models: two or more full fine-tunes (or merged checkpoints) of one base.

`linear` averages the weights (weights normalised to sum 1); `slerp` interpolates two models along the
sphere, tensor by tensor. The task-vector methods work on τᵢ = θᵢ − θ_base, with PEFT's merge utilities
(`peft.utils.merge_utils`), and add the combined τ back to the base: `task_arithmetic` (Σ wᵢτᵢ), `ties`
(trim to `density`, elect a sign, average the agreeing entries), `dare_linear` / `dare_ties` (drop
entries at random, rescale by 1/density) and `magnitude_prune`. Tensors are read one name at a time from
the safetensors files, so only the merged result and one tensor per input are in memory.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tunesmith.errors import TunesmithError
from tunesmith.models.checkpoints import checkpoint_shards

MODEL_METHODS = ("linear", "slerp", "task_arithmetic", "ties", "dare_linear", "dare_ties", "magnitude_prune")
BASE_METHODS = frozenset({"task_arithmetic", "ties", "dare_linear", "dare_ties", "magnitude_prune"})
WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
COLINEAR = 0.9995  # above this cosine slerp falls back to linear interpolation (sin θ ≈ 0)


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two tensors seen as vectors: t=0 gives v0, t=1 gives v1.

    The angle is measured between the normalised vectors, and the unnormalised ones are combined, so
    two tensors of different norms interpolate their norms too (as mergekit's slerp does).
    """
    a, b = v0.flatten().double(), v1.flatten().double()
    cosine = float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-12))
    if abs(cosine) > COLINEAR:
        return ((1 - t) * v0.double() + t * v1.double()).to(v0.dtype)
    theta = math.acos(max(-1.0, min(1.0, cosine)))
    s = math.sin(theta)
    mixed = (math.sin((1 - t) * theta) / s) * v0.double() + (math.sin(t * theta) / s) * v1.double()
    return mixed.to(v0.dtype)


def merge_tensor(method: str, tensors: list[torch.Tensor], weights: list[float], density: float | None,
                 base: torch.Tensor | None) -> torch.Tensor:
    """One merged tensor (fp32) from the inputs' tensors of one name."""
    from peft.utils import merge_utils

    if method == "linear":
        return sum(w * t for w, t in zip(weights, tensors, strict=True)) / sum(weights)
    if method == "slerp":
        return slerp(weights[1] / sum(weights), tensors[0], tensors[1])
    if base is None:
        raise ValueError(f"{method} needs the base model's tensor")
    task = [t - base for t in tensors]
    w = torch.tensor(weights, dtype=torch.float32)
    combine: dict[str, Callable[[], torch.Tensor]] = {
        "task_arithmetic": lambda: merge_utils.task_arithmetic(task, w),
        "ties": lambda: merge_utils.ties(task, w, density),
        "dare_linear": lambda: merge_utils.dare_linear(task, w, density),
        "dare_ties": lambda: merge_utils.dare_ties(task, w, density),
        "magnitude_prune": lambda: merge_utils.magnitude_prune(task, w, density),
    }
    return base + combine[method]()


def read_tensor(files: dict[str, Path], name: str) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(files[name], framework="pt") as handle:
        return handle.get_tensor(name)


def check_same_layout(models: list[Path], layouts: list[dict[str, Path]]) -> None:
    """Same tensor names and shapes in every checkpoint, or an error naming the first difference."""
    from safetensors import safe_open

    names = set(layouts[0])
    for path, layout in zip(models[1:], layouts[1:], strict=True):
        if set(layout) != names:
            odd = sorted(set(layout) ^ names)[:3]
            raise TunesmithError(f"{path} and {models[0]} do not hold the same tensors (e.g. {', '.join(odd)}).",
                                 "Whole-model merges need fine-tunes of one base model (same architecture).")
    for name in sorted(names):
        shapes = set()
        for layout in layouts:
            with safe_open(layout[name], framework="pt") as handle:
                shapes.add(tuple(handle.get_slice(name).get_shape()))
        if len(shapes) > 1:
            raise TunesmithError(f"Tensor {name} has different shapes in the inputs: {sorted(shapes)}.",
                                 "Whole-model merges need fine-tunes of one base model (same architecture).")


def merge_models(models: list[Path], method: str, weights: list[float], density: float | None,
                 base: Path | None, folder: Path, dtype: torch.dtype, max_shard_size: str,
                 seed: int = 0) -> None:
    """Write the merged checkpoint (weights cast to `dtype`, config and tokenizer of the first input)."""
    from huggingface_hub import save_torch_state_dict

    checkpoints = [*models, *([base] if method in BASE_METHODS and base else [])]
    layouts = [checkpoint_shards(path) for path in checkpoints]
    check_same_layout(checkpoints, layouts)
    torch.manual_seed(seed)  # dare_* drop entries at random
    merged: dict[str, torch.Tensor] = {}
    for name in layouts[0]:
        tensors = [read_tensor(layout, name) for layout in layouts[:len(models)]]
        if not tensors[0].is_floating_point():
            merged[name] = tensors[0]  # integer buffers are not weights
            continue
        reference = read_tensor(layouts[-1], name).float() if method in BASE_METHODS else None
        merged[name] = merge_tensor(method, [t.float() for t in tensors], weights, density, reference).to(dtype)
    save_torch_state_dict(merged, folder, max_shard_size=max_shard_size)
    copy_non_weight_files(models[0], folder, dtype)


def copy_non_weight_files(source: Path, folder: Path, dtype: torch.dtype) -> None:
    """config, generation config, tokenizer and chat template of the first input; config gets the new dtype."""
    for item in source.iterdir():
        if item.is_file() and not item.name.endswith(WEIGHT_FILES) and item.name not in (*WEIGHT_INDEXES,
                                                                                        "merge.json"):
            shutil.copy2(item, folder / item.name)
    config_path = folder / "config.json"
    config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
    config["dtype"] = str(dtype).removeprefix("torch.")
    config.pop("torch_dtype", None)
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def agreement_with_inputs(folder: Path, models: list[Path]) -> list[dict[str, float]]:
    """How close the merged model stays to each input on the fixed check prompts (fp32 forward passes):
    top-1 agreement and mean |logit difference|. A merge is meant to differ; these say by how much.
    Empty when the first input came without a tokenizer (nothing to encode the prompts with)."""
    from tunesmith.merge.into_base import check_prompt_ids, prompt_logits
    from tunesmith.models import load_model

    try:
        ids = check_prompt_ids(folder)
    except (OSError, ValueError):
        return []
    merged = prompt_logits(load_model(folder, torch.float32, "cpu").eval(), ids)
    rows = []
    for path in models:
        logits = prompt_logits(load_model(path, torch.float32, "cpu").eval(), ids)
        top1 = float((merged.argmax(-1) == logits.argmax(-1)).float().mean())
        rows.append({"input": str(path), "top1_agreement": top1,
                     "mean_abs_logit_diff": float((merged - logits).abs().mean())})
    return rows
