"""Training stage: one module per method; SFT with LoRA first."""

from tunesmith.train.sft import run_train

__all__ = ["run_train"]
