"""Reward-model training on preference pairs, through TRL's RewardTrainer.

The base loads with a one-score head (`AutoModelForSequenceClassification`, `num_labels=1`) in place of its
LM head; the loss is Bradley-Terry's, -log σ(score(chosen) - score(rejected)). With a LoRA-family adapter
PEFT's SEQ_CLS task puts the new `score` head in `modules_to_save`, so the saved adapter carries the trained
head; with full/partial the head trains with the model's own weights. The head pools the last token that is
not the pad token (the embedded model pads with its end-of-turn token, so that is the newline after it).
Reads: load → rows → configure → train → save; `train/reward_model.py` scores with the result.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tunesmith.config import Recipe, RewardMethod
from tunesmith.data.formats import METHOD_SHAPES
from tunesmith.data.template import template_input
from tunesmith.errors import DataError, RecipeError
from tunesmith.runs import Run
from tunesmith.train.callbacks import MetricsLogger
from tunesmith.train.common import common_arguments, fit_and_save, prepare_training

PAIR_SHAPES = METHOD_SHAPES["reward"]


def run_reward(recipe: Recipe, run: Run) -> Path:
    """Train a reward model on the recipe's preference pairs; returns the saved adapter (or model) directory."""
    from datasets import Dataset
    from trl import RewardTrainer

    method = reward_method(recipe)
    setup = prepare_training(recipe, run, accept=PAIR_SHAPES, purpose="reward-model training (method.kind reward)",
                             task="SEQ_CLS")
    # the data stage applied the system prompt and fallbacks; each answer's reasoning as the template reads it
    rows = [template_input(setup.tokenizer, row) for row in setup.splits.train]
    trainer = RewardTrainer(
        model=setup.model,
        args=reward_config(method, common_arguments(recipe, run, setup.device, setup.precision),
                           recipe.data.max_length),
        train_dataset=Dataset.from_list(rows),
        processing_class=setup.tokenizer,
        peft_config=setup.peft_config,
        callbacks=[MetricsLogger(run), *setup.adapter_callbacks],
    )
    check_rows_kept(len(rows), len(trainer.train_dataset), recipe.data.max_length)
    return fit_and_save(trainer, setup, recipe, run)


def reward_method(recipe: Recipe) -> RewardMethod:
    if not isinstance(recipe.method, RewardMethod):
        raise RecipeError(f"run_reward was given method.kind {recipe.method.kind}.", "Use run_training(recipe, run).")
    return recipe.method


def reward_config(method: RewardMethod, common: dict[str, Any], max_length: int):
    """RewardConfig with the recipe's settings. TRL drops (does not truncate) pairs longer than max_length:
    a cut-off answer would be scored on a token it never reached."""
    from trl import RewardConfig

    return RewardConfig(**common, max_length=max_length, center_rewards_coefficient=method.center_rewards_coefficient)


def check_rows_kept(given: int, kept: int, max_length: int) -> None:
    """Say how many pairs TRL dropped for length; none left is an error, not an empty run."""
    if kept == 0:
        raise DataError(f"Every one of the {given} training pairs is longer than data.max_length={max_length} tokens "
                        "(prompt + answer), so none is left to train on.", "Raise data.max_length.")
    if kept < given:
        print(f"reward: {given - kept} of {given} pairs are longer than data.max_length={max_length} tokens and "
              "were left out (raise data.max_length to keep them).", file=sys.stderr)
