"""What to change when a recipe does not fit, each with the `--set` flags that apply it: the largest batch and
length that fit, activation checkpointing, and the lightest method that fits (full -> LoRA -> QLoRA).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel

from tunesmith.config import LoraAdapter, QloraAdapter, Recipe
from tunesmith.plan.architecture import Architecture
from tunesmith.plan.devices import Device
from tunesmith.plan.memory import Sharding, estimate_memory
from tunesmith.plan.workload import RowLengths, micro_step, trained_weights

GIB = 2**30


class Advice(BaseModel):
    """One recommendation: what, its value, why, and the flags that apply it ([] when nothing needs to change)."""

    what: str
    value: str
    why: str
    flags: list[str] = []


def peak_bytes(recipe: Recipe, arch: Architecture, device: Device, lengths: RowLengths, compute: float) -> float:
    weights = trained_weights(recipe, arch)
    work = micro_step(recipe, lengths, packed=recipe.training.packing is True, memory_bytes=device.memory_bytes,
                      accelerator=device.kind != "cpu")
    return estimate_memory(arch, weights, work, device.kind, compute, recipe.training.gradient_checkpointing,
                           sharding_of(recipe, device.processes)).total


def sharding_of(recipe: Recipe, processes: int) -> Sharding:
    """What training.distributed shards over `processes` (nothing for ddp or one process)."""
    distributed = recipe.training.distributed
    return Sharding(processes, distributed.shards_weights, distributed.shards_optimizer,
                    distributed.shards_weights and distributed.shard_reference)


def with_settings(recipe: Recipe, **training: Any) -> Recipe:
    return recipe.model_copy(update={"training": recipe.training.model_copy(update=training)})


def with_adapter(recipe: Recipe, kind: str) -> Recipe:
    adapter = QloraAdapter() if kind == "qlora" else LoraAdapter()
    return recipe.model_copy(update={"adapter": adapter})


def recommend(recipe: Recipe, arch: Architecture, device: Device, lengths: RowLengths, compute: float) -> list[Advice]:
    """The advice table: always the largest batch and length that fit; when the recipe does not fit, the change
    that makes it fit (checkpointing, a smaller batch with more accumulation, a lighter method)."""
    def fits(candidate: Recipe, candidate_lengths: RowLengths = lengths) -> bool:
        return peak_bytes(candidate, arch, device, candidate_lengths, compute) <= device.memory_bytes

    advice = [largest_batch(recipe, fits), largest_length(recipe, lengths, fits, arch.max_positions)]
    if fits(recipe):
        return advice
    checkpointed = with_settings(recipe, gradient_checkpointing=True)
    if not recipe.training.gradient_checkpointing and fits(checkpointed):
        advice.append(Advice(what="activation checkpointing", value="needed", why="the step's activations do not "
                             "fit; recomputing them in the backward pass keeps only each block's input (~30% slower)",
                             flags=["--set training.gradient_checkpointing=true"]))
    advice.append(lighter_method(recipe, fits, device))
    return advice


def largest_batch(recipe: Recipe, fits: Any) -> Advice:
    t = recipe.training
    best = 0
    for size in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        if fits(with_settings(recipe, batch_size=size)):
            best = size
    if not best:
        return Advice(what="largest batch", value="none fits", why="even one row per step exceeds the memory")
    if best >= t.batch_size:
        return Advice(what="largest batch", value=f"{best}", why=f"training.batch_size {t.batch_size} fits")
    accum = math.ceil(t.batch_size * t.grad_accum / best)
    return Advice(what="largest batch", value=f"{best}", why=f"batch {best} x grad_accum {accum} keeps the "
                  f"{t.batch_size * t.grad_accum} rows per optimizer step",
                  flags=[f"--set training.batch_size={best}", f"--set training.grad_accum={accum}"])


def largest_length(recipe: Recipe, lengths: RowLengths, fits: Any, max_positions: int | None) -> Advice:
    """The longest max_length (powers of two, up to the model's position range) that fits at this batch."""
    best = 0
    for length in (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072):
        if max_positions and length > max_positions:
            break
        longer = recipe.model_copy(update={"data": recipe.data.model_copy(update={"max_length": length})})
        if fits(longer, RowLengths(length, "probe")):
            best = length
    value = f"{best:,} tokens" if best else "under 128 tokens"
    if best and max_positions and best * 2 > max_positions:
        value += f" (the model's limit: {max_positions:,})"
    why = (f"at batch {recipe.training.batch_size}; the longest training row is {lengths.longest:,} tokens "
           f"({lengths.source})")
    flags = [] if best >= lengths.longest else [f"--set data.max_length={best}"] if best else []
    return Advice(what="largest length", value=value, why=why, flags=flags)


def lighter_method(recipe: Recipe, fits: Any, device: Device) -> Advice:
    """full -> LoRA -> QLoRA: the first that fits at this batch, else at a larger batch than the recipe's own
    method fits (with the accumulation that keeps the rows per step): a lighter method at a batch the recipe's
    method fits as well would only cost quality. QLoRA is offered where bitsandbytes quantizes: CUDA, and CPUs
    with bitsandbytes>=0.50 (measured on SmolLM2-135M, 2-core CPU: 137 real tokens/s against LoRA's 142); not MPS."""
    kinds = [k for k in ("lora", "qlora") if k != recipe.adapter.kind and (k != "qlora" or device.kind != "mps")]
    if recipe.adapter.kind == "qlora":
        kinds = []
    own = batch_that_fits(largest_batch(recipe, fits))
    for kind in kinds:
        candidate = with_adapter(recipe, kind)
        if fits(candidate):
            return Advice(what="method", value=kind, why=f"adapter.kind {recipe.adapter.kind} does not fit; "
                          f"{kind} does", flags=[f"--set adapter.kind={kind}"])
        smaller = largest_batch(candidate, fits)
        if smaller.flags and batch_that_fits(smaller) > own:
            return Advice(what="method", value=f"{kind}, batch {smaller.value}", why=f"adapter.kind "
                          f"{recipe.adapter.kind} does not fit; {kind} does at {smaller.why}",
                          flags=[f"--set adapter.kind={kind}", *smaller.flags])
    if own:
        return Advice(what="method", value=f"{recipe.adapter.kind} (keep it)", why=f"adapter.kind "
                      f"{recipe.adapter.kind} fits at batch {own} (largest batch, above); no lighter method fits a "
                      "larger one")
    return Advice(what="method", value="no lighter method fits", why="even the lightest adapter exceeds the memory "
                  "at this batch and length: lower them (above), or plan for a larger device")


def batch_that_fits(advice: Advice) -> int:
    """The batch a `largest_batch` advice names (0 when none fits)."""
    return int(advice.value) if advice.value.isdigit() else 0
