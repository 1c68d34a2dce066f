"""What every `tunesmith` command shares: the one stderr console and the one `--set` option.

Human text goes to stderr (stdout stays free for `--json`); `wide_console` gives a log file room for tables
that a terminal would wrap.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console

err = Console(stderr=True, emoji=False)  # `:abc:` in a message is text, not an emoji code
SHOW = {"soft_wrap": True, "highlight": False}
stdout_state = {"json_printed": False}  # a command's `--json` document is out: a later error must not add another

SetOption = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a recipe key, section.key=value (e.g. training.lr=1e-4, data.clean.pii=redact); "
                  "repeat for several.")]


def wide_console(width: int) -> Console:
    """The stderr console in a terminal; a `width`-column one when stderr is a file (a log gets room)."""
    return err if err.is_terminal else Console(stderr=True, width=width, emoji=False)


def print_json(document: Any) -> None:
    """Print a `--json` command's one document on stdout (a str is printed as it is: a results file's text)."""
    print(document if isinstance(document, str) else json.dumps(document, indent=2, ensure_ascii=False))
    stdout_state["json_printed"] = True
