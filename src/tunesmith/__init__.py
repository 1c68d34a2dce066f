"""tunesmith: from a pile of examples to a fine-tuned model you can run locally."""

import logging
import os
import sys

# Offline first: nothing phones home. Set before transformers/huggingface_hub are imported.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Nor fetches code: bitsandbytes 0.50 (imported for QLoRA, and by peft 0.21 on every `import peft`) asks the Hub for
# a compiled 4-bit CPU kernel (`kernels.get_kernel("kernels-community/quantization-bitsandbytes")`) on a CPU with
# AVX512-BF16, whenever the `kernels` package (a transformers 5 dependency) is there: a network call, and code
# downloaded and run, in every command. `LOCAL_KERNELS` (the kernels package's own override of a repository by a local
# folder) names a folder that does not exist, so bitsandbytes falls back to its built-in kernel without touching the
# network. A user who set LOCAL_KERNELS keeps theirs.
HUB_KERNEL = "kernels-community/quantization-bitsandbytes"
os.environ.setdefault("LOCAL_KERNELS", f"{HUB_KERNEL}=/nonexistent/tunesmith-fetches-no-hub-kernels")


class _StderrInstead(logging.Filter):
    """DeepSpeed's logger writes to stdout, which holds tunesmith's --json output and piped replies: its records go
    to stderr instead, tracebacks included. Its "Setting accelerator to CPU. If you have GPU or other accelerator,
    we were unable to detect it." (DeepSpeed 0.18, an optional extra, imported by accelerate's and transformers'
    checks on every run where it is installed) is true on any machine without CUDA and nothing to act on
    (`tunesmith doctor` says which device trains): dropped."""

    formatter = logging.Formatter("[%(levelname)s] %(message)s")

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Setting accelerator to CPU"):
            return False
        try:
            print(self.formatter.format(record), file=sys.stderr)
        except Exception:  # a record that cannot be formatted: let the logger's own handlers deal with it
            return True
        return False


logging.getLogger("DeepSpeed").addFilter(_StderrInstead())

__version__ = "0.1.0"
