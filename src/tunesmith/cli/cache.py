"""`tunesmith cache ...`: what tunesmith keeps under $TUNESMITH_HOME, and cleaning it."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tunesmith.cli.common import err, print_json, wide_console

cache_app = typer.Typer(help="What tunesmith keeps under $TUNESMITH_HOME (models, serve GGUFs, ...), and cleaning it.",
                        no_args_is_help=True)


def size_text(size: int) -> str:
    """Bytes in binary units, as `du -h` writes them (1 MiB = 1,048,576 bytes)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


@cache_app.command("list")
def list_command(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Each part of the cache: entries, size, what it holds and what cleaning it costs.

    Example: tunesmith cache list
    """
    from tunesmith.models.cache import cache_summary
    from tunesmith.models.home import tunesmith_home

    rows = cache_summary()
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"cache in {tunesmith_home()} (TUNESMITH_HOME)", title_justify="left")
    for column in ("area", "entries", "size", "holds", "after `tunesmith cache clean AREA`"):
        table.add_column(column, justify="right" if column in ("entries", "size") else "left")
    for row in rows:
        table.add_row(str(row["area"]), str(row["entries"]), size_text(int(row["bytes"])), escape(str(row["holds"])),
                      escape(str(row["after_cleaning"])))
    wide_console(160).print(table)
    err.print(f"Total: {size_text(sum(int(row['bytes']) for row in rows))}", highlight=False)


@cache_app.command("clean")
def clean_command(areas: Annotated[list[str] | None, typer.Argument(
                      metavar="AREA...", help="models, serve, replay, hardware, or all.")] = None,
                  older_than: Annotated[float | None, typer.Option(
                      "--older-than", metavar="DAYS", min=0,
                      help="Only entries not modified for DAYS days.")] = None,
                  dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would go; remove nothing.")]
                  = False) -> None:
    """Remove cached files; each is made again when next needed (see `tunesmith cache list` for the cost).

    Example: tunesmith cache clean serve --older-than 30

    Example: tunesmith cache clean all --dry-run
    """
    from tunesmith.models.cache import chosen_areas, clean_cache, in_use_models
    from tunesmith.models.registry import EMBEDDED

    chosen = chosen_areas(areas or [])
    removed = clean_cache(chosen, older_than, dry_run)
    for model in in_use_models(older_than) if "models" in chosen else []:
        err.print(f"kept {escape(str(model))}: a running tunesmith (training, eval, serve or chat) is using it; clean "
                  "it when that has finished.", highlight=False, soft_wrap=True)
    for entry in removed:
        err.print(f"{'would remove' if dry_run else 'removed'} {escape(str(entry.path))} ({size_text(entry.size)})",
                  highlight=False, soft_wrap=True)
    verb = "Would free" if dry_run else "Freed"
    err.print(f"{verb} {size_text(sum(entry.size for entry in removed))} in {len(removed)} "
              f"{'entry' if len(removed) == 1 else 'entries'}.", highlight=False)
    embedded = [entry.path.name for entry in removed if entry.area == "models" and entry.path.name in EMBEDDED]
    if embedded:
        err.print(f"{', '.join(embedded)} {'would be' if dry_run else 'is'} fetched again from PyPI when next used "
                  "(about 93 MB: it needs the network, which an offline machine lacks).", highlight=False,
                  soft_wrap=True)
