"""What every trainer shares: load → adapter → arguments → train → save, so each method module only
says what is its own (the data shape it needs, its TRL config, its trainer class).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.config import Recipe
from tunesmith.data import Splits, fingerprint, load_splits
from tunesmith.errors import TunesmithError
from tunesmith.models import load_model, load_tokenizer, pick_device, pick_dtype, resolve_model_source
from tunesmith.runs import Run, atomic_write_json
from tunesmith.train.adapter_callbacks import adapter_callbacks
from tunesmith.train.adapters import adapter_setup, model_load_kwargs, save_trained, trainable_summary
from tunesmith.train.plots import plot_loss_curve
from tunesmith.train.upstream import hide_trl_checkpointing_deprecation, precision_flags

# Logged keys that describe how a method is doing beyond its loss (DPO's reward margin, KTO's KL, GRPO's
# mean reward `reward` and per-reward `rewards/<name>/mean`, ...).
METHOD_METRIC_PREFIXES = ("reward", "logps/", "kl", "nll_loss", "log_odds", "completions/mean_length",
                          "accuracy", "margin", "mean_reward")  # the last three: reward-model training


@dataclass
class TrainingSetup:
    """Everything loaded before a trainer is built: the model already has its adapter config beside it."""

    model_dir: Path
    tokenizer: Any
    splits: Splits
    device: str
    precision: str
    model: Any
    peft_config: Any
    adapter_callbacks: list[Any]  # what the adapter kind needs during training (HFT rounds, AdaLoRA budget)


def prepare_training(recipe: Recipe, run: Run, accept: tuple[str, ...], purpose: str,
                     task: str = "CAUSAL_LM") -> TrainingSetup:
    """Load data first (a wrong shape fails in a second, not after loading the model), then the model
    (`task` SEQ_CLS: with a one-score head, for reward models)."""
    hide_trl_checkpointing_deprecation()
    import torch

    torch.manual_seed(recipe.training.seed)
    model_dir = resolve_model_source(recipe.model.source, recipe.model.revision, Path(recipe.base_dir))
    splits = load_splits(recipe, accept=accept, purpose=purpose)
    atomic_write_json(run.path / "data.json", fingerprint(splits))
    tokenizer = load_tokenizer(model_dir)
    device = pick_device(recipe.training.device)
    precision = resolve_precision(recipe.training.precision, device)
    model = load_model(model_dir, dtype=torch.float32, device=device, task=task, **model_load_kwargs(recipe.adapter))
    model, peft_config = adapter_setup(model, recipe.adapter, task)
    return TrainingSetup(model_dir, tokenizer, splits, device, precision, model, peft_config,
                         adapter_callbacks(recipe.adapter, run))


def common_arguments(recipe: Recipe, run: Run, device: str, precision: str) -> dict[str, Any]:
    """TrainingArguments every TRL config gets, all stated: TRL's own defaults differ per trainer
    (gradient checkpointing on, bf16 on, lr 1e-6), so none is left to them."""
    t = recipe.training
    return {
        "output_dir": str(run.checkpoints_dir),
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps,
        "learning_rate": t.lr,
        "per_device_train_batch_size": t.batch_size,
        "per_device_eval_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "lr_scheduler_type": t.scheduler,
        "warmup_steps": t.warmup_ratio,  # a float below 1 is a ratio of the total steps (transformers 5)
        "weight_decay": t.weight_decay,
        "activation_checkpointing": t.gradient_checkpointing,  # transformers 5 name; the old one warns
        "logging_steps": t.logging_steps,
        "logging_first_step": True,
        "save_strategy": "steps",
        "save_steps": t.save_steps,
        "save_total_limit": 2,
        "eval_strategy": "no",
        "report_to": "none",
        "seed": t.seed,
        "dataloader_num_workers": 0,
        **precision_flags(precision, device),
    }


def fit_and_save(trainer: Any, guard: Any, setup: TrainingSetup, recipe: Recipe, run: Run) -> Path:
    """Train, stop on NaN, then write the adapter, train.json and the loss curve into the run."""
    summary = trainable_summary(trainer.model)
    print_trainable(summary)
    started = time.monotonic()
    trainer.train()
    if guard.bad_step is not None:
        raise TunesmithError(f"Training stopped: the loss became NaN/inf at step {guard.bad_step}.",
                             "Lower training.lr, or check the data for empty or huge rows.")
    adapter = save_trained(trainer.model, setup.tokenizer, run, recipe.adapter)  # adapter/, or model/
    report = {"method": recipe.method.kind, **train_report(trainer, summary, setup.model_dir, started)}
    atomic_write_json(run.path / "train.json", report)
    plot_loss_curve(run.read_metrics(), run.plots_dir / "loss.png", f"{recipe.name}: {recipe.method.kind} loss")
    return adapter


def resolve_precision(precision: str, device: str) -> str:
    if precision != "auto":
        return precision
    import torch

    return "bf16" if pick_dtype("auto", device) == torch.bfloat16 else "fp32"


def train_report(trainer: Any, summary: dict, model_dir: Path, started: float) -> dict[str, Any]:
    history = [h for h in trainer.state.log_history if "loss" in h]
    report = {
        "base_model": str(model_dir),
        "trainable": summary,
        "steps": trainer.state.global_step,
        "first_loss": history[0]["loss"] if history else None,
        "final_loss": history[-1]["loss"] if history else None,
        "wall_time_s": round(time.monotonic() - started, 1),
    }
    final = method_metrics(history[-1]) if history else {}
    if final:
        report["final_metrics"] = final
        report["first_metrics"] = method_metrics(history[0])
    return report


def method_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """The method's own logged figures (reward margins, accuracies, KL...) from one log record."""
    return {key: value for key, value in record.items() if key.startswith(METHOD_METRIC_PREFIXES)}


def print_trainable(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Trainable parameters")
    for column in ("trainable", "total", "percent", "modules"):
        table.add_column(column)
    table.add_row(f"{summary['trainable']:,}", f"{summary['total']:,}", f"{summary['percent']:.3f}%",
                  ", ".join(summary["modules"]))
    Console(file=sys.stderr).print(table)
