"""Which dtype a LoRA's frozen base multiplies in on this CPU (training.precision auto): the rule that training
applies (`train/frozen_matmuls.py` casts the frozen linears) and that the plan's time and memory estimates follow.

On a CPU whose bf16 matmul runs at least BF16_SPEEDUP_NEEDED times its fp32 matmul (AMX, AVX512-BF16), the frozen
base's linear layers multiply in bf16 and everything trained stays fp32; where bf16 is emulated (AVX2 CPUs such as
the AMD EPYC hosts measured) a bf16 matmul is slower than fp32, so everything stays fp32. The peaks are this
machine's, measured once (`plan/devices.py` `matmul_peak`) and kept under $TUNESMITH_HOME/hardware.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

from tunesmith.models.home import tunesmith_home
from tunesmith.plan.devices import matmul_peak

BF16_SPEEDUP_NEEDED = 2.0  # measured bf16/fp32 matmul peak ratio at or above which the frozen base runs in bf16
KINDS = ("lora", "rslora")  # DoRA reads the base weight for its norm, QLoRA's base is 4-bit already
# measured on SFT (quickstart, routing, tickets: README "Training speed"), then on the bundled CPT, DPO, ORPO, KTO and
# SimPO recipes against fp32 (`benchmarks/method_replay.py --frozen-matmuls bf16`); GRPO generates, and a reward
# model trains a head on the base: neither measured
METHODS = ("sft", "cpt", "dpo", "orpo", "kto", "simpo")
PEAK_SECONDS = 0.2  # each dtype's matmul measurement
PEAK_REPEATS = 2  # measurements of each peak; the best counts
FROZEN_COPY_MEMORY_SHARE = 0.25  # the bf16 copy of the frozen base may take this share of the free memory at most
# The frozen linears' bf16 matmuls run this share of (bf16 peak / fp32 peak) times as fast as fp32's in a training
# step: small row counts (8 x 112 tokens) keep AMX far from its peak, and each layer casts its input and output.
# Calibrated on the 2-core Xeon on whole SFT runs, whose time the plan estimates: side by side in one invocation
# (`benchmarks/train_throughput.py --datasets quickstart,tickets --variants tunesmith-fp32,tunesmith`, peaks 369 /
# 1,408 GFLOP/s), the default's steps ran 1.25x (quickstart) and 1.31x (tickets) faster than under fp32; the plan
# with 0.35 says 1.26x and 1.27x for the bundled recipes.
BF16_FROZEN_EFFICIENCY = 0.35


def frozen_matmul_choice(precision_setting: str, device: str, adapter_kind: str, method_kind: str,
                         strategy: str = "none") -> dict[str, Any]:
    """{"dtype": "bf16" or "fp32", "why": ...}: bf16 for the frozen base's linear layers on a CPU under
    training.precision auto with a LoRA (KINDS), one process (training.distributed `strategy` none: each rank would
    measure the peaks apart, while the others run), when this machine's bf16 matmul peak is at least
    BF16_SPEEDUP_NEEDED times its fp32 peak; fp32 otherwise (GPUs use mixed precision instead)."""
    if device != "cpu":
        return {"dtype": "fp32", "why": "not a CPU: the precision's own mixed precision applies"}
    if precision_setting != "auto":
        return {"dtype": "fp32", "why": f"training.precision {precision_setting} in the recipe"}
    if strategy != "none":
        return {"dtype": "fp32", "why": f"training.distributed {strategy}: one process only"}
    if method_kind not in METHODS:
        return {"dtype": "fp32", "why": f"method.kind {method_kind}: measured for {', '.join(METHODS)} only so far"}
    if adapter_kind not in KINDS:
        return {"dtype": "fp32", "why": f"adapter.kind {adapter_kind}: only lora and rslora keep plain frozen linears"}
    fp32, bf16 = cpu_matmul_peaks()
    ratio = bf16 / fp32
    figures = {"bf16_gflops": round(bf16 / 1e9, 1), "fp32_gflops": round(fp32 / 1e9, 1)}
    if ratio < BF16_SPEEDUP_NEEDED:
        return {"dtype": "fp32", **figures,
                "why": f"this CPU multiplies bf16 at {ratio:.2g}x fp32 (under {BF16_SPEEDUP_NEEDED:g}x: not native)"}
    return {"dtype": "bf16", **figures,
            "why": f"auto: this CPU multiplies bf16 at {ratio:.2g}x fp32, so the frozen base's linear layers run in "
                   f"bf16; the adapter, norms, attention, LM head and loss stay fp32 (training.precision: fp32 to "
                   f"keep all in fp32)"}


def frozen_copy_refusal(copy_bytes: float, free_bytes: float) -> str | None:
    """Why the bf16 copy of the frozen linears (`copy_bytes`, beside the fp32 weights kept aside) is not made: it
    would take over FROZEN_COPY_MEMORY_SHARE of `free_bytes`; None where it fits (or the free memory is unknown, 0)."""
    if not free_bytes or copy_bytes <= FROZEN_COPY_MEMORY_SHARE * free_bytes:
        return None
    return (f"the bf16 copy of the frozen weights ({copy_bytes / 2**30:.1f} GiB) would take over "
            f"{FROZEN_COPY_MEMORY_SHARE:.0%} of the {free_bytes / 2**30:.1f} GiB free")


def frozen_matmul_speedup(choice: dict[str, Any]) -> float:
    """How many times as fast as in fp32 the frozen linears' FLOPs run under `choice` (`frozen_matmul_choice`): 1 for
    fp32; for bf16, BF16_FROZEN_EFFICIENCY x the measured bf16/fp32 peak ratio, at least 1."""
    if choice["dtype"] != "bf16":
        return 1.0
    return max(1.0, BF16_FROZEN_EFFICIENCY * choice["bf16_gflops"] / choice["fp32_gflops"])


@functools.cache
def cpu_matmul_peaks() -> tuple[float, float]:
    """This CPU's fp32 and bf16 matmul peaks in FLOP/s, measured once a machine and kept in
    $TUNESMITH_HOME/hardware/ under `machine_key` (the CPU model, torch's version and thread count): every run on
    this machine then makes the same frozen-matmul choice, so the same recipe, data and seed give the same weights,
    where a measurement each run (one busy second reads 2.5x slower here) flipped it now and then. Each peak is the
    best of PEAK_REPEATS measurements. Delete the file to measure again; where it cannot be written, each process
    measures."""
    file = peaks_file(machine_key())
    kept = read_peaks(file)
    if kept is not None:
        return kept
    import torch

    peaks = tuple(max(matmul_peak(dtype, seconds=PEAK_SECONDS) for _ in range(PEAK_REPEATS))
                  for dtype in (torch.float32, torch.bfloat16))
    keep_first_peaks(file, {"machine": machine_key(), "fp32_flops": peaks[0], "bf16_flops": peaks[1]})
    return read_peaks(file) or (peaks[0], peaks[1])


def best_known_peak(dtype: str, measured: float) -> float:
    """A CPU matmul peak just measured (FLOP/s; `dtype` "fp32" or "bf16"), or this machine's kept one
    (`cpu_matmul_peaks`' file, read, never measured here) where that is higher. A peak is the fastest the machine
    has shown, and a fraction of a second measured while another process shares the cores reads 2-3x low: plan's
    step time and the MFU `train` reports rest on the higher of the two, not on whichever second each measured."""
    kept = read_peaks(peaks_file(machine_key()))
    return measured if kept is None else max(measured, kept[0 if dtype == "fp32" else 1])


def peaks_file(key: str) -> Path:
    return tunesmith_home() / "hardware" / f"cpu-matmul-peaks-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"


def machine_key() -> str:
    """What the matmul peaks depend on: the CPU's model name (/proc/cpuinfo, else `platform.processor()`), torch's
    version and its thread count."""
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in
             (cpuinfo.read_text(errors="replace").splitlines() if cpuinfo.is_file() else [])
             if line.startswith("model name")]
    cpu = names[0] if names else platform.processor() or platform.machine()
    return f"{cpu} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def read_peaks(file: Path) -> tuple[float, float] | None:
    try:
        kept = json.loads(file.read_text(encoding="utf-8"))
        return float(kept["fp32_flops"]), float(kept["bf16_flops"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def keep_first_peaks(file: Path, peaks: dict[str, Any]) -> None:
    """Write `file` unless another process wrote it first (a hard link does not replace an existing file), so that
    processes measuring at once all use the first result. Nothing where the folder cannot be written."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=file.parent, suffix=".tmp", delete=False) as draft:
            json.dump(peaks, draft)
        try:
            os.link(draft.name, file)
        except FileExistsError:
            pass
        finally:
            os.unlink(draft.name)
    except OSError:
        pass
