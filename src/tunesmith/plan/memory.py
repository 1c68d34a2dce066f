"""Peak training memory of a recipe, component by component, from the architecture and the workload alone.

The accounting follows Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
Models", arXiv:2205.05198, §4.1): what autograd keeps per token and layer for the backward pass, written for
a llama-style block (RMSNorm, grouped-query attention through SDPA, a gated MLP) rather than GPT's; and
Rajbhandari et al. 2020 (ZeRO, arXiv:1910.02054, §3.1) for the 16 bytes per trained parameter of AdamW in
fp32 (weight 4, gradient 4, two moments 8). The constants that are this machine's, not the model's
(framework overhead, how many vocabulary-wide buffers the loss holds at once) were measured with
`benchmarks/plan_memory.py`, whose table README keeps beside the estimates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tunesmith.plan.architecture import Architecture

GIB = 2**30
DTYPE_BYTES = {"float32": 4.0, "fp32": 4.0, "bfloat16": 2.0, "bf16": 2.0, "float16": 2.0, "fp16": 2.0,
               "int8": 1.0, "nf4": 0.5}
# bitsandbytes NF4 with double quantization: one 8-bit absmax per 64 weights, one fp32 constant per 256 of those
# (Dettmers et al. 2023, QLoRA, arXiv:2305.14314, §3: 0.127 bits per parameter).
NF4_CONSTANTS_BYTES = 1 / 64 + 4 / (64 * 256)
INT8_CONSTANTS_BYTES = 4 / 4096  # LLM.int8: one fp32 scale per row; rows are thousands wide
ADAMW_STATE_BYTES = 8.0  # exp_avg and exp_avg_sq, fp32 (PyTorch AdamW)
DROPOUT_COPY = 1.45  # LoRA dropout: the dropped-out input (fp32) and its mask, per input feature (measured)
# Vocabulary-wide fp32 buffers alive at the loss's peak (logits, log-softmax, their gradient): measured, see module doc
LOSS_BUFFERS = 3
# Python, torch, transformers, TRL, PEFT, datasets and the tokenizer (CPU RSS): `tunesmith train` on the tests'
# 2-block, 64-wide llama peaked at 0.68-0.70 GiB for SFT, DPO and GRPO, of which the model's own part is < 25 MiB
CPU_FRAMEWORK_BYTES = 0.67 * GIB
CUDA_CONTEXT_BYTES = 0.5 * GIB  # the CUDA context and kernels: in nvidia-smi, not in max_memory_allocated
# data.replay.null_space (train/null_space.py) is skipped when its input moments would take more than this share of
# the memory free once the model is loaded
NULL_SPACE_MEMORY_SHARE = 0.25

Quantization = Literal["none", "nf4", "int8"]


@dataclass(frozen=True)
class Workload:
    """What one optimizer micro-step holds at once.

    sequences x length tokens carry activations (length: the longest row, padding included); `generated`: GRPO
    sequences whose key/value cache exists while they are sampled; `frozen_passes` extra tokens that run a
    forward without gradients beside the step (the reference model's, DPO/KTO; the replay anchor's base pass).
    """

    sequences: int
    length: int
    trained_extra_tokens: int = 0  # tokens beside the task's that train in the same backward (the replay anchor)
    frozen_pass_tokens: int = 0
    generated_sequences: int = 0
    logits_tokens: int | None = None  # positions projected to the vocabulary (None: every token)
    packed: bool = False
    kept_reference_tokens: int = 0  # replay tokens whose base log-probabilities are kept (the frozen pass ran once)
    kept_reference_limit_bytes: float = 0.0  # at most this many bytes of them
    replay_share: float = 1.0  # the share of a step's micro-batches that carry the replay tokens (train/replay.py)

    @property
    def tokens(self) -> int:
        return self.sequences * self.length + self.trained_extra_tokens


@dataclass(frozen=True)
class TrainedWeights:
    """Which weights train: an adapter's parameter count, or the whole model (`full`), with or without a
    frozen reference copy; how the frozen base is stored."""

    parameters: int
    whole_model: bool
    quantization: Quantization = "none"
    adapted_linears: list[tuple[int, int]] = field(default_factory=list)  # (in, out) of each adapted linear
    rank: int = 0
    dropout: bool = False  # LoRA dropout above 0 keeps a dropped-out copy of each adapted linear's input
    reference_copy: bool = False  # a whole-model method that needs a frozen reference (DPO, KTO full)
    # data.replay.null_space on: in_features of each distinct input the LoRA A matrices are kept off (layers fed
    # the same tensor, q/k/v and gate/up, share one basis)
    null_space_inputs: list[int] = field(default_factory=list)
    null_space_skipped: bool = False  # on, but its moments would not fit: training skips it (null_space_fits)
    base_bytes: float = 4.0  # per frozen base weight as loaded: 2 for an adapter's base on a GPU under bf16/fp16


@dataclass(frozen=True)
class Sharding:
    """How training.distributed splits the model state over `processes` (per-process bytes are estimated):
    ZeRO-2 shards gradients and optimizer state; FSDP and ZeRO-3 the weights too (ZeRO paper, Rajbhandari et al.
    2020, section 5; PyTorch FSDP docs). Activations stay per process (each runs its own micro-batch)."""

    processes: int = 1
    weights: bool = False
    optimizer: bool = False
    reference: bool = False  # the frozen reference copy sharded like the trained model (shard_reference)


@dataclass(frozen=True)
class Component:
    name: str
    bytes: float
    how: str


@dataclass(frozen=True)
class MemoryEstimate:
    components: list[Component]

    @property
    def total(self) -> float:
        return sum(c.bytes for c in self.components)


def estimate_memory(arch: Architecture, weights: TrainedWeights, work: Workload, device: str,
                    compute_bytes: float, checkpointing: bool, sharding: Sharding = Sharding(),
                    frozen_bf16_copy: bool = False) -> MemoryEstimate:
    """Peak bytes of one training process: weights, trained parameters with their gradients and optimizer,
    activations, the vocabulary-wide loss buffers, and what the framework holds (CPU RSS, or GPU allocated).

    `compute_bytes`: 4 for fp32 training, 2 under bf16/fp16 autocast (activations; master weights stay fp32).
    `sharding`: what several processes split between them (training.distributed). `frozen_bf16_copy`: the frozen
    block linears also held in bf16 while training (`plan/precision.py`: a CPU with fast bf16).
    """
    parts = [sharded(base_weights(arch, weights), sharding.weights, sharding.processes),
             sharded_trained_state(weights, sharding)]
    if frozen_bf16_copy:
        parts.append(frozen_bf16_copy_component(arch))
    if weights.reference_copy:
        parts.append(sharded(Component("reference model", base_weights(arch, weights).bytes,
                                       "a frozen copy of the base"), sharding.reference, sharding.processes))
    parts += [activations(arch, weights, work, compute_bytes, checkpointing), loss_buffers(arch, work)]
    if work.kept_reference_tokens:
        parts.append(kept_reference(arch, work))
    if work.generated_sequences:
        parts.append(generation_cache(arch, work, compute_bytes))
    if weights.null_space_inputs or weights.null_space_skipped:
        parts.append(null_space_bases(weights))
    parts.append(framework(device))
    return MemoryEstimate(parts)


def null_space_moments_bytes(in_features: list[int]) -> float:
    """Upper bound of the fp32 input moments data.replay.null_space collects before training: one [in, in] matrix
    per adapted layer (train/null_space.py; layers sharing an input need fewer)."""
    return sum(4.0 * n * n for n in in_features)


def null_space_fits(arch: Architecture, weights: TrainedWeights, memory_bytes: float) -> bool:
    """Whether train/null_space.py will build the null space on a device of `memory_bytes` rather than skip it:
    its moments within NULL_SPACE_MEMORY_SHARE of what the base weights leave free (the same rule, before
    training; the trainer reads the free memory itself)."""
    moments = null_space_moments_bytes([n for n, _ in weights.adapted_linears])
    return moments <= NULL_SPACE_MEMORY_SHARE * max(memory_bytes - base_weights(arch, weights).bytes, 0.0)


def null_space_bases(weights: TrainedWeights) -> Component:
    """The orthonormal bases training keeps for data.replay.null_space: per distinct input, at most half of its
    [in, in] directions (the closed ones, or their complement when that is smaller), fp32."""
    if weights.null_space_skipped:
        return Component("null-space bases", 0.0, "none: data.replay.null_space will be skipped, its input moments "
                                                  f"needing over {NULL_SPACE_MEMORY_SHARE:.0%} of the memory the "
                                                  "weights leave (set data.replay.null_space: 0 to say so)")
    total = sum(4.0 * n * (n // 2) for n in weights.null_space_inputs)
    return Component("null-space bases", total, f"{len(weights.null_space_inputs)} layer inputs x at most half "
                                                f"their [in, in] directions x 4 B (data.replay.null_space)")


def base_weights(arch: Architecture, weights: TrainedWeights) -> Component:
    """The base model's weights as training loads them: fp32 (`weights.base_bytes` 4), or the half dtype of mixed
    precision for an adapter's frozen base on a GPU (2: train/common.frozen_base_dtype); QLoRA stores the blocks'
    linears quantized, the rest as the others."""
    per_other = weights.base_bytes
    dtype = "fp32" if per_other == 4.0 else "bf16/fp16"
    if weights.quantization == "none":
        return Component("weights", arch.parameters * per_other,
                         f"{arch.parameters / 1e6:,.1f}M parameters x {per_other:.0f} B ({dtype})")
    per = (DTYPE_BYTES["nf4"] + NF4_CONSTANTS_BYTES) if weights.quantization == "nf4" else (1 + INT8_CONSTANTS_BYTES)
    linear = arch.block_linear_parameters
    rest = arch.parameters - linear
    return Component("weights", linear * per + rest * per_other,
                     f"{linear / 1e6:,.1f}M block-linear parameters x {per:.3f} B ({weights.quantization}) + "
                     f"{rest / 1e6:,.1f}M others x {per_other:.0f} B ({dtype})")


def frozen_bf16_copy_component(arch: Architecture) -> Component:
    """The bf16 copy of the frozen block linears that training multiplies with on a CPU with fast bf16, beside their
    fp32 weights (kept aside for eval and merge: train/frozen_matmuls.py)."""
    linear = arch.block_linear_parameters
    return Component("bf16 copy of the frozen linears", linear * 2.0,
                     f"{linear / 1e6:,.1f}M block-linear parameters x 2 B (their matmuls run in bf16 on this CPU)")


def trained_state(weights: TrainedWeights) -> Component:
    """Adapter weights (whole-model training: already counted as weights), gradients and AdamW moments."""
    own = 0.0 if weights.whole_model else 4.0
    per = own + 4.0 + ADAMW_STATE_BYTES
    return Component("trained parameters, gradients, AdamW", weights.parameters * per,
                     f"{weights.parameters / 1e6:,.2f}M trained x {per:.0f} B")


def sharded(part: Component, split: bool, processes: int) -> Component:
    """`part` divided over the processes when the strategy shards it."""
    if not split or processes == 1:
        return part
    return Component(part.name, part.bytes / processes, f"{part.how}, / {processes} processes (sharded)")


def sharded_trained_state(weights: TrainedWeights, sharding: Sharding) -> Component:
    """The trained state per process: all of it sharded with the weights (FSDP, ZeRO-3); only the gradients and
    AdamW moments (12 of an adapter's 16 B per parameter) with ZeRO-2."""
    part = trained_state(weights)
    if sharding.weights or sharding.processes == 1 or not sharding.optimizer:
        return sharded(part, sharding.weights, sharding.processes)
    own = 0.0 if weights.whole_model else 4.0
    per = own + (4.0 + ADAMW_STATE_BYTES) / sharding.processes
    return Component(part.name, weights.parameters * per, f"{weights.parameters / 1e6:,.2f}M trained x {per:.1f} B "
                                                          f"(gradients and AdamW / {sharding.processes} processes)")


def activations(arch: Architecture, weights: TrainedWeights, work: Workload, compute_bytes: float,
                checkpointing: bool) -> Component:
    """What autograd keeps for the backward pass, per token and block: counted with
    `torch.autograd.graph.saved_tensors_hooks` on SmolLM2 with LoRA on every linear (transformers 5, SDPA):
    about 11 x hidden (norm inputs and outputs, attention input and output, their flattened views), 6 x the MLP
    width (gate, up, the activation, the product, and views), 4 x the key/value width (k, v before and after
    rotary embedding) and the rotary tables; each adapted linear adds its rank-wide intermediates and, with
    LoRA dropout, its dropped-out input and mask (1.45 x its input width, measured). With activation
    checkpointing only each block's input is kept, plus one block's worth while it is recomputed."""
    h, inter, kv = arch.hidden_size, arch.intermediate_size, arch.kv_width
    block = 11 * h + 6 * inter + 4 * kv + 2 * arch.head_dim
    adapted = weights.adapted_linears
    adapter = sum(2 * weights.rank + (DROPOUT_COPY * i if weights.dropout else 0) for i, _ in adapted)
    per_token_block = (block + adapter / max(arch.layers, 1)) * compute_bytes
    tokens = work.tokens
    if checkpointing:
        total = tokens * (arch.layers * h * compute_bytes + per_token_block)
        how = f"{tokens:,} tokens x ({arch.layers} block inputs + one block recomputed)"
    else:
        total = tokens * arch.layers * per_token_block
        how = f"{tokens:,} tokens x {arch.layers} blocks x {per_token_block / 1024:,.1f} KiB"
    if work.trained_extra_tokens:
        how += f" ({work.trained_extra_tokens:,} of the tokens: replay-anchor rows)"
    if work.packed:  # SDPA builds the packed row's block-diagonal mask over the whole row
        total += work.sequences * work.length**2 * compute_bytes
        how += " + the packed rows' attention masks"
    return Component("activations" + (" (checkpointed)" if checkpointing else ""), total, how)


def loss_buffers(arch: Architecture, work: Workload) -> Component:
    """Logits over the vocabulary in fp32 at the loss: the logits, log-softmax and their gradient; plus one
    buffer for the tokens of passes without gradients (reference log-probs)."""
    projected = work.logits_tokens if work.logits_tokens is not None else work.tokens
    total = (LOSS_BUFFERS * projected + work.frozen_pass_tokens) * arch.vocab_size * 4.0
    return Component("logits and loss", total, f"{LOSS_BUFFERS} x {projected:,} tokens x {arch.vocab_size:,} "
                                               "vocabulary x 4 B" + (" + reference pass" if work.frozen_pass_tokens
                                                                     else ""))


def kept_reference(arch: Architecture, work: Workload) -> Component:
    """The base's fp32 log-probabilities over the vocabulary at every replay token, kept for the KL anchor (train's
    BaseReference), up to its limit."""
    wanted = work.kept_reference_tokens * arch.vocab_size * 4.0
    how = f"{work.kept_reference_tokens:,} replay tokens x {arch.vocab_size:,} vocabulary x 4 B"
    if wanted > work.kept_reference_limit_bytes:
        how += f", capped at {work.kept_reference_limit_bytes / GIB:.1f} GiB (the rest recomputed at each draw)"
    return Component("replay base log-probs (kept)", min(wanted, work.kept_reference_limit_bytes), how)


def generation_cache(arch: Architecture, work: Workload, compute_bytes: float) -> Component:
    """The key/value cache while GRPO samples: 2 x layers x kv width per token of every generated sequence."""
    per_token = 2 * arch.layers * arch.kv_width * compute_bytes
    total = work.generated_sequences * work.length * per_token
    return Component("generation KV cache", total, f"{work.generated_sequences} sequences x {work.length} tokens x "
                                                   f"{per_token / 1024:,.1f} KiB")


def framework(device: str) -> Component:
    if device == "cpu":
        return Component("framework", CPU_FRAMEWORK_BYTES, "Python, torch, transformers, TRL, PEFT (measured here)")
    return Component("framework", 0.0, "CUDA context (~0.5 GiB) is outside allocated memory")


def outside_estimate(device: Any) -> float:
    """Device memory the process takes beside the estimate's components: the CUDA context and kernels (in
    nvidia-smi, not in max_memory_allocated) on a GPU, whose memory_bytes is the card's total (named, sized or
    read on this machine); 0 on a CPU, whose framework component is measured RSS."""
    return CUDA_CONTEXT_BYTES if device.kind == "cuda" else 0.0
