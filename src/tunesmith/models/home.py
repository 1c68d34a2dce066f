"""Where tunesmith keeps models on this machine: $TUNESMITH_HOME (default ~/.cache/tunesmith)/models.

A leaf of `tunesmith.models`, so the registry (embedded models) and the GGUF importer share it without a cycle.
"""

from __future__ import annotations

import os
from pathlib import Path


def tunesmith_home() -> Path:
    return Path(os.environ.get("TUNESMITH_HOME", Path.home() / ".cache" / "tunesmith")).expanduser()


def models_dir() -> Path:
    return tunesmith_home() / "models"
