"""K-quants (Q4_K_M and friends) through llama.cpp's own quantizer, reached via llama-cpp-python.

The gguf package can only dequantize K-quants, so the model is first written as F16 by our writer and
then requantized by `llama_model_quantize`, the function behind `llama-quantize`. That keeps
llama.cpp's per-tensor choices (Q4_K_M raises some attn_v and ffn_down tensors to Q6_K; a tensor whose
rows are not whole 256-value blocks falls back to a legacy type such as Q5_0) and its file metadata.
The quantizer runs in a child process (`python -m tunesmith.export.gguf_quantize`): it writes one log
line per tensor straight to stderr, which is kept for the error message instead, and a crash inside
llama.cpp cannot take the export down with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.export.verify import GGUF_EXTRA_HINT, llama_cpp_available

K_QUANTS = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K")
K_TYPE_NAMES = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}


def require_k_quant_support(quant: str) -> None:
    """Fail before any slow step when a K-quant is asked for and llama-cpp-python is missing."""
    if not llama_cpp_available():
        raise TunesmithError(
            f"{quant} is a K-quant: it is made by llama.cpp's own quantizer, which tunesmith reaches through "
            "llama-cpp-python, and llama-cpp-python is not installed.",
            f"{GGUF_EXTRA_HINT} Or export F16 and run llama.cpp's "
            f"`llama-quantize model.F16.gguf model.{quant}.gguf {quant}`.")


def quantize_with_llama_cpp(source: Path, target: Path, quant: str) -> None:
    """Requantize the F16/F32 GGUF at `source` to the K-quant `quant` at `target`, then say what it holds."""
    require_k_quant_support(quant)
    command = [sys.executable, "-m", "tunesmith.export.gguf_quantize", str(source), str(target), quant]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        log = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
        raise TunesmithError(f"llama.cpp could not quantize {source.name} to {quant} (exit code "
                             f"{done.returncode}):\n{log}", "Export F16 or Q8_0 instead, and report the model.")
    print(f"{quant}: {type_summary(target)}", file=sys.stderr)


def type_summary(path: Path) -> str:
    """How many weight matrices llama.cpp stored in each type, naming the fallbacks from K-quants."""
    import gguf

    counts = Counter(t.tensor_type.name for t in gguf.GGUFReader(path).tensors if len(t.shape) > 1)
    parts = ", ".join(f"{count} {name}" for name, count in counts.most_common())
    fallback = sum(count for name, count in counts.items() if name not in K_TYPE_NAMES)
    note = (f"; {fallback} of {sum(counts.values())} fell back to a legacy type because their rows are not "
            "whole 256-value K-quant blocks") if fallback else ""
    return f"weight matrices stored as {parts}{note}"


def main(source: str, target: str, quant: str) -> int:
    """The child process: one llama_model_quantize call; its return code is the exit code."""
    import ctypes

    import llama_cpp

    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}")
    params.nthread = os.cpu_count() or 1
    return int(llama_cpp.llama_model_quantize(source.encode(), target.encode(), ctypes.byref(params)))


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
