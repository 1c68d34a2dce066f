"""Continued pre-training: teach a model a domain's text with a LoRA adapter, through TRL's SFTTrainer.

Raw `text` rows, loss on every token (no prompt to mask). With `training.packing` the documents are
joined (each ending in EOS) and cut into `data.max_length` blocks, the classic pre-training layout:
no padding, every token of every block trains. With `data.replay.ratio` above 0 each step also adds the replay
anchor (train/replay.py) on general chat rows the base answered, which continued pre-training otherwise forgets.
Reads: load → dataset → configure → train → save.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.config import Recipe
from tunesmith.data.formats import METHOD_SHAPES
from tunesmith.runs import Run
from tunesmith.train.callbacks import MetricsLogger
from tunesmith.train.common import common_arguments, fit_and_save, prepare_training
from tunesmith.train.replay import anchored, replay_for

TEXT_SHAPES = METHOD_SHAPES["cpt"]


def run_cpt(recipe: Recipe, run: Run) -> Path:
    """Continue pre-training on the recipe's text; returns the saved adapter directory."""
    from datasets import Dataset
    from trl import SFTTrainer

    setup = prepare_training(recipe, run, accept=TEXT_SHAPES, purpose="continued pre-training (method.kind cpt)")
    replay, anchor = replay_for(recipe, run, setup)
    trainer = (anchored(SFTTrainer) if anchor else SFTTrainer)(
        model=setup.model,
        args=cpt_config(recipe, run, setup.device, setup.precision),
        train_dataset=Dataset.from_list([{"text": row["text"]} for row in setup.splits.train]),
        processing_class=setup.tokenizer,
        peft_config=setup.peft_config,
        callbacks=[MetricsLogger(run), *setup.adapter_callbacks],
        **anchor,
    )
    return fit_and_save(trainer, setup, recipe, run, {"replay": replay.report} if replay.report else None)


def cpt_config(recipe: Recipe, run: Run, device: str, precision: str):
    """SFTConfig for plain language modelling: the `text` field, EOS between documents, loss everywhere.

    "wrapped" packing concatenates and cuts, so a document may straddle two blocks (as in pre-training);
    TRL's default "bfd" keeps documents whole but relies on padding-free attention (FlashAttention).
    """
    from trl import SFTConfig

    return SFTConfig(
        **common_arguments(recipe, run, device, precision),
        dataset_text_field="text",
        max_length=recipe.data.max_length,
        packing=recipe.training.packing in (True, "auto"),  # plain blocks: packing costs no extra attention
        packing_strategy="wrapped",
        completion_only_loss=False,
        assistant_only_loss=False,
    )
