"""training.time_budget: measure this machine's seconds per optimizer step on the run's own batches, then set the
number of steps that fills what is left of the budget (at most MAX_BUDGET_EPOCHS epochs), and stop at the budget if
the estimate was short.

The budget is the whole `tunesmith train` command's: it counts from when preparing began, so loading the model,
the replay answers and the measurement itself come out of it, and a 10m budget ends in about 10 minutes.

The measurement runs forward and backward on a few batches of the training set before training starts (no
optimizer exists yet, so no weight changes; gradients are cleared after). Batches are taken at the 25th, 50th
and 75th percentile of row length, as a length-grouped sampler builds them, after one warm-up batch. The
learning-rate schedule (warm-up ratio, cosine decay) is then built for the chosen step count by the trainer.
With the replay anchor, the base runs over each replay row only at its first draw (its log-probabilities are
kept), so the steps of that first pass are planned with the base's pass and the later ones without it.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any

from transformers import TrainerCallback

# Epochs a budget may fill when time allows: more passes over a small set mostly memorise it. Common LoRA SFT
# practice is 1-3 epochs (the QLoRA paper's and TRL's examples; Axolotl's examples use 1-4).
MAX_BUDGET_EPOCHS = 3
BUDGET_SAFETY = 0.95  # of the budget given to steps: logging, checkpoints and the optimizer are not measured


@dataclass(frozen=True)
class BudgetPlan:
    """What the time budget chose, and from what."""

    budget_s: float
    step_s: float  # measured seconds per optimizer step (forward + backward, gradient accumulation included)
    steps_per_epoch: int
    steps: int
    why: str
    spent_s: float = 0.0  # of the budget, before the first step: loading, replay answers, the measurement
    first_pass_s: float = 0.0  # more per step while the replay anchor's base pass runs (its first pass of rows)
    first_pass_steps: int = 0  # the steps of that pass

    @property
    def epochs(self) -> float:
        return round(self.steps / self.steps_per_epoch, 2)

    def as_dict(self) -> dict[str, Any]:
        return {"budget_s": self.budget_s, "spent_before_training_s": round(self.spent_s, 1),
                "measured_step_s": round(self.step_s, 3), "first_pass_extra_s": round(self.first_pass_s, 3),
                "first_pass_steps": self.first_pass_steps,
                "steps_per_epoch": self.steps_per_epoch, "steps": self.steps, "epochs": self.epochs, "why": self.why}


def plan_steps(budget_s: float, step_s: float, steps_per_epoch: int, max_epochs: float = MAX_BUDGET_EPOCHS,
               spent_s: float = 0.0, first_pass_s: float = 0.0, first_pass_steps: int = 0) -> BudgetPlan:
    """Steps that fit BUDGET_SAFETY x what is left of `budget_s` after `spent_s`, at least 1 and at most
    `max_epochs` epochs: `step_s` seconds each, and `first_pass_s` more for each of the first `first_pass_steps`
    (the replay anchor's steps that still run the base over their rows; its log-probabilities are kept after)."""
    left = max(0.0, budget_s - spent_s)
    usable = BUDGET_SAFETY * left
    heavy_steps = max(0, first_pass_steps) if first_pass_s > 0 else 0
    heavy_s = heavy_steps * (step_s + first_pass_s)
    if usable <= heavy_s:
        fit = max(1, math.floor(usable / (step_s + first_pass_s)))
    else:
        fit = max(1, heavy_steps + math.floor((usable - heavy_s) / step_s))
    cap = max(1, math.floor(max_epochs * steps_per_epoch))
    steps = min(fit, cap)
    of = f"the {left:.0f} s left of {budget_s:.0f} s" if spent_s else f"{budget_s:.0f} s"
    each = f"{step_s:.2f} s"
    if heavy_steps:
        each += f" ({step_s + first_pass_s:.2f} s for the first {min(steps, heavy_steps)}, while the replay anchor " \
                "computes the base's side)"
    if fit > cap:
        why = (f"{max_epochs:g} epochs ({cap} steps of {each}) fit in {of}; more passes over "
               "the same rows mostly memorise them")
    else:
        why = f"{steps} steps of {each} fill {BUDGET_SAFETY:.0%} of {of}"
    return BudgetPlan(budget_s, step_s, steps_per_epoch, steps, why, spent_s, first_pass_s if heavy_steps else 0.0,
                      heavy_steps)


def steps_per_epoch(rows: int, batch_size: int, grad_accum: int) -> int:
    return max(1, math.ceil(rows / (batch_size * grad_accum)))


def measure_step_seconds(trainer: Any, grad_accum: int) -> tuple[float, float]:
    """Seconds per optimizer step: the mean forward+backward time of three length-quantile batches (after one
    warm-up batch), times `grad_accum`, as (without, of which) the replay anchor's base passes: each measured batch
    is a first draw of replay rows, so it runs the base pass that later draws of the same rows skip
    (train/replay.py BaseReference). Leaves no gradient behind."""
    import torch

    model, dataset = trainer.model, trainer.train_dataset
    reference = getattr(trainer, "base_reference", None)
    batch_size = trainer.args.per_device_train_batch_size
    by_length = sorted(range(len(dataset)), key=lambda i: len(dataset[i]["input_ids"]))
    starts = [max(0, min(len(by_length) - batch_size, int(q * len(by_length)) - batch_size // 2))
              for q in (0.5, 0.25, 0.5, 0.75)]  # the first is the warm-up
    model.train()
    seconds, base_seconds = [], []
    for start in starts:
        rows = [dataset[i] for i in by_length[start : start + batch_size]]
        batch = trainer._prepare_inputs(trainer.data_collator(rows))
        base_before = reference.base_seconds if reference is not None else 0.0
        began = time.monotonic()
        with trainer.compute_loss_context_manager():
            loss = trainer.compute_loss(model, batch)
        loss.backward()
        seconds.append(time.monotonic() - began)
        base_seconds.append((reference.base_seconds if reference is not None else 0.0) - base_before)
    model.zero_grad(set_to_none=True)
    del loss
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    base_s = grad_accum * sum(base_seconds[1:]) / len(base_seconds[1:])
    return grad_accum * sum(seconds[1:]) / len(seconds[1:]) - base_s, base_s


def first_pass_steps(trainer: Any) -> int:
    """Optimizer steps until every replay row has been drawn once (0 without the replay anchor)."""
    replay = getattr(trainer, "replay_batches", None)
    if replay is None:
        return 0
    draws = math.ceil(len(replay.examples) / replay.batch_size)
    return math.ceil(draws / trainer.args.gradient_accumulation_steps)


def apply_time_budget(trainer: Any, budget_s: float, steps_given: bool, began: float) -> BudgetPlan | None:
    """Set `trainer.args.max_steps` from what is left of the budget since `began` (time.monotonic()), unless
    max_steps or epochs was given. Returns the plan, or None when the recipe's own steps win (StopAtBudget still
    stops at the budget)."""
    if steps_given:
        print(f"time budget {budget_s:.0f} s: training.max_steps/epochs are set, so they decide the steps; "
              "training stops early if it runs past the budget", file=sys.stderr, flush=True)
        return None
    per_epoch = steps_per_epoch(len(trainer.train_dataset), trainer.args.per_device_train_batch_size,
                                trainer.args.gradient_accumulation_steps)
    step_s, base_s = measure_step_seconds(trainer, trainer.args.gradient_accumulation_steps)
    plan = plan_steps(budget_s, step_s, per_epoch, spent_s=time.monotonic() - began, first_pass_s=base_s,
                      first_pass_steps=first_pass_steps(trainer))
    trainer.args.max_steps = plan.steps
    print(f"time budget {budget_s:.0f} s: {plan.steps} steps ({plan.epochs:g} epochs): {plan.why}",
          file=sys.stderr, flush=True)
    return plan


class StopAtBudget(TrainerCallback):
    """A trainer callback: stop after the step that ends past the budget (counted from `began`, when this command
    started preparing), and write the step into `record` (train.json's time_budget) as `stopped_at_step`."""

    def __init__(self, budget_s: float, record: dict[str, Any], began: float) -> None:
        self.budget_s = budget_s
        self.record = record
        self.began = began

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        past = time.monotonic() - self.began > self.budget_s
        if past and state.global_step < state.max_steps:
            self.record["stopped_at_step"] = state.global_step
            control.should_training_stop = True
            control.should_save = True
            print(f"time budget {self.budget_s:.0f} s reached at step {state.global_step} of {state.max_steps}: "
                  "stopping", file=sys.stderr, flush=True)
