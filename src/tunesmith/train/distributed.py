"""What a training process needs to know when it is one rank of several: who it is, whether it writes the run
directory, and whether the ranks really formed one group.

The processes come from `accelerate launch` (or torchrun, or srun + accelerate), which set the torch.distributed
environment: RANK, WORLD_SIZE, LOCAL_RANK (torch.distributed.run docs, "Environment variables"). Only the main
process (RANK 0) writes run-directory files; every rank reads the same data in the same order.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError


@dataclass(frozen=True)
class Rank:
    """This process's place among the launched ones (RANK / WORLD_SIZE / LOCAL_RANK; 0 / 1 / 0 alone)."""

    rank: int
    world_size: int
    local_rank: int
    launched: bool = False  # started by a launcher (WORLD_SIZE set), even as the only process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def this_rank() -> Rank:
    """From the launcher's environment; a process started alone is rank 0 of 1."""
    return Rank(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)), "WORLD_SIZE" in os.environ)


def is_main_process() -> bool:
    """Whether this process writes the run directory (rank 0, or the only process)."""
    return this_rank().is_main


def check_process_group(trainer: Any) -> None:
    """Refuse to train when the launcher started several processes but they did not join one group.

    The silent failure this catches: with WORLD_SIZE=2 in the environment but no process group formed (on a
    machine without GPUs, accelerate leaves the distributed type at NO unless told to use the CPU:
    accelerate/state.py `PartialState._prepare_backend`), each process trains alone on all the data, and the
    ranks race to write the same files. Raises TunesmithError naming both counts.
    """
    expected = this_rank().world_size
    joined = trainer.accelerator.num_processes
    if expected > 1 and joined != expected:
        raise TunesmithError(
            f"The launcher started {expected} processes (WORLD_SIZE={expected}) but they did not form one training "
            f"group: this process sees {joined} (accelerate distributed type "
            f"{trainer.accelerator.distributed_type}); each would train alone.",
            "Launch with `tunesmith train RECIPE --nproc N` (it sets the backend: gloo on CPU, NCCL on CUDA), or "
            "set training.device to the device the ranks run on.")
    if expected > 1 and this_rank().is_main:
        import sys

        import torch.distributed as dist

        backend = dist.get_backend() if dist.is_initialized() else "no process group"
        print(f"{joined} processes joined one training group ({backend}); each trains on its share of every batch",
              file=sys.stderr, flush=True)


def summed_over_ranks(values: list[float]) -> list[float]:
    """Each of `values` summed over every rank (one all-reduce in float64; every rank must call it), or `values`
    themselves in a process alone."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on any (one tiny all-reduce); the flag itself when alone."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def wait_for_everyone() -> None:
    """A barrier across the ranks; nothing alone."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def wait_for_file(path: Path, timeout_s: float, what: str) -> None:
    """Wait (polling) until rank 0 has written `path`, e.g. the run directory's recipe.yaml on a shared disk.
    Raises TunesmithError after `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TunesmithError(f"Rank {this_rank().rank} waited {timeout_s:.0f} s for {what} ({path}), which rank "
                                 "0 writes, and it did not appear.",
                                 "Every node must see the same run directory (a shared file system), and rank 0 "
                                 "must have started; its log says why it did not.")
        time.sleep(0.2)


def group_by_global_batch(trainer: Any) -> None:
    """Group rows by length per global batch, the same for any number of processes, and also for small datasets.

    transformers' LengthGroupedSampler groups rows in mega-batches of up to 50 batches, a quarter of the rows
    when that is fewer, of the per-process batch: 2 processes x 4 rows would see another order than 1 process x 8
    rows. Grouping by the global batch (per process x processes x accumulation) gives every world size the same
    global batches, as `accelerate` hands process r the r-th per-process slice of each; with one process that is
    transformers' own batch. Below four batches' worth of rows transformers' mega-batch is one batch, which groups
    nothing (a 24-row set of 40-1,000-token rows padded 44% of its positions at batch 8): there all the rows form
    one mega-batch (`mega_batch_mult`). Only touches a run that groups by length.

    Each epoch's order is drawn from its own generator, seeded with training.seed + the epoch (as accelerate's
    SeedableRandomSampler does for random sampling), not from the global random state: a run resumed inside an
    epoch draws that epoch's order before the trainer restores the random state, and must draw the same one.
    """
    if trainer.args.train_sampling_strategy != "group_by_length":
        return
    from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

    class GlobalLengthGroupedSampler(LengthGroupedSampler):
        epoch = 0

        def set_epoch(self, epoch: int) -> None:  # the trainer calls it (through accelerate) before each epoch
            self.epoch = epoch

        def __iter__(self) -> Any:
            import torch

            generator = torch.Generator().manual_seed(trainer.args.seed + self.epoch)
            return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator,
                                                   mega_batch_mult=mega_batch_mult(len(self.lengths),
                                                                                   self.batch_size)))

    def sampler(train_dataset: Any = None) -> Any:
        dataset = train_dataset if train_dataset is not None else trainer.train_dataset
        names = trainer.processing_class.model_input_names if trainer.processing_class is not None else ["input_ids"]
        return GlobalLengthGroupedSampler(trainer.args.per_device_train_batch_size * this_rank().world_size
                                          * trainer.args.gradient_accumulation_steps, dataset=dataset,
                                          model_input_name=names[0])

    trainer._get_train_sampler = sampler


def mega_batch_mult(rows: int, batch_size: int) -> int | None:
    """Batches per length-sorted mega-batch: None (transformers' choice, min(rows // (4 x batch), 50)) when the
    rows fill four batches; otherwise every row in one mega-batch."""
    if rows >= 4 * batch_size:
        return None
    return max(1, -(-rows // batch_size))


def sharded_state_dict(trainer: Any, distributed: Any) -> dict[str, Any] | None:
    """The whole model's state dict gathered from the shards (fsdp, deepspeed-zero3), for rank 0 to save as a
    one-process run saves; a collective, so every rank calls it. None when each process holds whole weights.

    A launched run shards its weights even as the only process (`--nproc 1`): FSDP2 holds them as DTensors, whose
    storage safetensors cannot read ("Attempted to access the data pointer on an invalid python storage", seen on
    an H200), and ZeRO-3 as empty placeholders; so "launched", not "several processes", decides.

    DeepSpeed gathers through its engine (`trainer.deepspeed`), not the module, as transformers' `Trainer.save_model`
    does; for an adapter only the trained weights are gathered (`exclude_frozen_parameters`: a 70B base is not
    copied to rank 0's memory to save a few MB of LoRA), in the 16-bit dtype ZeRO-3 keeps them in."""
    if not distributed.shards_weights or not this_rank().launched:
        return None
    engine = getattr(trainer, "deepspeed", None)
    if engine is None:
        return trainer.accelerator.get_state_dict(trainer.model)
    if hasattr(trainer.model, "peft_config"):  # a PeftModel: its adapter is what gets saved
        return engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=True)
    return trainer.accelerator.get_state_dict(engine)
