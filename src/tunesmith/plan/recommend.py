"""What to change when a recipe does not fit, each with the `--set` flags that apply it: the largest batch and
length that fit, activation checkpointing, and the lightest method that fits (full -> LoRA -> QLoRA).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel

from tunesmith.config import REWARD_ADAPTER_KINDS, LoraAdapter, QloraAdapter, Recipe
from tunesmith.plan.architecture import Architecture
from tunesmith.plan.devices import Device
from tunesmith.plan.memory import Sharding, estimate_memory, outside_estimate
from tunesmith.plan.workload import (
    RowLengths,
    loads_frozen_base_in_half,
    micro_step,
    packs_rows,
    trained_weights,
)

GIB = 2**30


class Advice(BaseModel):
    """One recommendation: what, its value, why, and the flags that apply it ([] when nothing needs to change)."""

    what: str
    value: str
    why: str
    flags: list[str] = []


def peak_bytes(recipe: Recipe, arch: Architecture, device: Device, lengths: RowLengths, compute: float) -> float:
    half_base = loads_frozen_base_in_half(recipe, device.kind, compute)
    weights = trained_weights(recipe, arch, device.memory_bytes, half_base)
    work = micro_step(recipe, lengths, packed=packs_rows(recipe), memory_bytes=device.memory_bytes,
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
        return peak_bytes(candidate, arch, device, candidate_lengths, compute) + outside_estimate(device) \
            <= device.memory_bytes

    advice = [largest_batch(recipe, fits, lengths.rows), largest_length(recipe, lengths, fits, arch.max_positions)]
    if lengths.rows and recipe.training.batch_size * recipe.training.grad_accum > lengths.rows:
        advice.append(batch_past_the_data(recipe.training, lengths.rows))
    if fits(recipe):
        return advice
    checkpointed = with_settings(recipe, gradient_checkpointing=True)
    if not recipe.training.gradient_checkpointing and fits(checkpointed):
        advice.append(Advice(what="activation checkpointing", value="fits with it", why="recomputing the "
                             "activations in the backward pass keeps only each block's input (one more forward pass "
                             "a step; on a CPU about half the tokens/s)",
                             flags=["--set training.gradient_checkpointing=true"]))
    length = micro_step(recipe, lengths, packed=packs_rows(recipe)).length
    chosen = next((r for r in fitting_changes(recipe, length) if fits(r)), None)
    if chosen is not None:
        advice.append(train_will_use(chosen.training))
    advice.append(lighter_method(recipe, fits, device))
    return advice


def train_will_use(training: Any) -> Advice:
    """What `tunesmith train` changes by itself to fit (plan.fit.fit_recipe takes the same first fitting change)."""
    parts = []
    if training.grad_accum > 1:
        parts.append(f"{training.grad_accum} micro-batches of {training.batch_size}")
    if training.gradient_checkpointing:
        parts.append("activation checkpointing")
    return Advice(what="train will use", value=", ".join(parts), why="the first of: micro-batches of 1,024 tokens "
                  "or more, activation checkpointing, smaller micro-batches, both; set the keys yourself to choose")


# A micro-batch of at least this many tokens keeps the matmuls large enough to run near the batch's own speed, so
# accumulating such micro-batches is preferred to recomputing every block's activations. A floor chosen, not an
# optimum measured: on the spread rows (benchmarks/results/train_throughput_micro.json) micro-batches of 4 rows of
# up to 1,024 tokens ran 2.4x the tokens/s of 8 rows with activation checkpointing, at the same held-out loss.
MIN_MICRO_TOKENS = 1024


def fitting_changes(recipe: Recipe, length: int) -> list[Recipe]:
    """The changes `fit_recipe` tries, fastest first, each only where the recipe leaves its keys open
    (`training.grad_accum` for micro-batches, `training.gradient_checkpointing` for checkpointing): micro-batches of
    at least MIN_MICRO_TOKENS tokens (`length` a row), largest first; activation checkpointing (one more forward
    pass per step; on a CPU, where freed blocks go back to the system, about half the tokens/s: README, "Plan");
    smaller micro-batches; both together."""
    t, given = recipe.training, recipe.training.model_fields_set
    sizes = [size for size in range(t.batch_size - 1, 0, -1) if t.batch_size % size == 0]
    micro = [] if "grad_accum" in given else [with_micro_batch(recipe, size) for size in sizes]
    efficient = [r for r in micro if r.training.batch_size * length >= MIN_MICRO_TOKENS]
    small = [r for r in micro if r.training.batch_size * length < MIN_MICRO_TOKENS]
    if "gradient_checkpointing" in given or t.gradient_checkpointing:
        return efficient + small
    checkpointed = [with_training(r, gradient_checkpointing=True) for r in (recipe, *micro)]
    return efficient + checkpointed[:1] + small + checkpointed[1:]


def with_micro_batch(recipe: Recipe, size: int) -> Recipe:
    """`recipe` with micro-batches of `size` rows accumulated to the same rows per optimizer step."""
    t = recipe.training
    return with_training(recipe, batch_size=size, grad_accum=t.grad_accum * t.batch_size // size)


def with_training(recipe: Recipe, **update: object) -> Recipe:
    """`recipe` with training settings changed by the plan; the recipe's own keys stay the only ones marked as
    set, so the run's "chosen for your data" table does not credit the plan's choice to the recipe."""
    training = recipe.training.model_copy(update=update)
    object.__setattr__(training, "__pydantic_fields_set__", set(recipe.training.model_fields_set))
    return recipe.model_copy(update={"training": training})


def batch_past_the_data(training: Any, rows: int) -> Advice:
    """A step asks for more rows than the training data has: every step is more than an epoch."""
    per_step = training.batch_size * training.grad_accum
    smaller = max(1, 2 ** math.floor(math.log2(max(1, rows // 4))))
    return Advice(what="batch past the data", value=f"{per_step} rows per step > {rows} training rows",
                  why=f"each optimizer step goes through the data {per_step / rows:.1f} times: few steps, each "
                      f"repeating rows; a batch of {smaller} gives {math.ceil(rows / smaller)} steps an epoch",
                  flags=[f"--set training.batch_size={smaller}", "--set training.grad_accum=1"])


def largest_batch(recipe: Recipe, fits: Any, rows: int | None = None) -> Advice:
    """The largest batch (rows per micro-batch, from 1 to 256, at most the training rows) that fits."""
    t = recipe.training
    best = 0
    for size in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        if rows and size > rows:
            break
        if fits(with_settings(recipe, batch_size=size)):
            best = size
    if not best:
        return Advice(what="largest batch", value="none fits", why="even one row per step exceeds the memory")
    if rows and t.batch_size * t.grad_accum > rows:  # no accumulation to keep a step the data cannot fill
        return Advice(what="largest batch", value=f"{best}", why=f"the most rows a step can draw from {rows}")
    if best >= t.batch_size:
        as_run = (f"micro-batches of {t.batch_size} rows x {t.grad_accum} ({t.batch_size * t.grad_accum} rows a step) "
                  "fit" if t.grad_accum > 1 else f"training.batch_size {t.batch_size} fits")
        return Advice(what="largest batch", value=f"{best}", why=as_run)
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
    allowed = REWARD_ADAPTER_KINDS if recipe.method.kind == "reward" else ("lora", "qlora")  # reward: no QLoRA
    kinds = [k for k in ("lora", "qlora") if k != recipe.adapter.kind and k in allowed
             and (k != "qlora" or device.kind != "mps")]
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
