"""`tunesmith doctor`: a thin command over tunesmith.doctor.run.run_doctor.

cli/app.py registers it on the app (`app.command()(doctor)`). The tables go to stderr, `--json` puts one
document on stdout; the exit code is 1 when a check fails, 0 otherwise (2 for a usage error or a bad recipe).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tunesmith.cli.common import SetOption, err, print_json, wide_console
from tunesmith.doctor.report import DoctorReport

STYLES = {"pass": "green", "warn": "yellow", "fail": "bold red"}


def doctor(recipe_file: Annotated[Path | None, typer.Argument(
               metavar="[RECIPE]", help="A recipe, as --recipe (the other commands take theirs this way).")] = None,
           model: Annotated[str | None, typer.Option(
               "--model", metavar="SOURCE", help="Embedded alias, local folder, .gguf file or Hub id to check "
               "(overrides the recipe's model.source).")] = None,
           recipe: Annotated[Path | None, typer.Option(
               "--recipe", metavar="RECIPE", help="A recipe: its model, data and template fit are checked too.")]
           = None,
           set_: SetOption = None,
           as_json: Annotated[bool, typer.Option("--json", help="Print every check as one JSON document.")] = False
           ) -> None:
    """Check versions, the accelerator, a model's access and chat template, and a recipe's data, each with a fix.

    Never downloads weights: a Hub model is asked about with one HEAD request. Exits 1 when any check fails,
    0 when none does (warnings included), 2 for a bad command line or a recipe that does not load.

    Example: tunesmith doctor --model meta-llama/Llama-3.2-1B-Instruct

    Example: tunesmith doctor --recipe recipes/quickstart.yaml --json

    Example: tunesmith doctor recipes/quickstart.yaml
    """
    from tunesmith.doctor.run import run_doctor
    from tunesmith.errors import TunesmithError

    if recipe_file is not None and recipe is not None and recipe_file != recipe:
        raise TunesmithError(f"Two recipes: {recipe_file} and --recipe {recipe}.", "Name one.")
    report = run_doctor(model, recipe or recipe_file, set_ or [])
    print_report(report)
    if as_json:
        print_json(report.model_dump())
    if report.failed:
        raise typer.Exit(1)


def print_report(report: DoctorReport) -> None:
    """One table per section (pass green, warn yellow, fail red, with the fix), then a one-line summary."""
    console = wide_console(140)
    for section, checks in report.sections().items():
        table = Table(title=section, title_justify="left", show_lines=False)
        table.add_column("check", no_wrap=True)
        table.add_column("", no_wrap=True)
        table.add_column("found")
        table.add_column("fix")
        for check in checks:
            style = STYLES[check.status]
            table.add_row(escape(check.name), f"[{style}]{check.status}[/{style}]", escape(check.detail),
                          escape(check.fix or ""))
        console.print(table)
    failed, warned = len(report.failed), len(report.warned)
    summary = f"{len(report.checks)} checks: {failed} failed, {warned} warnings"
    err.print(f"[{'bold red' if failed else 'green'}]{summary}[/]", highlight=False)
