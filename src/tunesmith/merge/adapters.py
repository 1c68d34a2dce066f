"""Combine several LoRA adapters of one base into one adapter, with PEFT's `add_weighted_adapter`.

Methods (PEFT 0.21 combination types): `cat` stacks the adapters (rank = sum of ranks) and is exact;
`svd` factors the exact weighted sum back to the largest input rank; `linear`, `ties`, `dare_linear`,
`dare_ties` and `magnitude_prune` combine the A and B matrices separately, which needs equal ranks and
only approximates the weighted sum of the adapters' weight changes. Every merge measures how far its
result is from that exact weighted sum, so the approximation is a number in merge.json, not a guess.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tunesmith.errors import TunesmithError

ADAPTER_METHODS = ("linear", "cat", "svd", "ties", "dare_linear", "dare_ties", "magnitude_prune")
SAME_RANK_METHODS = frozenset({"linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"})
RESULT = "default"  # PEFT saves the adapter named "default" at the folder's top level


@contextlib.contextmanager
def adapter_fits(adapter_dir: Path, base_dir: Path) -> Iterator[None]:
    """Turn PEFT's size-mismatch error, an adapter trained on another model than `base_dir`, into a usage error."""
    try:
        yield
    except RuntimeError as exc:
        if "size mismatch" not in str(exc):
            raise
        shapes = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), "")
        raise TunesmithError(f"The adapter {adapter_dir} does not fit the base model {base_dir}: its weights have "
                             f"other shapes ({shapes[:200]}).",
                             "Merge adapters onto the base they were trained on: leave out --base (each adapter "
                             "names its base in adapter_config.json), or pass that base with --base MODEL.") from None


def check_mergeable(adapter_dir: Path) -> dict[str, Any]:
    """The adapter's config, or a clear refusal for kinds `add_weighted_adapter` cannot combine."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    kind = config.get("peft_type", "?")
    if kind != "LORA":
        raise TunesmithError(f"{adapter_dir} is a {kind.lower()} adapter; only LoRA adapters can be combined.",
                             "Merge each into its base instead: tunesmith merge ADAPTER --out DIR.")
    if config.get("use_dora"):
        raise TunesmithError(f"{adapter_dir} is a DoRA adapter: its magnitude vectors cannot be combined with "
                             "other adapters.", "Merge it into its base alone: tunesmith merge ADAPTER --out DIR.")
    return config


def combine_adapters(adapter_dirs: list[Path], base_dir: Path, method: str, weights: list[float],
                     density: float | None, folder: Path, seed: int = 0) -> dict[str, Any]:
    """Write the combined adapter (standard PEFT format) into `folder`; returns its verification numbers."""
    from peft import PeftModel

    from tunesmith.models import load_model

    configs = [check_mergeable(path) for path in adapter_dirs]
    check_ranks(method, adapter_dirs, configs)
    names = [f"input{index}" for index in range(len(adapter_dirs))]
    with adapter_fits(adapter_dirs[0], base_dir):
        model = PeftModel.from_pretrained(load_model(base_dir, torch.float32, "cpu"), adapter_dirs[0],
                                          adapter_name=names[0])
    for name, path in zip(names[1:], adapter_dirs[1:], strict=True):
        with adapter_fits(path, base_dir):
            model.load_adapter(path, adapter_name=name)
    torch.manual_seed(seed)  # dare_* prune at random
    try:
        model.add_weighted_adapter(names, weights, RESULT, combination_type=method, density=density)
    except ValueError as exc:
        raise TunesmithError(f"PEFT could not combine the adapters with {method}: {exc}",
                             "cat and svd accept adapters of different ranks and targets.") from exc
    # PEFT 0.21 copies the first adapter's config, then sets lora_alpha = r so the result's scale is 1; with
    # use_rslora that scale would be alpha/sqrt(r) = sqrt(r). The combined weights already carry each scale.
    model.peft_config[RESULT].use_rslora = False
    numbers = {"rank": model.peft_config[RESULT].r, **delta_against_the_sum(model, names, weights)}
    model.save_pretrained(folder, selected_adapters=[RESULT], safe_serialization=True)
    return numbers


def check_ranks(method: str, adapter_dirs: list[Path], configs: list[dict[str, Any]]) -> None:
    ranks = [config["r"] for config in configs]
    if method in SAME_RANK_METHODS and (len(set(ranks)) > 1 or any(c.get("rank_pattern") for c in configs)):
        listing = ", ".join(f"{path}: r={rank}" for path, rank in zip(adapter_dirs, ranks, strict=True))
        raise TunesmithError(f"{method} combines the A and B matrices entry by entry, so every adapter needs the "
                             f"same rank ({listing}).", "Use --method cat or --method svd for adapters of "
                                                        "different ranks.")


def delta_against_the_sum(model: Any, names: list[str], weights: list[float]) -> dict[str, float]:
    """How the combined adapter's weight changes ΔW compare with the weighted sum S = Σ wᵢ ΔWᵢ, over every adapted
    layer: `relative_delta_error` |ΔW − S| / |S| (0 for cat, small for svd, the approximation error of the entry-wise
    methods); `scale_to_sum` c = ⟨ΔW, S⟩ / ⟨S, S⟩ and `error_after_scale` |ΔW − cS| / |cS|, which tell "c times the
    sum" (linear on inputs whose LoRA A are alike: ≈ Σ √wᵢ · Σ √wⱼ / Σ wᵢ) from a change of another direction. One
    layer at a time, so memory stays small."""
    from peft.tuners.lora import LoraLayer

    error = total = inner = got_total = 0.0
    for module in model.modules():
        if not isinstance(module, LoraLayer) or RESULT not in module.lora_A:
            continue
        exact = sum(weight * module.get_delta_weight(name)
                    for name, weight in zip(names, weights, strict=True) if name in module.lora_A)
        got = module.lora_B[RESULT].weight @ module.lora_A[RESULT].weight  # alpha = r: scale 1
        error += float((got - exact).pow(2).sum())
        total += float(exact.pow(2).sum())
        inner += float((got * exact).sum())
        got_total += float(got.pow(2).sum())
    if not total:
        return {"relative_delta_error": 0.0, "scale_to_sum": 1.0, "error_after_scale": 0.0}
    scale = inner / total
    # |ΔW − cS|² = |ΔW|² − c²|S|² for the least-squares c
    after = max(got_total - scale * scale * total, 0.0) ** 0.5 / (abs(scale) * total**0.5) if scale else 1.0
    return {"relative_delta_error": (error / total) ** 0.5, "scale_to_sum": scale, "error_after_scale": after}
