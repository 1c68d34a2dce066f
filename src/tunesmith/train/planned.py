"""The memory and time `tunesmith plan` gave for the recipe as trained, beside what the run then measured, so that a
plan that is off says so on the run that shows it (train.json `planned`, and one line at the end of training)."""

from __future__ import annotations

from typing import Any

from tunesmith.config import Recipe
from tunesmith.errors import first_line


def planned_against_measured(recipe: Recipe, speed: dict[str, Any], steps: int,
                             processes: int = 1) -> dict[str, Any]:
    """The plan of `recipe` as it trained (`plan.fit.plan_as_trained`: its peak memory in GiB and seconds a step)
    beside the run's own: the peak memory `speed` measured (resident on a CPU, allocated on CUDA) and its training
    seconds over `steps`. A plan that cannot be made now (a model or data file gone since the start) gives `error`,
    never a failed run: the training is done."""
    from tunesmith.plan.fit import plan_as_trained

    try:
        report, _ = plan_as_trained(recipe, recipe.training.device, processes=processes)
    except Exception as exc:  # whatever the plan hits, the trained run stands
        return {"error": first_line(exc)}
    measured_bytes = speed.get("peak_cuda_bytes") or speed.get("peak_rss_bytes")
    return {"peak_gib": round(report.peak_bytes / 2**30, 2),
            "measured_peak_gib": round(measured_bytes / 2**30, 2) if measured_bytes else None,
            "step_seconds": round(report.step_seconds, 2),
            "measured_step_seconds": round(speed["seconds"] / steps, 2) if steps and speed.get("seconds") else None}


def planned_line(planned: dict[str, Any]) -> str | None:
    """One line for the end of training: the plan's figures, the measured ones, and their ratios; None where there
    is nothing to set side by side."""
    if "error" in planned:
        return f"plan vs run: no plan to compare with ({planned['error']})"
    pairs = [(f"{planned['peak_gib']:,.2f} GiB peak", planned["measured_peak_gib"], planned["peak_gib"], "GiB"),
             (f"{planned['step_seconds']:,.2f} s a step", planned["measured_step_seconds"], planned["step_seconds"],
              "s")]
    said = [f"{plan} (measured {measured:,.2f} {unit}, plan/measured {estimate / measured:.2f}x)"
            for plan, measured, estimate, unit in pairs if measured]
    return "plan vs run: `tunesmith plan` gives " + "; ".join(said) if said else None
