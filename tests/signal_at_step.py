"""Run the tunesmith CLI and send this process a signal when training reaches a step (kill -9 and Ctrl-C tests).

    python -m tests.signal_at_step SIGKILL 5 train recipe.yaml --runs-dir runs
    python -m tests.signal_at_step SIGINT,SIGINT 5 train ...   (two in a row: a second Ctrl-C)

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
        if state.global_step == int(step):
            for each in name.split(","):
                os.kill(os.getpid(), getattr(signal, each))
        return original(self, args, state, control)

    CallbackHandler.on_step_begin = on_step_begin
    from tunesmith.cli.app import main as tunesmith

    sys.argv = ["tunesmith", *cli]
    tunesmith()


if __name__ == "__main__":
    main()
