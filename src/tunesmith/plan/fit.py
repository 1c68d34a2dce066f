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
    hint = ("; ".join(fixes) if fixes else "Lower training.batch_size or data.max_length.") + (
        ". `tunesmith plan RECIPE` shows the whole estimate; --force trains anyway.")
    return message, hint


def refuse_if_cannot_fit(recipe: Recipe) -> PlanReport:
    """Plan the recipe for the device it trains on; raise WillNotFit when the estimate exceeds its memory."""
    report = plan_recipe(recipe, recipe.training.device)
    if not report.fits:
        raise WillNotFit(*fit_message(report))
    return report
