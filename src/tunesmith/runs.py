"""The run directory: everything one experiment produced, in one place, written atomically.

Every file goes to a temporary name first and is renamed into place, so a crash never leaves half a
file; directories (adapters, merged checkpoints) are built in a temporary sibling and renamed.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from tunesmith.config import Recipe, recipe_to_yaml
from tunesmith.errors import TunesmithError


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; users expect ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `path`, on failure it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(tmp, 0o777 & ~current_umask())
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TunesmithError(f"Missing file: {path}", "Run the stage that writes it first.") from None


@dataclass(frozen=True)
class Run:
    """A run directory and the names of what lives in it (DESIGN.md §2)."""

    path: Path

    @property
    def recipe_file(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def plots_dir(self) -> Path:
        return self.path / "plots"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def exports_dir(self) -> Path:
        return self.path / "exports"

    def trained_artifact(self) -> Path:
        """What training saved: `adapter/` (a PEFT adapter) or `model/` (full, partial, hft).

        Raises TunesmithError when neither is complete, so eval, export and merge say so instead of failing
        inside PEFT or transformers on a missing file.
        """
        for folder, marker in ((self.adapter_dir, "adapter_config.json"), (self.path / "model", "config.json")):
            if (folder / marker).is_file():
                return folder
        raise TunesmithError(
            f"{self.path} has no trained model: neither adapter/adapter_config.json nor model/config.json exists "
            "(training did not finish, or the folder was moved or deleted).",
            f"Train it again with `tunesmith train {self.recipe_file}`, or pass a run directory whose training "
            "finished.")

    def load_recipe(self) -> Recipe:
        from tunesmith.config import load_recipe

        return load_recipe(self.recipe_file)

    def append_metrics(self, records: list[dict[str, Any]]) -> None:
        """Rewrite metrics.jsonl with new records appended (small file; keeps the write atomic)."""
        old = self.metrics_file.read_text(encoding="utf-8") if self.metrics_file.exists() else ""
        new = "".join(json.dumps(r) + "\n" for r in records)
        atomic_write_text(self.metrics_file, old + new)

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.exists():
            return []
        lines = self.metrics_file.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]


def create_run(recipe: Recipe, runs_dir: Path | None = None) -> Run:
    """Make a fresh run directory and snapshot the resolved recipe and environment into it."""
    root = Path(runs_dir or recipe.runs_dir).expanduser()  # relative to where the user runs it
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = root / f"{recipe.name}-{stamp}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = root / f"{recipe.name}-{stamp}-{suffix}"
    path.mkdir(parents=True)
    run = Run(path)
    atomic_write_text(run.recipe_file, recipe_to_yaml(recipe))
    atomic_write_json(path / "env.json", environment_snapshot())
    return run


def open_run(path: str | Path) -> Run:
    run = Run(Path(path))
    if not run.recipe_file.is_file():
        raise TunesmithError(
            f"{path} is not a tunesmith run directory (no recipe.yaml).",
            "Pass the directory that `tunesmith train` printed, e.g. runs/quickstart-20261123-101500.",
        )
    return run


PACKAGES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "safetensors", "gguf")


def environment_snapshot() -> dict[str, Any]:
    """Versions and hardware, so a result can be traced to the stack that produced it."""
    import torch

    versions = {}
    for name in ("tunesmith", *PACKAGES):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cuda = torch.cuda.is_available()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
        "cuda": torch.version.cuda if cuda else None,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "created": datetime.now().isoformat(timespec="seconds"),
    }
