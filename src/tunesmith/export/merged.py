"""Export the adapter, and a merged checkpoint (adapter folded into the base in fp32).

Merging runs in fp32 whatever the training dtype, and the merged model is checked against
base+adapter on a fixed prompt so a silent change in outputs is caught at export time.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

from tunesmith.config import Recipe
from tunesmith.export import update_export_manifest
from tunesmith.manifest import weights_signature
from tunesmith.merge.into_base import DEFAULT_SHARD_SIZE, merge_adapter_into_base
from tunesmith.models.checkpoints import checkpoint_shards
from tunesmith.models.tuned import is_adapter, run_base_model, say_unquantized_base
from tunesmith.runs import Run, atomic_directory, require_free_space


def run_export(recipe: Recipe, run: Run, formats: list[str] | None = None) -> Path:
    """Write the requested formats under exports/ and a manifest; returns the exports directory."""
    formats = formats or list(recipe.export.formats)
    artifact = run.trained_artifact()
    if not is_adapter(artifact):
        return export_whole_model(run, artifact, formats)
    manifest: dict[str, Any] = {}
    if "adapter" in formats:
        manifest["adapter"] = run.relative(export_adapter(run))
    if "merged" in formats and recipe.method.kind == "reward":  # the merge below builds a causal LM, not a scorer
        manifest["merged"] = {"skipped": "a reward model's adapter carries its score head: load it with "
                                         "AutoPeftModelForSequenceClassification (num_labels=1), see README.md"}
    elif "merged" in formats:
        say_unquantized_base(run, "merging")
        model_dir = run_base_model(run)
        path, max_diff = export_merged(model_dir, artifact, run.exports_dir / "merged",
                                       recipe.export.max_shard_size)
        manifest["merged"] = merged_entry(run, path, max_diff, artifact)
    say_skipped(manifest)
    update_export_manifest(run, {**manifest, **template_contract(run)})
    return run.exports_dir


def merged_entry(run: Run, path: Path, max_diff: float, adapter_dir: Path) -> dict[str, Any]:
    """exports/manifest.json's record of a merged checkpoint: where it is, the merge's own check, and the weights
    signatures of the checkpoint as written and of the adapter merged into it (`merged_is_current` reads them)."""
    return {"path": run.relative(path), "max_abs_logit_diff": max_diff, "weights": weights_signature(path),
            "adapter": weights_signature(adapter_dir)}


def merged_is_current(run: Run, merged: Path, adapter_dir: Path) -> bool:
    """Whether exports/merged is there and is the merge of the run's adapter as it is now: its weights as the merge
    wrote them, from this adapter. A checkpoint changed since (files copied over it, an adapter rolled back or
    retrained after it) or recorded by a tunesmith before these signatures is merged again by the caller, and
    said, instead of converted to GGUF and checked against itself."""
    if not (merged / "config.json").is_file():
        return False
    if merge_matches_record(run, merged, adapter_dir):
        return True
    print(f"{merged} is not the merge of {adapter_dir} as it is now (changed since it was written, or written "
          "before tunesmith recorded its weights): merging again", file=sys.stderr, flush=True)
    return False


def merge_matches_record(run: Run, merged: Path, adapter_dir: Path) -> bool:
    """Whether exports/manifest.json's `merged` entry records `merged`'s weights as they are and `adapter_dir`'s as
    they are: the check of `merged_is_current`, without a word (`export --check` reports it its own way)."""
    manifest_file = run.exports_dir / "manifest.json"
    entry = (json.loads(manifest_file.read_text(encoding="utf-8")) if manifest_file.is_file() else {}).get("merged")
    entry = entry if isinstance(entry, dict) else {}
    return (merged / "config.json").is_file() and entry.get("weights") == weights_signature(merged) \
        and entry.get("adapter") == weights_signature(adapter_dir)


def template_contract(run: Run) -> dict[str, Any]:
    """The chat-template contract the data stage checked (data.json), carried into the export manifest: an
    exported model keeps the template it was trained with, warnings included."""
    data_file = run.path / "data.json"
    data = json.loads(data_file.read_text(encoding="utf-8")) if data_file.is_file() else {}
    return {"template_contract": data["template_contract"]} if "template_contract" in data else {}


def say_skipped(manifest: dict[str, Any]) -> None:
    """Each asked-for format the run cannot give, and why, on stderr (the manifest records it too)."""
    for name, entry in manifest.items():
        if isinstance(entry, dict) and "skipped" in entry:
            print(f"export: {name} skipped: {entry['skipped']}", file=sys.stderr, flush=True)


def export_whole_model(run: Run, artifact: Path, formats: list[str]) -> Path:
    """Full, partial and hft runs trained the model itself: `merged` is model/ again (its files hard-linked where
    the file system allows, so a 0.5 GB model does not take 1 GB; copied otherwise), and there is no adapter to
    export (the manifest says so instead of failing the default formats)."""
    manifest: dict[str, Any] = {}
    if "adapter" in formats:
        manifest["adapter"] = {"skipped": "this run trained the whole model (model/), not an adapter; --format "
                                          "merged, gguf or ollama export it"}
    if "merged" in formats:
        target = run.exports_dir / "merged"
        with atomic_directory(target) as tmp:
            shutil.copytree(artifact, tmp, dirs_exist_ok=True, copy_function=link_or_copy)
        manifest["merged"] = {"path": run.relative(target), "max_abs_logit_diff": 0.0,
                              "weights": weights_signature(target)}
    say_skipped(manifest)
    update_export_manifest(run, {**manifest, **template_contract(run)})
    return run.exports_dir


def link_or_copy(source: str, target: str) -> str:
    """A hard link to `source` (the same bytes, no second copy), or a copy where the file system cannot link."""
    import os

    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return target


def export_adapter(run: Run) -> Path:
    target = run.exports_dir / "adapter"
    with atomic_directory(target) as tmp:
        shutil.copytree(run.adapter_dir, tmp, dirs_exist_ok=True)
    return target


def export_merged(model_dir: Path, adapter_dir: Path, target: Path,
                  max_shard_size: str = DEFAULT_SHARD_SIZE) -> tuple[Path, float]:
    """Merge in fp32, verify logits against base+adapter, save safetensors (sharded past `max_shard_size`)
    + tokenizer + template. The merge itself is the merge stage's (`tunesmith.merge.into_base`)."""
    require_free_space(target.parent, fp32_bytes(model_dir), f"the merged model {target.name}")
    with atomic_directory(target) as tmp:
        check = merge_adapter_into_base(model_dir, adapter_dir, tmp, "fp32", max_shard_size)
    print(f"merged checkpoint: max |logit difference| vs base+adapter = {check.max_abs_logit_diff:.2e} (fp32)",
          file=sys.stderr)
    return target, check.max_abs_logit_diff


def fp32_bytes(model_dir: Path) -> int:
    """The base's weights in fp32, in bytes: what a merged checkpoint written in fp32 takes."""
    from safetensors import safe_open

    total = 0
    for shard in set(checkpoint_shards(model_dir).values()):
        with safe_open(shard, framework="pt") as handle:
            total += sum(4 * math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())  # noqa: SIM118
    return total
