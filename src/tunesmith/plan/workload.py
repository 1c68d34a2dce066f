"""From a recipe (and its data, when it loads) to what training holds at once: the trained weights and one
micro-step's tokens, per method and adapter kind, as tunesmith's trainers configure TRL and PEFT.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from tunesmith.config import (
    ANCHORED_METHODS,
    BASE_PRESERVING_KINDS,
    PREFERENCE_KINDS,
    REFERENCE_CACHE_ACCELERATOR_BYTES,
    REFERENCE_CACHE_SHARE,
    TARGET_PRESETS,
    WHOLE_MODEL_KINDS,
    Recipe,
    default_null_space,
    default_replay_ratio,
    null_space_planned,
)
from tunesmith.data.lengths import auto_max_length
from tunesmith.data.replay import BUNDLED_REPLAY, replay_count
from tunesmith.plan.architecture import Architecture, LinearLayer
from tunesmith.plan.memory import TrainedWeights, Workload, null_space_fits

# Linears that read the same input tensor in a llama-style block (one null-space basis between them)
SHARED_INPUTS = {"q_proj": "attention input", "k_proj": "attention input", "v_proj": "attention input",
                 "gate_proj": "mlp input", "up_proj": "mlp input"}
REFERENCE_KINDS = ("dpo", "kto")  # methods that score a frozen reference (ORPO and SimPO need none)
# A replay micro-batch pads to its longest row: with 4 rows drawn, about the 90th percentile of the bundled rows
# with SmolLM2's answers (46-193 tokens, median 79, p90 142)
REPLAY_TOKENS = 144
REPLAY_MEAN_TOKENS = 85  # the mean bundled row with SmolLM2's answer, prompt included
# The same rows' prompts alone, template included (p90 51, mean 43): an anchor on the first N answer tokens
# (data.replay.anchor_answer_tokens) sees about these plus N (N = 16: p90 66, mean 59)
REPLAY_PROMPT_TOKENS = 51
REPLAY_PROMPT_MEAN_TOKENS = 43


def anchor_row_tokens(recipe: Recipe) -> tuple[int, int]:
    """(the longest of a replay draw, the mean row) in tokens as the anchor sees the bundled rows."""
    cut = recipe.data.replay.anchor_answer_tokens
    if cut is None:
        return REPLAY_TOKENS, REPLAY_MEAN_TOKENS
    return min(REPLAY_TOKENS, REPLAY_PROMPT_TOKENS + cut), min(REPLAY_MEAN_TOKENS, REPLAY_PROMPT_MEAN_TOKENS + cut)


@dataclass(frozen=True)
class RowLengths:
    """The longest training sequence in tokens (what a length-grouped batch pads to), and where it came from."""

    longest: int
    source: str
    rows: int | None = None  # training rows (None: the data did not load)
    longest_answer: int | None = None  # most loss-carrying tokens in one sequence (None: unknown, all of them)
    mean: float | None = None  # mean sequence length (what an average length-grouped step holds)
    mean_answer: float | None = None
    problem: str | None = None  # why the data could not be read or encoded (train will refuse it)
    cut_rows: int = 0  # training sequences longer than data.max_length, cut to it (unless packed into blocks)
    longest_uncut: int | None = None  # the longest of them before the cut
    uncut_tokens: int | None = None  # all training sequences' tokens before any cut (what wrapped blocks hold)

    def typical(self) -> RowLengths:
        """The mean row in place of the longest: what the step time of an average step is computed from."""
        if self.mean is None:
            return self
        return RowLengths(round(self.mean), self.source, self.rows, round(self.mean_answer or 0) or None,
                          problem=self.problem)


def packs_rows(recipe: Recipe) -> bool:
    """Whether training packs rows into max_length sequences: training.packing true, or continued pre-training's
    blocks under `auto` (train/cpt.py)."""
    packing = recipe.training.packing
    return packing is True or (recipe.method.kind == "cpt" and packing == "auto")


def with_sft_replay(recipe: Recipe, lengths: RowLengths) -> RowLengths:
    """`lengths` with the replay rows that join an SFT dataset as ordinary rows (data.replay.loss sft, the default
    for adapters that change the base's weights: train/sft.py `with_replay`), as the bundled rows' lengths; the
    lengths themselves where replay trains through the KL anchor, is off, or the rows are unknown."""
    replay = recipe.data.replay
    if recipe.method.kind != "sft" or not lengths.rows or replay.resolved_loss(recipe.adapter.kind) != "sft":
        return lengths
    extra = replay_rows(recipe, lengths.rows)
    if not extra:
        return lengths
    rows = lengths.rows + extra
    mean = None if lengths.mean is None else (lengths.mean * lengths.rows + REPLAY_MEAN_TOKENS * extra) / rows
    uncut = None if lengths.uncut_tokens is None else lengths.uncut_tokens + REPLAY_MEAN_TOKENS * extra
    return replace(lengths, longest=max(lengths.longest, REPLAY_TOKENS), rows=rows, mean=mean, uncut_tokens=uncut,
                   source=f"{lengths.source} and {extra:,} replay rows (data.replay.loss sft)")


def sequences_per_epoch(recipe: Recipe, lengths: RowLengths, block: int) -> int | None:
    """Sequences one epoch trains: the rows, or where rows are packed into `block`-token sequences, their tokens
    over the block (BFD packing fills blocks nearly full; continued pre-training's blocks are full). None when the
    rows are unknown."""
    if not lengths.rows:
        return None
    if not packs_rows(recipe) or lengths.mean is None:
        return lengths.rows
    # continued pre-training wraps documents across blocks (nothing is cut); SFT's BFD packing cuts a longer row
    wrapped = recipe.method.kind == "cpt" and lengths.uncut_tokens
    tokens = lengths.uncut_tokens if wrapped else lengths.mean * lengths.rows
    return max(1, -(-round(tokens) // block))


def trained_weights(recipe: Recipe, arch: Architecture, memory_bytes: float | None = None,
                    half_frozen_base: bool = False) -> TrainedWeights:
    """The parameters the recipe's adapter trains, how the frozen base is stored, and the layer inputs
    data.replay.null_space keeps bases for (none where training will skip it on a device of `memory_bytes`).
    `half_frozen_base` (`loads_frozen_base_in_half`): the base loads in the half dtype of mixed precision."""
    adapter = recipe.adapter
    kind = adapter.kind
    if kind in WHOLE_MODEL_KINDS:
        count = whole_model_trained(adapter, arch)
        return TrainedWeights(count, True, reference_copy=recipe.method.kind in REFERENCE_KINDS)
    linears = adapted_linears(adapter, arch) if hasattr(adapter, "targets") else []
    rank = int(getattr(adapter, "r", getattr(adapter, "init_r", 0)) or 0)
    count = adapter_parameters(adapter, arch, linears, rank)
    quantization = ("nf4" if adapter.bits == 4 else "int8") if kind == "qlora" else "none"
    weights = TrainedWeights(count, False, quantization, [(x.in_features, x.out_features) for x in linears], rank,
                             dropout=bool(getattr(adapter, "dropout", 0)),
                             base_bytes=2.0 if half_frozen_base and kind in BASE_PRESERVING_KINDS else 4.0)
    if not recipe_null_space(recipe):
        return weights
    if memory_bytes is not None and not null_space_fits(arch, weights, memory_bytes):
        return replace(weights, null_space_skipped=True)
    return replace(weights, null_space_inputs=null_space_inputs(linears))


def loads_frozen_base_in_half(recipe: Recipe, device_kind: str, compute_bytes: float) -> bool:
    """Whether training loads an adapter's frozen base in the half dtype (train/common.frozen_base_dtype, the rule
    this mirrors): on a GPU under bf16/fp16 mixed precision (`compute_bytes` 2), where FSDP/DeepSpeed do not
    flatten the weights into one dtype. The adapter kind is `trained_weights`'s to check."""
    return device_kind != "cpu" and compute_bytes == 2.0 and recipe.training.distributed.strategy in ("none", "ddp")


def null_space_inputs(linears: list[LinearLayer]) -> list[int]:
    """in_features of each distinct tensor the adapted linears read: q/k/v read one, gate/up another (llama-style
    blocks; train/null_space.py finds the sharing from the tensors themselves)."""
    seen = {(x.block, SHARED_INPUTS.get(x.name, x.name)): x.in_features for x in linears}
    return list(seen.values())


def whole_model_trained(adapter: Any, arch: Architecture) -> int:
    """full: every parameter; hft: half the blocks per round; partial: the last blocks (their share)."""
    body = arch.parameters - arch.embedding_parameters
    if adapter.kind == "full":
        return arch.parameters
    if adapter.kind == "hft":
        return body // 2
    return body * min(adapter.last_blocks, arch.layers) // max(arch.layers, 1) + (
        arch.embedding_parameters if adapter.train_lm_head else 0)


def names_layers_or_blocks(adapter: Any) -> bool:
    """Whether the adapter section names layers or blocks (`check_targets_exist` has something to check): a list of
    targets, a list of block indices, a partial run's last_blocks."""
    return (isinstance(getattr(adapter, "targets", None), list) or isinstance(getattr(adapter, "layers", None), list)
            or getattr(adapter, "last_blocks", None) is not None)


def check_targets_exist(adapter: Any, arch: Architecture, model_name: str) -> None:
    """Refuse adapter.targets names that match no layer of the model (a typo, or another family's names): PEFT
    would stop with NoMatchingPeftModuleError only once the weights had loaded. A dotted name is matched by its
    last part, as PEFT matches a module name's suffix; the embeddings are `check_targets_fit_model`'s. Blocks the
    model does not have (adapter.layers, a partial run's last_blocks) are refused too: `plan` would count them as
    nothing trained, and training would stop at them once the weights had loaded."""
    from tunesmith.errors import RecipeError

    layers, last_blocks = getattr(adapter, "layers", "all"), getattr(adapter, "last_blocks", None)
    missing = [index for index in layers if index >= arch.layers] if isinstance(layers, list) else []
    if missing:
        raise RecipeError(f"adapter.layers: block(s) {missing} do not exist; {model_name} has {arch.layers} "
                          f"(0–{arch.layers - 1}).",
                          "Use indices below the model's num_hidden_layers, or first-half / last-half.")
    if last_blocks is not None and last_blocks > arch.layers:
        raise RecipeError(f"adapter.last_blocks={last_blocks}, but {model_name} has {arch.layers} blocks.",
                          f"Use at most {arch.layers}, or kind: full.")
    targets = getattr(adapter, "targets", None)
    if not isinstance(targets, list):
        return  # presets (qv, qkvo, mlp, all-linear) are resolved against the model itself
    known = {layer.name for layer in arch.linears}
    unknown = [name for name in targets if name.split(".")[-1] not in known | EMBEDDING_NAMES]
    if unknown:
        import difflib

        close = {name: difflib.get_close_matches(name.split(".")[-1], sorted(known), n=1) for name in unknown}
        guesses = "".join(f" Did you mean {close[name][0]!r} for {name!r}?" for name in unknown if close[name])
        raise RecipeError(f"adapter.targets names {unknown}, which match no layer of {model_name} (its blocks' linear "
                          f"layers are {sorted(known)}).{guesses}",
                          "Use those names, or a preset: qv, qkvo, mlp or all-linear.")


EMBEDDING_NAMES = {"embed_tokens", "lm_head", "wte", "embed_in", "embed_out"}


def adapted_linears(adapter: Any, arch: Architecture) -> list[LinearLayer]:
    """The linear layers LoRA-style adapters sit on: the target preset or list, in the chosen blocks."""
    targets = TARGET_PRESETS[adapter.targets] if isinstance(adapter.targets, str) else adapter.targets
    blocks = chosen_blocks(getattr(adapter, "layers", "all"), arch.layers)
    return [x for x in arch.linears if x.block in blocks and (targets == "all-linear" or x.name in targets)]


def chosen_blocks(layers: str | list[int], count: int) -> set[int]:
    if isinstance(layers, list):
        return set(layers)
    half = count // 2
    return {"all": set(range(count)), "first-half": set(range(half)), "last-half": set(range(half, count))}[layers]


def adapter_parameters(adapter: Any, arch: Architecture, linears: list[LinearLayer], rank: int) -> int:
    """LoRA: r x (in + out) per adapted linear (Hu et al. 2021); DoRA adds a magnitude per output; IA3 one
    vector per target; prompt/prefix tuning: virtual tokens x hidden (prefix: per layer, keys and values)."""
    kind = adapter.kind
    if kind in ("prompt_tuning", "p_tuning"):
        extra = adapter.encoder_hidden_size * arch.hidden_size * 2 if kind == "p_tuning" else 0
        return adapter.virtual_tokens * arch.hidden_size + extra
    if kind == "prefix_tuning":
        return adapter.virtual_tokens * arch.layers * 2 * arch.kv_width
    if kind == "ia3":
        return sum(x.out_features for x in arch.linears)
    lora = sum(rank * (x.in_features + x.out_features) for x in linears)
    return lora + (sum(x.out_features for x in linears) if kind == "dora" else 0)


def sequence_length(recipe: Recipe, lengths: RowLengths, packed: bool) -> int:
    """Tokens per sequence of the heaviest micro-batch: the block length when rows are packed, else the longest
    row within data.max_length (`auto` never cuts below the longest row: data/lengths.py)."""
    limit = recipe.data.max_length
    if limit == "auto":
        limit = auto_max_length(lengths.longest, None, packed_text=recipe.method.kind == "cpt")
    return limit if packed else min(lengths.longest, limit)


def micro_step(recipe: Recipe, lengths: RowLengths, packed: bool, memory_bytes: float = 0.0,
               accelerator: bool = False) -> Workload:
    """The tokens one micro-batch holds, by method: preference pairs put chosen and rejected in one batch; GRPO
    trains batch_size completions of prompt + max_completion_length and caches them while sampling; DPO/KTO
    add a reference pass; SFT with a KL replay anchor trains replay rows in the same backward, beside the base's
    log-probabilities on them, kept after one base pass a row (up to REFERENCE_CACHE_SHARE of `memory_bytes`,
    the device's, or REFERENCE_CACHE_ACCELERATOR_BYTES on an `accelerator`)."""
    t, method = recipe.training, recipe.method
    if lengths.rows and lengths.rows < t.batch_size:  # a batch holds at most the dataset
        t = t.model_copy(update={"batch_size": lengths.rows})
    length = sequence_length(recipe, lengths, packed)
    if method.kind == "grpo":
        full = length + method.max_completion_length
        return Workload(t.batch_size, full, generated_sequences=t.batch_size,
                        logits_tokens=t.batch_size * method.max_completion_length,
                        frozen_pass_tokens=t.batch_size * full if method.beta > 0 else 0)
    if method.kind == "reward":
        return Workload(2 * t.batch_size, length, logits_tokens=0)
    replay = replay_tokens(recipe)
    anchor = {"trained_extra_tokens": replay, "frozen_pass_tokens": replay, "replay_share": replay_share(recipe),
              "kept_reference_tokens": (anchor_row_tokens(recipe)[1] * replay_rows(recipe, lengths.rows))
              if replay else 0,
              "kept_reference_limit_bytes": REFERENCE_CACHE_ACCELERATOR_BYTES if accelerator
              else REFERENCE_CACHE_SHARE * memory_bytes}
    if method.kind in PREFERENCE_KINDS:
        pairs = 2 * t.batch_size if method.kind != "kto" else t.batch_size
        reference = pairs * length if method.kind in REFERENCE_KINDS else 0
        if method.kind == "kto":  # KTO's KL term: a mismatched completion per row, without gradients
            reference += t.batch_size * length
        return Workload(pairs, length, **{**anchor, "frozen_pass_tokens": reference + replay})
    answer = min(lengths.longest_answer or length, length)
    # SFT projects only the labelled positions to the vocabulary (train/upstream.py), the replay anchor every one;
    # continued pre-training every position of its blocks
    logits = t.batch_size * answer + replay if method.kind == "sft" else None
    return Workload(t.batch_size, length, logits_tokens=logits, packed=packed, **anchor)


def recipe_replay_ratio(recipe: Recipe) -> float:
    """The recipe's data.replay.ratio, or the default its validation sets (a recipe copied without validation)."""
    replay = recipe.data.replay
    if replay.ratio is not None:
        return replay.ratio
    loss = replay.resolved_loss(recipe.adapter.kind)
    return default_replay_ratio(recipe.method.kind, loss, null_space_planned(
        replay.null_space, recipe.method.kind, recipe.adapter.kind, loss, recipe.training.distributed.strategy))


def recipe_null_space(recipe: Recipe) -> float:
    """The recipe's data.replay.null_space, or the default its validation sets (a recipe copied without it)."""
    replay = recipe.data.replay
    if replay.null_space is not None:
        return replay.null_space
    anchored = bool(recipe_replay_ratio(recipe)) and replay.resolved_loss(recipe.adapter.kind) == "kl"
    return default_null_space(recipe.method.kind, recipe.adapter.kind, anchored, recipe.training.distributed.strategy)


def replay_rows(recipe: Recipe, rows: int | None) -> int:
    """Replay rows beside `rows` training rows: ratio x rows, at most the bundled set's prompts when it is the source
    (a file of one's own may hold fewer too); 0 when the rows are unknown."""
    replay = recipe.data.replay
    ratio = recipe_replay_ratio(recipe)
    if not rows:
        return 0
    if replay.source != "bundled":
        return round(ratio * rows)
    available = sum(1 for line in BUNDLED_REPLAY.read_text(encoding="utf-8").splitlines() if line.strip())
    return replay_count(ratio, rows, available)


def replay_share(recipe: Recipe) -> float:
    """The share of a step's micro-batches that carry replay rows: where round(ratio x rows per step) is fewer than the
    micro-batches, one row each on that many of them (train/replay.py `replay_anchor`), else all."""
    t = recipe.training
    per_step = max(1, round(recipe_replay_ratio(recipe) * t.batch_size * t.grad_accum))
    return min(per_step, t.grad_accum) / t.grad_accum


def replay_tokens(recipe: Recipe) -> int:
    """Tokens of the replay rows that join each micro-batch through the KL anchor (config.ANCHORED_METHODS, with an
    adapter that leaves the base untouched); 0 when replay is off or trains as ordinary rows."""
    replay = recipe.data.replay
    ratio = recipe_replay_ratio(recipe)
    if recipe.method.kind not in ANCHORED_METHODS or not ratio or replay.resolved_loss(recipe.adapter.kind) != "kl":
        return 0
    if recipe.adapter.kind not in BASE_PRESERVING_KINDS:
        return 0
    return max(1, round(ratio * recipe.training.batch_size)) * anchor_row_tokens(recipe)[0]
