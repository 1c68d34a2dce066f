"""The few places that must know a version quirk of TRL/transformers, each naming its version.

One lives elsewhere because it must act before this package can be imported: bitsandbytes' CPU-kernel
notice, which peft prints on import, is filtered in `tunesmith.cli.app._hide_bitsandbytes_cpu_kernel_notice`.
"""

from __future__ import annotations

from typing import Any


def precision_flags(precision: str, device: str) -> dict[str, Any]:
    """TrainingArguments precision flags, stated explicitly.

    TRL 1.16's `_BaseConfig.__post_init__` turns `bf16` on whenever it is left unset, which on a CPU
    without native bf16 is ~3x slower (and transformers then asks for `use_cpu=True`). So both flags
    are always passed, and `use_cpu` is set on CPU.
    """
    flags: dict[str, Any] = {"bf16": precision == "bf16", "fp16": precision == "fp16"}
    if device == "cpu":
        flags["use_cpu"] = True
    return flags


def hide_trl_checkpointing_deprecation() -> None:
    """TRL 1.16 reads `model.is_gradient_checkpointing`, which transformers 5 deprecates with a FutureWarning
    printed at every generation and evaluation: nothing a user can act on, so it is hidden (only that one)."""
    import warnings

    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
