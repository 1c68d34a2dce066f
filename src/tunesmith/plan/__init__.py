"""Plan stage: how much memory and time a recipe needs on a device, and what to change when it does not fit,
from the model's config and the data alone (no weights load). `tunesmith plan` prints it; `train` refuses a
recipe whose estimate exceeds the device before loading anything heavy.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tunesmith.config import Recipe
from tunesmith.models import load_tokenizer
from tunesmith.models.source import resolve_model_config
from tunesmith.models.templates import recipe_chat_template
from tunesmith.plan.architecture import Architecture, read_architecture
from tunesmith.plan.devices import Device, resolve_device
from tunesmith.plan.lengths import longest_row
from tunesmith.plan.memory import MemoryEstimate, estimate_memory, frozen_bf16_copy_component, outside_estimate
from tunesmith.plan.precision import (
    best_known_peak,
    frozen_copy_refusal,
    frozen_matmul_choice,
    frozen_matmul_speedup,
)
from tunesmith.plan.recommend import Advice, recommend, sharding_of
from tunesmith.plan.timing import StepTime, null_space_setup, step_time
from tunesmith.plan.workload import (
    RowLengths,
    anchor_row_tokens,
    check_targets_exist,
    loads_frozen_base_in_half,
    micro_step,
    packs_rows,
    replay_rows,
    sequences_per_epoch,
    trained_weights,
    with_sft_replay,
)


class ComponentRow(BaseModel):
    name: str
    bytes: float
    how: str


class PlanReport(BaseModel):
    """A recipe's plan: the estimate per component (bytes), the device's memory, and the advice."""

    model: str
    device: str
    device_memory_bytes: float
    measured_device: bool
    method: str
    adapter: str
    trained_parameters: int
    total_parameters: int
    sequences: int
    length: int
    length_source: str
    data_problem: str | None = None  # the data could not be read or encoded: sized for data.max_length instead
    gradient_checkpointing: bool
    components: list[ComponentRow]
    peak_bytes: float
    peak_bytes_checkpointed: float
    fits: bool  # peak_bytes + outside_bytes within device_memory_bytes
    outside_bytes: float = 0.0  # what the device holds beside the components (the CUDA context)
    cut_rows: int = 0  # training rows longer than data.max_length, cut to it
    longest_uncut: int | None = None  # the longest of them, before the cut
    step_seconds: float
    steps_per_epoch: int
    epoch_seconds: float
    time_note: str
    setup_seconds: float = 0.0  # before the first step (data.replay.null_space), not in step_seconds
    setup_note: str = ""
    frozen_matmuls: str = "fp32"  # the dtype the frozen base's linears multiply in while training (plan/precision.py)
    frozen_matmuls_why: str = ""
    advice: list[Advice]


def plan_recipe(recipe: Recipe, device_spec: str = "auto", lengths: RowLengths | None = None,
                processes: int = 1, per_node: int | None = None) -> PlanReport:
    """Estimate the recipe's peak memory and step time on `device_spec` (see `resolve_device`).

    `lengths`: the longest training sequence when the caller already encoded the data; read from the data
    otherwise. `processes` (of which `per_node` on this machine, default all): a multi-process run, per
    process, with what training.distributed shards divided between them. Raises ModelSourceError when the
    model's config cannot be found or built.
    """
    return build_report(recipe, *plan_inputs(recipe, device_spec, lengths, processes, per_node))


def plan_inputs(recipe: Recipe, device_spec: str = "auto", lengths: RowLengths | None = None, processes: int = 1,
                per_node: int | None = None, model_dir: Path | None = None) -> tuple[Architecture, Device, RowLengths]:
    """What a plan is built from (`plan_recipe`'s arguments): the model's architecture, the device and the rows'
    lengths, so that a caller comparing settings (`plan.fit`) reads the config and the data once. `model_dir`: the
    model's folder where the caller already has it (training), instead of resolving model.source again."""
    # the device first: its matmul probe must not share the cores with the tokenizer's worker threads
    device = resolve_device(device_spec if device_spec != "auto" else recipe.training.device)
    device = device.for_processes(processes, per_node or processes)
    if device.kind == "cpu":  # measures this CPU's bf16 speed now too, while nothing else runs (cached)
        planned_frozen_matmuls(recipe, device)
        if device.measured:
            device = dataclasses.replace(device, peak_flops=best_known_peak("fp32", device.peak_flops))
    model_dir = model_dir or resolve_model_config(recipe.model.source, recipe.model.revision, Path(recipe.base_dir))
    arch = read_architecture(model_dir)
    if lengths:
        return arch, device, lengths
    tokenizer = load_tokenizer(model_dir, chat_template=recipe_chat_template(recipe))
    return arch, device, longest_row(recipe, tokenizer, arch.max_positions)


def build_report(recipe: Recipe, arch: Architecture, device: Device, lengths: RowLengths) -> PlanReport:
    """The plan of `recipe` on `device` for training rows of `lengths` (the replay rows an SFT run adds are counted
    here: `with_sft_replay`)."""
    check_targets_exist(recipe.adapter, arch, recipe.model.source)
    lengths = with_sft_replay(recipe, lengths)
    compute = compute_bytes(recipe, device)
    half_base = loads_frozen_base_in_half(recipe, device.kind, compute)
    weights = trained_weights(recipe, arch, device.memory_bytes, half_base)
    on_device = {"memory_bytes": device.memory_bytes, "accelerator": device.kind != "cpu"}
    packed = packs_rows(recipe)
    work = micro_step(recipe, lengths, packed=packed, **on_device)
    checkpointing = recipe.training.gradient_checkpointing
    sharding = sharding_of(recipe, device.processes)
    frozen = planned_frozen_matmuls(recipe, device, arch)
    copy = frozen["dtype"] == "bf16"
    estimate = estimate_memory(arch, weights, work, device.kind, compute, checkpointing, sharding, copy)
    checkpointed = estimate_memory(arch, weights, work, device.kind, compute, True, sharding, copy)
    typical = micro_step(recipe, lengths.typical(), packed=packed, **on_device)
    timing = step_time(recipe, arch, weights, typical, device, sequences_per_epoch(recipe, lengths, work.length),
                       frozen_matmul_speedup(frozen))
    setup_s, setup_note = null_space_setup(arch, weights, replay_rows(recipe, lengths.rows)
                                           * anchor_row_tokens(recipe)[1], device)
    return PlanReport(
        model=recipe.model.source, device=device.name, device_memory_bytes=device.memory_bytes,
        measured_device=device.measured, method=recipe.method.kind, adapter=recipe.adapter.kind,
        trained_parameters=weights.parameters, total_parameters=arch.parameters, sequences=work.sequences,
        length=work.length, length_source=lengths.source, data_problem=lengths.problem,
        gradient_checkpointing=checkpointing,
        components=component_rows(estimate), peak_bytes=estimate.total, peak_bytes_checkpointed=checkpointed.total,
        fits=estimate.total + outside_estimate(device) <= device.memory_bytes, outside_bytes=outside_estimate(device),
        cut_rows=0 if packed else lengths.cut_rows, longest_uncut=None if packed else lengths.longest_uncut,
        step_seconds=timing.seconds,
        steps_per_epoch=timing.steps_per_epoch, epoch_seconds=timing.seconds * timing.steps_per_epoch,
        time_note=timing.note, setup_seconds=setup_s, setup_note=setup_note,
        frozen_matmuls=frozen["dtype"], frozen_matmuls_why=frozen["why"],
        advice=recommend(recipe, arch, device, lengths, compute))


def planned_frozen_matmuls(recipe: Recipe, device: Device, arch: Architecture | None = None) -> dict[str, Any]:
    """What training will multiply the frozen base's linears in (`frozen_matmul_choice`, the rule train applies):
    {"dtype", "why", ...}; with `arch`, fp32 where their bf16 copy would not fit the device's memory
    (`frozen_copy_refusal`, as train checks it)."""
    t = recipe.training
    choice = frozen_matmul_choice(t.precision, device.kind, recipe.adapter.kind, recipe.method.kind,
                                  t.distributed.strategy)
    if choice["dtype"] == "bf16" and arch is not None:
        refusal = frozen_copy_refusal(frozen_bf16_copy_component(arch).bytes, device.memory_bytes)
        if refusal:
            return {"dtype": "fp32", "why": refusal}
    return choice


def compute_bytes(recipe: Recipe, device: Device) -> float:
    """Activation bytes: 2 under bf16/fp16 mixed precision (the default on CUDA GPUs with bf16), 4 in fp32 (the
    default on CPUs and on GPUs before Ampere: train/common.resolve_precision)."""
    precision = recipe.training.precision
    if precision == "auto":
        return 2.0 if device.kind == "cuda" and device.bf16 else 4.0
    return 4.0 if precision == "fp32" else 2.0


def component_rows(estimate: MemoryEstimate) -> list[ComponentRow]:
    return [ComponentRow(name=c.name, bytes=c.bytes, how=c.how) for c in estimate.components]


__all__ = ["Advice", "PlanReport", "StepTime", "build_report", "plan_inputs", "plan_recipe"]

