"""A LoRA layer's update added into the frozen linear's output in one step: y = x W^T + b + s (x A^T) B^T.

PEFT's `lora.Linear` computes the frozen layer's output, then `lora_B(lora_A(x)) * scaling`, then their sum: three
passes over an output-sized tensor per layer and as many again backward, plus the bf16 copy of the input that
a frozen bf16 matmul keeps for its backward (`train/frozen_matmuls.py`). Here one autograd function
(`LoraLinearFunction`) runs the frozen matmul, the rank-r down projection A, and `addmm_` of the up projection B
(scaled) into the frozen output; backward computes the same gradients from the fp32 input it keeps and the r-wide
down projection only. Plain PyTorch matmuls, no kernel of our own; the layer falls back to PEFT's forward in
every case this function does not cover (dropout, DoRA and the other variants, several active adapters, disabled
or merged adapters, a mixed-batch `adapter_names`, quantized or transposed base layers, autocast, mixed dtypes).

On SmolLM2-135M with LoRA r 16 on every linear (2-core Xeon with AMX), one training step with the frozen linears
in bf16 took 2.55 s against PEFT's 2.82 s on a 1,000-token row (1.11x) and 1.78 s against 1.92 s on 8 rows of 112
(1.08x), at 75% and 79% of PEFT's peak memory; in fp32 throughout 1.04x and 1.03x at 91% and 89%. The LoRA
gradients were 1e-6 from PEFT's in fp32, and as near fp32's as PEFT's over bf16 linears
(`benchmarks/fused_lora.py`, `benchmarks/results/fused_lora.json`; `tests/test_fused_lora.py`). The gradient
formulas are those of a linear layer (Hu et al. 2021, LoRA, arXiv:2106.09685, eq. 3: h = W0 x + B A x, scaled by
alpha / r).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Linear as LoraLinear
from torch.autograd.function import once_differentiable


class LoraLinearFunction(torch.autograd.Function):
    """y = x W^T + b + scaling (x A^T) B^T for x [..., in], W [out, in] (frozen; its dtype may be bf16, the input is
    cast to it and the product back), A [r, in], B [out, r]; y [..., out] in x's dtype. Gradients for x, A and B:
    dA = scaling (dy B)^T x, dB = scaling dy^T (x A^T), dx = dy W + scaling (dy B) A. Keeps x (fp32) and x A^T."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_A: torch.Tensor,
                lora_B: torch.Tensor, scaling: float) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        out = F.linear(rows.to(weight.dtype), weight, bias).to(x.dtype)
        down = rows @ lora_A.t()
        out.addmm_(down, lora_B.t(), alpha=scaling)
        ctx.save_for_backward(rows, down, weight, lora_A, lora_B)
        ctx.scaling = scaling
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        rows, down, weight, lora_A, lora_B = ctx.saved_tensors
        grad = grad_out.reshape(-1, grad_out.shape[-1])
        grad_down = torch.mm(grad, lora_B).mul_(ctx.scaling)
        grad_x = grad_A = grad_B = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(grad.to(weight.dtype), weight).to(rows.dtype)
            grad_x.addmm_(grad_down, lora_A)
            grad_x = grad_x.view(*grad_out.shape[:-1], rows.shape[-1])
        if ctx.needs_input_grad[3]:
            grad_A = torch.mm(grad_down.t(), rows)
        if ctx.needs_input_grad[4]:
            grad_B = torch.mm(grad.t(), down).mul_(ctx.scaling)
        return grad_x, None, None, grad_A, grad_B, None


def fused_adapter(layer: LoraLinear, x: torch.Tensor, has_extra_args: bool) -> str | None:
    """The one active adapter of `layer` that `LoraLinearFunction` computes exactly as PEFT would, or None where
    PEFT's own forward must run (see the module's docstring for the cases)."""
    if has_extra_args or layer.disable_adapters or layer.merged or layer.fan_in_fan_out:
        return None
    active = [name for name in layer.active_adapters if name in layer.lora_A]
    if len(active) != 1:
        return None
    name = active[0]
    base = layer.get_base_layer()
    lora_A, lora_B = layer.lora_A[name], layer.lora_B[name]
    if (name in layer.lora_variant or not isinstance(layer.lora_dropout[name], torch.nn.Identity)
            or not isinstance(base, torch.nn.Linear) or type(lora_A) is not torch.nn.Linear
            or type(lora_B) is not torch.nn.Linear or lora_A.bias is not None or lora_B.bias is not None):
        return None
    if base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
        return None
    if torch.is_autocast_enabled(x.device.type) or not x.dtype == lora_A.weight.dtype == lora_B.weight.dtype:
        return None
    return name


class FusedLoraLinear(LoraLinear):
    """PEFT's lora.Linear whose forward runs `LoraLinearFunction` where `fused_adapter` allows, PEFT's own otherwise.
    Forward pre-hooks on the layer (the null space's) see the same input either way."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = fused_adapter(self, x, bool(args or kwargs))
        if name is None:
            return super().forward(x, *args, **kwargs)
        base = self.get_base_layer()
        return LoraLinearFunction.apply(x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight,
                                        self.scaling[name])


@dataclass
class FusedLoras:
    """The layers `fuse_lora_linears` switched; `restore` makes them PEFT's lora.Linear again."""

    layers: list[LoraLinear] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.layers)

    def restore(self) -> None:
        for layer in self.layers:
            layer.__class__ = LoraLinear
        self.layers.clear()


def fuse_lora_linears(model: Any) -> FusedLoras:
    """Make every PEFT lora.Linear of `model` (exactly that class: not the quantized or other layer kinds) a
    FusedLoraLinear. Its parameters, state dict and hooks stay as they are."""
    fused = FusedLoras()
    for module in model.modules():
        if type(module) is LoraLinear:
            module.__class__ = FusedLoraLinear
            fused.layers.append(module)
    return fused
