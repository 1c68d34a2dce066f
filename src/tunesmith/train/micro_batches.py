"""A step's short micro-batches merged into fewer passes, on a CPU, where the plan sized them by the longest row.

On a CPU the plan trains a batch of long rows as micro-batches of up to `CPU_MICRO_TOKENS` tokens (`plan/fit.py`
`cpu_micro_batches`), sized by the data's longest row, so one long row makes every step run one-row passes, the
steps of short rows too. A pass has a fixed cost (~0.14 s for SmolLM2-135M with LoRA on every linear on the 2-core
Xeon: one 40-token row took 0.23 s, one of 200 tokens 0.59 s; `benchmarks/step_profile.py`), so those steps pay it
per row: on short rows with a long tail (`benchmarks/long_tail_batches.py`) the one-row steps took 3 s where the
whole batch took 1-2 s, and the whole batch's steps that held the long rows took 23-40 s. Merged, that run trained
511 tokens/s against 308 (1.66x) with 3% padding; on rows whose lengths spread evenly from 40 to 1,024 tokens, 401
against 400.

Here each step's micro-batches (fetched together by transformers' Trainer, `get_batch_samples`) are regrouped, by
length, into as few passes as keep each within the tokens the plan sized one micro-batch for (rows x the longest
row, at most `CPU_MICRO_TOKENS`); the slots they leave hold `MergedAway`, which runs no pass. The step's gradient is
the same: the loss is summed over tokens and divided by the step's count of loss tokens (`num_items_in_batch`,
counted before the merge), and padding carries no loss. With the replay anchor (`train/replay.py`), each slot draws
as before, a merged-away slot running the anchor's pass alone.
"""

from __future__ import annotations

from typing import Any

import torch

MERGED_KEYS = frozenset({"input_ids", "attention_mask", "labels"})


class MergedAway(dict):
    """A micro-batch slot whose rows went into an earlier pass of the same step."""


def batch_length(batch: dict[str, Any]) -> int:
    return int(batch["input_ids"].shape[1])


def mergeable(batches: list[Any]) -> bool:
    """Row batches of input_ids, attention_mask and labels only, padded on the right (each row's first position is
    real), so that rows can be joined by padding them to a common length."""
    return len(batches) > 1 and all(
        isinstance(b, dict) and set(b) == MERGED_KEYS and b["input_ids"].dim() == 2
        and bool(b["attention_mask"][:, 0].all()) for b in batches)


def joined(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """The rows of `batches` as one batch, right-padded to the longest (input id 0 and attention 0 there, labels
    -100: the padding is masked and carries no loss)."""
    length = max(batch_length(b) for b in batches)
    fill = {"input_ids": 0, "attention_mask": 0, "labels": -100}
    return {key: torch.cat([torch.nn.functional.pad(b[key], (0, length - batch_length(b)), value=fill[key])
                            for b in batches]) for key in ("input_ids", "attention_mask", "labels")}


def merge_micro_batches(batches: list[Any], tokens: int) -> list[Any]:
    """`batches` (one optimizer step's micro-batches) regrouped, longest first, into passes of at most `tokens`
    padded positions each (rows x the pass's longest row; a micro-batch over it stays alone); the same number of
    slots, the passes first, then `MergedAway` for each slot left over. Unchanged where not `mergeable`."""
    if not mergeable(batches):
        return batches
    ordered = sorted(batches, key=batch_length, reverse=True)
    groups: list[list[dict[str, Any]]] = []
    for batch in ordered:
        group = groups[-1] if groups else None
        rows = batch["input_ids"].shape[0]
        if group is not None and (sum(b["input_ids"].shape[0] for b in group) + rows) * batch_length(group[0]) \
                <= tokens:
            group.append(batch)
        else:
            groups.append([batch])
    passes = [group[0] if len(group) == 1 else joined(group) for group in groups]
    return passes + [MergedAway() for _ in range(len(batches) - len(passes))]


def merging(trainer_class: type) -> type:
    """`trainer_class` whose steps merge their micro-batches (`merge_micro_batches`) up to `micro_batch_tokens`
    padded positions a pass (None: as the Trainer fetched them)."""

    class MicroBatchMergingTrainer(trainer_class):
        micro_batch_tokens: int | None = None

        def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list, Any]:
            batches, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
            if self.micro_batch_tokens:
                batches = merge_micro_batches(batches, self.micro_batch_tokens)
            return batches, num_items_in_batch

        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
            if not isinstance(inputs, MergedAway):
                return super().training_step(model, inputs, num_items_in_batch)
            alone = getattr(self, "anchor_alone", None)  # the replay anchor's draw for this slot, if it has one
            if alone is not None:
                return alone(model, num_items_in_batch)
            return torch.zeros((), device=self.args.device)

        def _track_num_input_tokens(self, inputs: Any) -> None:
            if not isinstance(inputs, MergedAway):
                super()._track_num_input_tokens(inputs)

    return MicroBatchMergingTrainer
