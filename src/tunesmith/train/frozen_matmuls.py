"""The frozen base's matmuls in bf16 on a CPU that multiplies bf16 fast; the adapter, its gradients and the rest fp32.

Under a LoRA the base's linear layers are frozen: their weights are read, never updated. Stored in bf16 they lose
only their rounding (8 significant bits, a relative error under 2^-8), the rounding that bf16 mixed precision gives
every matmul on a GPU. Here only those matmuls run in bf16: each frozen linear casts its input to bf16 and its output
back to fp32 (`FrozenBF16Linear`), so the adapter's weights, gradients and optimizer state, the norms, attention, the
LM head (the embedding's tied matrix) and the loss stay fp32. `torch.autocast` on a CPU would instead cast the fp32
weights again at every call and run the adapter and the LM head in bf16 too: 1.09-1.33x fp32's step where this is
1.38-1.61x, and LoRA gradients within 3.3% of fp32's where these are within 1.5% (SmolLM2-135M, LoRA r 16 on every
linear, 8 rows of 100 tokens, two invocations; `benchmarks/frozen_matmuls.py`).

The fp32 weights stay aside (`FrozenCast`) and come back after training, so the model left in memory is the one
whose adapter was saved; training (train/common.py `half_frozen_matmuls`) skips the cast where the bf16 copy would
take over a quarter of the free memory.

Where bf16 is emulated (CPUs without AVX512-BF16 or AMX) a bf16 matmul is slower than fp32, so the choice
(`plan/precision.py` `frozen_matmul_choice`, which the plan's time and memory estimates follow too) rests on this
machine's measured matmul peaks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F


class FrozenBF16Linear(torch.nn.Linear):
    """A frozen nn.Linear whose weight (and bias) are bf16: input cast to bf16, output cast back to the input's dtype.
    Gradients flow to the input (the adapter's layers below need them), none to the frozen weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias).to(x.dtype)


@dataclass
class FrozenCast:
    """The linears `cast_frozen_linears` cast, with their fp32 weights kept aside: `restore` puts them back, so that
    after training the model in memory is the fp32 base plus the adapter that was saved."""

    originals: list[tuple[torch.nn.Linear, torch.Tensor, torch.Tensor | None]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.originals)

    def restore(self) -> None:
        for module, weight, bias in self.originals:
            module.weight.data = weight
            if bias is not None:
                module.bias.data = bias
            module.__class__ = torch.nn.Linear
        self.originals.clear()


def frozen_linears(model: Any) -> list[torch.nn.Linear]:
    """Every frozen nn.Linear of `model` (its weight does not require grad: the base under an adapter, once PEFT has
    wrapped it) but the output embedding (the LM head, often the input embedding's tied matrix)."""
    head = model.get_output_embeddings()
    head_weight = head.weight if head is not None else None
    return [module for module in model.modules() if type(module) is torch.nn.Linear
            and not module.weight.requires_grad and module.weight is not head_weight]


def bf16_copy_bytes(model: Any) -> int:
    """Bytes the bf16 copies of `frozen_linears(model)` take beside their fp32 weights."""
    return sum(2 * (m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)) for m in frozen_linears(model))


def cast_frozen_linears(model: Any) -> FrozenCast:
    """Make each of `frozen_linears(model)` a FrozenBF16Linear with a bf16 copy of its weights, the fp32 ones kept
    aside (`FrozenCast.restore`). The adapter's own linears train, so they stay fp32."""
    cast = FrozenCast()
    for module in frozen_linears(model):
        bias = module.bias.data if module.bias is not None else None
        cast.originals.append((module, module.weight.data, bias))
        module.weight.data = module.weight.data.to(torch.bfloat16)
        if bias is not None:
            module.bias.data = bias.to(torch.bfloat16)
        module.__class__ = FrozenBF16Linear
    return cast
