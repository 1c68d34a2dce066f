"""`tunesmith runs ...`: look across run directories."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from tunesmith.cli.common import err, print_json, wide_console

runs_app = typer.Typer(help="Look across run directories.", no_args_is_help=True)


@runs_app.command("list")
def list_command(runs_dir: Annotated[Path | None, typer.Argument(help="The folder holding the runs (default: runs/ "
                                                                       "in the folder you run from).")] = None,
                 as_json: Annotated[bool, typer.Option("--json", help="Print the runs as JSON.")] = False,
                 runs_dir_option: Annotated[Path | None, typer.Option(
                     "--runs-dir", help="The same folder, as train, sweep and baseline name it.")] = None) -> None:
    """List the runs in a folder, oldest first: method, status (trained, stopped at a checkpoint), steps, final
    loss and the headline eval score, base and tuned.

    Example: tunesmith runs list runs
    """
    from tunesmith.errors import TunesmithError, shell_arg
    from tunesmith.runs import list_runs

    if runs_dir is not None and runs_dir_option is not None and runs_dir != runs_dir_option:
        raise TunesmithError(f"Two folders given: {runs_dir} and --runs-dir {runs_dir_option}.", "Give one.")
    named = runs_dir or runs_dir_option
    runs_dir = named or Path("runs")
    if named is None and not runs_dir.exists():  # nothing trained here yet: an empty list, not an error
        summaries: list[dict[str, Any]] = []
    elif not runs_dir.is_dir():
        raise TunesmithError(f"{runs_dir} is not a folder.", "Pass the folder `tunesmith train` writes runs into "
                                                             "(runs/ unless the recipe's runs_dir says otherwise).")
    elif (runs_dir / "recipe.yaml").is_file():  # one run, not a folder of them
        raise TunesmithError(f"{runs_dir} is a run, not a folder of runs.",
                             f"List its folder (tunesmith runs list {shell_arg(runs_dir.parent)}), or see the run "
                             f"itself with `tunesmith runs show {shell_arg(runs_dir)}`.")
    else:
        summaries = list_runs(runs_dir)
    if as_json:
        print_json(summaries)
        return
    if not summaries:
        err.print(f"No runs in {runs_dir}.")
        return
    table = Table(title=f"runs in {runs_dir}")
    for column in ("run", "method", "status", "steps", "final loss", "eval: base → tuned", "probes"):
        table.add_column(column)
    for row in summaries:
        score = (f"{row['metric']} {number(row['base'])} → {number(row['tuned'])}" if row["metric"] else "")
        fit = (f"reward {number(row['final_reward'])}" if row.get("final_reward") is not None
               else number(row["final_loss"]))  # GRPO: its loss says nothing, its reward does
        name = Path(row["run"]).relative_to(runs_dir) if Path(row["run"]).is_relative_to(runs_dir) else Path(row["run"])
        probes = "" if row.get("probe_accuracy") is None else (
            number(row["probe_accuracy"]) + (" REGRESSION" if row.get("regression") else ""))
        table.add_row(escape(str(name) if len(name.parts) > 1 else name.name), row["method"], row["status"],
                      "" if row["steps"] is None else str(row["steps"]), fit, escape(score), probes)
    wide_console(160).print(table)


def number(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


@runs_app.command("show")
def show(run_dir: Annotated[Path, typer.Argument(help="The run directory.")],
         as_json: Annotated[bool, typer.Option("--json", help="Print the run as JSON.")] = False) -> None:
    """Say what one run is: method, status, steps, loss, speed, base model, rows, every eval score of base and tuned,
    its exports, the files to read, and the tunesmith that trained it.

    Example: tunesmith runs show runs/quickstart-20261201-101500
    """
    from tunesmith.runs import open_run, run_details

    details = run_details(open_run(run_dir))
    if as_json:
        print_json(details)
        return
    table = Table(title=str(run_dir), show_header=False)
    table.add_column("what")
    table.add_column("value")
    for label, value in show_rows(details):
        table.add_row(label, escape(value))
    wide_console(160).print(table)


def show_rows(details: dict[str, Any]) -> list[tuple[str, str]]:
    """`runs show`'s table: one (label, value) per fact a run has; facts it lacks are left out."""
    rows = [("method", details["method"]), ("status", details["status"])]
    if details.get("base_model"):
        rows.append(("base model", str(details["base_model"])))
    if details.get("rows"):
        shape = details["rows"]
        rows.append(("rows", f"{shape['train']} train, {shape['eval']} held out ({shape['shape']})"))
    if details.get("steps") is not None:
        rows.append(("steps", f"{details['steps']}, final loss {number(details['final_loss'])}"))
    if details.get("tokens_per_s"):
        mfu = f", MFU {details['mfu']:.0%}" if details.get("mfu") else ""
        rows.append(("speed", f"{details['tokens_per_s']:.1f} tokens/s over {details['wall_time_s']:.0f} s{mfu}"))
    for metric, tuned in (details.get("scores") or {}).get("tuned", {}).items():
        base = details["scores"]["base"].get(metric)
        rows.append((f"eval {metric}", f"{number(base)} → {number(tuned)}" if base is not None else number(tuned)))
    for name, record in details["exports"].items():
        rows.append((f"export {name}", f"{record['path']} ({record['bytes'] / 2**20:,.1f} MiB)"))
    if details["files"]:
        rows.append(("read", ", ".join(details["files"])))
    source = details["tunesmith"].get("source") or {}
    commit = f" (commit {source['commit'][:10]}{', with local changes' if source.get('modified') else ''})" \
        if source.get("commit") else ""
    rows.append(("tunesmith", f"{details['tunesmith'].get('version') or '?'}{commit}"))
    return rows


@runs_app.command("diff")
def diff(first: Path, second: Path,
         as_json: Annotated[bool, typer.Option("--json", help="Print the differences as JSON.")] = False) -> None:
    """Say what differs between two runs: recipe keys, data fingerprint, package versions, hardware, and outcomes.

    Example: tunesmith runs diff runs/quickstart-20261201-101500 runs/quickstart-20261201-113000
    """
    from tunesmith.runs import diff_runs, open_run, run_summary

    found = diff_runs(open_run(first), open_run(second))
    if as_json:
        print_json({section: {key: list(values) for key, values in keys.items()}
                    for section, keys in found.items()})
        return
    if not any(found.values()):
        err.print("No differences: same recipe, data, package versions and hardware, and the same outcomes.")
        return
    table = Table(title=f"{first.name} vs {second.name}")
    for column in ("what", "key", first.name, second.name):
        table.add_column(column)
    metric = run_summary(open_run(first)).get("metric")  # the headline score's name, for its base/tuned rows
    for section, keys in found.items():
        for key, (a, b) in keys.items():
            shown = f"{key} {metric}" if section == "outcomes" and key in ("base", "tuned") and metric else key
            table.add_row(section, escape(shown), escape(diff_cell(a)), escape(diff_cell(b)))
    wide_console(160).print(table)


def diff_cell(value: Any) -> str:
    """A value as `runs diff` shows it: a float to 4 significant digits (1.422, not 1.4215764999389648), — for
    none."""
    if value is None:
        return "—"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
