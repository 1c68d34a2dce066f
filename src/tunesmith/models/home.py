"""Where tunesmith keeps models on this machine: $TUNESMITH_HOME (default ~/.cache/tunesmith)/models.

A leaf of `tunesmith.models`, so the registry (embedded models) and the GGUF importer share it without a cycle.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def tunesmith_home() -> Path:
    return Path(os.environ.get("TUNESMITH_HOME", Path.home() / ".cache" / "tunesmith")).expanduser()


def models_dir() -> Path:
    return tunesmith_home() / "models"


def model_fingerprint(model_dir: Path) -> str:
    """A short key for a model folder's contents: its path and its weight and tokenizer files' names, sizes and
    modification times (cheap to compute; a rewritten file changes it)."""
    fingerprint = hashlib.sha256(str(model_dir).encode())
    for file in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("tokenizer*")):
        stat = file.stat()
        fingerprint.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return fingerprint.hexdigest()[:12]
