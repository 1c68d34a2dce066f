"""training.time_budget: measure this machine's seconds per optimizer step on the run's own batches, then set the
number of steps that fills what is left of the budget (at most MAX_BUDGET_EPOCHS epochs), and stop at the budget if
the estimate was short.

The budget is the whole `tunesmith train` command's: it counts from when preparing began, so loading the model,
the replay answers and the measurement itself come out of it, and a 10m budget ends in about 10 minutes.

The measurement runs forward and backward on a few batches of the training set before training starts (no
optimizer exists yet, so no weight changes; gradients are cleared after). Batches are taken at the 25th, 50th
and 75th percentile of row length, as a length-grouped sampler builds them, after one warm-up batch. With the
replay anchor, the base runs over each replay row only at its first draw (its log-probabilities are kept), so
the steps of that first pass are planned with the base's pass and the later ones without it.

Three batches are a small sample of a machine whose speed drifts (a shared CPU can run a minute at a third of
its speed), so the plan is revised from the training steps' own times at steps REVISE_AT, 2 x REVISE_AT, 4 x ...
while fewer than REVISE_UNTIL of the steps are done: more steps when training runs faster than measured, fewer
when slower. The learning-rate schedule (`LearningRateSchedule`: warm-up, then the recipe's decay) is built for
the planned count and follows each revision, so the decay still ends at the last step; the warm-up stays as first
planned. Past the budget, training stops after the step that crossed it whatever the plan said.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tunesmith.runs import atomic_write_json

# Epochs a budget may fill when time allows: more passes over a small set mostly memorise it. Common LoRA SFT
# practice is 1-3 epochs (the QLoRA paper's and TRL's examples; Axolotl's examples use 1-4).
MAX_BUDGET_EPOCHS = 3
BUDGET_SAFETY = 0.95  # of the budget given to steps: logging, checkpoints and the optimizer are not measured
REVISE_AT = 5  # the first step whose time revises the plan (then 10, 20, 40, ...): step 1 pays one-time costs
REVISE_UNTIL = 0.8  # later revisions would move the learning rate too abruptly near the end of its decay
REVISE_BY = 0.05  # a revision smaller than this share of the planned steps (or under 2 steps) is not made


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
    elif usable < step_s + (first_pass_s if heavy_steps else 0.0):  # not even one step fits: say so, train one
        why = (f"the budget of {budget_s:.0f} s left no room for a step of {each} after {spent_s:.0f} s of set-up "
               "(loading the model and the data): 1 step, the least a run trains, so it runs past the budget. "
               "Give a budget longer than the set-up, or training.max_steps")
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
    (train/replay.py BaseReference). Where fewer of a step's micro-batches carry replay rows than it has
    (`replay_micro_batches`), the median batch runs once more without them, and the anchor's time is counted on
    that many only. Leaves no gradient behind."""
    import torch

    model, dataset = trainer.model, trainer.train_dataset
    batch_size = trainer.args.per_device_train_batch_size
    by_length = sorted(range(len(dataset)), key=lambda i: len(dataset[i]["input_ids"]))
    starts = [max(0, min(len(by_length) - batch_size, int(q * len(by_length)) - batch_size // 2))
              for q in (0.5, 0.25, 0.5, 0.75)]  # the first is the warm-up
    model.train()
    timed = [timed_batch(trainer, [dataset[i] for i in by_length[start : start + batch_size]]) for start in starts]
    seconds, base_seconds = [t for t, _ in timed[1:]], [b for _, b in timed[1:]]
    carrying = getattr(trainer, "replay_micro_batches", None)
    anchor_s = bare_s = 0.0
    if carrying is not None and carrying < grad_accum:
        trainer.replay_paused = True
        try:
            bare_s, _ = timed_batch(trainer, [dataset[i] for i in by_length[starts[2] : starts[2] + batch_size]])
        finally:
            trainer.replay_paused = False
        anchor_s = max(0.0, seconds[1] - base_seconds[1] - bare_s)
    model.zero_grad(set_to_none=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    base_s = grad_accum * sum(base_seconds) / len(base_seconds)
    step_s = grad_accum * sum(seconds) / len(seconds) - base_s
    if anchor_s:  # one noisy sample (a busy machine) must not take a step below its micro-batches' bare passes
        step_s = max(step_s - (grad_accum - carrying) * anchor_s, grad_accum * bare_s)
    return step_s, base_s


def timed_batch(trainer: Any, rows: list[dict[str, Any]]) -> tuple[float, float]:
    """(seconds, of which the replay anchor's base passes) of one forward+backward of `rows` as a batch."""
    reference = getattr(trainer, "base_reference", None)
    batch = trainer._prepare_inputs(trainer.data_collator(rows))
    base_before = reference.base_seconds if reference is not None else 0.0
    began = time.monotonic()
    with trainer.compute_loss_context_manager():
        loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    seconds = time.monotonic() - began
    del loss
    return seconds, (reference.base_seconds if reference is not None else 0.0) - base_before


def first_pass_steps(trainer: Any) -> int:
    """Optimizer steps until every replay row has been drawn once (0 without the replay anchor)."""
    replay = getattr(trainer, "replay_batches", None)
    if replay is None:
        return 0
    draws = math.ceil(len(replay.examples) / replay.batch_size)
    accumulated = trainer.args.gradient_accumulation_steps
    return math.ceil(draws / min(getattr(trainer, "replay_micro_batches", None) or accumulated, accumulated))


def apply_time_budget(trainer: Any, budget_s: float, steps_keys: list[str], began: float) -> BudgetPlan | None:
    """Plan the steps that fill what is left of the budget since `began` (time.monotonic()), unless the recipe says
    how long to train (`steps_keys`, e.g. ["training.epochs: 1"]), and let the trainer loop up to
    MAX_BUDGET_EPOCHS epochs (`args.max_steps`) so that a revision (KeepToBudget) can add steps. Returns the plan,
    or None when the recipe's own steps win (KeepToBudget still stops at the budget)."""
    if steps_keys:
        print(f"time budget {budget_s:.0f} s: the recipe sets {' and '.join(steps_keys)}, so the recipe decides the "
              "steps and the budget only stops training that runs past it. For steps chosen to fill the budget, "
              "delete them from the recipe.", file=sys.stderr, flush=True)
        return None
    per_epoch = steps_per_epoch(len(trainer.train_dataset), trainer.args.per_device_train_batch_size,
                                trainer.args.gradient_accumulation_steps)
    step_s, base_s = measure_step_seconds(trainer, trainer.args.gradient_accumulation_steps)
    plan = plan_steps(budget_s, step_s, per_epoch, spent_s=time.monotonic() - began, first_pass_s=base_s,
                      first_pass_steps=first_pass_steps(trainer))
    trainer.args.max_steps = max(plan.steps, math.floor(MAX_BUDGET_EPOCHS * per_epoch))
    print(f"time budget {budget_s:.0f} s: {plan.steps} steps ({plan.epochs:g} epochs): {plan.why}; revised from "
          "the steps' own times as training goes", file=sys.stderr, flush=True)
    return plan


def revised_steps(done: int, elapsed_s: float, base_s: float, left_s: float, steps_per_epoch: int,
                  first_pass_steps: int, max_epochs: float = MAX_BUDGET_EPOCHS) -> tuple[int, float]:
    """(total steps, seconds per step) from the training steps' own times: `done` steps (after the first)
    took `elapsed_s`, of which `base_s` in the replay anchor's base passes; `left_s` of the budget is left. The
    steps after `done` are planned as `plan_steps` plans them, with the steps' own times in place of the
    measurement, and the total stays within `max_epochs` epochs."""
    counted = max(1, done - 1)  # the times start at the end of step 1
    step_s = max(1e-6, (elapsed_s - base_s) / counted)
    first_pass_done = min(done, first_pass_steps) - 1
    first_pass_s = base_s / first_pass_done if first_pass_done > 0 and base_s > 0 else 0.0
    rest = plan_steps(left_s, step_s, steps_per_epoch, first_pass_s=first_pass_s,
                      first_pass_steps=max(0, first_pass_steps - done))
    cap = max(1, math.floor(max_epochs * steps_per_epoch))
    return max(done + 1, min(done + rest.steps, cap)), step_s


@dataclass
class LearningRateSchedule:
    """The learning-rate multiplier at an optimizer step (torch LambdaLR's `lr_lambda`): a linear warm-up over
    `warmup_steps`, then `kind` to `total_steps`. The formulas are transformers' (transformers.optimization:
    get_cosine_schedule_with_warmup with half a cycle, get_linear_schedule_with_warmup, get_constant_schedule,
    get_constant_schedule_with_warmup); unlike those, `total_steps` can change while training, which is how the
    time budget's revisions reach the schedule. LambdaLR saves this object's fields in the scheduler's state, so
    a resumed run continues the revised schedule."""

    kind: str
    warmup_steps: int
    total_steps: int

    def __call__(self, step: int) -> float:
        if self.kind == "constant":
            return 1.0
        if step < self.warmup_steps:
            return step / max(1, self.warmup_steps)
        if self.kind == "constant_with_warmup":
            return 1.0
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        if self.kind == "linear":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def warmup_steps(ratio: float, total_steps: int) -> int:
    """training.warmup_ratio of `total_steps`, in whole steps rounded down. transformers rounds up
    (`TrainingArguments.get_warmup_steps`), which gives a run shorter than 1/ratio steps (33 at the default 0.03)
    one warm-up step, and with it a first step at learning rate 0 that trains nothing; rounded down, such a run has
    no warm-up."""
    return math.floor(ratio * total_steps)


def count_warmup_in_whole_steps(trainer: Any, ratio: float) -> None:
    """Make `trainer` warm up for `warmup_steps(ratio, total)` steps, `total` being the steps it schedules for
    (known only when train() starts: it creates the scheduler then)."""
    create = trainer.create_scheduler

    def create_scheduler(num_training_steps: int, optimizer: Any = None) -> Any:
        trainer.args.warmup_steps = warmup_steps(ratio, num_training_steps)  # an int >= 1 counts steps; 0 is none
        return create(num_training_steps, optimizer)

    trainer.create_scheduler = create_scheduler


def use_schedule(trainer: Any, schedule: LearningRateSchedule) -> None:
    """Make `trainer` build its learning-rate scheduler from `schedule` (a LambdaLR) in place of the one it would
    build for `args.max_steps`."""
    import torch

    def create_scheduler(num_training_steps: int, optimizer: Any = None) -> Any:
        if trainer.lr_scheduler is None:
            trainer.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or trainer.optimizer, schedule)
            trainer._created_lr_scheduler = True  # rebuilt by the trainer on another train() call, as its own
        return trainer.lr_scheduler

    trainer.create_scheduler = create_scheduler


EARLY_STOP_SHARE = 0.5  # a budget stop before this share of the planned steps is warned of: the run barely trained


class KeepToBudget(TrainerCallback):
    """A trainer callback that keeps training within the budget (counted from `began`, when this command started
    preparing). With a `schedule` (the budget planned the steps): the run lasts `schedule.total_steps`, revised
    from the steps' own times (`revised_steps`, at steps REVISE_AT, 2 x REVISE_AT, ...), each revision written into
    `record` (train.json's time_budget: `steps`, `epochs`, `revisions`) and `saved` (budget.json, which a resume
    reads). Always: stop after the step that ends past the budget, written into `record` as `stopped_at_step`.

    The trainer loops over `args.max_steps` steps, so with a schedule that must be the most the revisions may
    reach (MAX_BUDGET_EPOCHS epochs); this callback must run before the progress bar's, which reads the planned
    count when training begins.
    """

    def __init__(self, budget_s: float, record: dict[str, Any], began: float,
                 schedule: LearningRateSchedule | None = None, revise: bool = False, saved: Path | None = None,
                 first_pass_steps: int = 0, reference: Any = None, callbacks: list[Any] | None = None) -> None:
        self.budget_s, self.record, self.began = budget_s, record, began
        self.callbacks = callbacks if callbacks is not None else []  # the trainer's: the progress bar is one
        self.schedule, self.revise, self.saved = schedule, revise and schedule is not None, saved
        self.first_pass_steps, self.reference = first_pass_steps, reference
        self.next_check = REVISE_AT
        self.after_first: tuple[float, float] | None = None  # (time, base seconds) at the end of step 1

    def base_seconds(self) -> float:
        return self.reference.base_seconds if self.reference is not None else 0.0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.schedule is not None:
            state.max_steps = self.schedule.total_steps

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = time.monotonic()
        if now - self.began > self.budget_s and state.global_step < state.max_steps:
            self.record["stopped_at_step"], self.record["planned_steps"] = state.global_step, state.max_steps
            control.should_training_stop = True
            control.should_save = True
            print(f"time budget {self.budget_s:.0f} s reached at step {state.global_step} of {state.max_steps}: "
                  "stopping", file=sys.stderr, flush=True)
            if state.global_step < EARLY_STOP_SHARE * state.max_steps:
                kind = (self.schedule.kind if self.schedule is not None
                        else str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)))
                warmup = 0 if kind == "constant" else (self.schedule.warmup_steps if self.schedule is not None
                                                       else args.get_warmup_steps(state.max_steps))
                rate = (f", within its {warmup} warm-up steps (the learning rate never reached "
                        f"{args.learning_rate:g})" if state.global_step < warmup else "")
                advice = ("Give a larger budget." if self.schedule is not None else
                          "Give a larger budget, or let the budget choose the steps (no training.max_steps or "
                          "training.epochs in the recipe): the warm-up and the decay then fit in it.")
                print(f"warning: training stopped at step {state.global_step} of {state.max_steps} planned{rate}, so "
                      "the adapter has changed the model less than planned: what eval and the exports show may be "
                      f"close to the base. {advice}", file=sys.stderr, flush=True)
            return
        if not self.revise:
            return
        if self.after_first is None:
            self.after_first = (now, self.base_seconds())
            self.next_check = max(self.next_check, state.global_step + REVISE_AT - 1)
        elif state.global_step >= self.next_check:
            self.next_check = 2 * state.global_step
            if state.global_step < REVISE_UNTIL * state.max_steps and self.revise_plan(state, now):
                follow_schedule(kwargs.get("lr_scheduler"))

    def revise_plan(self, state: Any, now: float) -> bool:
        """Revise the planned steps from the steps' own times; whether they changed."""
        began_at, base_before = self.after_first
        total, step_s = revised_steps(state.global_step, now - began_at, self.base_seconds() - base_before,
                                      self.budget_s - (now - self.began), self.record["steps_per_epoch"],
                                      self.first_pass_steps)
        planned = state.max_steps
        if abs(total - planned) < max(2, REVISE_BY * planned):
            return False
        state.max_steps = self.schedule.total_steps = total
        for callback in self.callbacks:  # transformers' ProgressCallback sized its bar from the first plan
            bar = getattr(callback, "training_bar", None)
            if bar is not None:
                bar.total = total
                bar.refresh()
        self.record["revisions"] = [*self.record.get("revisions", []),
                                    {"at_step": state.global_step, "step_s": round(step_s, 3), "steps": total}]
        self.record["steps"] = total
        self.record["epochs"] = round(total / self.record["steps_per_epoch"], 2)
        measured = self.record["measured_step_s"]
        self.record["why"] = (f"{total} steps: re-planned at step {state.global_step} from the steps' own "
                              f"{step_s:.2f} s (measured before training: {measured} s)")
        if self.saved is not None:
            atomic_write_json(self.saved, self.record)
        print(f"time budget {self.budget_s:.0f} s: the steps take {step_s:.2f} s, not the {measured} s measured: "
              f"{planned} -> {total} steps", file=sys.stderr, flush=True)
        return True


def follow_schedule(scheduler: Any) -> None:
    """Set the learning rate of the coming step from `scheduler`'s multipliers as they are now (a LambdaLR computes
    it when it steps, which for the coming step was before this step's revision)."""
    if scheduler is None:
        return
    step = scheduler.last_epoch
    for group, base_lr, multiplier in zip(scheduler.optimizer.param_groups, scheduler.base_lrs,
                                          scheduler.lr_lambdas, strict=True):
        group["lr"] = base_lr * multiplier(step)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
