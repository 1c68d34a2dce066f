"""Training stage: one module per method, picked by the recipe's `method.kind`."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from tunesmith.config import PREFERENCE_KINDS, Recipe
from tunesmith.runs import Run
from tunesmith.train.sft import run_train

# kind -> (module, entry point); imported on demand, since each pulls in its own TRL trainer.
TRAINERS: dict[str, tuple[str, str]] = {
    "sft": ("tunesmith.train.sft", "run_train"),
    "cpt": ("tunesmith.train.cpt", "run_cpt"),
    "grpo": ("tunesmith.train.grpo", "run_grpo"),
    "reward": ("tunesmith.train.reward", "run_reward"),
    **{kind: ("tunesmith.train.preference", "run_preference") for kind in PREFERENCE_KINDS},
}


def run_training(recipe: Recipe, run: Run) -> Path:
    """Train with the recipe's method; returns the saved adapter directory."""
    return trainer_for(recipe.method.kind)(recipe, run)


def trainer_for(kind: str) -> Callable[[Recipe, Run], Path]:
    module, function = TRAINERS[kind]
    return getattr(importlib.import_module(module), function)


__all__ = ["run_train", "run_training"]
