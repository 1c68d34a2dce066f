"""Supervised fine-tuning with a LoRA adapter, through TRL's SFTTrainer and PEFT.

Reads top to bottom: load the model and data → tokenize with the loss mask → configure → train →
save the adapter and the loss curve into the run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.config import Recipe
from tunesmith.data import Splits
from tunesmith.data.formats import SFT_SHAPES
from tunesmith.data.template import IGNORE_INDEX, render_with_loss_mask
from tunesmith.errors import DataError
from tunesmith.runs import Run
from tunesmith.train.callbacks import MetricsLogger, NanGuard
from tunesmith.train.common import common_arguments, fit_and_save, prepare_training


def run_train(recipe: Recipe, run: Run) -> Path:
    """Train the recipe's adapter; returns the saved adapter directory (model/ for full, partial, hft)."""
    from trl import SFTTrainer

    setup = prepare_training(recipe, run, accept=SFT_SHAPES, purpose="supervised fine-tuning")
    train_set, eval_set = tokenize_splits(setup.splits, setup.tokenizer, recipe.data.max_length)
    guard = NanGuard()
    trainer = SFTTrainer(
        model=setup.model,
        args=sft_config(recipe, run, setup.device, setup.precision),
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=setup.tokenizer,
        peft_config=setup.peft_config,
        callbacks=[MetricsLogger(run), guard, *setup.adapter_callbacks],
    )
    return fit_and_save(trainer, guard, setup, recipe, run)


def tokenize_splits(splits: Splits, tokenizer: Any, max_length: int):
    """Render both splits through the chat template into `input_ids` + `labels` datasets."""
    from datasets import Dataset

    def encode(rows: list[dict]) -> Dataset:
        encoded = [render_with_loss_mask(tokenizer, r["messages"], max_length) for r in rows]
        usable = [e for e in encoded if any(label != IGNORE_INDEX for label in e["labels"])]
        if not usable:
            raise DataError("No row has an assistant token left inside data.max_length.",
                            "Raise data.max_length, or shorten the prompts.")
        return Dataset.from_list([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in usable])

    return encode(splits.train), (encode(splits.eval) if splits.eval else None)


def sft_config(recipe: Recipe, run: Run, device: str, precision: str):
    """TRL SFTConfig from the recipe: every argument that matters is stated, none left to defaults."""
    from trl import SFTConfig

    return SFTConfig(**common_arguments(recipe, run, device, precision), max_length=recipe.data.max_length,
                     packing=recipe.training.packing)
