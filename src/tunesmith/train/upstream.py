"""The few places that must know a version quirk of TRL/transformers, each naming its version.

One lives elsewhere because it must act before this package can be imported: bitsandbytes' CPU-kernel
notice, which peft prints on import, is filtered in `tunesmith.cli.app._hide_library_notices`.
"""

from __future__ import annotations

from typing import Any

from tunesmith.errors import TunesmithError


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


def score_only_labelled_positions() -> None:
    """Make TRL's fused LM head project only the positions that carry a label, on every device.

    TRL 1.16's `add_fused_lm_head` (trl/trainer/utils.py) scores only the labelled positions on Triton
    devices, and every position elsewhere, to keep tile shapes fixed for compilers such as Neuron's. An eager
    CPU has no such constraint, and scoring every position multiplies the LM head's work (a 49k-vocabulary
    projection, its softmax and entropy) by the share of prompt tokens: on completion-only SmolLM2 rows it
    made a training step 2.0x slower (benchmarks/train_step_paths.py). Only eager CPU and MPS change; other
    devices keep TRL's choice. The choice is the module's `_use_triton`, read only there; the kernel itself is
    picked by its own module's binding and is unchanged. Loss and gradients are the same (tested in
    tests/test_train_speed.py against transformers' own loss).
    """

    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils._use_triton, "__wrapped__", trl_utils._use_triton)

    def compact_on_eager_devices(device: Any) -> bool:
        return device.type in ("cpu", "mps") or original(device)

    compact_on_eager_devices.__wrapped__ = original  # type: ignore[attr-defined]
    trl_utils._use_triton = compact_on_eager_devices


def return_freed_blocks_to_the_system() -> bool:
    """Have glibc's malloc serve blocks of 64 KiB and more with mmap, so that freeing them returns the memory.

    glibc keeps freed heap memory for reuse (its mmap threshold rises to 32 MiB after the first large free), and
    activation checkpointing on a CPU frees and allocates each recomputed block's tensors again: SmolLM2 LoRA,
    8 x 511 tokens, peaked at 5.75 GiB resident with checkpointing and 1.94 GiB with this (11.14 GiB without
    checkpointing; benchmarks/activation_memory.py). Without checkpointing the same threshold cost 42% of the
    tokens/s, so it is set only when checkpointing is on, where memory is what matters. Linux with glibc only;
    False elsewhere.
    """
    libc = glibc()
    return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024))


def keep_freed_blocks_for_reuse() -> bool:
    """Have glibc's malloc keep every freed block for the next training step: no mmap, no trimming of the heap.

    By default glibc serves blocks over 32 MiB (a step's logits over a 49k vocabulary, the anchor's
    log-probabilities) with mmap and unmaps them when freed, and trims the heap's free top. The next step then
    touches fresh pages, which the kernel zeroes one 4 KiB page at a time. With `M_MMAP_MAX` 0 and no trimming
    (glibc's mallopt(3); the same as `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...` in the environment), 12 steps
    of the quickstart on a 2-core CPU took 57.7 s instead of 84.8 s (1.47x; tickets 1.41x), the kernel's share of
    the process 13.8 s instead of 45.6 s, the losses the same and peak RSS 5.16 instead of 4.79 GB
    (benchmarks/malloc_reuse.py). That was on a new virtual machine, where a fault cost ~6 µs; later, at ~1.7 µs a
    fault, the same comparison gained 1.04x and 1.00x. The process holds its peak memory until it ends, as its
    peak step did anyway.
    Set when training on a CPU without activation checkpointing (with it,
    `return_freed_blocks_to_the_system`). Linux with glibc only; False elsewhere.
    """
    libc = glibc()
    return libc is not None and bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, -1))


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # malloc.h; -1 as the trim threshold is SIZE_MAX: never


def glibc() -> Any:
    """glibc through ctypes on Linux, None elsewhere (musl and other systems have no mallopt to set)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None


# What tunesmith wraps, calls or sets on a trainer beyond its public API (transformers 5.x, TRL 1.16), and what would
# stop working without a word where a later version renamed it: wrapping or setting a missing name raises nothing.
TRAINER_INTERNALS = {
    "_save_checkpoint": "checkpoints written whole or not at all (train/survival.py)",
    "_get_train_sampler": "one length-grouped batch order on every process (train/distributed.py)",
    "_prepare_inputs": "the time budget's timed steps (train/budget.py)",
    "get_batch_samples": "no step past max_steps on resume (train/common.py), MFU's reference passes",
    "_created_lr_scheduler": "the time budget's learning-rate schedule (train/budget.py)",
}
SFT_TRAINER_INTERNALS = {
    "_total_train_tokens": "metrics.jsonl's num_tokens going on after a resume (train/common.py)",
    "_track_num_input_tokens": "token counts of merged micro-batches (train/micro_batches.py)",
}


INSTANCE_ATTRIBUTES = ("_created_lr_scheduler", "_total_train_tokens")  # set in the trainers' __init__


def upstream_defines(trainer: Any, name: str) -> bool:
    """Whether transformers or TRL itself gives the trainer `name`: a method of one of their classes in its MRO (a
    subclass of tunesmith's overriding it does not count: it would go on overriding a name nothing calls), or an
    attribute their __init__ set (INSTANCE_ATTRIBUTES)."""
    if name in INSTANCE_ATTRIBUTES:
        return hasattr(trainer, name)
    return any(name in vars(cls) for cls in type(trainer).__mro__
               if cls.__module__.split(".")[0] in ("transformers", "trl"))


def check_trainer_internals(trainer: Any) -> None:
    """Refuse to train where the installed transformers or TRL lacks a name tunesmith relies on (`TRAINER_INTERNALS`),
    before anything trains, instead of training with that part silently off. Raises TunesmithError naming each
    missing name, what it is for, and the versions installed."""
    from importlib.metadata import version

    from trl import SFTTrainer

    needed = {**TRAINER_INTERNALS, **(SFT_TRAINER_INTERNALS if isinstance(trainer, SFTTrainer) else {})}
    missing = [f"{name} ({purpose})" for name, purpose in needed.items() if not upstream_defines(trainer, name)]
    if missing:
        from importlib.metadata import requires

        wanted = " ".join(f"'{r.split(';')[0].replace(' ', '')}'" for r in requires("tunesmith") or []
                          if r.split("<")[0].split(">")[0].split("=")[0].strip() in ("transformers", "trl"))
        raise TunesmithError(f"This transformers {version('transformers')} / TRL {version('trl')} trainer lacks "
                             f"{'; '.join(missing)}.",
                             f"Install the versions tunesmith is tested with: pip install {wanted} (pyproject.toml's "
                             "floors), or a tunesmith made for these.")
