"""What llama.cpp needs to know about a transformers architecture: its GGUF name, its hyperparameters,
and how its attention weights must be laid out.

Checked against gguf 0.19 and llama.cpp's own converter (`convert_hf_to_gguf.py`, `LlamaModel`):
llama.cpp runs `llama` with adjacent-pair ("NORM") RoPE, while transformers stores Q/K rows for
rotate-half RoPE, so Q and K rows are permuted for llama; qwen2/qwen3 run with NEOX RoPE and are not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import gguf
import numpy as np

from tunesmith.errors import TunesmithError


@dataclass(frozen=True)
class ArchSpec:
    """How one transformers model class is written as GGUF."""

    arch: gguf.MODEL_ARCH
    permute_qk: bool  # llama.cpp applies adjacent-pair RoPE to this architecture

    @property
    def name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]


ARCHITECTURES: dict[str, ArchSpec] = {
    "LlamaForCausalLM": ArchSpec(gguf.MODEL_ARCH.LLAMA, permute_qk=True),  # Llama 2/3, SmolLM, TinyLlama
    "MistralForCausalLM": ArchSpec(gguf.MODEL_ARCH.LLAMA, permute_qk=True),  # llama.cpp converts Mistral as llama
    "Qwen2ForCausalLM": ArchSpec(gguf.MODEL_ARCH.QWEN2, permute_qk=False),
    "Qwen3ForCausalLM": ArchSpec(gguf.MODEL_ARCH.QWEN3, permute_qk=False),
}


def arch_spec(config: Any) -> ArchSpec:
    """The GGUF layout for a checkpoint's config, or a clear error for an architecture we don't write."""
    names = list(getattr(config, "architectures", None) or [])
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    raise TunesmithError(
        f"GGUF export does not support the architecture {', '.join(names) or '(none in config.json)'}.",
        f"Supported: {', '.join(ARCHITECTURES)}. Export a merged checkpoint instead (--format merged).",
    )


def head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def rope_parameters(config: Any) -> dict[str, Any]:
    """RoPE settings whichever way the config spells them (transformers 5 `rope_parameters`, 4.x `rope_scaling`)."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return params


def add_hyperparameters(writer: gguf.GGUFWriter, config: Any) -> None:
    """The `{arch}.*` keys llama.cpp reads to build the model graph (same set as its converter writes)."""
    heads = config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim(config))
    if head_dim(config) != config.hidden_size // heads:  # e.g. Qwen3: an explicit head_dim
        writer.add_key_length(head_dim(config))
        writer.add_value_length(head_dim(config))
    add_rope_settings(writer, config)


def add_rope_settings(writer: gguf.GGUFWriter, config: Any) -> None:
    """Base frequency and scaling; scalings llama.cpp would silently run differently are refused."""
    params = rope_parameters(config)
    writer.add_rope_freq_base(float(params["rope_theta"]))
    kind = params["rope_type"]
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(params["factor"]))
    elif kind not in ("default", "llama3"):  # llama3 scaling travels as the rope_freqs tensor
        raise TunesmithError(f"GGUF export does not support rope scaling {kind!r} yet.",
                             "Export a merged checkpoint instead (--format merged).")


def llama3_rope_factors(config: Any) -> np.ndarray | None:
    """Per-frequency RoPE factors for Llama 3.1+ scaling (llama.cpp's `rope_freqs.weight`), else None.

    Same formula as llama.cpp's `LlamaModel.generate_extra_tensors`.
    """
    params = rope_parameters(config)
    if params["rope_type"] != "llama3":
        return None
    dim = head_dim(config)
    freqs = 1.0 / (float(params["rope_theta"]) ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = params.get("factor", 8.0)
    low, high = params.get("low_freq_factor", 1.0), params.get("high_freq_factor", 4.0)
    old_context = params.get("original_max_position_embeddings", 8192)
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old_context / high:
            factors.append(1.0)
        elif wavelen > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def permute_for_adjacent_rope(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder Q or K rows from rotate-half pairs (i, i+d/2) to adjacent pairs (2i, 2i+1).

    llama.cpp's `LlamaModel.permute`; transformers' GGUF loader undoes it on load.
    """
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def prepare_weights(hf_name: str, weights: np.ndarray, config: Any, spec: ArchSpec) -> np.ndarray:
    """The tensor as llama.cpp expects it: Q/K permuted for adjacent-pair RoPE architectures."""
    if not spec.permute_qk:
        return weights
    if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
        return permute_for_adjacent_rope(weights, config.num_attention_heads)
    if hf_name.endswith(("k_proj.weight", "k_proj.bias")):
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        return permute_for_adjacent_rope(weights, kv_heads)
    return weights
