"""Supervised fine-tuning with a LoRA adapter, through TRL's SFTTrainer and PEFT.

Reads top to bottom: load the model and data → tokenize with the loss mask → configure → train →
save the adapter and the loss curve into the run directory.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.config import Recipe
from tunesmith.data import Splits
from tunesmith.data.formats import SFT_SHAPES
from tunesmith.data.template import EncodedSplit, encode_split
from tunesmith.plan.fit import CPU_MICRO_TOKENS
from tunesmith.runs import Run
from tunesmith.train.callbacks import MetricsLogger
from tunesmith.train.common import common_arguments, fit_and_save, prepare_training, row_lengths
from tunesmith.train.distributed import this_rank
from tunesmith.train.micro_batches import merging
from tunesmith.train.replay import Replay, anchored, replay_for


def run_train(recipe: Recipe, run: Run) -> Path:
    """Train the recipe's adapter; returns the saved adapter directory (model/ for full, partial, hft)."""
    from trl import SFTTrainer

    setup = prepare_training(recipe, run, accept=SFT_SHAPES, purpose="supervised fine-tuning",
                             encode=lambda splits, tokenizer: tokenize_splits(splits, tokenizer,
                                                                              recipe.data.max_length))
    replay, anchor = replay_for(recipe, run, setup)
    packing = choose_packing(recipe.training.packing, setup.model)
    trainer = merging(anchored(SFTTrainer) if anchor else SFTTrainer)(
        model=setup.model,
        args=sft_config(recipe, run, setup.device, setup.precision, packing.on),
        train_dataset=setup.encoded.train if anchor else with_replay(setup.encoded.train, replay),
        eval_dataset=setup.encoded.eval,
        processing_class=setup.tokenizer,
        peft_config=setup.peft_config,
        callbacks=[MetricsLogger(run), *setup.adapter_callbacks],
        **anchor,
    )
    trainer.micro_batch_tokens = merged_micro_batch_tokens(recipe, setup.device, packing.on,
                                                           row_lengths(trainer.train_dataset))
    choices = {"packing": packing.as_dict(), **({"replay": replay.report} if replay.report else {})}
    if trainer.micro_batch_tokens:
        choices["micro_batch_tokens"] = trainer.micro_batch_tokens
    return fit_and_save(trainer, setup, recipe, run, choices)


def merged_micro_batch_tokens(recipe: Recipe, device: str, packed: bool, lengths: list[int]) -> int | None:
    """Padded positions a pass may hold when a step's micro-batches merge (`train/micro_batches.py`): on a CPU, in
    one process, for unpacked rows in micro-batches the plan chose (training.grad_accum not in the recipe), the
    tokens it sized one micro-batch for (its rows x the longest row, at most `CPU_MICRO_TOKENS`); else None."""
    t = recipe.training
    if (device != "cpu" or packed or t.grad_accum == 1 or "grad_accum" in t.model_fields_set or not lengths
            or this_rank().world_size > 1 or t.distributed.strategy != "none"):
        return None
    return min(CPU_MICRO_TOKENS, t.batch_size * max(lengths))


def with_replay(train: Any, replay: Replay) -> Any:
    """The training dataset with the replay rows appended (data.replay.loss sft; the trainer shuffles)."""
    if not replay.examples:
        return train
    from datasets import concatenate_datasets

    replay.report["loss"] = "sft"
    extra = train.from_list(replay.examples)
    return concatenate_datasets([train, extra.cast(train.features)])


@dataclass(frozen=True)
class PackingChoice:
    """Whether rows are packed, and why (printed, and recorded in train.json)."""

    on: bool
    why: str

    def as_dict(self) -> dict[str, Any]:
        return {"on": self.on, "why": self.why}


# Attention implementations that attend within each packed sequence (cu_seqlens), as transformers names them
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn",
                    "kernels-community/vllm-flash-attn3")


def choose_packing(setting: bool | str, model: Any) -> PackingChoice:
    """training.packing, with `auto` resolved for this model.

    TRL's SFT packing ("bfd") is padding-free: a batch becomes one row of concatenated sequences whose
    position ids restart at each boundary. Only a variable-length attention kernel (FlashAttention) runs that
    at the cost of the sequences themselves; PyTorch's SDPA, the CPU's kernel, builds the block-diagonal mask
    over the whole row and attends over all of it, quadratic in the pack's length (measured on SmolLM2,
    2-core CPU: 8 x 512 packed tokens ran at half the speed and 4x the memory of length-grouped batches).
    """
    if setting != "auto":
        choice = PackingChoice(bool(setting), f"training.packing: {str(setting).lower()}")
    else:
        kernel = getattr(getattr(model, "config", None), "_attn_implementation", None) or "sdpa"
        if kernel in VARLEN_ATTENTION:
            choice = PackingChoice(True, f"auto: {kernel} attends within each packed sequence")
        else:
            choice = PackingChoice(False, f"auto: {kernel} attention would attend over whole packs; rows are batched "
                                          "by similar length instead")
    print(f"packing: {'on' if choice.on else 'off'} ({choice.why})", file=sys.stderr, flush=True)
    return choice


@dataclass
class SFTDatasets:
    """Both splits as `input_ids` + `labels` datasets, and what they hold (data.json `trained`)."""

    train: Any
    eval: Any
    counts: dict[str, dict[str, Any]]
    rows_by_ids: dict[tuple[int, ...], int]  # a training sequence's token ids -> its row in data/train.jsonl


def tokenize_splits(splits: Splits, tokenizer: Any, max_length: int) -> SFTDatasets:
    """Render both splits through the chat template (`encode_split`, the code path `data preview` shows)."""
    from datasets import Dataset

    def as_dataset(encoded: EncodedSplit) -> Any:
        return Dataset.from_list([{"input_ids": e.input_ids, "labels": e.labels} for e in encoded.examples])

    train = encode_split(tokenizer, splits.train, max_length)
    counts = {"train": train.counts()}
    held = encode_split(tokenizer, splits.eval, max_length) if splits.eval else None
    if held is not None:
        counts["eval"] = held.counts()
    rows_by_ids = {tuple(e.input_ids): row for e, row in zip(train.examples, train.source_rows, strict=True)}
    return SFTDatasets(as_dataset(train), as_dataset(held) if held and held.examples else None, counts, rows_by_ids)


def sft_config(recipe: Recipe, run: Run, device: str, precision: str, packing: bool):
    """TRL SFTConfig from the recipe: every argument that matters is stated, none left to defaults. Unpacked rows
    are batched by similar length (transformers' LengthGroupedSampler), so a batch pads little."""
    from trl import SFTConfig

    sampling = {} if packing else {"train_sampling_strategy": "group_by_length"}
    return SFTConfig(**common_arguments(recipe, run, device, precision), max_length=recipe.data.max_length,
                     packing=packing, **sampling)
