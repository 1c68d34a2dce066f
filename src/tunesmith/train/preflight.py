"""Checks that need the model's config (not its weights) and the data, run before any weights load.

A run that trains for an hour and then fails on something the recipe, the data and `config.json` already
showed is a bug; these checks move such failures to the first second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.errors import RecipeError
from tunesmith.models.checkpoints import EMBEDDING_MODULES, tied_embeddings


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
