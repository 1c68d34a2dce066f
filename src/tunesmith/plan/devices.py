"""The device a plan is for: how much memory it offers and how fast it multiplies matrices.

The local CPU or GPU is measured on the spot (free memory; a short matmul probe). A named GPU comes from a
catalogue of dense bf16 tensor-core peaks and memory sizes (NVIDIA's data sheets, no sparsity), and
`cuda:24GB` states the memory directly.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from typing import Any

from tunesmith.errors import RecipeError

GIB = 2**30
# name: (memory GiB, dense bf16 TFLOP/s; fp16 where the card has no bf16), from NVIDIA's product data sheets
CATALOGUE: dict[str, tuple[float, float]] = {
    "t4": (16, 65), "v100-16gb": (16, 125), "v100-32gb": (32, 125), "a10g": (24, 125), "l4": (24, 121),
    "rtx3090": (24, 71), "rtx4090": (24, 165), "a6000": (48, 155), "l40s": (48, 362), "a100-40gb": (40, 312),
    "a100-80gb": (80, 312), "h100-80gb": (80, 989), "h200": (141, 989),
}
# Before Ampere: no bf16, so training.precision auto trains in fp32 there; their dense fp32 TFLOP/s (NVIDIA's data
# sheets: T4 8.1, V100 SXM2 15.7), what such a run multiplies at, not the fp16 tensor-core peak above
NO_BF16 = {"t4": 8.1, "v100-16gb": 15.7, "v100-32gb": 15.7}
# The share of the matmul peak that training reaches, counting every pass the plan counts (the replay anchor's
# included, which train.json's MFU leaves out). CPU: 0.5, from whole SmolLM2 LoRA runs on the 2-core Xeon
# (benchmarks/results/train_throughput_{frozen_vs_fp32,fused_lora,spread_fused_lora,spread_anchor_share}.json,
# `step_seconds` against `plan_step_seconds`): at 0.4 the plan said 1.13-1.63x the measured step (fp32 and frozen
# bf16, fused and PEFT's LoRA layers, quickstart, tickets and spread rows); at 0.5 it says 0.91-1.31x, 1.05x at the
# median. (0.4 was fitted to 0.37-0.48 on fp32 runs before fused LoRA layers and the lighter replay anchor.)
# GPU and MPS: assumptions until measured on one.
TRAINING_EFFICIENCY = {"cpu": 0.5, "cuda": 0.35, "mps": 0.2}


@dataclass(frozen=True)
class Device:
    """What the plan is sized against. `memory_bytes`: usable for training (free RAM on a CPU, the card's memory
    on a GPU); `peak_flops`: dense matmul FLOP/s in the training dtype."""

    name: str
    kind: str  # cpu | cuda | mps
    memory_bytes: float
    peak_flops: float
    measured: bool  # memory and speed read on this machine (else from the catalogue or the spec)
    processes: int = 1  # training processes (one per GPU; on a CPU they share the machine's memory)
    peak_assumed: bool = False  # a GPU given by its size: its speed is default_peak's, not the card's
    bf16: bool = True  # a GPU that computes in bf16 (Ampere and later): training.precision auto trains there in bf16

    def for_processes(self, processes: int, per_node: int) -> Device:
        """The device as one of `processes` training processes sees it: on a CPU the `per_node` processes of one
        machine share its memory, so each gets 1/per_node of it; a GPU is one process's own."""
        memory = self.memory_bytes / per_node if self.kind == "cpu" else self.memory_bytes
        name = self.name if processes == 1 else f"{self.name}, {processes} processes"
        return replace(self, name=name, memory_bytes=memory, processes=processes)

    @property
    def efficiency(self) -> float:
        return TRAINING_EFFICIENCY[self.kind]


def resolve_device(spec: str = "auto") -> Device:
    """`auto` | `cpu` | `cuda` | `mps` (this machine), `cuda:24GB` (a GPU of that memory), or a catalogue name.

    Raises RecipeError for a spec it cannot read, naming the catalogue."""
    spec = spec.strip().lower()
    if spec == "auto":
        import torch

        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return local_cpu()
    if spec in ("cuda", "mps"):
        return local_accelerator(spec)
    if spec in CATALOGUE:
        memory, tflops = CATALOGUE[spec]
        return Device(spec, "cuda", memory * GIB, NO_BF16.get(spec, tflops) * 1e12, measured=False,
                      bf16=spec not in NO_BF16)
    sized = re.fullmatch(r"(cuda|mps|cpu):(\d+(?:\.\d+)?)\s*gb", spec)
    if sized:
        kind, gigabytes = sized.group(1), float(sized.group(2))
        return Device(spec, kind, gigabytes * GIB, default_peak(kind), measured=False, peak_assumed=kind != "cpu")
    raise RecipeError(f"Unknown device {spec!r} for the plan.",
                      "Use cpu, cuda, mps, cuda:24GB (any size), or one of: " + ", ".join(CATALOGUE) + ".")


def local_cpu() -> Device:
    import psutil

    return Device("cpu (this machine)", "cpu", float(psutil.virtual_memory().available), matmul_peak(seconds=0.3),
                  measured=True)


def local_accelerator(kind: str) -> Device:
    import torch

    if kind == "cuda":
        if not torch.cuda.is_available():
            raise RecipeError("--device cuda, but this machine has no CUDA GPU that torch can use.",
                              "Plan for a named GPU instead (e.g. --device rtx4090 or --device cuda:24GB).")
        total = float(torch.cuda.mem_get_info()[1])
        bf16 = torch.cuda.is_bf16_supported()
        dtype = torch.bfloat16 if bf16 else torch.float32  # without bf16, auto trains in fp32
        return Device(torch.cuda.get_device_name(), "cuda", total, matmul_peak(dtype, "cuda", 0.3, 4096), True,
                      bf16=bf16)
    if not torch.backends.mps.is_available():
        raise RecipeError("--device mps, but this machine has no Apple GPU that torch can use.",
                          "Plan for --device mps:16GB (your Mac's unified memory) instead.")
    import psutil

    return Device("mps (this machine)", "mps", float(psutil.virtual_memory().total) * 0.75, default_peak("mps"), True)


def default_peak(kind: str) -> float:
    """A stated-size device's speed: the catalogue's median GPU, a laptop-class Apple GPU, or this CPU."""
    return {"cuda": 165e12, "mps": 10e12}.get(kind) or matmul_peak(seconds=0.3)


def matmul_peak(dtype: Any = None, device: str = "cpu", seconds: float = 0.5, size: int | None = None) -> float:
    """This machine's dense matmul FLOP/s in `dtype` (default fp32), with torch's current thread count.

    Square `size` matmuls (2·n³ FLOPs each; default 1,024 on a CPU, 8,192 on a GPU, where smaller ones measure
    the launch overhead) run for about `seconds` after one warm-up, timed in five windows;
    the fastest window counts (a peak: a thread pool waking up or another process's burst only slows some).
    A busy machine still measures lower; measure when nothing else runs.
    """
    import torch

    dtype = dtype or torch.float32
    size = size or (1024 if device == "cpu" else 8192)
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    a @ b
    best = 0.0
    for _ in range(5):
        count, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds / 5 or count < 2:
            a @ b
            count += 1
            if device != "cpu":
                torch.cuda.synchronize()
        best = max(best, 2.0 * size**3 * count / elapsed)
    return best


def own_peak_rss_bytes() -> float:
    """This process's peak resident memory: VmHWM from /proc/self/status on Linux, else `ru_maxrss`.

    On Linux `ru_maxrss` is no use for a process started by fork and exec from a large parent: exec keeps the
    pre-exec (the parent's copied) memory's high-water mark, so a small child reports its parent's size. VmHWM
    belongs to the memory map exec made, the child's own.
    """
    import resource
    import sys
    from pathlib import Path

    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) * 1024  # kB
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(rss if sys.platform == "darwin" else rss * 1024)


def own_peaks() -> dict[str, float | None]:
    """This process's peak resident memory (`own_peak_rss_bytes`) and, where it used CUDA, the peak of
    `torch.cuda.max_memory_allocated` (what the plan's GPU estimate is sized against), both in bytes."""
    import sys

    torch = sys.modules.get("torch")  # never import torch only to ask
    cuda = torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized()
    return {"rss_bytes": own_peak_rss_bytes(),
            "cuda_bytes": float(torch.cuda.max_memory_allocated()) if cuda else None}


# Runs `tunesmith ARGS...` and writes its own peaks (own_peaks, JSON) to the file named first
PEAK_REPORTING_CHILD = (
    "import atexit, json, runpy, sys\n"
    "from tunesmith.plan.devices import own_peaks\n"
    "out = sys.argv.pop(1)\n"
    "atexit.register(lambda: open(out, 'w').write(json.dumps(own_peaks())))\n"
    "sys.argv[0] = 'tunesmith'\n"
    "runpy.run_module('tunesmith', run_name='__main__', alter_sys=True)\n")


def peaks_of_tunesmith(args: list[str], work_dir: Any) -> tuple[dict[str, float | None], int, str]:
    """Run `tunesmith ARGS` in a subprocess; its peaks (`own_peaks`: `rss_bytes`, `cuda_bytes`), exit code and
    the tail of its stderr. The peaks are 0/None when it died before exiting normally."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    report = Path(work_dir) / f"peak-{time.monotonic_ns()}.json"
    done = subprocess.run([sys.executable, "-c", PEAK_REPORTING_CHILD, str(report), *args],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks = json.loads(report.read_text()) if report.is_file() else {"rss_bytes": 0.0, "cuda_bytes": None}
    return peaks, done.returncode, done.stderr[-2000:]


def peak_rss_of_tunesmith(args: list[str], work_dir: Any) -> tuple[float, int, str]:
    """Run `tunesmith ARGS` in a subprocess; its peak RSS in bytes, exit code and the tail of its stderr."""
    peaks, code, tail = peaks_of_tunesmith(args, work_dir)
    return float(peaks["rss_bytes"] or 0.0), code, tail
