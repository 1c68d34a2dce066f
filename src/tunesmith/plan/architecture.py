"""What a memory plan needs to know about a model, read from its config alone (no weights are loaded).

The model is built on PyTorch's meta device (accelerate's `init_empty_weights`), which gives every parameter's
shape for any architecture transformers knows, at no memory cost; a Hub id needs only its `config.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import ModelSourceError


@dataclass(frozen=True)
class LinearLayer:
    """One linear layer inside the transformer blocks, by its leaf name (q_proj, down_proj...)."""

    name: str
    block: int
    in_features: int
    out_features: int


@dataclass(frozen=True)
class Architecture:
    """Sizes of a causal LM, counted on its meta-device twin. `parameters` counts a tied matrix once."""

    model_type: str
    parameters: int
    embedding_parameters: int  # input embeddings (and the LM head when it is a separate matrix)
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    layers: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    tied_embeddings: bool
    weights_file_dtype: str  # the checkpoint's torch_dtype (what the weights files hold)
    max_positions: int | None = None  # the longest sequence the position embeddings cover (config)
    linears: list[LinearLayer] = field(default_factory=list)

    @property
    def block_linear_parameters(self) -> int:
        return sum(layer.in_features * layer.out_features for layer in self.linears)

    @property
    def kv_width(self) -> int:
        """Width of one key (or value) projection: kv_heads x head_dim."""
        return self.kv_heads * self.head_dim


def read_architecture(model_dir: Path) -> Architecture:
    """The architecture of the checkpoint in `model_dir` (which must hold config.json).

    Raises ModelSourceError when transformers does not know the architecture.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    model = meta_model(config, model_dir)
    return architecture_of(model, config, config_dtype(model_dir))


def meta_model(config: Any, model_dir: Path) -> Any:
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    try:
        with init_empty_weights():
            return AutoModelForCausalLM.from_config(config)
    except ValueError as exc:
        raise ModelSourceError(f"transformers cannot build a causal LM from {model_dir / 'config.json'}: {exc}",
                               "Check that the model is a causal (decoder-only) language model.") from exc


def config_dtype(model_dir: Path) -> str:
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def architecture_of(model: Any, config: Any, weights_dtype: str = "float32") -> Architecture:
    """Count a (meta or real) causal LM's parameters and list the linear layers of its blocks."""
    import torch

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    params = {id(p): p for p in model.parameters()}
    embeddings = {id(m.weight): m.weight.numel() for m in (model.get_input_embeddings(), model.get_output_embeddings())
                  if m is not None and getattr(m, "weight", None) is not None}
    tied = bool(getattr(config, "tie_word_embeddings", False))
    untied_twin = sum(embeddings.values()) // 2 if tied and len(embeddings) == 2 else 0  # meta models skip tying
    heads = int(text.num_attention_heads)
    hidden = int(text.hidden_size)
    linears = [LinearLayer(name.split(".")[-1], block_number(name), module.in_features, module.out_features)
               for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and block_number(name) >= 0]
    return Architecture(
        model_type=str(getattr(text, "model_type", "unknown")),
        parameters=sum(p.numel() for p in params.values()) - untied_twin,
        embedding_parameters=sum(embeddings.values()) - untied_twin, vocab_size=int(text.vocab_size),
        hidden_size=hidden,
        intermediate_size=int(getattr(text, "intermediate_size", 4 * hidden) or 4 * hidden),
        layers=int(text.num_hidden_layers), attention_heads=heads,
        kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(text, "head_dim", None) or hidden // heads),
        tied_embeddings=tied or len(embeddings) == 1, weights_file_dtype=weights_dtype,
        max_positions=getattr(text, "max_position_embeddings", None), linears=linears)


def block_number(module_name: str) -> int:
    """The transformer block a module sits in (the first integer in its dotted name), -1 outside the blocks."""
    for part in module_name.split("."):
        if part.isdigit():
            return int(part)
    return -1
