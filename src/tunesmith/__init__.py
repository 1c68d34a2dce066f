"""tunesmith: from a pile of examples to a fine-tuned model you can run locally."""

import logging
import os
import sys

# Offline first: nothing phones home. Set before transformers/huggingface_hub are imported.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


class _StderrInstead(logging.Filter):
    """DeepSpeed's logger writes to stdout ("Setting accelerator to CPU", when accelerate imports it), which holds
    tunesmith's --json output and piped replies: its records go to stderr instead, tracebacks included."""

    formatter = logging.Formatter("[%(levelname)s] %(message)s")

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            print(self.formatter.format(record), file=sys.stderr)
        except Exception:  # a record that cannot be formatted: let the logger's own handlers deal with it
            return True
        return False


logging.getLogger("DeepSpeed").addFilter(_StderrInstead())

__version__ = "0.1.0"
