"""K-quants (Q4_K_M and friends) through llama.cpp's own quantizer, reached via llama-cpp-python.

The gguf package can only dequantize K-quants, so the model is first written as F16 by our writer and
then requantized by `llama_model_quantize`, the function behind `llama-quantize`. That keeps
llama.cpp's per-tensor choices (Q4_K_M keeps half of the attn_v and ffn_down tensors at Q6_K,
tensors whose rows are not whole 256-value blocks fall back to a legacy type) and its file metadata.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.export.verify import GGUF_EXTRA_HINT, llama_cpp_available, require_llama_cpp

K_QUANTS = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K")


def require_k_quant_support(quant: str) -> None:
    """Fail before any slow step when a K-quant is asked for and llama-cpp-python is missing."""
    if not llama_cpp_available():
        raise TunesmithError(
            f"{quant} is a K-quant: it is made by llama.cpp's own quantizer, which tunesmith reaches through "
            "llama-cpp-python, and llama-cpp-python is not installed.",
            f"{GGUF_EXTRA_HINT} Or export F16 and run llama.cpp's "
            f"`llama-quantize model.F16.gguf model.{quant}.gguf {quant}`.")


def quantize_with_llama_cpp(source: Path, target: Path, quant: str) -> None:
    """Requantize the F16/F32 GGUF at `source` to the K-quant `quant` at `target` with llama.cpp."""
    llama_cpp = require_llama_cpp(f"{quant} export")
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}")
    params.nthread = os.cpu_count() or 1
    quiet = logging.getLogger("llama-cpp-python")  # llama-cpp-python prints llama.cpp's log through it
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # one line per tensor otherwise
    try:
        code = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    finally:
        quiet.setLevel(level)
    if code != 0:
        raise TunesmithError(f"llama.cpp could not quantize {source.name} to {quant} (error code {code}).",
                             "Export F16 or Q8_0 instead, and report the model and quant type.")
