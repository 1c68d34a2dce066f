"""Adapter configs: map the recipe's `adapter` section onto PEFT's public config objects."""

from __future__ import annotations

from typing import Any

from tunesmith.config import TARGET_PRESETS, LoraAdapter


def adapter_setup(model: Any, adapter: LoraAdapter) -> tuple[Any, Any]:
    """Prepare `model` for the recipe's adapter; returns (model, peft_config or None).

    Every trainer goes through this one function, so each adapter kind is wired in one place: PEFT
    kinds return a config for TRL to wrap the model with; kinds that train the model's own weights
    (full, partial) return None after setting `requires_grad` themselves.
    """
    return model, lora_config(adapter)


def lora_config(adapter: LoraAdapter):
    """A PEFT LoraConfig for causal-LM training from the recipe's LoRA section."""
    from peft import LoraConfig, TaskType

    targets = TARGET_PRESETS[adapter.targets] if isinstance(adapter.targets, str) else adapter.targets
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=adapter.r,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=targets,
    )


def trainable_summary(model: Any) -> dict[str, Any]:
    """Trainable and total parameter counts, and which modules carry the trainable ones."""
    trainable = total = 0
    modules: set[str] = set()
    for name, param in model.named_parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
            modules.add(_module_kind(name))
    return {
        "trainable": trainable,
        "total": total,
        "percent": round(100 * trainable / max(total, 1), 4),
        "modules": sorted(modules),
    }


def _module_kind(name: str) -> str:
    """'base_model.model.layers.3.self_attn.q_proj.lora_A.default.weight' -> 'q_proj.lora_A'."""
    parts = [p for p in name.split(".") if not p.isdigit() and p not in {"default", "weight", "bias"}]
    return ".".join(parts[-2:])
