"""Checks that need the model's config (not its weights) and the data, run before any weights load.

A run that trains for an hour and then fails on something the recipe, the data and `config.json` already
showed is a bug; these checks move such failures to the first second.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.errors import RecipeError

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


def check_targets_fit_model(adapter: Any, model_dir: Path, model_name: str) -> None:
    """Refuse LoRA-style targets on a tied embedding matrix: PEFT cannot target a tied `lm_head`, and an
    adapter on the shared `embed_tokens` changes the output projection too, which merged and GGUF exports
    (one tied matrix) cannot represent."""
    targets = getattr(adapter, "targets", None)
    if not isinstance(targets, list):
        return  # presets (qv, qkvo, mlp, all-linear) never include the embeddings
    embedding_targets = [name for name in targets if name.split(".")[-1] in EMBEDDING_MODULES]
    if embedding_targets and tied_embeddings(model_dir):
        raise RecipeError(
            f"adapter.targets includes {', '.join(embedding_targets)}, but {model_name} ties its input and output "
            "embeddings (tie_word_embeddings: true): PEFT cannot put LoRA on a tied lm_head, and a LoRA on the shared "
            "embed_tokens would also change the output layer, which merged and GGUF exports cannot represent.",
            "Remove them from adapter.targets (all-linear adapts every other layer), or train the shared matrix "
            "itself with adapter.kind: partial and train_lm_head: true.")
