"""`tunesmith plan`: a thin command over tunesmith.plan (registered on the app in cli/app.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tunesmith.cli.common import SHOW, SetOption, err, print_json, wide_console

GIB = 2**30
DEVICE_HELP = ("cpu, cuda or mps (this machine: free memory and speed measured), cuda:24GB (a GPU of that memory), "
               "or a GPU by name: t4, l4, a10g, rtx3090, rtx4090, a100-40gb, a100-80gb, h100-80gb, h200, ...")


def plan(recipe: Path, set_: SetOption = None,
         device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
         as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
         nproc: Annotated[int, typer.Option("--nproc", min=1, help="Training processes per machine (as train "
                                            "--nproc): memory per process, with what training.distributed "
                                            "shards divided; CPU processes share the machine's memory.")] = 1,
         nnodes: Annotated[int, typer.Option("--nnodes", min=1, help="Machines (as train --nnodes).")] = 1) -> None:
    """Estimate a recipe's peak memory and training time on a device, from the model's config and the data alone
    (no weights load), and say what to change when it does not fit.

    Example: tunesmith plan recipes/quickstart.yaml
    Example: tunesmith plan my-recipe.yaml --device rtx4090 --set adapter.kind=full
    Example: tunesmith plan my-recipe.yaml --device h100-80gb --nproc 8 --set training.distributed=fsdp
    """
    from tunesmith.config import load_recipe
    from tunesmith.plan.fit import plan_as_trained

    report, note = plan_as_trained(load_recipe(recipe, set_ or []), device, processes=nproc * nnodes, per_node=nproc)
    if as_json:
        print_json(report.model_dump_json(indent=2))
    else:
        if note:  # the plan below is of the split `train` makes, not of the batch as written
            err.print(f"As train runs it: {escape(note)}", **SHOW)
        print_plan(report)
    if report.data_problem:  # the plan is still printed (sized for data.max_length); train would refuse the data
        err.print(f"[red]data: {escape(report.data_problem)}[/red]\nThe memory above is sized for data.max_length; "
                  f"`tunesmith train` refuses this data. `tunesmith data inspect {escape(str(recipe))}` lists "
                  "every problem row.", **SHOW)
        raise typer.Exit(1)


def print_plan(report) -> None:
    """The memory table (component, GiB, how), the verdict, the time, and the advice table, on stderr."""
    whole = report.adapter in ("full", "partial", "hft")  # trains the base's own weights; others add their own
    trained = (f"{report.trained_parameters:,} of {report.total_parameters:,} parameters trained" if whole else
               f"{report.trained_parameters:,} adapter parameters trained beside the base's "
               f"{report.total_parameters:,} ({report.trained_parameters + report.total_parameters:,} in all, as "
               "train counts them)")
    err.print(f"[bold]{escape(report.model)}[/bold]: {report.method} with {report.adapter}, {trained}; "
              f"{report.sequences} sequence{'s' if report.sequences != 1 else ''} x {report.length:,} tokens per "
              "micro-batch "
              f"({escape(report.length_source)})",
              **SHOW)
    table = Table(title=f"Peak memory on {escape(report.device)}")
    for column, justify in (("component", "left"), ("GiB", "right"), ("how", "left")):
        table.add_column(column, justify=justify)
    for row in report.components:
        table.add_row(row.name, f"{row.bytes / GIB:,.2f}", escape(row.how))
    table.add_row("[bold]total[/bold]", f"[bold]{report.peak_bytes / GIB:,.2f}[/bold]",
                  f"device: {report.device_memory_bytes / GIB:,.1f} GiB "
                  f"{('total' if report.outside_bytes else 'free') if report.measured_device else 'stated'}")
    err.print(table)
    verdict = "[green]fits[/green]" if report.fits else "[red]does not fit[/red]"
    outside = f" + {report.outside_bytes / GIB:,.1f} CUDA context" if report.outside_bytes else ""
    err.print(f"{verdict}: {report.peak_bytes / GIB:,.2f}{outside} of {report.device_memory_bytes / GIB:,.1f} GiB "
              f"({report.peak_bytes_checkpointed / GIB:,.2f} GiB with activation checkpointing)", **SHOW)
    if report.cut_rows:
        err.print(f"[yellow]{report.cut_rows:,} training row(s) are longer than data.max_length {report.length:,} and "
                  f"are cut to it (the longest has {report.longest_uncut:,} tokens): what they hold past the cut "
                  "never trains.[/yellow] `tunesmith data inspect RECIPE` names them; raise data.max_length (or set "
                  "it to auto) to keep them whole.", **SHOW)
    epoch = f", {report.steps_per_epoch} steps: {duration(report.epoch_seconds)}" if report.steps_per_epoch else ""
    err.print(f"time: {duration(report.step_seconds)} per optimizer step{epoch} ({escape(report.time_note)})",
              **SHOW)
    if report.frozen_matmuls == "bf16":
        err.print(f"frozen base's linears: bf16 ({escape(report.frozen_matmuls_why)})", **SHOW)
    if report.setup_seconds:
        err.print(f"before the first step: ~{duration(report.setup_seconds)} ({escape(report.setup_note)})", **SHOW)
    advice = Table(title="Recommendations")
    for column in ("what", "value", "why", "apply with"):
        advice.add_column(column, overflow="fold")  # a flag cut to `--set training.batch_…` cannot be copied
    for item in report.advice:
        advice.add_row(item.what, escape(item.value), escape(item.why), escape(" ".join(item.flags)) or "-")
    wide_console(160).print(advice)


def duration(seconds: float) -> str:
    """12 ms, 3.4 s, 7.5 min, 2.1 h."""
    if seconds < 1:
        return f"{seconds * 1000:,.0f} ms"
    if seconds < 120:
        return f"{seconds:,.1f} s"
    return f"{seconds / 60:,.1f} min" if seconds < 7200 else f"{seconds / 3600:,.1f} h"
