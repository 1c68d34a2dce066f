"""Runs that survive: complete-or-absent checkpoints, resume from the newest complete one, a clean stop on
SIGINT/SIGTERM, updates skipped on non-finite gradients, and a free-space check before each checkpoint.

Checkpoints are transformers' own (`Trainer._save_checkpoint`: weights or adapter, optimizer, LR scheduler,
gradient scaler, RNG states, trainer_state.json with the step), which `Trainer.train(resume_from_checkpoint=)`
restores, skipping the batches already seen so the data order continues where it stopped
(transformers `Trainer._inner_training_loop`). tunesmith adds what makes them safe to resume from: each is
written into a staging folder, marked complete (`COMPLETE_MARKER`, with tunesmith's own state) and renamed
into `checkpoints/checkpoint-<step>`; anything else in `checkpoints/` is never resumed from.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tunesmith.errors import TunesmithError
from tunesmith.runs import Run, atomic_write_json, require_free_space, tree_size
from tunesmith.train.distributed import any_rank, is_main_process, wait_for_everyone

COMPLETE_MARKER = "tunesmith-complete.json"
CHECKPOINT_PREFIX = "checkpoint-"
STAGING_PREFIX = ".staging-"


class TrainingInterrupted(TunesmithError):
    """SIGINT/SIGTERM stopped training after a checkpoint; exits 128 + the signal number (130, 143). Printed as
    "Stopped:", not "Error:": the user asked for it, and nothing went wrong."""

    label = "Stopped"

    def __init__(self, message: str, hint: str, signum: int) -> None:
        super().__init__(message, hint)
        self.exit_code = 128 + signum


def checkpoint_step(path: Path) -> int | None:
    """The step in `checkpoint-<step>`, or None for any other name."""
    suffix = path.name.removeprefix(CHECKPOINT_PREFIX)
    return int(suffix) if path.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() else None


def is_complete(checkpoint: Path) -> bool:
    """The marker is there and every file it lists has the size it had when the checkpoint completed."""
    try:
        files = checkpoint_state(checkpoint)["files"]
    except (OSError, ValueError, KeyError):
        return False
    return all((checkpoint / name).is_file() and (checkpoint / name).stat().st_size == size
               for name, size in files.items())


def complete_checkpoints(folder: Path) -> list[Path]:
    """The complete checkpoints in `folder`, oldest first."""
    found = [p for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if checkpoint_step(p) is not None
             and is_complete(p)] if folder.is_dir() else []
    return sorted(found, key=lambda p: checkpoint_step(p) or 0)


def incomplete_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint folders that are not complete, and staging folders a killed save left behind."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and (
        p.name.startswith(STAGING_PREFIX) or (checkpoint_step(p) is not None and not is_complete(p))))


def newest_complete_checkpoint(run: Run) -> Path | None:
    found = complete_checkpoints(run.checkpoints_dir)
    return found[-1] if found else None


def discard_incomplete_checkpoints(run: Run, report: Callable[[str], None]) -> list[Path]:
    """Remove what a killed save left behind (it would never be resumed from), saying what and why."""
    removed = incomplete_checkpoints(run.checkpoints_dir)
    for path in removed:
        report(f"ignoring {path.name}: its {COMPLETE_MARKER} is missing or lists files that are not there in full "
               "(a save was cut short); removed it")
        shutil.rmtree(path, ignore_errors=True)
    return removed


def checkpoint_state(checkpoint: Path) -> dict[str, Any]:
    """What tunesmith wrote beside transformers' state when the checkpoint completed."""
    return json.loads((checkpoint / COMPLETE_MARKER).read_text(encoding="utf-8"))


def expected_checkpoint_bytes(model: Any, previous: Path | None) -> int:
    """The last complete checkpoint's size, or, before the first: the trainable weights in fp32 and Adam's two
    moments for each (3 x 4 bytes per trainable parameter), plus the frozen weights when the whole model is saved
    (not a PEFT adapter), in bytes."""
    if previous is not None:
        return tree_size(previous)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = 0 if hasattr(model, "peft_config") else sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return 12 * trainable + 4 * frozen + (1 << 20)


def install_atomic_checkpoints(trainer: Any, run: Run, keep: int, extra_state: Callable[[], dict[str, Any]],
                               extras: Sequence[Any] = ()) -> None:
    """Make every checkpoint the trainer saves complete-or-absent, and keep the newest `keep`.

    transformers writes `output_dir/checkpoint-<step>` in place; here it writes into a staging folder instead,
    the marker (with `extra_state()`) goes in last, and one rename makes it visible. A failure midway (a full
    disk, a second Ctrl-C) leaves the previous checkpoints as they were. `extras`: adapter callbacks with
    training state of their own (`full_rank_save(model)` around the save, `save_extra(folder, model)`).
    """
    save = trainer._save_checkpoint
    folder = run.checkpoints_dir

    def save_atomically(model: Any, trial: Any) -> None:
        # With several processes every rank saves into the staging folder (rank 0 the weights and optimizer, each
        # rank its random state); rank 0 alone checks space, completes and renames it, between barriers.
        main = is_main_process()
        step = trainer.state.global_step
        previous = complete_checkpoints(folder)
        staging = folder / f"{STAGING_PREFIX}{step}"
        if main:
            require_free_space(folder, expected_checkpoint_bytes(trainer.model, previous[-1] if previous else None),
                               f"the checkpoint at step {step}")
            shutil.rmtree(staging, ignore_errors=True)
        wait_for_everyone()
        trainer.args.output_dir = str(staging)
        try:
            try:
                with ExitStack() as stack:
                    for extra in extras:
                        stack.enter_context(extra.full_rank_save(trainer.model))
                    save(model, trial)
                wait_for_everyone()
                if not main:
                    return
                written = staging / f"{CHECKPOINT_PREFIX}{step}"
                for extra in extras:
                    extra.save_extra(written, trainer.model)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                raise TunesmithError(
                    f"The disk filled up while writing the checkpoint at step {step}; the partial one was removed "
                    f"and {previous[-1] if previous else 'no earlier checkpoint'} is intact.",
                    "Free some space, then continue with `tunesmith train RECIPE --resume RUN_DIR`.") from exc
            files = {p.relative_to(written).as_posix(): p.stat().st_size for p in written.rglob("*") if p.is_file()}
            atomic_write_json(written / COMPLETE_MARKER, {"step": step, "files": files, **extra_state()})
            target = folder / written.name
            if target.exists():
                shutil.rmtree(target)
            os.replace(written, target)
        finally:
            trainer.args.output_dir = str(folder)
            if main:
                shutil.rmtree(staging, ignore_errors=True)
            wait_for_everyone()
        for old in complete_checkpoints(folder)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    trainer._save_checkpoint = save_atomically


class StopOnSignal(TrainerCallback):
    """The first SIGINT/SIGTERM finishes the current step, writes a checkpoint and stops; a second exits at once
    (checkpoints are renamed into place only when complete, so none is left half-written), saying `resume` (how to go
    on from that checkpoint) where given."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, resume: str | None = None) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}
        self.resume = resume

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        try:
            self.previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        except ValueError:  # not the main thread: leave signals to whoever owns them
            self.previous = {}

    def handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            print(f"\n{signal.Signals(signum).name} again: stopping now; the last complete checkpoint is kept."
                  + (f" {self.resume}" if self.resume else ""), file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: finishing this step, then writing a checkpoint "
              "(send it again to stop at once).", file=sys.stderr, flush=True)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # every rank stops at the same step when any got the signal (one tiny all-reduce with several processes)
        if any_rank(self.signum is not None):
            self.signum = self.signum or signal.SIGTERM
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}


class NumericsGuard(TrainerCallback):
    """Skip an optimizer update whose gradients are not finite (a NaN/inf loss makes them so); stop after
    `max_bad_steps` such steps in a row. No checkpoint is written while the last update was skipped.

    A skipped update sets every gradient to None, which torch's optimizers treat as "no gradient": no step, no
    weight decay, no moment change (torch.optim.Adam skips parameters whose .grad is None). The LR schedule
    moves on. With fp16 the gradient scaler already skips overflowing steps and lowers its scale; the guard
    leaves those to it.
    """

    def __init__(self, max_bad_steps: int, recorder: BatchRecorder | None = None) -> None:
        self.max_bad_steps = max_bad_steps
        self.recorder = recorder or BatchRecorder()
        self.bad_in_a_row = 0
        self.skipped: list[dict[str, Any]] = []
        self.stopped_at: int | None = None

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if args.fp16 or gradients_finite(model):
            self.bad_in_a_row = 0
            return
        for parameter in model.parameters():
            parameter.grad = None
        step = state.global_step + 1
        self.bad_in_a_row += 1
        batch = self.recorder.describe()
        self.skipped.append({"step": step, "batch": batch})
        print(f"step {step}: non-finite loss or gradient; update skipped{f' ({batch})' if batch else ''}",
              file=sys.stderr, flush=True)
        if self.bad_in_a_row >= self.max_bad_steps:
            self.stopped_at = step
            control.should_training_stop = True

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.recorder.clear()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bad_in_a_row:  # no checkpoint from inside a bad stretch: the last one stays the last good one
            control.should_save = False

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        loss = (logs or {}).get("loss")
        if isinstance(loss, float) and not math.isfinite(loss) and self.stopped_at is None:
            self.stopped_at = state.global_step  # every logged step non-finite: nothing was learnt
            control.should_training_stop = True

    def state(self) -> dict[str, Any]:
        return {"bad_in_a_row": self.bad_in_a_row, "skipped": self.skipped}

    def restore(self, saved: dict[str, Any]) -> None:
        self.bad_in_a_row = saved.get("bad_in_a_row", 0)
        self.skipped = list(saved.get("skipped", []))

    def failure(self, run: Run) -> TunesmithError:
        last = newest_complete_checkpoint(run)
        steps = ", ".join(str(s["step"]) for s in self.skipped[-self.max_bad_steps:])
        rows = "; ".join(s["batch"] for s in self.skipped[-self.max_bad_steps:] if s["batch"])
        return TunesmithError(
            f"Training stopped at step {self.stopped_at}: {self.max_bad_steps} updates in a row had a non-finite loss "
            f"or gradient (steps {steps or self.stopped_at}).{f' Batches: {rows}.' if rows else ''} "
            f"Last good checkpoint: {last or 'none yet'}.",
            "Likely causes: a learning rate too high (lower training.lr), fp16 overflow (use training.precision: "
            "bf16 or fp32), or an empty or very long row in those batches. training.max_bad_steps sets how many "
            "in a row are tolerated.")


def gradients_finite(model: Any) -> bool:
    import torch

    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return True
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


class BatchRecorder:
    """Remembers the token rows each forward pass got since the last optimizer step, to name them when the
    update is skipped: as lines of the run's data/train.jsonl where `rows_by_ids` knows them (SFT), else by
    length. A forward pre-hook on the model sees exactly the batch computed (the data loader reads ahead)."""

    def __init__(self, rows_by_ids: dict[tuple[int, ...], int] | None = None) -> None:
        self.rows_by_ids = rows_by_ids or {}
        self.seen: list[list[int]] = []

    def attach(self, model: Any) -> None:
        model.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None or not hasattr(ids, "tolist"):
            return
        mask = kwargs.get("attention_mask")
        for i, row in enumerate(ids.tolist()):
            self.seen.append(row[: int(mask[i].sum())] if mask is not None and mask.dim() == 2 else row)

    def describe(self) -> str:
        lines = sorted({self.rows_by_ids[key] + 1 for key in map(tuple, self.seen) if key in self.rows_by_ids})
        if lines:
            return "data/train.jsonl line(s) " + ", ".join(map(str, lines))
        return ("token rows of length " + ", ".join(str(len(r)) for r in self.seen)) if self.seen else ""

    def clear(self) -> None:
        self.seen = []
