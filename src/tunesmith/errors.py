"""One error family for everything a user can fix; the CLI prints these without a traceback."""

from __future__ import annotations

import shlex


def shell_arg(value: object) -> str:
    """`value` as one argument of a command a message shows: quoted where a shell would split or expand it (a path
    with spaces), as it is otherwise, so that the command works pasted as printed."""
    return shlex.quote(str(value))


class TunesmithError(Exception):
    """A problem the user can fix: `message` says what is wrong, `hint` says what to do. Exits 2 (a usage error) unless
    `exit_code` says otherwise (1: the command ran and what it was asked for did not happen)."""

    exit_code = 2
    label = "Error"  # what the CLI prints before the message

    def __init__(self, message: str, hint: str | None = None, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nHint: {self.hint}"


class RecipeError(TunesmithError):
    """The recipe (YAML or --set override) is invalid."""


class DataError(TunesmithError):
    """A dataset file or row cannot be used."""


class ModelSourceError(TunesmithError):
    """A model cannot be found, fetched or opened."""


class RowProblem(DataError):
    """One dataset row cannot be used. `reason` is the short key that `skip_invalid` counts it under.

    Raised where the row is examined (which does not know the file), caught by the loader, which
    either re-raises a DataError naming the file and line or skips and counts the row.
    """

    def __init__(self, reason: str, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.reason = reason


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (Hub errors carry a request id and a URL below it; a
    library's error quoted inside one of ours), else the exception's type name."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
