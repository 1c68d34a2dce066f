"""Trainer callbacks: log every step to metrics.jsonl (survival.py guards the numerics)."""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback

from tunesmith.runs import Run


class MetricsLogger(TrainerCallback):
    """Append each log event (loss, lr, grad norm, tokens/s) to the run's metrics.jsonl."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.started = time.monotonic()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """A resumed run's clock continues from the last record kept."""
        logged = self.run.read_metrics() if state.global_step else []
        self.started = time.monotonic() - (logged[-1].get("elapsed_s", 0.0) if logged else 0.0)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Log the last step too (the trainer logs every logging_steps only), so that the final loss in train.json
        and the model card reaches the last step: Trainer's mean over the steps since its previous log, not the
        mean that ended at the last multiple of logging_steps."""
        if state.global_step >= state.max_steps or control.should_training_stop:
            control.should_log = True

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any):
        if not logs or not state.is_world_process_zero:  # rank 0 writes; the loss logged is the ranks' mean
            return
        record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4),
                  "elapsed_s": round(time.monotonic() - self.started, 2)}
        record.update({k: _plain(v) for k, v in logs.items()})
        self.run.append_metrics([record])


def _plain(value: Any) -> Any:
    return round(value, 6) if isinstance(value, float) else value
