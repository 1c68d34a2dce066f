"""Preference tuning (DPO, ORPO, KTO, SimPO) with a LoRA adapter, through TRL's trainers.

Each method says three things: the data shapes it takes, its TRL config built from the recipe, and its
trainer class; loading, the adapter, callbacks and saving are shared (`train/common.py`).

The reference model costs no memory: DPO and KTO get `ref_model=None` with a PEFT config, and TRL then
scores the reference with the adapter switched off (`use_adapter(model, None)` → `disable_adapter()`
in TRL 1.16), so one copy of the base weights serves both. ORPO and SimPO need no reference at all.
With `data.replay.ratio` above 0 each step also adds the replay anchor (train/replay.py) on general rows the base
answered, as supervised fine-tuning does by default.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.config import DPOMethod, KTOMethod, ORPOMethod, Recipe, SimPOMethod
from tunesmith.data import Splits
from tunesmith.data.formats import METHOD_SHAPES
from tunesmith.data.shapes import Row
from tunesmith.data.template import encode_preference_split, template_input
from tunesmith.errors import RecipeError
from tunesmith.runs import Run
from tunesmith.train.callbacks import MetricsLogger
from tunesmith.train.common import TrainingSetup, common_arguments, fit_and_save, prepare_training
from tunesmith.train.replay import anchored, replay_for


@dataclass(frozen=True)
class PreferenceMethod:
    accept: tuple[str, ...]
    purpose: str
    config: Callable[[Any, dict[str, Any], int], Any]  # (method section, common arguments, max_length)
    trainer: Callable[[], type]
    uses_reference: bool


def run_preference(recipe: Recipe, run: Run) -> Path:
    """Tune the adapter on preference data with the recipe's method; returns the saved adapter directory."""
    from datasets import Dataset

    method = METHODS[recipe.method.kind]
    check_batch_size(recipe)
    setup = prepare_training(recipe, run, accept=method.accept, purpose=method.purpose,
                             encode=lambda splits, tokenizer: preference_counts(splits, tokenizer,
                                                                                recipe.data.max_length))
    rows = training_rows(recipe, setup)
    args = method.config(recipe.method, common_arguments(recipe, run, setup.device, setup.precision),
                         recipe.data.max_length)
    reference = {"ref_model": None} if method.uses_reference else {}
    replay, anchor = replay_for(recipe, run, setup)
    trainer = (anchored(method.trainer()) if anchor else method.trainer())(
        model=setup.model,
        **reference,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=setup.tokenizer,
        peft_config=setup.peft_config,
        callbacks=[MetricsLogger(run), *setup.adapter_callbacks],
        **anchor,
    )
    return fit_and_save(trainer, setup, recipe, run, {"replay": replay.report} if replay.report else None)


@dataclass
class PreferenceCounts:
    """What carries loss per split (data.json `trained`); TRL tokenizes the rows itself, the same way."""

    counts: dict[str, dict[str, Any]]


def preference_counts(splits: Splits, tokenizer: Any, max_length: int) -> PreferenceCounts:
    counts = {"train": encode_preference_split(tokenizer, splits.train, max_length).counts()}
    if splits.eval:
        counts["eval"] = encode_preference_split(tokenizer, splits.eval, max_length).counts()
    return PreferenceCounts(counts)


def training_rows(recipe: Recipe, setup: TrainingSetup) -> list[Row]:
    """The train split as TRL expects it (the data stage applied the system prompt and fallbacks): tool-call
    arguments as objects (as `data preview` renders them); KTO's rows are unpaired and shuffled here (`unpair`)."""
    rows = [template_input(setup.tokenizer, row) for row in setup.splits.train]
    if recipe.method.kind == "kto":
        return unpair(rows, recipe.training.seed)
    return rows


def unpair(rows: list[Row], seed: int) -> list[Row]:
    """Preference pairs as desirable/undesirable rows, shuffled.

    TRL's KTOTrainer would unpair them itself, but batch by batch in order (all chosen, then all
    rejected) and it samples sequentially, so whole batches would be one label; shuffling mixes them.
    """
    unpaired = []
    for row in rows:
        if "label" in row:
            unpaired.append(row)
            continue
        for key, label in (("chosen", True), ("rejected", False)):
            unpaired.append({"prompt": row["prompt"], "completion": row[key], "label": label,
                             **({"chat_template_kwargs": row["chat_template_kwargs"]}
                                if "chat_template_kwargs" in row else {})})
    random.Random(seed).shuffle(unpaired)
    return unpaired


def check_batch_size(recipe: Recipe) -> None:
    """KTO estimates its KL term from the other rows of a batch, so it needs at least two."""
    if recipe.method.kind == "kto" and recipe.training.batch_size < 2:
        raise RecipeError(f"training.batch_size is {recipe.training.batch_size}; KTO needs at least 2 rows per "
                          "batch (its KL estimate pairs each prompt with another row's completion).",
                          "Set training.batch_size: 2 or more (use grad_accum to keep memory down).")


def dpo_config(method: DPOMethod, common: dict[str, Any], max_length: int):
    from trl import DPOConfig

    return DPOConfig(**common, beta=method.beta, loss_type=[method.loss_type],
                     label_smoothing=method.label_smoothing, max_length=max_length)


def kto_config(method: KTOMethod, common: dict[str, Any], max_length: int):
    from trl import KTOConfig

    return KTOConfig(**common, beta=method.beta, desirable_weight=method.desirable_weight,
                     undesirable_weight=method.undesirable_weight, max_length=max_length)


def orpo_config(method: ORPOMethod, common: dict[str, Any], max_length: int):
    return experimental("orpo", "ORPOConfig")(**common, beta=method.beta, max_length=max_length,
                                              remove_unused_columns=False)


def simpo_config(method: SimPOMethod, common: dict[str, Any], max_length: int):
    """SimPO is CPO's `simpo` loss without CPO's SFT term (`cpo_alpha=0`), as the SimPO paper trains."""
    return experimental("cpo", "CPOConfig")(**common, loss_type="simpo", cpo_alpha=0.0, beta=method.beta,
                                            simpo_gamma=method.gamma, max_length=max_length,
                                            remove_unused_columns=False)


def experimental(module: str, name: str) -> Any:
    """A class from `trl.experimental` (TRL 1.16 moved ORPO and CPO there), its import warning silenced."""
    import importlib
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    return getattr(importlib.import_module(f"trl.experimental.{module}"), name)


def dpo_trainer() -> type:
    from trl import DPOTrainer

    return DPOTrainer


def kto_trainer() -> type:
    from trl import KTOTrainer

    return KTOTrainer


PAIRS = METHOD_SHAPES["dpo"]
METHODS: dict[str, PreferenceMethod] = {
    "dpo": PreferenceMethod(PAIRS, "DPO (method.kind dpo)", dpo_config, dpo_trainer, uses_reference=True),
    "kto": PreferenceMethod(METHOD_SHAPES["kto"], "KTO (method.kind kto)", kto_config,
                            kto_trainer, uses_reference=True),
    "orpo": PreferenceMethod(PAIRS, "ORPO (method.kind orpo)", orpo_config,
                             lambda: experimental("orpo", "ORPOTrainer"), uses_reference=False),
    "simpo": PreferenceMethod(PAIRS, "SimPO (method.kind simpo)", simpo_config,
                              lambda: experimental("cpo", "CPOTrainer"), uses_reference=False),
}
