"""The machine: CUDA (device, compute capability, bf16/fp16), MPS, or the CPU's SIMD features and what bf16
costs on it (measured), then free memory and free disk where models and runs are written.

bf16 is native on NVIDIA GPUs from compute capability 8.0 (Ampere) and on x86 CPUs with AVX512-BF16 or
AMX-BF16 (Cooper Lake, Sapphire Rapids); elsewhere PyTorch emulates it in fp32 and it is slower, not faster.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch

from tunesmith.doctor.report import Check
from tunesmith.models.home import tunesmith_home

SECTION = "accelerator"
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
BF16_NATIVE_FLAGS = ("avx512_bf16", "amx_bf16")
GIB = 1024**3
LOW_MEMORY_GIB = 4.0
LOW_DISK_GIB = {"model cache": 10.0, "Hub cache": 10.0, "runs folder": 5.0}


def accelerator_checks(runs_dir: Path | None = None, probe_seconds: float = 0.3) -> list[Check]:
    """The device checks, then memory and disk; `probe_seconds` bounds the CPU bf16 measurement."""
    if torch.cuda.is_available():
        checks = cuda_checks()
    elif mps_available():
        checks = [Check(name="MPS", section=SECTION, status="pass",
                        detail="Apple GPU (MPS) available; training.device: mps uses it (fp32 or fp16)")]
    else:
        checks = cpu_checks(probe_seconds)
    return [*checks, memory_check(), *disk_checks(runs_dir)]


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def cuda_checks() -> list[Check]:
    """Each GPU's name, compute capability and free memory; bf16 native from 8.0, fp16 tensor cores from 7.0."""
    checks = []
    for index in range(torch.cuda.device_count()):
        name = torch.cuda.get_device_name(index)
        major, minor = torch.cuda.get_device_capability(index)
        free, total = torch.cuda.mem_get_info(index)
        checks.append(Check(name=f"cuda:{index}", section=SECTION, status="pass",
                            detail=f"{name}, compute capability {major}.{minor}, {free / GIB:.1f} of "
                                   f"{total / GIB:.1f} GiB free"))
    major, minor = torch.cuda.get_device_capability(0)
    if major >= 8:
        checks.append(Check(name="bf16", section=SECTION, status="pass",
                            detail=f"native (compute capability {major}.{minor} ≥ 8.0); precision auto picks bf16"))
    else:
        checks.append(Check(name="bf16", section=SECTION, status="warn",
                            detail=f"not native on compute capability {major}.{minor} (needs 8.0, Ampere or newer)",
                            fix="Set training.precision: fp16 (or fp32); avoid bf16 on this GPU."))
    fp16 = "tensor cores" if major >= 7 else "supported, without tensor cores (slow)"
    checks.append(Check(name="fp16", section=SECTION, status="pass" if major >= 7 else "warn",
                        detail=f"{fp16} (compute capability {major}.{minor})"))
    return checks


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux); None where the file does not exist."""
    if not cpuinfo.is_file():
        return None
    for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.partition(":")[2].split())
    return set()


def cpu_checks(probe_seconds: float = 0.3, flags: set[str] | None = None) -> list[Check]:
    """No GPU: the SIMD features PyTorch's CPU kernels use, and whether bf16 is native, with its measured cost."""
    flags = cpu_flags() if flags is None else flags
    checks = [Check(name="device", section=SECTION, status="pass", detail="no CUDA or MPS device: training runs "
                    f"on the CPU ({os.cpu_count()} cores); `tunesmith plan` estimates how long a recipe takes here")]
    if flags is not None:
        present = [flag for flag in SIMD_FLAGS if flag in flags]
        checks.append(Check(name="SIMD", section=SECTION, status="pass" if "avx2" in flags or "asimd" in flags
                            else "warn", detail=", ".join(present) or "none of " + ", ".join(SIMD_FLAGS),
                            fix=None if "avx2" in flags or "asimd" in flags else
                            "Without AVX2 PyTorch's CPU kernels are several times slower; use a newer CPU."))
    checks.append(bf16_cpu_check(flags, probe_seconds))
    checks.append(kept_peaks_check())
    return checks


def kept_peaks_check() -> Check:
    """The matmul peaks training decides the frozen linears' dtype from (`plan/precision.py` `cpu_matmul_peaks`):
    measured once a machine and kept, so a busy minute at that measurement is kept too; say where, to measure
    again."""
    from tunesmith.plan.precision import BF16_SPEEDUP_NEEDED, machine_key, peaks_file, read_peaks

    file = peaks_file(machine_key())
    peaks = read_peaks(file)
    if peaks is None:
        return Check(name="matmul peaks", section=SECTION, status="pass",
                     detail=f"not measured yet: the first training on this machine measures them and keeps them in "
                            f"{file}")
    fp32, bf16 = peaks
    dtype = "bf16" if bf16 >= BF16_SPEEDUP_NEEDED * fp32 else "fp32"
    return Check(name="matmul peaks", section=SECTION, status="pass",
                 detail=f"fp32 {fp32 / 1e9:,.0f}, bf16 {bf16 / 1e9:,.0f} GFLOP/s, kept in {file}: a LoRA's frozen "
                        f"linears train in {dtype} under training.precision auto (delete the file to measure again, "
                        f"while nothing else runs); MFU and plan's step times read against the higher of these and "
                        f"a peak measured when they run")


def bf16_cpu_check(flags: set[str] | None, probe_seconds: float) -> Check:
    """Native or emulated (from the flags), and the measured bf16/fp32 matmul time ratio that decides it."""
    native = flags is not None and any(flag in flags for flag in BF16_NATIVE_FLAGS)
    ratio = bf16_slowdown(probe_seconds)
    kind = ("native (" + ", ".join(f for f in BF16_NATIVE_FLAGS if flags and f in flags) + ")" if native
            else "emulated (no avx512_bf16 or amx_bf16)" if flags is not None else "unknown (no /proc/cpuinfo)")
    detail = f"{kind}; a 512×512 bf16 matmul takes {ratio:.2f}× the fp32 time here"
    if ratio > 1.2:
        return Check(name="bf16 on CPU", section=SECTION, status="warn", detail=detail,
                     fix="Keep training.precision: auto or fp32 on this CPU (auto picks fp32 on CPU).")
    return Check(name="bf16 on CPU", section=SECTION, status="pass", detail=detail + "; precision auto picks fp32 "
                 "on CPU, with a LoRA's frozen base linears in bf16 (SFT, CPT, DPO, ORPO, KTO, SimPO) where bf16 "
                 "is twice as fast (see matmul peaks); training.precision: bf16 opts in to autocast")


def bf16_slowdown(seconds: float = 0.3, size: int = 512) -> float:
    """Time a `size`×`size` matmul loop for about `seconds`/2 in fp32, then as long in bf16; the time ratio."""
    per_call = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        torch.mm(a, b)  # warm-up: the first call picks kernels
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 2:
            torch.mm(a, b)
            calls += 1
        per_call[dtype] = (time.perf_counter() - start) / calls
    return per_call[torch.bfloat16] / per_call[torch.float32]


def available_memory() -> int:
    """Bytes of memory available to a new process (psutil, else /proc/meminfo's MemAvailable; 0 if unknown)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        meminfo = Path("/proc/meminfo")
        for line in meminfo.read_text().splitlines() if meminfo.is_file() else []:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def memory_check() -> Check:
    free = available_memory() / GIB
    if not free:
        return Check(name="memory", section=SECTION, status="warn", detail="could not read the free memory")
    if free < LOW_MEMORY_GIB:
        return Check(name="memory", section=SECTION, status="warn", detail=f"{free:.1f} GiB available",
                     fix="Close other programs, or train a smaller model (`tunesmith plan` estimates the peak).")
    return Check(name="memory", section=SECTION, status="pass", detail=f"{free:.1f} GiB available")


def disk_checks(runs_dir: Path | None = None) -> list[Check]:
    """Free disk where models are cached (TUNESMITH_HOME, the Hub cache) and where runs are written."""
    from huggingface_hub import constants

    folders = {"model cache": (tunesmith_home(), "Set TUNESMITH_HOME to a folder on a bigger disk."),
               "Hub cache": (Path(constants.HF_HUB_CACHE), "Set HF_HOME (or HF_HUB_CACHE) to a folder on a bigger "
                             "disk, or remove unused models with `hf cache rm model/OWNER/NAME` (`hf cache ls` "
                             "lists them)."),
               "runs folder": (runs_dir or Path("runs"), "Set runs_dir in the recipe (or --runs-dir) to a folder on "
                               "a bigger disk, or remove old runs' checkpoints/ folders.")}
    return [disk_check(name, folder, fix) for name, (folder, fix) in folders.items()]


def disk_check(name: str, folder: Path, fix: str) -> Check:
    existing = nearest_existing(folder.expanduser().absolute())
    free = shutil.disk_usage(existing).free / GIB
    status = "warn" if free < LOW_DISK_GIB[name] else "pass"
    return Check(name=name, section=SECTION, status=status, detail=f"{free:.1f} GiB free at {folder}",
                 fix=fix if status == "warn" else None)


def nearest_existing(path: Path) -> Path:
    """The folder itself, or its nearest existing parent (a cache not created yet lands there)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
