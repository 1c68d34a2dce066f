"""Write a transformers checkpoint as a GGUF file that llama.cpp and Ollama load, in pure Python.

No llama.cpp checkout: the `gguf` package (0.19) provides the writer, the HF→GGUF tensor names and
numpy quantizers for F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1. K-quants need llama.cpp's own
quantizer. Tensors are converted and written one at a time (tensor infos first, data after), so memory
stays near one tensor, and the file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from tunesmith.errors import TunesmithError
from tunesmith.export.gguf_arch import ArchSpec, add_hyperparameters, arch_spec, llama3_rope_factors, prepare_weights
from tunesmith.export.gguf_vocab import add_bpe_tokenizer

Q = gguf.GGMLQuantizationType
QUANT_TYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "F32": (Q.F32, gguf.LlamaFileType.ALL_F32),
    "F16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "BF16": (Q.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "Q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "Q4_0": (Q.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
    "Q4_1": (Q.Q4_1, gguf.LlamaFileType.MOSTLY_Q4_1),
    "Q5_0": (Q.Q5_0, gguf.LlamaFileType.MOSTLY_Q5_0),
    "Q5_1": (Q.Q5_1, gguf.LlamaFileType.MOSTLY_Q5_1),
}
K_QUANTS = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K")
LOW_BIT = {Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1}
SKIPPED_SUFFIXES = ("rotary_emb.inv_freq",)  # recomputed by llama.cpp, never serialised


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor of the output file: where it comes from, its GGUF name, shape (torch order) and type."""

    source: str | None  # checkpoint tensor name; None for tensors we compute (rope_freqs)
    name: str
    shape: tuple[int, ...]
    qtype: gguf.GGMLQuantizationType


def write_gguf(model_dir: Path, out_path: Path, quant: str = "F16", name: str | None = None) -> Path:
    """Convert the checkpoint in `model_dir` (safetensors + tokenizer) to a GGUF file at `out_path`."""
    from transformers import AutoConfig

    model_dir, out_path = Path(model_dir), Path(out_path)
    qtype, file_type = parse_quant(quant)
    config = AutoConfig.from_pretrained(model_dir)
    spec = arch_spec(config)
    shards = checkpoint_shards(model_dir)
    plan = plan_tensors(shards, config, spec, qtype)
    writer = gguf.GGUFWriter(None, spec.name)
    add_general_metadata(writer, name or model_dir.name, file_type)
    add_hyperparameters(writer, config)
    add_bpe_tokenizer(writer, model_dir, config.vocab_size)
    for planned in plan:
        add_tensor_info(writer, planned)
    with atomic_output(out_path) as tmp:
        write_file(writer, tmp, plan, shards, config, spec)
    return out_path


def parse_quant(quant: str) -> tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]:
    """The tensor type and file type for a quant name; K-quants get a pointer to what can make them."""
    key = quant.upper()
    if key in QUANT_TYPES:
        return QUANT_TYPES[key]
    if key in K_QUANTS:
        raise TunesmithError(
            f"{key} is a K-quant, which the pure-Python writer cannot produce (gguf can only dequantize it).",
            "K-quants need llama.cpp's quantizer: install llama-cpp-python (pip install tunesmith[gguf]), or write "
            "F16 and run `llama-quantize model-F16.gguf model-Q4_K_M.gguf Q4_K_M`. Q8_0 needs nothing extra.",
        )
    raise TunesmithError(f"Unknown GGUF quant type {quant!r}.", f"Use one of {', '.join(QUANT_TYPES)}.")


def add_general_metadata(writer: gguf.GGUFWriter, name: str, file_type: gguf.LlamaFileType) -> None:
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def checkpoint_shards(model_dir: Path) -> dict[str, Path]:
    """Which safetensors file holds each tensor (single file or sharded with an index)."""
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return {tensor: model_dir / file for tensor, file in weight_map.items()}
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise TunesmithError(f"No safetensors weights in {model_dir}.",
                             "Save the model with save_pretrained(safe_serialization=True) first.")
    with safe_open(single, framework="pt") as handle:
        return dict.fromkeys(handle.keys(), single)


def plan_tensors(shards: dict[str, Path], config: Any, spec: ArchSpec,
                 qtype: gguf.GGMLQuantizationType) -> list[PlannedTensor]:
    """Every tensor the file will hold, named with gguf's own name map, with its output type."""
    name_map = gguf.get_tensor_name_map(spec.arch, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    plan = []
    for source in shards:
        if source.endswith(SKIPPED_SUFFIXES) or (tied and source == "lm_head.weight"):
            continue  # tied: llama.cpp reuses token_embd as the output head when output.weight is absent
        name = name_map.get_name(source, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise TunesmithError(f"No GGUF name for tensor {source!r} of a {spec.name} model.",
                                 "This checkpoint has layers llama.cpp's llama/qwen graphs do not use.")
        shape = tensor_shape(shards[source], source)
        head = name == "output.weight" or (tied and name == "token_embd.weight")
        plan.append(PlannedTensor(source, name, shape, tensor_qtype(shape, qtype, is_output_head=head)))
    if not tied and "lm_head.weight" not in shards:
        raise TunesmithError("The config says the output head is untied, but the checkpoint has no lm_head.weight.",
                             "Re-save the model with save_pretrained.")
    factors = llama3_rope_factors(config)
    if factors is not None:
        plan.append(PlannedTensor(None, gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                                  factors.shape, Q.F32))
    return plan


def tensor_shape(shard: Path, name: str) -> tuple[int, ...]:
    from safetensors import safe_open

    with safe_open(shard, framework="pt") as handle:
        return tuple(handle.get_slice(name).get_shape())


def tensor_qtype(shape: tuple[int, ...], requested: gguf.GGMLQuantizationType,
                 is_output_head: bool) -> gguf.GGMLQuantizationType:
    """The type one tensor is stored in, following llama.cpp's converter and quantizer.

    Norms and biases (1-D) stay F32. The output head is kept at Q8_0 under 4/5-bit types, as
    llama-quantize keeps it at a higher precision too. Rows that are not a whole number of quant
    blocks fall back to F16, as llama.cpp's converter does.
    """
    if len(shape) <= 1:
        return Q.F32
    if requested in LOW_BIT and is_output_head:
        requested = Q.Q8_0
    block_size, _ = gguf.GGML_QUANT_SIZES[requested]
    return requested if shape[-1] % block_size == 0 else Q.F16


def add_tensor_info(writer: gguf.GGUFWriter, planned: PlannedTensor) -> None:
    """Declare a tensor before its data exists, so tensors can be converted one at a time later."""
    byte_shape = gguf.quants.quant_shape_to_byte_shape(planned.shape, planned.qtype)
    writer.add_tensor_info(planned.name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)),
                           raw_dtype=planned.qtype)


def write_file(writer: gguf.GGUFWriter, path: Path, plan: list[PlannedTensor], shards: dict[str, Path],
               config: Any, spec: ArchSpec) -> None:
    """Header, metadata and tensor table, then each tensor's data in plan order, with a progress bar."""
    from rich.console import Console
    from rich.progress import track

    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    try:
        for planned in track(plan, description=f"writing {path.name.split('.tmp')[0].lstrip('.')}",
                             console=Console(file=sys.stderr), transient=True):
            weights = load_weights(planned, shards, config, spec)
            writer.write_tensor_data(gguf.quants.quantize(weights, planned.qtype))
    finally:
        writer.close()


def load_weights(planned: PlannedTensor, shards: dict[str, Path], config: Any, spec: ArchSpec) -> np.ndarray:
    """One tensor as float32 numpy in llama.cpp's layout (bf16/f16 checkpoints are widened first)."""
    from safetensors import safe_open

    if planned.source is None:
        return llama3_rope_factors(config)
    with safe_open(shards[planned.source], framework="pt") as handle:
        weights = handle.get_tensor(planned.source).float().numpy()
    return np.ascontiguousarray(prepare_weights(planned.source, weights, config, spec))


class atomic_output:  # noqa: N801 - used as a context manager, reads like `with atomic_output(...)`
    """A temporary path next to `path`; renamed onto `path` on success, removed on failure."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
