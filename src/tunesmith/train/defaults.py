"""Defaults chosen for the run's model and data where the recipe leaves them to tunesmith (`auto`).

Each choice comes with its reason, printed before training and kept in train.json `chosen`.

Learning rate (`training.lr: auto`), by adapter kind and base size:
- LoRA and its variants on a base under 1B parameters: 1e-3. Our measurement on SmolLM2-135M
  (benchmarks/results/forgetting_settings.json): the quickstart reaches field accuracy 0.90 at 1e-3 against
  0.78 at 3e-4 in the same 28 steps.
- LoRA on 1B-20B: 2e-4, and above 20B: 1e-4 (QLoRA, Dettmers et al. 2023, arXiv:2305.14314, Appendix B.2:
  2e-4 for 7B and 13B, 1e-4 for 33B and 65B).
- IA3: 3e-3 (T-Few, Liu et al. 2022, arXiv:2205.05638, §3.3).
- Prompt, prefix and p-tuning: 3e-2 (PEFT's prompt-tuning guide for causal language models).
- Whole-model kinds (full, partial, hft): 2e-5 (Stanford Alpaca's full fine-tune of LLaMA-7B; Taori et al. 2023).
"""

from __future__ import annotations

import sys
from typing import Any

from tunesmith.train.adapters import PROMPT_LEARNING_KINDS, WHOLE_MODEL_KINDS


def auto_lr(adapter_kind: str, parameters: int) -> tuple[float, str]:
    """The learning rate for `adapter_kind` on a base of `parameters` weights, and why (see the module doc)."""
    billions = parameters / 1e9
    if adapter_kind in WHOLE_MODEL_KINDS:
        return 2e-5, "whole-model training (Alpaca's full fine-tune)"
    if adapter_kind in PROMPT_LEARNING_KINDS:
        return 3e-2, "virtual tokens learn from scratch (PEFT's prompt-tuning guide)"
    if adapter_kind == "ia3":
        return 3e-3, "IA3 scaling vectors (T-Few)"
    if billions < 1:
        return 1e-3, f"LoRA on a {billions * 1000:.0f}M-parameter base (our SmolLM2-135M measurements)"
    if billions < 20:
        return 2e-4, f"LoRA on a {billions:.1f}B-parameter base (QLoRA's 7B/13B setting)"
    return 1e-4, f"LoRA on a {billions:.0f}B-parameter base (QLoRA's 33B/65B setting)"


def resolve_lr(training: Any, adapter_kind: str, model: Any) -> dict[str, Any]:
    """Fill `training.lr` when it is `auto` (in place: the trainers read it next) and say what it is and why."""
    if training.lr != "auto":
        return {"value": training.lr, "why": "training.lr in the recipe"}
    parameters = sum(weights_in(p) for p in model.parameters())
    training.lr, why = auto_lr(adapter_kind, parameters)
    print(f"lr: {training.lr:g} (auto: {why})", file=sys.stderr, flush=True)
    return {"value": training.lr, "why": f"auto: {why}"}


def weights_in(parameter: Any) -> int:
    """The weights a parameter holds: bitsandbytes packs two 4-bit weights per stored byte (QLoRA)."""
    packed = getattr(parameter, "quant_state", None) is not None and parameter.dtype.itemsize == 1
    return parameter.numel() * (2 if packed else 1)
