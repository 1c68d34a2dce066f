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


EMBEDDING_MODULES = ("embed_tokens", "lm_head", "wte", "embed_in", "embed_out")


def tied_embeddings(model_dir: Path) -> bool:
    """Whether the model's input and output embeddings share one matrix (config.json `tie_word_embeddings`).

    Read from the text of config.json: transformers' default for the key differs by architecture (True in
    PretrainedConfig, False in LlamaConfig), so a config that omits it is resolved by AutoConfig.
    """
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        return False
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if "tie_word_embeddings" in config:
        return bool(config["tie_word_embeddings"])
    from transformers import AutoConfig

    return bool(getattr(AutoConfig.from_pretrained(model_dir), "tie_word_embeddings", False))
