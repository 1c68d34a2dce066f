"""One sweep combination in its own process: the tunesmith CLI, then its peak memory written to a file.

`python -m tunesmith.sweep_child MEMORY_FILE <tunesmith arguments>`. It sits beside the CLI, above the sweep
that starts it, so that the sweep (a pipeline module) never imports the CLI.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tunesmith.cli import main
from tunesmith.runs import atomic_write_json
from tunesmith.sweep import peak_memory


def measured_cli(memory_file: Path, argv: list[str]) -> None:
    """Run the tunesmith CLI in this process, then record its peak memory, whether it succeeded or not."""
    sys.argv = ["tunesmith", *argv]
    try:
        main()
    finally:
        atomic_write_json(memory_file, peak_memory())


if __name__ == "__main__":
    measured_cli(Path(sys.argv[1]), sys.argv[2:])
