"""Time per optimizer step and per epoch, from the step's FLOPs and the device's matmul peak.

FLOPs per token as `train.throughput` counts them (PaLM, Chowdhery et al. 2022, appendix B): 4 per frozen and
6 per trained body parameter, 4 per LM-head parameter at the positions that carry loss, and causal attention's
12 x layers x hidden x length / 2. The device reaches `Device.efficiency` of its peak (its MFU).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from tunesmith.config import Recipe
from tunesmith.plan.architecture import Architecture
from tunesmith.plan.devices import Device
from tunesmith.plan.memory import TrainedWeights, Workload

DECODE_EFFICIENCY = 0.05  # token-by-token sampling is bound by memory bandwidth, not matmuls: a rough share
# torch.linalg.eigh in fp32 (LAPACK syevd, values and vectors) took 0.17, 0.36 and 2.83 s for n = 1,536, 2,048 and
# 4,096 on a 2-core Intel Xeon whose fp32 matmul peak was 309 GFLOP/s: 12.7-14.5 peak FLOPs' worth of time per n³
EIGH_PEAK_FLOPS_PER_N3 = 13.0
# a forward pass without gradients over packed rows runs nearer the peak than a training step: the null space's read
# of the quickstart's replay rows ran at 60% of the fp32 peak (2-core Xeon), 1.2 x the CPU's training efficiency
FORWARD_EFFICIENCY_GAIN = 1.2


@dataclass(frozen=True)
class StepTime:
    seconds: float
    steps_per_epoch: int
    note: str


def step_time(recipe: Recipe, arch: Architecture, weights: TrainedWeights, work: Workload, device: Device,
              rows: int | None = None, frozen_speedup: float = 1.0) -> StepTime:
    """Seconds per optimizer step (grad_accum micro-batches) and the optimizer steps of one epoch. `frozen_speedup`:
    how many times as fast the frozen base's linears multiply (`plan/precision.py` `frozen_matmul_speedup`: bf16 on a
    CPU with fast bf16), their FLOPs being `frozen_linear_flops`."""
    t = recipe.training
    flops = averaged(step_flops, arch, weights, work) * t.grad_accum
    frozen = averaged(frozen_linear_flops, arch, weights, work) * t.grad_accum if frozen_speedup > 1 else 0.0
    seconds = (flops - frozen + frozen / frozen_speedup) / (device.peak_flops * device.efficiency)
    note = f"{flops / 1e12:,.2f} TFLOP per step at {device.efficiency:.0%} of {device.peak_flops / 1e12:,.2f} TFLOP/s"
    if device.peak_assumed:
        note += (" (an assumed peak, an RTX 4090's: a GPU given by its size has no speed of its own; name the card, "
                 "e.g. --device t4 or a100-80gb, for its data-sheet peak)")
    if frozen:
        note += f", the frozen linears' {frozen / flops:.0%} of them in bf16 at {frozen_speedup:.1f}x fp32's speed"
    if work.generated_sequences:
        generated = work.generated_sequences * recipe.method.max_completion_length * t.grad_accum
        seconds += 2.0 * arch.parameters * generated / (device.peak_flops * DECODE_EFFICIENCY)
        note += f"; sampling {generated} tokens at ~{DECODE_EFFICIENCY:.0%} of peak (a rough figure)"
    if device.kind != "cpu" and seconds < 0.1:
        note += ("; a step this small is bound by kernel launches and Python rather than FLOPs, so expect tens to "
                 "hundreds of ms (a lower bound)")
    per_step_rows = t.batch_size * t.grad_accum
    steps = math.ceil((rows or 0) * t.epochs / per_step_rows) if rows else 0
    if t.max_steps > 0:
        steps = t.max_steps
    return StepTime(seconds, steps, note)


def averaged(flops: Callable[[Architecture, TrainedWeights, Workload], float], arch: Architecture,
             weights: TrainedWeights, work: Workload) -> float:
    """`flops` of a micro-batch averaged over a step's micro-batches, where only `work.replay_share` of them carry
    the replay anchor's tokens."""
    if work.replay_share >= 1 or not work.trained_extra_tokens:
        return flops(arch, weights, work)
    extra = work.trained_extra_tokens
    bare = replace(work, trained_extra_tokens=0, frozen_pass_tokens=work.frozen_pass_tokens - extra,
                   kept_reference_tokens=0, replay_share=1.0,
                   logits_tokens=None if work.logits_tokens is None else work.logits_tokens - extra)
    return work.replay_share * flops(arch, weights, work) + (1 - work.replay_share) * flops(arch, weights, bare)


def step_flops(arch: Architecture, weights: TrainedWeights, work: Workload) -> float:
    """Model FLOPs of one micro-batch, forward and backward, plus the reference passes (forward only: 2/param)."""
    head = arch.vocab_size * arch.hidden_size
    body = arch.parameters - arch.embedding_parameters
    trained_body = min(weights.parameters, body) if weights.whole_model else weights.parameters
    frozen_body = body - (trained_body if weights.whole_model else 0)
    per_token = 4.0 * frozen_body + 6.0 * trained_body + 6.0 * arch.layers * arch.hidden_size * work.length
    projected = work.logits_tokens if work.logits_tokens is not None else work.tokens
    # the replay anchor's base pass runs once a row while its result is kept, not at each step; a reference
    # model's pass (DPO, KTO) runs at every step
    frozen_tokens = work.frozen_pass_tokens - (work.trained_extra_tokens if work.kept_reference_tokens else 0)
    frozen_pass = frozen_tokens * (2.0 * body + 2.0 * head)
    return work.tokens * per_token + projected * 4.0 * head + frozen_pass


def frozen_linear_flops(arch: Architecture, weights: TrainedWeights, work: Workload) -> float:
    """The share of `step_flops` that the frozen base's block linears do under an adapter: 4 per parameter a token
    (forward, and the gradient to their input), 2 on the frozen passes (the replay anchor's base pass when its
    result is not kept); 0 when the whole model trains."""
    if weights.whole_model:
        return 0.0
    linear = arch.block_linear_parameters
    frozen_tokens = work.frozen_pass_tokens - (work.trained_extra_tokens if work.kept_reference_tokens else 0)
    return work.tokens * 4.0 * linear + frozen_tokens * 2.0 * linear


def null_space_setup(arch: Architecture, weights: TrainedWeights, replay_tokens: int,
                     device: Device) -> tuple[float, str]:
    """(seconds, how) that data.replay.null_space takes before the first step (train/null_space.py): the base
    reads the replay rows (a forward pass with its logits, which the replay anchor keeps, plus Σ x·xᵀ of each
    distinct layer input: 2 n² FLOPs a token for an input of n features), then one eigendecomposition per distinct
    input (EIGH_PEAK_FLOPS_PER_N3 x n³, calibrated on a CPU). (0, "") when it will not run. For the quickstart on
    a 2-core Xeon: 46 s planned (17,000 replay tokens assumed), 40.0 s measured (14,371 tokens read in 34.9 s, the
    decompositions 5.1 s)."""
    inputs = weights.null_space_inputs
    if not inputs or not replay_tokens:
        return 0.0, ""
    body = arch.parameters - arch.embedding_parameters
    head = arch.vocab_size * arch.hidden_size
    read = replay_tokens * (2.0 * body + 2.0 * head + sum(2.0 * n * n for n in inputs))
    decompose = EIGH_PEAK_FLOPS_PER_N3 * sum(float(n) ** 3 for n in inputs)
    forward_efficiency = min(0.9, FORWARD_EFFICIENCY_GAIN * device.efficiency)
    seconds = read / (device.peak_flops * forward_efficiency) + decompose / device.peak_flops
    how = (f"null space: the base reads ~{replay_tokens:,} replay tokens ({read / 1e12:,.1f} TFLOP, its log-"
           f"probabilities kept for the anchor), then {len(inputs)} eigendecompositions of up to {max(inputs):,} x "
           f"{max(inputs):,}")
    if device.kind != "cpu":
        how += " (their time is calibrated on a CPU; a GPU's depends on its linear-algebra kernels)"
    return seconds, how
