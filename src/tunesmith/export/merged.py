"""Export the adapter, and a merged checkpoint (adapter folded into the base in fp32).

Merging runs in fp32 whatever the training dtype, and the merged model is checked against
base+adapter on a fixed prompt so a silent change in outputs is caught at export time.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from tunesmith.config import Recipe
from tunesmith.errors import TunesmithError
from tunesmith.models import load_model, load_tokenizer, resolve_model_source
from tunesmith.runs import Run, atomic_directory, atomic_write_json
from tunesmith.train.adapters import can_merge, trained_model_dir, trains_whole_model

CHECK_PROMPT = [{"role": "user", "content": "Say hello in one short sentence."}]


def run_export(recipe: Recipe, run: Run, formats: list[str] | None = None) -> Path:
    """Write the requested formats under exports/ and a manifest; returns the exports directory."""
    formats = formats or list(recipe.export.formats)
    if trains_whole_model(recipe.adapter):
        return export_whole_model(run, formats)
    manifest: dict[str, Any] = {}
    if "adapter" in formats:
        manifest["adapter"] = str(export_adapter(run))
    if "merged" in formats:
        model_dir = resolve_model_source(recipe.model.source, recipe.model.revision, Path(recipe.base_dir))
        path, max_diff = export_merged(model_dir, run.adapter_dir, run.exports_dir / "merged")
        manifest["merged"] = {"path": str(path), "max_abs_logit_diff": max_diff}
    atomic_write_json(run.exports_dir / "manifest.json", manifest)
    return run.exports_dir


def export_whole_model(run: Run, formats: list[str]) -> Path:
    """Full, partial and hft runs trained the model itself: `merged` is a copy of model/, and there is
    no adapter to export (the manifest says so instead of failing the default formats)."""
    manifest: dict[str, Any] = {}
    if "adapter" in formats:
        manifest["adapter"] = {"skipped": "this run trained the whole model (model/), not an adapter"}
    if "merged" in formats:
        target = run.exports_dir / "merged"
        with atomic_directory(target) as tmp:
            shutil.copytree(trained_model_dir(run), tmp, dirs_exist_ok=True)
        manifest["merged"] = {"path": str(target), "max_abs_logit_diff": 0.0}
    atomic_write_json(run.exports_dir / "manifest.json", manifest)
    return run.exports_dir


def export_adapter(run: Run) -> Path:
    target = run.exports_dir / "adapter"
    with atomic_directory(target) as tmp:
        shutil.copytree(run.adapter_dir, tmp, dirs_exist_ok=True)
    return target


def export_merged(model_dir: Path, adapter_dir: Path, target: Path) -> tuple[Path, float]:
    """Merge in fp32, verify logits against base+adapter, save safetensors + tokenizer + template."""
    from peft import PeftModel

    tokenizer = load_tokenizer(model_dir)
    peft_model = PeftModel.from_pretrained(load_model(model_dir, torch.float32, "cpu"), adapter_dir)
    peft_model.eval()
    if not can_merge(peft_model):
        kind = peft_model.active_peft_config.peft_type.value.lower()
        raise TunesmithError(f"A {kind} adapter adds virtual tokens, not weight changes: it cannot be merged.",
                             "Export it with --format adapter (export.formats: [adapter]).")
    check_ids = tokenizer.apply_chat_template(CHECK_PROMPT, add_generation_prompt=True,
                                              return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        expected = peft_model(input_ids=check_ids).logits
        merged = peft_model.merge_and_unload()
        got = merged(input_ids=check_ids).logits
    max_diff = float((expected - got).abs().max())
    with atomic_directory(target) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    print(f"merged checkpoint: max |logit difference| vs base+adapter = {max_diff:.2e}", file=sys.stderr)
    return target, max_diff
