"""The verdict `train` and `doctor` act on: does the recipe fit the device it will train on, and what to do if not."""

from __future__ import annotations

from pathlib import Path

from tunesmith.config import Recipe
from tunesmith.errors import TunesmithError
from tunesmith.plan import PlanReport, build_report, plan_inputs
from tunesmith.plan.architecture import Architecture
from tunesmith.plan.devices import Device
from tunesmith.plan.recommend import fitting_changes, with_micro_batch
from tunesmith.plan.workload import RowLengths

GIB = 2**30
# On a CPU, micro-batches of up to this many tokens (rows x the longest row) train fastest: a matmul over ~1,000 rows
# of activations already runs near the cores' peak, while a larger micro-batch only grows the step's memory, whose
# fresh pages the kernel zeroes at first touch, and pads more rows to the batch's longest. Measured, one invocation
# each, the same held-out loss within each (benchmarks/results/train_throughput_*micro*.json, README "Plan"):
# spread rows (up to 1,024 tokens) at batch 8: whole 155 tokens/s, micro-batches of 4 rows 268, 2 rows 288; and 2
# rows 255 vs 1 row 292; tickets (up to 128 tokens) at batch 32: 16 rows 305, 8 rows 340, 4 rows 335; orders (112)
# at batch 32: whole 221, 16 rows 298, 8 rows 309.
CPU_MICRO_TOKENS = 1024


class WillNotFit(TunesmithError):
    """The plan's estimate exceeds the device's memory (`--force` trains anyway)."""


def fit_message(report: PlanReport, shared_by: int = 1) -> tuple[str, str]:
    """What does not fit (the estimate, the device, the largest components) and the fix (the advice's flags).
    `shared_by`: processes on one CPU machine, which share its memory, so fewer of them is a fix too."""
    largest = sorted(report.components, key=lambda c: -c.bytes)[:3]
    parts = ", ".join(f"{c.name} {c.bytes / GIB:,.1f}" for c in largest)
    message = (f"The plan estimates {report.peak_bytes / GIB:,.1f} GiB at the peak of a training step, and "
               f"{report.device} has {report.device_memory_bytes / GIB:,.1f} GiB (largest parts, GiB: {parts}).")
    fixes = [f"{a.what} {a.value}: {' '.join(a.flags)}" for a in report.advice if a.flags]
    if shared_by > 1:
        fixes.insert(0, f"fewer processes: the {shared_by} on this machine share its memory (--nproc)")
    hint = ("; ".join(fixes) if fixes else "Lower training.batch_size or data.max_length") + (
        ". `tunesmith plan RECIPE` shows the whole estimate; --force trains anyway.")
    return message, hint


def fit_recipe(recipe: Recipe, processes: int = 1, per_node: int | None = None,
               force: bool = False) -> tuple[Recipe, str | None]:
    """The recipe to train, planned for the device it trains on: on a CPU, a batch of long rows as micro-batches
    (`cpu_micro_batches`) where they fit; else as it is when it fits; otherwise with the first
    of `fitting_changes` that fits (the second value says what changed and why); else WillNotFit, naming the fix.
    The same rows reach each optimizer step either way: smaller micro-batches accumulate to the recipe's batch.
    `processes`, `per_node`: a multi-process run (plan_recipe). `force` (`train --force`): a recipe the plan says will
    not fit trains as written, said in the note, instead of being changed or refused; the CPU's micro-batches stay."""
    arch, device, lengths = plan_inputs(recipe, recipe.training.device, processes=processes, per_node=per_node)
    report = build_report(recipe, arch, device, lengths)
    faster = faster_on_cpu(recipe, report, arch, device, lengths)
    if faster is not None:
        return faster[0], faster[2]
    if report.fits:
        return recipe, None
    if force:
        return recipe, f"note: {fit_message(report)[0]} --force: training it as written, unchanged."
    for candidate in fitting_changes(recipe, report.length):
        fitted = build_report(candidate, arch, device, lengths)
        if fitted.fits:
            return candidate, fit_note(recipe, candidate, report, fitted)
    raise WillNotFit(*fit_message(report, (per_node or processes) if device.kind == "cpu" else 1))


def faster_on_cpu(recipe: Recipe, report: PlanReport, arch: Architecture, device: Device,
                  lengths: RowLengths) -> tuple[Recipe, PlanReport, str] | None:
    """The recipe as `train` runs it on a CPU where `cpu_micro_batches` splits it and the split fits: that recipe,
    its plan and the line saying why; None otherwise (`report`: the plan of `recipe` as written)."""
    faster = cpu_micro_batches(recipe, report.length, device)
    if faster is None:
        return None
    faster_report = build_report(faster, arch, device, lengths)
    if not faster_report.fits:
        return None
    return faster, faster_report, speed_note(recipe, faster, report.length, faster_report)


def plan_as_trained(recipe: Recipe, device_spec: str = "auto", processes: int = 1, per_node: int | None = None,
                    lengths: RowLengths | None = None, model_dir: Path | None = None) -> tuple[PlanReport, str | None]:
    """What `tunesmith plan` shows: the plan of the recipe as `train` will run it (on a CPU, a batch of long rows
    split as `fit_recipe` splits it, with the line that says so), else of the recipe as written. `lengths` and
    `model_dir`: the rows and model a caller already holds (training), read instead of the recipe's files."""
    arch, device, lengths = plan_inputs(recipe, device_spec, lengths, processes, per_node, model_dir)
    report = build_report(recipe, arch, device, lengths)
    faster = faster_on_cpu(recipe, report, arch, device, lengths)
    return (faster[1], faster[2]) if faster is not None else (report, None)


def fit_note(recipe: Recipe, fitted: Recipe, report: PlanReport, fitted_report: PlanReport) -> str:
    """One line on what the plan changed so that the run fits, with both estimates and the way back."""
    t, f = recipe.training, fitted.training
    changes, keys = [], []
    if f.batch_size != t.batch_size:
        rows = t.batch_size * t.grad_accum
        changes.append(f"micro-batches of {rows_of(f.batch_size)} accumulated {f.grad_accum} times ({rows} rows per "
                       "step, as the recipe asks)")
        keys.append("training.grad_accum")
    if f.gradient_checkpointing and not t.gradient_checkpointing:
        changes.append("activation checkpointing: on (steps run slower)")
        keys.append("training.gradient_checkpointing")
    return (f"{'; '.join(changes)}: the plan estimates {report.peak_bytes / GIB:,.1f} GiB as written, "
            f"{fitted_report.peak_bytes / GIB:,.1f} GiB so, and {report.device} has "
            f"{report.device_memory_bytes / GIB:,.1f} GiB. Set {' and '.join(keys)} to decide yourself.")


def cpu_micro_batches(recipe: Recipe, length: int, device: Device) -> Recipe | None:
    """On a CPU, an SFT or CPT batch of more than CPU_MICRO_TOKENS tokens (`length`: the longest row) as the largest
    micro-batches within it, accumulated to the recipe's rows per step (the same optimizer steps on the same rows).
    None where the batch is within it, the recipe sets training.grad_accum, or the device is not a CPU."""
    t = recipe.training
    if (device.kind != "cpu" or "grad_accum" in t.model_fields_set or recipe.method.kind not in ("sft", "cpt")
            or t.batch_size * length <= CPU_MICRO_TOKENS):
        return None
    size = max((s for s in range(1, t.batch_size) if t.batch_size % s == 0 and s * length <= CPU_MICRO_TOKENS),
               default=1)
    return with_micro_batch(recipe, size)


def speed_note(recipe: Recipe, faster: Recipe, length: int, report: PlanReport) -> str:
    t, f = recipe.training, faster.training
    longest = (f"rows may be up to data.max_length, {length:,} tokens, as the data did not load"
               if report.data_problem else f"the longest row is {length:,} tokens")
    return (f"micro-batches of {rows_of(f.batch_size)} accumulated {f.grad_accum} times ({t.batch_size * t.grad_accum} "
            f"rows per step, as the recipe asks): on a CPU, micro-batches of up to {CPU_MICRO_TOKENS:,} tokens train "
            f"faster and in less memory ({longest}; the plan estimates "
            f"{report.peak_bytes / GIB:,.1f} GiB so). Set training.grad_accum to decide yourself.")


def rows_of(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"
