"""Run the tunesmith CLI and send this process a signal when training reaches a step (kill -9 and Ctrl-C tests).

    python -m tests.signal_at_step SIGKILL 5 train recipe.yaml --runs-dir runs
    python -m tests.signal_at_step SIGINT,SIGINT 5 train ...   (two in a row: a second Ctrl-C)
    python -m tests.signal_at_step SIGTERM load train ...      (while the model loads: before any step)

The signal is sent from inside, at the start of optimizer step STEP+1, so the test knows exactly where the run
was when it died; everything after that (the handler, the exit, the resume) is the real code path.
"""

from __future__ import annotations

import os
import signal
import sys


def main() -> None:
    name, step, *cli = sys.argv[1:]
    from transformers.trainer_callback import CallbackHandler

    original = CallbackHandler.on_step_begin

    def on_step_begin(self, args, state, control):  # type: ignore[no-untyped-def]
        if step.isdigit() and state.global_step == int(step):
            for each in name.split(","):
                os.kill(os.getpid(), getattr(signal, each))
        return original(self, args, state, control)

    CallbackHandler.on_step_begin = on_step_begin
    if step == "load":
        from transformers import modeling_utils

        load = modeling_utils.PreTrainedModel.from_pretrained.__func__

        def from_pretrained(cls, *args, **kwargs):  # type: ignore[no-untyped-def]
            for each in name.split(","):
                os.kill(os.getpid(), getattr(signal, each))
            return load(cls, *args, **kwargs)

        modeling_utils.PreTrainedModel.from_pretrained = classmethod(from_pretrained)
    from tunesmith.cli.app import main as tunesmith

    sys.argv = ["tunesmith", *cli]
    tunesmith()


if __name__ == "__main__":
    main()
