"""Loaded by every Python process started with this folder on PYTHONPATH (Python's `site` module imports
`sitecustomize`): in a training rank whose RANK is $KILL_RANK, SIGKILL that process at the start of optimizer step
$KILL_AT_STEP + 1. tests/test_distributed.py uses it to kill one rank of `tunesmith train --nproc` at a known step."""

import os

if os.environ.get("KILL_RANK") is not None and os.environ.get("RANK") == os.environ["KILL_RANK"]:
    import signal

    from transformers.trainer_callback import CallbackHandler

    original = CallbackHandler.on_step_begin

    def on_step_begin(self, args, state, control):  # type: ignore[no-untyped-def]
        if state.global_step == int(os.environ["KILL_AT_STEP"]):
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, args, state, control)

    CallbackHandler.on_step_begin = on_step_begin
