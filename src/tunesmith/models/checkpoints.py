"""Where a checkpoint's tensors live: the one lookup the GGUF writer, the merge stage and export share."""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.errors import TunesmithError


def checkpoint_shards(model_dir: Path) -> dict[str, Path]:
    """Which safetensors file holds each tensor (single file or sharded with an index)."""
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return {tensor: model_dir / file for tensor, file in weight_map.items()}
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise TunesmithError(f"No safetensors weights in {model_dir}.",
                             "Save the model with save_pretrained(safe_serialization=True) first.")
    with safe_open(single, framework="pt") as handle:
        return dict.fromkeys(handle.keys(), single)
