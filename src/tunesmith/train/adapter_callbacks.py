"""Trainer callbacks that some adapter kinds need while training (public TrainerCallback hooks only).

- hft: flips `requires_grad` at round boundaries so each round trains the other half of the blocks;
- adalora: sets the schedule's total steps from the trainer's plan, and reallocates the rank budget
  after each optimizer step (neither transformers' Trainer nor TRL calls `update_and_allocate`);
- pissa/olora: keep the adapter as initialised, to convert the trained one at save time.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tunesmith.errors import RecipeError
from tunesmith.runs import Run, atomic_directory
from tunesmith.train.adapters import MUTATED_BASE_KINDS, initial_adapter_dir, train_half_of_blocks


def adapter_callbacks(adapter: Any, run: Run) -> list[TrainerCallback]:
    """The callbacks the recipe's adapter kind needs; trainers add them to their own."""
    if adapter.kind == "hft":
        return [HalfFineTuningRounds(adapter.round_steps)]
    if adapter.kind == "adalora":
        return [AdaloraBudget(adapter.total_step)]
    if adapter.kind in MUTATED_BASE_KINDS:
        return [KeepInitialAdapter(initial_adapter_dir(run))]
    return []


class HalfFineTuningRounds(TrainerCallback):
    """Half fine-tuning (HFT): every `round_steps` optimizer steps the trained half of the blocks swaps.

    The optimizer was built while every block was trainable, so it holds them all. A frozen block gets no
    gradient (None, not zero), and torch's optimizers skip such weights entirely: no update, no weight
    decay, no moment change; their Adam moments resume when the block trains again.
    """

    def __init__(self, round_steps: int) -> None:
        self.round_steps = round_steps

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step % self.round_steps:  # resumed inside a round: train that round's half again
            train_half_of_blocks(model, state.global_step // self.round_steps)
        if state.global_step == 0 and 0 < state.max_steps <= self.round_steps:
            rounds = min(4, state.max_steps)
            fix = (f"Set adapter.round_steps to {state.max_steps // rounds} ({rounds} rounds) or fewer."
                   if rounds > 1 else "A run of one step cannot swap them: train two or more.")
            print(f"warning: adapter.round_steps is {self.round_steps} and the run takes {state.max_steps} optimizer "
                  f"steps: half fine-tuning never swaps halves, so the odd-numbered blocks never train. {fix}",
                  file=sys.stderr, flush=True)

    def on_step_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step % self.round_steps == 0:
            train_half_of_blocks(model, state.global_step // self.round_steps)


class AdaloraBudget(TrainerCallback):
    """AdaLoRA's rank reallocation, run where PEFT says: after optimizer.step(), before zero_grad().

    Checkpoints keep what the reallocation has learnt, so a resume carries on with it: the adapter at full rank
    (PEFT would save it cut to the rank pattern, which neither the optimizer nor a resume can load back), and
    the rank allocator's importance averages and rank pattern (`STATE_FILE`).
    """

    STATE_FILE = "adalora_budget.pt"

    def __init__(self, total_step: int | None) -> None:
        self.total_step = total_step
        self.resume_from: Path | None = None  # set by training when it resumes from a checkpoint

    @contextmanager
    def full_rank_save(self, model: Any) -> Iterator[None]:
        config = model.active_peft_config
        pattern, config.rank_pattern = config.rank_pattern, None
        try:
            yield
        finally:
            config.rank_pattern = pattern

    def save_extra(self, folder: Path, model: Any) -> None:
        import torch

        allocator = model.base_model.rankallocator
        torch.save({"ipt": allocator.ipt, "exp_avg_ipt": allocator.exp_avg_ipt, "exp_avg_unc": allocator.exp_avg_unc,
                    "rank_pattern": model.active_peft_config.rank_pattern}, folder / self.STATE_FILE)

    def load_extra(self, folder: Path, model: Any) -> None:
        import torch

        saved = torch.load(folder / self.STATE_FILE, weights_only=True)
        allocator = model.base_model.rankallocator
        allocator.ipt, allocator.exp_avg_ipt, allocator.exp_avg_unc = (saved[k] for k in ("ipt", "exp_avg_ipt",
                                                                                            "exp_avg_unc"))
        model.active_peft_config.rank_pattern = saved["rank_pattern"]

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        config = model.active_peft_config  # the same object AdaLoRA's rank allocator reads
        config.total_step = self.total_step or state.max_steps
        if self.resume_from is not None:  # after the trainer loaded the checkpoint's weights
            self.load_extra(self.resume_from, model)
        if config.tinit >= config.total_step - config.tfinal:
            raise RecipeError(
                f"adapter.tinit={config.tinit} + tfinal={config.tfinal} leave no steps to reallocate ranks in "
                f"{config.total_step} training steps.", "Lower adapter.tinit/tfinal, or train for more steps.")

    def on_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        model.base_model.update_and_allocate(state.global_step)


class KeepInitialAdapter(TrainerCallback):
    """Save PiSSA/OLoRA's adapter before the first step (optimizer built, weights not yet changed)."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step and self.target.is_dir():  # resumed: saved when the run first started
            return
        model.active_peft_config.init_lora_weights = True  # reloading it must not decompose the base again
        if not state.is_world_process_zero:  # with several processes, rank 0 alone writes the run directory
            return
        with atomic_directory(self.target) as staging:  # an interrupted save leaves no partial adapter to load
            model.save_pretrained(staging, safe_serialization=True)
