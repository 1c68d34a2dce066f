"""The verdict `train` and `doctor` act on: does the recipe fit the device it will train on, and what to do if not."""

from __future__ import annotations

from tunesmith.config import Recipe
from tunesmith.errors import TunesmithError
from tunesmith.plan import PlanReport, plan_recipe

GIB = 2**30


class WillNotFit(TunesmithError):
    """The plan's estimate exceeds the device's memory (`--force` trains anyway)."""


def fit_message(report: PlanReport) -> tuple[str, str]:
    """What does not fit (the estimate, the device, the largest components) and the fix (the advice's flags)."""
    largest = sorted(report.components, key=lambda c: -c.bytes)[:3]
    parts = ", ".join(f"{c.name} {c.bytes / GIB:,.1f}" for c in largest)
    message = (f"The plan estimates {report.peak_bytes / GIB:,.1f} GiB at the peak of a training step, and "
               f"{report.device} has {report.device_memory_bytes / GIB:,.1f} GiB (largest parts, GiB: {parts}).")
    fixes = [f"{a.what} {a.value}: {' '.join(a.flags)}" for a in report.advice if a.flags]
    hint = ("; ".join(fixes) if fixes else "Lower training.batch_size or data.max_length") + (
        ". `tunesmith plan RECIPE` shows the whole estimate; --force trains anyway.")
    return message, hint


def fit_recipe(recipe: Recipe, processes: int = 1, per_node: int | None = None) -> tuple[Recipe, str | None]:
    """The recipe to train, planned for the device it trains on: as it is when it fits; with activation
    checkpointing switched on when only that makes it fit and the recipe does not set
    `training.gradient_checkpointing` itself (the second value says so); else WillNotFit, naming the fix.
    `processes`, `per_node`: a multi-process run (plan_recipe)."""
    report = plan_recipe(recipe, recipe.training.device, processes=processes, per_node=per_node)
    if report.fits:
        return recipe, None
    chosen_by_user = "gradient_checkpointing" in recipe.training.model_fields_set
    if not chosen_by_user and report.peak_bytes_checkpointed <= report.device_memory_bytes:
        training = recipe.training.model_copy(update={"gradient_checkpointing": True})
        note = (f"activation checkpointing: on (the plan estimates {report.peak_bytes / GIB:,.1f} GiB without it, "
                f"{report.peak_bytes_checkpointed / GIB:,.1f} GiB with it, and {report.device} has "
                f"{report.device_memory_bytes / GIB:,.1f} GiB; steps run slower). Set "
                "training.gradient_checkpointing to decide yourself.")
        return recipe.model_copy(update={"training": training}), note
    raise WillNotFit(*fit_message(report))
