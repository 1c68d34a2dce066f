"""Keep a LoRA adapter out of the directions general inputs use (`data.replay.null_space`).

A LoRA layer adds B·A·x to the frozen layer's output. If every row of A is orthogonal to the inputs x that general
prompts produce at that layer, the adapter adds nothing there, whatever B learns: the tuned model answers general
prompts as the base does. Before the first step the base reads the replay rows (the general prompts and the base's
own answers, `train/replay.py`); at each adapted layer the second moment of its inputs, M = Σ x·xᵀ over every token,
gives the principal directions of general inputs. A is projected off the smallest set of top eigenvectors of M that
holds `energy` of its trace, at the start and after every optimizer step (projected gradient descent), so B·A·x
stays near zero for general inputs and the task is learnt in the remaining directions.

This is the null-space constraint of AlphaEdit (Fang et al. 2025, "AlphaEdit: Null-Space Constrained Knowledge
Editing for Language Models", ICLR, arXiv:2410.02355: an edit projected onto the null space of the preserved
knowledge's keys) applied to a LoRA's input projection, as LoRA-Null does at initialisation (Tang et al. 2025,
arXiv:2503.02659). PEFT's CorDA (knowledge-preserved mode) picks the initial directions from the same covariance
but leaves training free to move into them; here they stay closed. Measured on the quickstart: README, "Keeping
what the base could do".
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tunesmith.config import DEFAULT_REPLAY_RATIO, NULL_SPACE_REPLAY_RATIO
from tunesmith.plan.memory import NULL_SPACE_MEMORY_SHARE, null_space_moments_bytes

MOMENT_BATCH = 8  # replay rows per forward pass while the moments are collected


@dataclass
class Protected:
    """One adapted layer's A matrices and the orthonormal basis [in_features, k] of the directions they keep out of
    (`inside` True) or keep within (`inside` False: the complement, stored when it is the smaller)."""

    weights: list[torch.nn.Parameter]
    basis: torch.Tensor
    inside: bool

    @torch.no_grad()
    def project(self) -> None:
        """Project each A matrix in fp32 (the basis's dtype), written back in the weight's own (QLoRA's adapters
        may train in bf16)."""
        for weight in self.weights:
            along = (weight.float() @ self.basis) @ self.basis.T
            if self.inside:
                weight.sub_(along.to(weight.dtype))
            else:
                weight.copy_(along.to(weight.dtype))


class NullSpace:
    """The projection for every adapted layer of a PEFT model; `project()` applies it (after each optimizer step)."""

    def __init__(self, layers: list[Protected], report: dict[str, Any]) -> None:
        self.layers, self.report = layers, report

    def project(self) -> None:
        for layer in self.layers:
            layer.project()


def lora_layers(peft_model: Any) -> dict[str, Any]:
    """The PEFT LoRA layers (name -> module) whose active adapters have a linear A (`lora_A[name].weight`)."""
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in peft_model.named_modules()
            if isinstance(module, LoraLayer) and any(a in module.lora_A for a in module.active_adapters)}


def free_memory(device: Any) -> int:
    """Free bytes on `device` (a CUDA device's free memory, else the host's available memory; 0 if unknown)."""
    if getattr(device, "type", "cpu") == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    from tunesmith.doctor.accelerator import available_memory

    return available_memory()


def moments_bytes(layers: dict[str, Any]) -> float:
    """Upper bound of the fp32 second moments' memory (plan/memory.py's rule, which `tunesmith plan` applies before
    training)."""
    return null_space_moments_bytes([module.in_features for module in layers.values()])


class InputMoments:
    """Σ x·xᵀ of each adapted layer's inputs over the real positions of the forward passes run while it is open
    (`with InputMoments(layers) as moments:`); before each pass, `read(real)` names that pass's real positions.

    Layers fed the same tensor (q, k and v; gate and up) share one moment: `moments` holds them by the first such
    layer's name, `group` maps each layer to that name, `tokens` counts the positions read. Shapes:
    [in_features, in_features], fp32."""

    def __init__(self, layers: dict[str, Any]) -> None:
        self.layers = layers
        self.group: dict[str, str] = {}
        self.moments: dict[str, torch.Tensor] = {}
        self.tokens = 0
        self.real: torch.Tensor | None = None  # bool [batch, length] of the next pass, as its hidden states lie
        self.last: list[Any] = [None, None]  # the previous input (held, so `is` cannot match a reused tensor)
        self.handles: list[Any] = []

    def read(self, real: torch.Tensor) -> None:
        self.real = real.bool()
        self.tokens += int(self.real.sum())

    def hook(self, name: str):
        def on_input(module: Any, args: tuple[Any, ...]) -> None:
            x = args[0]
            if name not in self.group:  # the first batch: layers fed the same tensor in a row (q, k, v) share a moment
                self.group[name] = self.last[1] if x is self.last[0] else name
            self.last[:] = [x, self.group[name]]
            if self.group[name] != name:
                return
            rows = x[self.real.to(x.device)].float()
            self.moments[name] = self.moments.get(name, 0) + rows.T @ rows
        return on_input

    def __enter__(self) -> InputMoments:
        self.handles = [module.register_forward_pre_hook(self.hook(name)) for name, module in self.layers.items()]
        return self

    def __exit__(self, *exc: object) -> None:
        self.last[:] = [None, None]
        for handle in self.handles:
            handle.remove()
        self.handles = []


@torch.no_grad()
def read_padded(peft_model: Any, examples: list[dict[str, list[int]]], pad_id: int, moments: InputMoments) -> None:
    """The base's (adapter off) forward passes over `examples` (token ids), MOMENT_BATCH rows at a time,
    right-padded; padding is not read."""
    from tunesmith.models.generation import pad_right

    device = next(peft_model.parameters()).device
    with peft_model.disable_adapter():
        for start in range(0, len(examples), MOMENT_BATCH):
            batch = [{"input_ids": e["input_ids"], "labels": e["input_ids"]}
                     for e in examples[start:start + MOMENT_BATCH]]
            ids, _, attention = pad_right(batch, pad_id)
            moments.read(attention.to(device))
            peft_model(input_ids=ids.to(device), attention_mask=attention.to(device))


def input_moments(peft_model: Any, layers: dict[str, Any], examples: list[dict[str, list[int]]],
                  pad_id: int) -> tuple[dict[str, torch.Tensor], dict[str, str], int]:
    """Σ x·xᵀ of each layer's inputs over every real token of `examples` (token ids), the adapter off
    (`InputMoments`, `read_padded`): (moments by group, each layer's group name, tokens read)."""
    with InputMoments(layers) as moments:
        read_padded(peft_model, examples, pad_id, moments)
    return moments.moments, moments.group, moments.tokens


def principal_basis(moment: torch.Tensor, energy: float) -> tuple[torch.Tensor, bool, int]:
    """The top eigenvectors of a symmetric PSD `moment` [n, n] holding `energy` of its trace: (basis, inside, k),
    the basis [n, k] itself when k <= n/2 (inside), else its orthonormal complement [n, n-k].

    The decomposition runs in fp32, the energy sums in fp64: on SmolLM2-135M's 120 replay-row moments that took
    5.2 s instead of 11.1 s in fp64, with the same k everywhere and the energy left open within 2e-6 of fp64's
    (it grows with n³: ~6 min instead of ~12 for a 1B model's 16 moments of 8,192 on a 2-core CPU, extrapolated
    from n = 4,096; benchmarks/eigh_precision.py)."""
    values, vectors = torch.linalg.eigh(moment.float())  # ascending; fp32: see the docstring
    values = values.double().clamp(min=0).flip(0)
    vectors = vectors.flip(1)
    share = values.cumsum(0) / values.sum().clamp(min=1e-30)
    k = min(int((share < energy - 1e-6).sum()) + 1, moment.shape[0])
    n = moment.shape[0]
    if k <= n // 2:
        return vectors[:, :k].contiguous(), True, k
    return vectors[:, k:].contiguous(), False, k


def build_null_space(peft_model: Any, examples: list[dict[str, list[int]]], pad_id: int, energy: float,
                     read_rows: Callable[[InputMoments], None] | None = None) -> NullSpace:
    """Read the general rows, find each layer's principal input directions and project its A off them (once now;
    `NullSpace.project` after each optimizer step). `read_rows(moments)` runs the base's forward passes over the
    rows (the replay anchor's, which keeps their log-probabilities: train/replay.py `keep_null_space`); by default
    `read_padded` over `examples`. Raises nothing: a model without LoRA layers gets an empty one."""
    started = time.monotonic()
    layers = lora_layers(peft_model)
    needed, free = moments_bytes(layers), free_memory(next(peft_model.parameters()).device)
    if free and needed > NULL_SPACE_MEMORY_SHARE * free:
        why = (f"skipped: the input moments of {len(layers)} layers need up to {needed / 2**30:.1f} GiB, more than "
               f"{NULL_SPACE_MEMORY_SHARE:.0%} of the {free / 2**30:.1f} GiB free; set data.replay.null_space: 0 "
               f"to silence this (the anchor's default ratio is then {DEFAULT_REPLAY_RATIO}, the anchor alone's, "
               f"instead of the {NULL_SPACE_REPLAY_RATIO} it takes beside the null space)")
        print(f"null space: {why}", file=sys.stderr, flush=True)
        return NullSpace([], {"energy": energy, "skipped": why})
    print(f"null space: reading the inputs of {len(layers)} LoRA layers over {len(examples)} general rows, then one "
          "eigendecomposition per input width (seconds on an idle machine; far longer where other processes share the "
          "cores)", file=sys.stderr, flush=True)
    with InputMoments(layers) as reader:
        if read_rows is None:
            read_padded(peft_model, examples, pad_id, reader)
        else:
            read_rows(reader)
    moments, group, tokens = reader.moments, reader.group, reader.tokens
    read_s = time.monotonic() - started
    bases = {name: principal_basis(moment, energy) for name, moment in with_progress(moments.items(), len(moments))}
    protected, kept = [], []
    for name, module in layers.items():
        basis, inside, k = bases[group[name]]
        weights = [module.lora_A[a].weight for a in module.active_adapters if a in module.lora_A]
        protected.append(Protected(weights, basis.to(weights[0].device), inside))
        kept.append(k / module.in_features)
    space = NullSpace(protected, {})
    space.project()
    ordered = sorted(kept)
    space.report = {"energy": energy, "rows": len(examples), "tokens": tokens, "layers": len(protected),
                    "moments": len(moments), "closed_share_median": round(ordered[len(ordered) // 2], 3) if ordered
                    else None, "closed_share_max": round(ordered[-1], 3) if ordered else None,
                    "read_seconds": round(read_s, 1), "seconds": round(time.monotonic() - started, 1)}
    print(f"null space: each LoRA A kept off the directions holding {energy:.0%} of the general rows' inputs "
          f"({len(examples)} rows, {tokens} tokens; median {space.report['closed_share_median']:.0%} of a layer's "
          f"input dimensions closed) in {space.report['seconds']} s", file=sys.stderr, flush=True)
    return space


def with_progress(items: Any, total: int) -> Any:
    """`items`, with a transient progress bar on stderr (the eigendecompositions are the slow part)."""
    from rich.console import Console
    from rich.progress import track

    return track(items, total=total, description="null space: eigendecompositions", console=Console(file=sys.stderr),
                 transient=True)


def null_space_callback(space: NullSpace) -> Any:
    """A transformers TrainerCallback that re-projects after every optimizer step. Nothing at the start:
    `build_null_space` projected the fresh A, and a resumed checkpoint's A was saved projected (projecting it again
    would move it by rounding, and a resumed run would no longer end on the uninterrupted run's weights)."""
    from transformers import TrainerCallback

    class KeepNullSpace(TrainerCallback):
        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            space.project()

    return KeepNullSpace()
