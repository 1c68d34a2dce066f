"""Several processes: what this machine offers for `tunesmith train --nproc N`, and whether the recipe's
training.distributed can run here.

Facts used: torch.distributed's backends (gloo on CPUs, NCCL on NVIDIA GPUs: torch.distributed docs, "Backends");
accelerate runs FSDP and DeepSpeed only on GPUs (accelerate/state.py turns both off when training on the CPU);
DeepSpeed is the `distributed` extra.
"""

from __future__ import annotations

import importlib.util

import torch

from tunesmith.config import Recipe
from tunesmith.doctor.report import Check

SECTION = "several processes"


def distributed_checks(recipe: Recipe | None = None) -> list[Check]:
    """The backend for this machine's devices, how many processes `--nproc` can use, DeepSpeed, and (with a
    recipe) whether its training.distributed strategy can run here."""
    import torch.distributed as dist

    if not dist.is_available():
        return [Check(name="torch.distributed", section=SECTION, status="warn",
                      detail="this PyTorch build has no torch.distributed: one process only",
                      fix="Install a PyTorch build with distributed support (the PyPI wheels have it).")]
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    checks = [backend_check(gpus), deepspeed_check()]
    if recipe is not None:
        checks.append(strategy_check(recipe, gpus))
    return checks


def backend_check(gpus: int) -> Check:
    import torch.distributed as dist

    if gpus:
        ok = dist.is_nccl_available()
        return Check(name="backend", section=SECTION, status="pass" if ok else "warn",
                     detail=f"{gpus} CUDA GPU(s), NCCL {'available' if ok else 'missing'}: --nproc up to {gpus}",
                     fix=None if ok else "Install a CUDA build of PyTorch (it ships NCCL).")
    ok = dist.is_gloo_available()
    return Check(name="backend", section=SECTION, status="pass" if ok else "warn",
                 detail=("no GPU: --nproc N trains with DDP over gloo on the CPU cores (each process gets "
                         f"1/N of them); gloo {'available' if ok else 'missing'}"),
                 fix=None if ok else "Install a PyTorch build with gloo (the PyPI wheels have it).")


def deepspeed_check() -> Check:
    if importlib.util.find_spec("deepspeed") is None:
        return Check(name="DeepSpeed", section=SECTION, status="pass",
                     detail="not installed (needed only for training.distributed: deepspeed-zero2/3, with "
                            "pip install 'tunesmith[distributed]')")
    from importlib import metadata

    return Check(name="DeepSpeed", section=SECTION, status="pass", detail=f"deepspeed {metadata.version('deepspeed')}")


def strategy_check(recipe: Recipe, gpus: int) -> Check:
    """Can the recipe's strategy run on this machine (the same rules `train --nproc` applies)?"""
    strategy = recipe.training.distributed.strategy
    name = "training.distributed"
    if strategy == "none":
        return Check(name=name, section=SECTION, status="pass", detail="none: one process")
    if strategy != "ddp" and not gpus:
        return Check(name=name, section=SECTION, status="fail",
                     detail=f"{strategy} runs on CUDA GPUs only, and this machine has none",
                     fix="Use training.distributed: ddp on a CPU, or train on a machine with GPUs.")
    if strategy.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        return Check(name=name, section=SECTION, status="fail", detail=f"{strategy} needs DeepSpeed, not installed",
                     fix="pip install 'tunesmith[distributed]'.")
    return Check(name=name, section=SECTION, status="pass",
                 detail=f"{strategy}: launch with tunesmith train RECIPE --nproc N")
