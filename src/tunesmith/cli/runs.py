"""`tunesmith runs ...`: look across run directories."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tunesmith.cli.common import err, print_json, wide_console

runs_app = typer.Typer(help="Look across run directories.", no_args_is_help=True)


@runs_app.command("diff")
def diff(first: Path, second: Path,
         as_json: Annotated[bool, typer.Option("--json", help="Print the differences as JSON.")] = False) -> None:
    """Say what differs between two runs: recipe keys, data fingerprint, package versions, hardware.

    Example: tunesmith runs diff runs/quickstart-20261201-101500 runs/quickstart-20261201-113000
    """
    from tunesmith.runs import diff_runs, open_run

    found = diff_runs(open_run(first), open_run(second))
    if as_json:
        print_json({section: {key: list(values) for key, values in keys.items()}
                    for section, keys in found.items()})
        return
    if not any(found.values()):
        err.print("No differences: same recipe, data, package versions and hardware.")
        return
    table = Table(title=f"{first.name} vs {second.name}")
    for column in ("what", "key", first.name, second.name):
        table.add_column(column)
    for section, keys in found.items():
        for key, (a, b) in keys.items():
            table.add_row(section, escape(key), escape(str(a)), escape(str(b)))
    wide_console(160).print(table)
