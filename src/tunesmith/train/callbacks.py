"""Trainer callbacks: log every step to metrics.jsonl, stop on a NaN loss."""

from __future__ import annotations

import math
import time
from typing import Any

from transformers import TrainerCallback

from tunesmith.runs import Run


class MetricsLogger(TrainerCallback):
    """Append each log event (loss, lr, grad norm, tokens/s) to the run's metrics.jsonl."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.started = time.monotonic()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any):
        if not logs:
            return
        record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4),
                  "elapsed_s": round(time.monotonic() - self.started, 2)}
        record.update({k: _plain(v) for k, v in logs.items()})
        self.run.append_metrics([record])


class NanGuard(TrainerCallback):
    """Stop training at the first non-finite loss instead of burning hours on garbage."""

    def __init__(self) -> None:
        self.bad_step: int | None = None

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any):
        loss = (logs or {}).get("loss")
        if isinstance(loss, float) and not math.isfinite(loss):
            self.bad_step = state.global_step
            control.should_training_stop = True


def _plain(value: Any) -> Any:
    return round(value, 6) if isinstance(value, float) else value
