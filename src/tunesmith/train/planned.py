"""The memory and time `tunesmith plan` gives for the recipe as trained, beside what the run then measured, so that a
plan that is off says so on the run that shows it (train.json `planned`, and one line at the end of training)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.config import Recipe
from tunesmith.errors import first_line
from tunesmith.plan.fit import plan_as_trained
from tunesmith.plan.workload import RowLengths


def trained_row_lengths(dataset: Any) -> RowLengths | None:
    """The `plan.workload.RowLengths` of the rows a run trained on, read from its token ids and labels (SFT and CPT
    datasets); None for datasets of other shapes (preference pairs, GRPO prompts)."""
    columns = getattr(dataset, "column_names", None) or []
    if "input_ids" not in columns or not len(dataset):
        return None
    sizes = [len(ids) for ids in dataset["input_ids"]]
    answers = ([sum(label != -100 for label in labels) for labels in dataset["labels"]] if "labels" in columns
               else [max(size - 1, 0) for size in sizes])
    return RowLengths(max(sizes), f"the {len(sizes):,} sequences trained", len(sizes), max(answers),
                      sum(sizes) / len(sizes), sum(answers) / len(answers))


def planned_against_measured(recipe: Recipe, speed: dict[str, Any], steps: int, dataset: Any, model_dir: Path,
                             processes: int = 1) -> dict[str, Any]:
    """The plan of `recipe` as it trained (`plan.fit.plan_as_trained` on the rows of `dataset` and the base in
    `model_dir`, as training read them: nothing is read or downloaded again): its peak memory in GiB and seconds a
    step, beside the run's own: the peak memory `speed` measured (resident on a CPU, allocated on CUDA) and its
    training seconds over `steps`. A method whose rows the plan is not set beside (preference pairs, GRPO prompts)
    gives `skipped`; a plan that fails gives `error`, never a failed run: the training is done."""
    lengths = trained_row_lengths(dataset)
    if lengths is None:
        return {"skipped": f"the plan is set beside rows of token ids (sft, cpt), not {recipe.method.kind}'s"}
    try:
        report, _ = plan_as_trained(recipe, recipe.training.device, processes=processes, lengths=lengths,
                                    model_dir=model_dir)
    except Exception as exc:  # whatever the plan hits, the trained run stands
        return {"error": first_line(exc)}
    measured_bytes = speed.get("peak_cuda_bytes") or speed.get("peak_rss_bytes")
    return {"peak_gib": round(report.peak_bytes / 2**30, 2),
            "measured_peak_gib": round(measured_bytes / 2**30, 2) if measured_bytes else None,
            "step_seconds": round(report.step_seconds, 2),
            "measured_step_seconds": round(speed["seconds"] / steps, 2) if steps and speed.get("seconds") else None}


def planned_line(planned: dict[str, Any]) -> str | None:
    """One line for the end of training: the plan's figures, the measured ones, and their ratios; None where there
    is nothing to set side by side (a method whose rows the plan is not set beside: `skipped`)."""
    if "skipped" in planned:
        return None
    if "error" in planned:
        return f"plan vs run: no plan to compare with ({planned['error']})"
    pairs = [(f"{planned['peak_gib']:,.2f} GiB peak", planned["measured_peak_gib"], planned["peak_gib"], "GiB"),
             (f"{planned['step_seconds']:,.2f} s a step", planned["measured_step_seconds"], planned["step_seconds"],
              "s")]
    said = [f"{plan} (measured {measured:,.2f} {unit}, plan/measured {estimate / measured:.2f}x)"
            for plan, measured, estimate, unit in pairs if measured]
    return "plan vs run: `tunesmith plan` gives " + "; ".join(said) if said else None
