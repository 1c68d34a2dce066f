"""Training throughput: tokens per second and model FLOPs utilisation (MFU), measured on the batches themselves.

`TokenCounter` counts what each batch a trainer trains on holds (`count_trained_batches`): `tokens` (every
position fed, padding included), `real_tokens` (not padding) and `loss_tokens` (positions with a label). `mfu` divides
the achieved FLOP/s by this machine's matmul peak in the same dtype, measured on the spot by `matmul_peak`.

FLOPs per real token, after PaLM (Chowdhery et al. 2022, appendix B) and Kaplan et al. (2020, §2.1):
- a trained weight costs 6 FLOPs per token (2 forward, 4 backward); a frozen one 4 (its input gradient is
  still needed to reach the adapters below it, its weight gradient is not), or 2 in the blocks below the lowest
  one that trains anything (`adapter.layers: last-half`: the backward pass never reaches them);
- attention adds 12 · layers · hidden · T per token (QKᵀ and AV, forward and backward; T = padded row length),
  halved for causal masking as FlashAttention's FLOP count does; 4 instead of 12 in the blocks the backward pass
  does not reach.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

IGNORE_INDEX = -100


@dataclass
class TokenCounter:
    """The tokens of every batch trained on so far (`count_trained_batches` feeds it), and the training time."""

    tokens: int = 0
    real_tokens: int = 0
    loss_tokens: int = 0
    batches: int = 0
    attention_flops: float = 0.0  # 12 · span per real token, summed (query-key pairs); times layers · hidden later
    anchor_tokens: int = 0  # real tokens of the replay anchor's rows (data.replay) through the tuned model
    anchor_base_tokens: int = 0  # real tokens the base ran forward for the anchor (once a row, while cached)
    base_attention_flops: float = 0.0  # the base passes' attention: 4 · query-key pairs, every layer forward
    reference_tokens: int = 0  # real tokens a DPO/KTO reference pass ran forward (TRL's compute_ref_log_probs)
    reference_head_tokens: int = 0  # of those, the positions whose log-probabilities it scored (the LM head's)
    earlier_seconds: float = 0.0  # training time of the processes before a resume (the checkpoint's `state`)
    started: float | None = None  # time.monotonic() when this process's training began (`start_clock`)
    NOT_STATE: ClassVar[tuple[str, ...]] = ("started",)  # not carried from a checkpoint

    def count(self, batch: Any) -> None:
        """Add one batch. Preference batches hold several sequences per row (`prompt_input_ids`,
        `chosen_input_ids`, ...): each is counted. Batches that are not tensors yet (GRPO's prompts, which the
        trainer generates from) are counted as batches only."""
        self.batches += 1
        if not isinstance(batch, dict):
            return
        for prefix in sequence_prefixes(batch):
            ids = batch[f"{prefix}input_ids"]
            self.tokens += ids.numel()
            mask = batch.get(f"{prefix}attention_mask")
            real = int(mask.sum()) if mask is not None else ids.numel()  # padding-free batches carry no padding
            self.real_tokens += real
            labels = batch.get(f"{prefix}labels")
            completion = batch.get(f"{prefix}completion_mask")
            if labels is not None:  # shifted: the last position predicts nothing
                self.loss_tokens += int((labels[:, 1:] != IGNORE_INDEX).sum())
            elif completion is not None:  # TRL 1.x's preference batches: chosen and rejected rows, answers marked
                self.loss_tokens += int(completion[:, 1:].sum())
            elif prefix in ("chosen_", "rejected_", "completion_"):  # preference answers: the positions scored
                self.loss_tokens += real
            self.attention_flops += 12.0 * real * attention_span(batch, prefix)

    def count_generated(self, sequence_tokens: int, completion_tokens: int) -> None:
        """Add what an on-policy trainer generated and trained on (GRPO: prompts + sampled completions, TRL's
        `num_input_tokens_seen`; the completions carry the loss), which its collator never sees as token ids."""
        self.tokens += sequence_tokens
        self.real_tokens += sequence_tokens
        self.loss_tokens += completion_tokens

    def count_anchor(self, attention_mask: Any, packed: bool = False) -> None:
        """Add one replay-anchor batch (`anchor_kl`): a tuned pass with its backward over every real position
        (the LM head included). Its tokens are work, not trained task tokens: they count in the FLOPs (MFU), not
        in the tokens per second."""
        self.anchor_tokens += int(attention_mask.sum())
        self.attention_flops += 12.0 * replay_attention_pairs(attention_mask, packed)  # backward 2x forward

    def count_base_pass(self, attention_mask: Any, packed: bool = False) -> None:
        """Add one forward pass of the base over a replay batch (`BaseReference`), without gradients."""
        self.anchor_base_tokens += int(attention_mask.sum())
        self.base_attention_flops += 4.0 * replay_attention_pairs(attention_mask, packed)

    def count_reference_pass(self, batch: dict[str, Any]) -> None:
        """Add one reference forward pass over a preference batch (DPO/KTO: the base with the adapter switched off,
        or the reference model, without gradients; `scores_under_a_reference`): each sequence it holds (KTO's
        `KL_input_ids` beside `input_ids`)."""
        for prefix in ("", "KL_"):
            ids = batch.get(f"{prefix}input_ids")
            if ids is None or not hasattr(ids, "numel"):
                continue
            mask = batch.get(f"{prefix}attention_mask")
            real = int(mask.sum()) if mask is not None else ids.numel()
            completion = batch.get(f"{prefix}completion_mask")
            self.reference_tokens += real
            self.reference_head_tokens += int(completion[:, 1:].sum()) if completion is not None else real
            self.base_attention_flops += 4.0 * real * attention_span(batch, prefix)

    def start_clock(self) -> None:
        self.started = time.monotonic()

    def seconds(self) -> float:
        """Seconds of training so far: this process's since `start_clock`, plus the earlier processes' of a
        resumed run."""
        return self.earlier_seconds + (time.monotonic() - self.started if self.started is not None else 0.0)

    def state(self) -> dict[str, float | int]:
        """The counts and the training seconds so far, for a checkpoint: a run resumed from it `restore`s them,
        so that its throughput and wall time are the whole run's, not only the part after the resume."""
        counts = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self.NOT_STATE}
        return {**counts, "earlier_seconds": round(self.seconds(), 3)}

    def restore(self, state: dict[str, float | int]) -> None:
        """Continue from a checkpoint's `state` ({} from a checkpoint written before tunesmith kept one)."""
        for key, value in state.items():
            if key in self.__dataclass_fields__ and key not in self.NOT_STATE:
                setattr(self, key, value)

    def all_ranks(self) -> TokenCounter:
        """The counts summed over every rank of a multi-process run (each rank counts the batches it trained on, so
        rank 0's alone is 1/N of the work); this counter itself when alone. Every rank must call it (an all-reduce);
        the training seconds stay this process's (the ranks train in step)."""
        from tunesmith.train.distributed import summed_over_ranks

        names = [f.name for f in fields(self) if f.name not in (*self.NOT_STATE, "earlier_seconds")]
        totals = summed_over_ranks([float(getattr(self, name)) for name in names])
        return replace(self, **{name: type(getattr(self, name))(total) for name, total in zip(names, totals,
                                                                                               strict=True)})

    def figures(self, seconds: float) -> dict[str, float | int]:
        """Counts and per-second rates over `seconds` of training."""
        per_second = (lambda n: round(n / seconds, 1)) if seconds > 0 else (lambda n: 0.0)
        return {"tokens": self.tokens, "real_tokens": self.real_tokens, "loss_tokens": self.loss_tokens,
                "anchor_tokens": self.anchor_tokens, "anchor_base_tokens": self.anchor_base_tokens,
                "tokens_per_s": per_second(self.tokens), "real_tokens_per_s": per_second(self.real_tokens),
                "loss_tokens_per_s": per_second(self.loss_tokens), "padding_share": round(
                    1 - self.real_tokens / self.tokens, 4) if self.tokens else 0.0}


def count_trained_batches(trainer: Any, counter: TokenCounter) -> None:
    """Count, from now on, every batch `trainer` trains on: those its step fetches (transformers' Trainer
    `get_batch_samples`, after `train/micro_batches.py` has merged them), not those its collator builds: the data
    loader collates one batch ahead, which a run never trains on when it ends, and which a resumed run collates
    again (counting at collation put one batch too many in a finished run's train.json, two in a resumed one's).
    The counter is also `trainer.token_counter`, where the replay anchor adds its passes."""
    fetch = trainer.get_batch_samples  # the class's (merging micro-batches where it does)
    reference = scores_under_a_reference(trainer)

    def get_batch_samples(epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list[Any], Any]:
        batches, num_items_in_batch = fetch(epoch_iterator, num_batches, device)
        for batch in batches:
            counter.count(batch)
            if reference and isinstance(batch, dict):
                counter.count_reference_pass(batch)
        return batches, num_items_in_batch

    trainer.get_batch_samples = get_batch_samples
    trainer.token_counter = counter  # the replay anchor counts its passes here (train/replay.py)


def scores_under_a_reference(trainer: Any) -> bool:
    """Whether each trained batch also runs a reference forward pass: TRL 1.x DPOTrainer and KTOTrainer (the ones
    with `compute_ref_log_probs`) do it inside their loss at every step (the adapter switched off, or the reference
    model), unless the reference log-probabilities were computed once before training (`precompute_ref_logps`)."""
    return hasattr(trainer, "compute_ref_log_probs") and not getattr(trainer, "precompute_ref_logps", False)


def sequence_prefixes(batch: dict[str, Any]) -> list[str]:
    """The sequences a batch holds: "" for `input_ids`, "chosen_" for `chosen_input_ids`, and so on."""
    import torch

    return [key.removesuffix("input_ids") for key, value in batch.items()
            if key.endswith("input_ids") and isinstance(value, torch.Tensor) and value.dim() == 2]


def attention_span(batch: dict[str, Any], prefix: str = "") -> float:
    """The mean number of positions a real token attends to, causal: half its row's (or packed segment's) length.

    Padded rows: the row's padded width. Padding-free packed rows: each sequence's own length, read from the
    `position_ids` restarts (a token never attends across a sequence boundary)."""
    positions = batch.get(f"{prefix}position_ids")
    if positions is None or batch.get(f"{prefix}attention_mask") is not None:
        return batch[f"{prefix}input_ids"].shape[-1] / 2
    flat = positions.reshape(-1).tolist()
    lengths, current = [], 0
    for value in flat:
        if value == 0 and current:
            lengths.append(current)
            current = 0
        current += 1
    lengths.append(current)
    return sum(n * n for n in lengths) / max(sum(lengths), 1) / 2


def replay_attention_pairs(attention_mask: Any, packed: bool) -> float:
    """Causal query-key pairs of a right-padded replay batch: packed into one row and masked block by block
    (`train/replay.py` `replay_logits`), each row's length² / 2; padded, each real token attends to half the
    padded width."""
    lengths = attention_mask.sum(dim=1).double()
    return float((lengths**2).sum() / 2 if packed else lengths.sum() * attention_mask.shape[-1] / 2)


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP count needs: parameters outside the embeddings (frozen and trained), the LM head's size,
    the number of layers and the hidden size; of those, the frozen parameters and the layers below the lowest
    block that trains anything, which the backward pass never reaches (0 when the embeddings or the first block
    train)."""

    frozen_body: int
    trainable: int
    lm_head: int
    layers: int
    hidden: int
    frozen_unreached: int = 0
    layers_unreached: int = 0
    head_trained: bool = False  # the LM head's weight trains (full fine-tuning): 6 FLOPs per weight, not 4


def training_flops(counter: TokenCounter, shape: ModelShape) -> float:
    """Model FLOPs of the counted work: per real token 4 per frozen and 6 per trained body parameter, plus
    attention; the LM head (4 per parameter frozen, 6 trained) only at the positions that carry loss, the only ones
    it projects (an input embedding is a lookup: no FLOPs, trained or not). The replay anchor's tokens: the same
    tuned pass with the head at every position; the base's forward passes over them (2 per body and head parameter)
    where they ran. A DPO/KTO reference pass: 2 per body parameter a token (the adapter's few included), 2 per
    head parameter at the positions it scores."""
    per_token = 4.0 * shape.frozen_body - 2.0 * shape.frozen_unreached + 6.0 * shape.trainable
    head = (6.0 if shape.head_trained else 4.0) * shape.lm_head
    body = counter.real_tokens * per_token
    anchor = (counter.anchor_tokens * (per_token + head)
              + counter.anchor_base_tokens * 2.0 * (shape.frozen_body + shape.lm_head))
    reference = (counter.reference_tokens * 2.0 * (shape.frozen_body + shape.trainable)
                 + counter.reference_head_tokens * 2.0 * shape.lm_head)
    reached_layers = shape.layers - shape.layers_unreached + shape.layers_unreached / 3  # forward: 4 of 12
    return (body + anchor + reference + counter.loss_tokens * head
            + (counter.attention_flops * reached_layers + counter.base_attention_flops * shape.layers)
            * shape.hidden)


def frozen_linear_flops(counter: TokenCounter, shape: ModelShape) -> float:
    """The part of `training_flops` done by the frozen body's linear layers (the matmuls `train/frozen_matmuls.py`
    runs in bf16 on a CPU with fast bf16): the task's and the anchor's tuned passes (forward and input gradient) and
    the base's forward passes. The adapter, attention and the LM head (the tied embedding, kept fp32) are the rest."""
    per_token = 4.0 * shape.frozen_body - 2.0 * shape.frozen_unreached
    return ((counter.real_tokens + counter.anchor_tokens) * per_token
            + counter.anchor_base_tokens * 2.0 * shape.frozen_body)


def mixed_peak(flops: float, low_precision_flops: float, peak: float, low_precision_peak: float) -> float:
    """The FLOP/s at which `flops` would run if each part ran at the matmul peak of its dtype: `low_precision_flops`
    of them at `low_precision_peak` (bf16), the rest at `peak` (fp32). MFU against it is the time at peak over the
    time taken, so a step whose frozen matmuls run in bf16 is not credited with beating the fp32 peak."""
    seconds = low_precision_flops / low_precision_peak + (flops - low_precision_flops) / peak
    return flops / seconds if seconds > 0 else peak


def mfu(flops: float, seconds: float, peak: float) -> float:
    """Achieved FLOP/s over peak FLOP/s (0-1)."""
    return round(flops / seconds / peak, 4) if seconds > 0 and peak > 0 else 0.0


def weights_in(parameter: Any) -> int:
    """The weights a parameter holds: bitsandbytes packs two 4-bit weights per stored byte (QLoRA's
    `Params4bit`, whose `numel()` counts bytes), so its count is twice its elements."""
    packed = getattr(parameter, "quant_state", None) is not None and parameter.dtype.itemsize == 1
    return parameter.numel() * (2 if packed else 1)


def model_shape(model: Any) -> ModelShape:
    """The FLOP-relevant sizes of a (PEFT-wrapped) causal LM; tied embeddings are counted once, and neither
    embedding is body (frozen or trained: the input one is a lookup, the head is counted at the loss positions)."""
    params = {id(p): p for p in model.parameters()}.values()
    embeddings = {id(m.weight): m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings())
                  if m is not None and getattr(m, "weight", None) is not None}
    trainable = sum(p.numel() for p in params if p.requires_grad and id(p) not in embeddings)
    frozen_embeddings = sum(w.numel() for w in embeddings.values() if not w.requires_grad)
    frozen_body = sum(weights_in(p) for p in params if not p.requires_grad) - frozen_embeddings
    head = model.get_output_embeddings()
    head_weight = getattr(head, "weight", None) if head is not None else None
    config = model.config
    inputs = model.get_input_embeddings()
    frozen_unreached, layers_unreached = unreached_by_backward(model, set(embeddings),
                                                               id(getattr(inputs, "weight", None)))
    return ModelShape(frozen_body, trainable, head_weight.numel() if head_weight is not None else 0,
                      int(getattr(config, "num_hidden_layers", 0) or 0), int(getattr(config, "hidden_size", 0) or 0),
                      frozen_unreached, layers_unreached,
                      head_trained=head_weight is not None and head_weight.requires_grad)


BLOCK_INDEX = re.compile(r"\.layers\.(\d+)\.")


ABOVE_THE_BLOCKS = re.compile(r"(^|\.)(norm|final_layernorm|ln_f|lm_head|score|v_head)(\.|$)")


def unreached_by_backward(model: Any, embedding_ids: set[int], input_embedding_id: int | None = None
                          ) -> tuple[int, int]:
    """(frozen weights, blocks) below the lowest decoder block with a trained parameter: the backward pass stops
    there. What trains above the blocks (the final norm, an untied LM head, a score head) changes nothing; (0, 0)
    when anything below them trains (the input embeddings, a tied head, a prompt encoder)."""
    lowest, seen = None, set()
    blocks: dict[int, int] = {}
    for name, parameter in model.named_parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        match = BLOCK_INDEX.search(f".{name}")
        if parameter.requires_grad:
            if match is None:
                if id(parameter) != input_embedding_id and ABOVE_THE_BLOCKS.search(name):
                    continue
                return 0, 0
            lowest = min(lowest, int(match[1])) if lowest is not None else int(match[1])
        elif match is not None and id(parameter) not in embedding_ids:
            blocks[int(match[1])] = blocks.get(int(match[1]), 0) + weights_in(parameter)
    if not lowest:
        return 0, 0
    return sum(n for index, n in blocks.items() if index < lowest), lowest
