"""Matplotlib set-up shared by every stage that draws: headless backend, atomic PNG writes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from tunesmith.runs import atomic_write_bytes


def pyplot() -> Any:
    """matplotlib.pyplot on the headless Agg backend (no display on servers or in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Render `fig` to PNG and write it atomically; the figure is closed either way."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", bbox_inches="tight")
    finally:
        pyplot().close(fig)
    return atomic_write_bytes(path, buffer.getvalue())
