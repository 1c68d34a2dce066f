"""Supervised fine-tuning with a LoRA adapter, through TRL's SFTTrainer and PEFT.

Reads top to bottom: load the model and data → tokenize with the loss mask → configure → train →
save the adapter and the loss curve into the run directory.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from tunesmith.config import Recipe
from tunesmith.data import Splits, fingerprint, load_splits
from tunesmith.data.template import IGNORE_INDEX, render_with_loss_mask
from tunesmith.errors import DataError, TunesmithError
from tunesmith.models import load_model, load_tokenizer, pick_device, pick_dtype, resolve_model_source
from tunesmith.runs import Run, atomic_directory, atomic_write_json
from tunesmith.train.adapters import adapter_setup, trainable_summary
from tunesmith.train.callbacks import MetricsLogger, NanGuard
from tunesmith.train.plots import plot_loss_curve
from tunesmith.train.upstream import precision_flags


def run_train(recipe: Recipe, run: Run) -> Path:
    """Train the recipe's adapter; returns the path of the saved adapter directory."""
    import torch
    from trl import SFTTrainer

    torch.manual_seed(recipe.training.seed)
    model_dir = resolve_model_source(recipe.model.source, recipe.model.revision, Path(recipe.base_dir))
    tokenizer = load_tokenizer(model_dir)
    splits = load_splits(recipe)
    atomic_write_json(run.path / "data.json", fingerprint(splits))
    train_set, eval_set = tokenize_splits(splits, tokenizer, recipe.data.max_length)

    device = pick_device(recipe.training.device)
    precision = resolve_precision(recipe.training.precision, device)
    model = load_model(model_dir, dtype=torch.float32, device=device)
    model, peft_config = adapter_setup(model, recipe.adapter)
    guard = NanGuard()
    trainer = SFTTrainer(
        model=model,
        args=sft_config(recipe, run, device, precision),
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[MetricsLogger(run), guard],
    )
    summary = trainable_summary(trainer.model)
    print_trainable(summary)
    started = time.monotonic()
    trainer.train()
    if guard.bad_step is not None:
        raise TunesmithError(f"Training stopped: the loss became NaN/inf at step {guard.bad_step}.",
                             "Lower training.lr, or check the data for empty or huge rows.")
    adapter = save_adapter(trainer.model, tokenizer, run)
    atomic_write_json(run.path / "train.json", train_report(trainer, summary, model_dir, started))
    plot_loss_curve(run.read_metrics(), run.plots_dir / "loss.png", f"{recipe.name}: loss")
    return adapter


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


def resolve_precision(precision: str, device: str) -> str:
    if precision != "auto":
        return precision
    import torch

    return "bf16" if pick_dtype("auto", device) == torch.bfloat16 else "fp32"


def sft_config(recipe: Recipe, run: Run, device: str, precision: str):
    """TRL SFTConfig from the recipe: every argument that matters is stated, none left to defaults."""
    from trl import SFTConfig

    t = recipe.training
    return SFTConfig(
        output_dir=str(run.checkpoints_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        learning_rate=t.lr,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        gradient_checkpointing=t.gradient_checkpointing,
        max_length=recipe.data.max_length,
        packing=t.packing,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=2,
        eval_strategy="no",
        report_to="none",
        seed=t.seed,
        dataloader_num_workers=0,
        **precision_flags(precision, device),
    )


def save_adapter(model: Any, tokenizer: Any, run: Run) -> Path:
    """Save the adapter in standard PEFT format (safetensors), atomically."""
    with atomic_directory(run.adapter_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return run.adapter_dir


def train_report(trainer: Any, summary: dict, model_dir: Path, started: float) -> dict[str, Any]:
    history = [h for h in trainer.state.log_history if "loss" in h]
    return {
        "base_model": str(model_dir),
        "trainable": summary,
        "steps": trainer.state.global_step,
        "first_loss": history[0]["loss"] if history else None,
        "final_loss": history[-1]["loss"] if history else None,
        "wall_time_s": round(time.monotonic() - started, 1),
    }


def print_trainable(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Trainable parameters")
    for column in ("trainable", "total", "percent", "modules"):
        table.add_column(column)
    table.add_row(f"{summary['trainable']:,}", f"{summary['total']:,}", f"{summary['percent']:.3f}%",
                  ", ".join(summary["modules"]))
    Console(file=sys.stderr).print(table)
