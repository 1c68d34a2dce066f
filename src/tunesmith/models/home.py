"""Where tunesmith keeps models on this machine: $TUNESMITH_HOME (default ~/.cache/tunesmith)/models.

A leaf of `tunesmith.models`, so the registry (embedded models) and the GGUF importer share it without a cycle.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from tunesmith.errors import TunesmithError


def tunesmith_home() -> Path:
    """$TUNESMITH_HOME, else ~/.cache/tunesmith. Raises TunesmithError where it names something that is not a
    folder (a file: every cache under it would fail, or look empty)."""
    home = Path(os.environ.get("TUNESMITH_HOME", Path.home() / ".cache" / "tunesmith")).expanduser()
    if home.exists() and not home.is_dir():
        raise TunesmithError(f"TUNESMITH_HOME is {home}, which is a file, not a folder.",
                             "Point TUNESMITH_HOME at a folder (it is made when missing), or unset it for "
                             "~/.cache/tunesmith.")
    return home


def models_dir() -> Path:
    return tunesmith_home() / "models"


MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # an embedded or imported model's folder in the cache


def is_model_name(source: str) -> bool:
    """`source` can name a folder of the model cache: one plain name, no path (`..`, `/abs`, `owner/name`)."""
    return MODEL_NAME.fullmatch(source) is not None and ".." not in source


def model_fingerprint(model_dir: Path) -> str:
    """A short key for a model folder's contents: its path and its weight and tokenizer files' names, sizes and
    modification times (cheap to compute; a rewritten file changes it)."""
    fingerprint = hashlib.sha256(str(model_dir).encode())
    for file in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("tokenizer*")):
        stat = file.stat()
        fingerprint.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return fingerprint.hexdigest()[:12]


IN_USE_FILE = ".in-use"  # inside a cached model's folder: shared-locked by each process using the model
_in_use: dict[Path, int] = {}  # the folders this process holds, and the open lock file of each


def mark_in_use(model_dir: Path) -> Path:
    """Hold a shared lock on `model_dir` until this process ends (the OS releases it, `kill -9` included) where it is
    a folder of the model cache (`models_dir()`; anywhere else nothing is written), so that `tunesmith cache clean
    models` leaves a model a training, eval, serve or chat still reads. Where locks cannot be taken (a read-only
    cache, a system without fcntl) nothing is held. Returns `model_dir`."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks of this kind
        return model_dir
    folder = model_dir.resolve()
    if folder.parent != models_dir().resolve() or folder in _in_use:
        return model_dir
    try:
        handle = os.open(folder / IN_USE_FILE, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError:
        return model_dir
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        os.close(handle)
        return model_dir
    _in_use[folder] = handle
    return model_dir


def in_use_elsewhere(model_dir: Path) -> bool:
    """Whether another process holds `mark_in_use`'s lock on `model_dir` (this process's own marks do not count)."""
    try:
        import fcntl
    except ImportError:
        return False
    if model_dir.resolve() in _in_use:
        return False
    try:
        handle = os.open(model_dir / IN_USE_FILE, os.O_RDONLY)
    except OSError:  # never marked, or not a folder
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # no locks on this file system (some NFS mounts): nothing can be told, nothing held
        return False
    finally:
        os.close(handle)  # closing releases the test lock
    return False

