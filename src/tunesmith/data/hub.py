"""Hub dataset ids as data sources: `hf:owner/name[:split]`, or a bare `owner/name` that is not a local path.

Loading goes through `datasets.load_dataset`, so the user's cache, token and `HF_ENDPOINT` apply. When the
Hub cannot be reached, the error says how to bring the data over from a machine that can reach it.
"""

from __future__ import annotations

import re
from pathlib import Path

from tunesmith.data.readers import Record
from tunesmith.errors import DataError

HUB_PREFIX = "hf:"
FILE_SUFFIXES = {".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt", ".arrow"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.\[\]%:-]+)?$")


def is_hub_dataset(value: str, local: Path | None = None) -> bool:
    """True for `hf:...`, or for an `owner/name` id when no file or folder of that name exists."""
    if value.startswith(HUB_PREFIX):
        return True
    looks_like_file = Path(value.partition(":")[0]).suffix.lower() in FILE_SUFFIXES
    return bool(HUB_ID.match(value)) and not looks_like_file and not (local or Path(value)).exists()


def split_spec(value: str) -> tuple[str, str]:
    """`hf:owner/name:test` → ("owner/name", "test"); the split defaults to train."""
    name = value.removeprefix(HUB_PREFIX).removeprefix("//datasets/")
    repo, _, split = name.partition(":")
    return repo, split or "train"


def read_hub_records(value: str) -> list[Record]:
    repo, split = split_spec(value)
    if not HUB_ID.match(repo):
        raise DataError(f"{value!r} is not a Hub dataset id.", "Write it as hf:owner/name or hf:owner/name:split.")
    try:
        from datasets import load_dataset

        dataset = load_dataset(repo, split=split)
    except Exception as exc:  # datasets raises many kinds (network, auth, missing split, offline)
        raise DataError(
            f"Could not load the Hub dataset {repo!r} (split {split!r}): {type(exc).__name__}: {exc}",
            "Check the id and split, run `hf auth login` for gated sets; without network, run "
            f"`datasets.load_dataset({repo!r}).save_to_disk('DIR')` where you have it and point data.train at DIR.",
        ) from None
    return [Record(f"{repo} ({split}), row index {index}", value) for index, value in enumerate(dataset)]
