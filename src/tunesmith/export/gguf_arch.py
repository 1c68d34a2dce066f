"""What llama.cpp needs to know about a transformers architecture: its GGUF name, its hyperparameters,
and how its attention weights must be laid out.

Checked against gguf 0.19 and llama.cpp's own converter (`convert_hf_to_gguf.py`, `LlamaModel`):
llama.cpp runs `llama` with adjacent-pair ("NORM") RoPE, while transformers stores Q/K rows for
rotate-half RoPE, so Q and K rows are permuted for llama; qwen2/qwen3 and the Gemmas run with NEOX RoPE and
are not.

Gemma, Gemma 2 and Gemma 3 (text) follow the converter's `GemmaModel`, `Gemma2Model` and `Gemma3Model`: their
RMSNorms scale by (1 + weight), so 1 is added to every norm weight; Gemma 2 carries its logit soft-capping and
sliding window. llama.cpp fixes what the config could vary (llama-model.cpp): the attention scale
1/sqrt(head_dim) (1/sqrt(hidden/heads) for the 27B sizes), the sliding/full layer pattern (every 2nd layer full in
Gemma 2, every 6th in Gemma 3) and Gemma 3's local RoPE base 10000; a config that differs is refused
(`check_llama_cpp_runs_it`) rather than written into a file llama.cpp would run differently.
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
    norm_shift: float = 0.0  # added to RMSNorm weights: Gemma's norms scale by (1 + weight), llama.cpp's by weight

    @property
    def name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]


ARCHITECTURES: dict[str, ArchSpec] = {
    "LlamaForCausalLM": ArchSpec(gguf.MODEL_ARCH.LLAMA, permute_qk=True),  # Llama 2/3, SmolLM, TinyLlama
    "MistralForCausalLM": ArchSpec(gguf.MODEL_ARCH.LLAMA, permute_qk=True),  # llama.cpp converts Mistral as llama
    "Qwen2ForCausalLM": ArchSpec(gguf.MODEL_ARCH.QWEN2, permute_qk=False),
    "Qwen3ForCausalLM": ArchSpec(gguf.MODEL_ARCH.QWEN3, permute_qk=False),
    "GemmaForCausalLM": ArchSpec(gguf.MODEL_ARCH.GEMMA, permute_qk=False, norm_shift=1.0),
    "Gemma2ForCausalLM": ArchSpec(gguf.MODEL_ARCH.GEMMA2, permute_qk=False, norm_shift=1.0),
    "Gemma3ForCausalLM": ArchSpec(gguf.MODEL_ARCH.GEMMA3, permute_qk=False, norm_shift=1.0),  # 270M, 1B (text)
}
# llama.cpp's fixed layout of sliding-window layers (llama-model.cpp `set_swa_pattern`): every n-th layer attends
# in full, the others within the sliding window; and the layer count of the sizes it scales attention differently.
SLIDING_PATTERN = {gguf.MODEL_ARCH.GEMMA2: 2, gguf.MODEL_ARCH.GEMMA3: 6}
HIDDEN_PER_HEAD_SCALE_LAYERS = {gguf.MODEL_ARCH.GEMMA2: 46, gguf.MODEL_ARCH.GEMMA3: 62}  # the 27B models
GEMMA3_LOCAL_ROPE_THETA = 10000.0


def arch_spec(config: Any) -> ArchSpec:
    """The GGUF layout for a checkpoint's config, or a clear error for an architecture we don't write (or a
    config llama.cpp would run differently, `check_llama_cpp_runs_it`)."""
    names = list(getattr(config, "architectures", None) or [])
    for name in names:
        if name in ARCHITECTURES:
            check_llama_cpp_runs_it(config, ARCHITECTURES[name])
            return ARCHITECTURES[name]
    raise TunesmithError(
        f"GGUF export does not support the architecture {', '.join(names) or '(none in config.json)'}.",
        f"Supported: {', '.join(ARCHITECTURES)}. Export a merged checkpoint instead (--format merged).",
    )


def check_llama_cpp_runs_it(config: Any, spec: ArchSpec) -> None:
    """Refuse a Gemma config whose attention scale, sliding-window layout or local RoPE differs from what
    llama.cpp hard-codes for the architecture: the file would load and answer differently from the model."""
    if spec.arch not in SLIDING_PATTERN:
        return
    problems = []
    heads, layers = config.num_attention_heads, config.num_hidden_layers
    scale = config.hidden_size // heads if layers == HIDDEN_PER_HEAD_SCALE_LAYERS[spec.arch] else head_dim(config)
    if getattr(config, "query_pre_attn_scalar", scale) != scale:
        problems.append(f"query_pre_attn_scalar {config.query_pre_attn_scalar} (llama.cpp scales attention by "
                        f"1/sqrt({scale}) for this size)")
    pattern = SLIDING_PATTERN[spec.arch]
    expected = ["full_attention" if (index + 1) % pattern == 0 else "sliding_attention" for index in range(layers)]
    layer_types = list(getattr(config, "layer_types", None) or expected)
    if getattr(config, "sliding_window", None) and layer_types != expected:
        problems.append(f"layer_types {layer_types} (llama.cpp attends in full on every {pattern}th layer only)")
    local = (getattr(config, "rope_parameters", None) or {}).get("sliding_attention")
    if spec.arch == gguf.MODEL_ARCH.GEMMA3 and local and (local.get("rope_type", "default") != "default" or
                                                          float(local.get("rope_theta")) != GEMMA3_LOCAL_ROPE_THETA):
        problems.append(f"sliding-window RoPE {local} (llama.cpp runs them with the default RoPE, base 10000)")
    if problems:
        raise TunesmithError(f"GGUF export: llama.cpp would run this {spec.name} model differently: "
                             + "; ".join(problems) + ".",
                             "Export a merged checkpoint instead (--format merged) and serve it with transformers "
                             "or vLLM.")


def head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def rope_parameters(config: Any) -> dict[str, Any]:
    """RoPE settings whichever way the config spells them (transformers 5 `rope_parameters`, 4.x `rope_scaling`);
    for a model with settings per layer type (Gemma 3), those of its full-attention layers, which GGUF's
    rope keys describe."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    params = dict(params.get("full_attention", params))
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
    add_gemma_settings(writer, config)


def add_gemma_settings(writer: gguf.GGUFWriter, config: Any) -> None:
    """Gemma 2/3's logit soft-capping and sliding window (the keys llama.cpp's converter writes for them)."""
    if getattr(config, "attn_logit_softcapping", None):
        writer.add_attn_logit_softcapping(float(config.attn_logit_softcapping))
    if getattr(config, "final_logit_softcapping", None):
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
    if getattr(config, "sliding_window", None) and "sliding_attention" in (getattr(config, "layer_types", None) or []):
        writer.add_sliding_window(int(config.sliding_window))


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
    """The tensor as llama.cpp expects it: Q/K permuted for adjacent-pair RoPE architectures, Gemma's norm
    weights shifted by one."""
    if spec.norm_shift and hf_name.endswith("norm.weight"):
        return weights + np.float32(spec.norm_shift)
    if not spec.permute_qk:
        return weights
    if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
        return permute_for_adjacent_rope(weights, config.num_attention_heads)
    if hf_name.endswith(("k_proj.weight", "k_proj.bias")):
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        return permute_for_adjacent_rope(weights, kv_heads)
    return weights
