"""One sweep combination in its own process: the tunesmith CLI, then its status written to a file.

`python -m tunesmith.sweep_child STATUS_FILE <tunesmith arguments>`. The status (tunesmith.sweep.ChildStatus:
exit code, the error and hint the CLI ended on, peak memory) is written whether the run succeeded or not, so the
sweep never scrapes the log for it. This module sits beside the CLI, above the sweep that starts it, so that the
sweep (a pipeline module) never imports the CLI.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tunesmith import cli
from tunesmith.runs import atomic_write_json
from tunesmith.sweep import ChildStatus, peak_memory


def measured_cli(status_file: Path, argv: list[str]) -> None:
    """Run the tunesmith CLI in this process, then record its exit code, error and peak memory."""
    sys.argv = ["tunesmith", *argv]
    code: int | str | None = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code
        raise
    except BaseException:
        code = 1
        raise
    finally:
        error = cli.state.get("error") or {}
        exit_code = code if isinstance(code, int) else (0 if code is None else 1)
        status = ChildStatus(exit_code=exit_code, error=error.get("message"), hint=error.get("hint"),
                             **peak_memory())
        atomic_write_json(status_file, status.model_dump(mode="json"))


if __name__ == "__main__":
    measured_cli(Path(sys.argv[1]), sys.argv[2:])
