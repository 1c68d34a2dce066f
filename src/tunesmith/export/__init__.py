"""Export stage: the adapter as it is, and the adapter merged into its base; and `--out DIR`, a copy of
what an export wrote under the run's exports/ into a folder of the user's choosing.

The stage's names below are imported on first use, so `tunesmith.export.hub` (push) does not load torch.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError

__all__ = ["export_adapter", "export_merged", "run_export"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tunesmith.export import merged

        return getattr(merged, name)
    raise AttributeError(f"module 'tunesmith.export' has no attribute {name!r}")


def update_export_manifest(run: Any, entries: dict[str, Any], group: str | None = None) -> None:
    """Add `entries` to the run's exports/manifest.json (under `group`, e.g. "gguf" keyed by quant type, where given),
    keeping what it already records of the other exports: each format's export adds itself, so an adapter export
    after a GGUF one does not drop the GGUF's record (and its llama.cpp check) that serve reads."""
    import json

    from tunesmith.runs import atomic_write_json, manifest_lock

    path = run.exports_dir / "manifest.json"
    with manifest_lock(run):  # another export finishing alongside keeps its entry
        manifest = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        (manifest.setdefault(group, {}) if group else manifest).update(entries)
        atomic_write_json(path, manifest)


def gguf_entries(run: Any) -> dict[str, dict[str, Any]]:
    """The whole-model GGUFs exports/manifest.json records for the run, by quant type ({} before the first). An
    entry whose path leads outside the run (absolute, or through "..": a hand-edited or foreign manifest) is left
    out, so no reader serves or pushes a file the run does not hold."""
    import json

    from tunesmith.manifest import inside_run

    manifest_file = run.exports_dir / "manifest.json"
    if not manifest_file.is_file():
        return {}
    entries = json.loads(manifest_file.read_text(encoding="utf-8")).get("gguf", {})

    def kept(entry: Any) -> bool:
        try:
            return isinstance(entry, dict) and bool(inside_run(str(entry.get("path", ""))))
        except ValueError:
            return False
    return {quant: entry for quant, entry in entries.items() if kept(entry)} if isinstance(entries, dict) else {}


SIGNED_TENSOR_BYTES = 4096  # of each tensor's data, beside the whole header


def gguf_signature(path: Path) -> str | None:
    """A sha256 over a GGUF's header (every metadata key and value: architecture, tokenizer, chat template; every
    tensor's name, type, shape and offset) and the first 4 KiB of each tensor's data, read through gguf's own reader
    (https://github.com/ggml-org/llama.cpp/blob/master/docs/gguf.md). Export records it beside each GGUF and
    `export --check` compares: a file converted again, quantized otherwise, given another template or copied over
    from another model differs, for a few MiB of reads whatever the file's size. None for a file gguf cannot read
    (not a GGUF, or cut short by an interrupted copy)."""
    import hashlib

    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError, IndexError):  # bad magic, a header past the end of the file, a tensor cut short
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        digest.update(handle.read(reader.data_offset))
        for tensor in sorted(reader.tensors, key=lambda t: t.name):
            handle.seek(int(tensor.data_offset))
            digest.update(handle.read(min(SIGNED_TENSOR_BYTES, int(tensor.n_bytes))))
    return digest.hexdigest()


def out_names(formats: list[str], recipe_name: str, quant: str) -> list[str]:
    """Where each requested format lands under exports/, and so under `--out DIR` (the same layout).

    Known before the slow export, so that a name already taken in DIR fails first. The Ollama folder
    carries its own GGUF copies, so `ollama` needs nothing from gguf/.
    """
    names = [name for name in ("adapter", "merged", "ollama") if name in formats]
    if "gguf" in formats:
        from tunesmith.export.gguf import parse_quant

        names.append(f"gguf/{recipe_name}.{parse_quant(quant)}.gguf")  # the file run_gguf_export writes
    if "gguf-lora" in formats:
        from tunesmith.export.gguf_lora import lora_type_for

        names.append(f"gguf/{recipe_name}-lora-{lora_type_for(quant)}.gguf")  # run_gguf_lora_export's file
    return names


def refuse_taken_out_names(out: Path, names: list[str]) -> None:
    """`--out` never overwrites: DIR may exist and hold other things, but not something under these names."""
    if out.exists() and not out.is_dir():
        raise TunesmithError(f"--out {out} is a file, not a folder.", "Pass a folder (it is created if missing).")
    taken = [name for name in names if holds_something(out / name)]
    if taken:
        raise TunesmithError(f"--out {out} already holds {', '.join(taken)}; tunesmith does not overwrite it.",
                             "Choose another --out folder, or move those away first.")


def holds_something(path: Path) -> bool:
    """A file, a link, or a non-empty folder (an empty folder is fine to fill)."""
    return path.is_symlink() or path.is_file() or (path.is_dir() and any(path.iterdir()))


def copy_exports(exports_dir: Path, out: Path, names: list[str]) -> list[Path]:
    """Copy each exported name from the run's exports/ into `out`; returns what was copied.

    A name the export skipped (an adapter of a whole-model run, a reward model's merge) is not there
    and is left out; the run's exports/manifest.json says why.
    """
    refuse_taken_out_names(out, names)  # again: the names were free before the export, keep it so
    copied = []
    for name in names:
        if (exports_dir / name).exists():
            copy_atomically(exports_dir / name, out / name)
            copied.append(out / name)
    grammar = "gguf/answers.gbnf"  # beside a GGUF of a closed task: the llama-cli command the export printed uses it
    if any(name.startswith("gguf/") for name in names) and (exports_dir / grammar).is_file() \
            and not holds_something(out / grammar):
        copy_atomically(exports_dir / grammar, out / grammar)
        copied.append(out / grammar)
    return copied


def copy_atomically(source: Path, target: Path) -> None:
    """Copy a folder or a file through a temporary sibling and a rename, so `target` is whole or absent."""
    from tunesmith.runs import atomic_directory

    if source.is_dir():
        with atomic_directory(target) as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        shutil.copy(source, tmp)  # content and permission bits (mkstemp's 0600 would hide the file from others)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
