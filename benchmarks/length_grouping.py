"""Padding of length-grouped batches on the bench's spread set (rows of ~40 to ~1,000 tokens, tunesmith.bench
`spread_rows`): tunesmith's sampler (train/distributed.py `group_by_global_batch`) against transformers'
LengthGroupedSampler, the same seeds, the same rows, batch 8, with the embedded model's tokenizer. No training:
the share of padded positions follows from the order alone.

    .venv/bin/python benchmarks/length_grouping.py [--rows 24,64,256] [--seeds 5]

Writes benchmarks/results/length_grouping.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

from tunesmith.runs import atomic_write_json, environment_snapshot

RESULTS = Path(__file__).resolve().parent / "results" / "length_grouping.json"
BATCH = 8


def padding_share(order: list[int], lengths: list[int], batch_size: int) -> float:
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return round(1 - sum(lengths) / sum(max(lengths[i] for i in b) * len(b) for b in batches), 4)


def main() -> None:
    import torch
    from datasets import Dataset
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from tunesmith.bench import spread_rows
    from tunesmith.data.template import encode_split
    from tunesmith.models import load_tokenizer
    from tunesmith.models.registry import cached_model_dir
    from tunesmith.train.distributed import group_by_global_batch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="24,64,256")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    tokenizer = load_tokenizer(cached_model_dir("smollm2-135m-instruct"))
    results = {"batch_size": BATCH, "environment": environment_snapshot(), "sets": {}}
    for count in (int(n) for n in args.rows.split(",")):
        lengths = [len(e.input_ids) for e in encode_split(tokenizer, spread_rows(count, seed=0), 1024).examples]
        trainer = SimpleNamespace(args=SimpleNamespace(train_sampling_strategy="group_by_length",
                                                       per_device_train_batch_size=BATCH,
                                                       gradient_accumulation_steps=1),
                                  train_dataset=Dataset.from_list([{"input_ids": [0] * n} for n in lengths]),
                                  processing_class=None)
        group_by_global_batch(trainer)
        rows = []
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            ours = padding_share(list(trainer._get_train_sampler()), lengths, BATCH)
            torch.manual_seed(seed)
            theirs = padding_share(list(LengthGroupedSampler(BATCH, lengths=lengths)), lengths, BATCH)
            rows.append({"seed": seed, "tunesmith": ours, "transformers": theirs})
        results["sets"][str(count)] = {"shortest": min(lengths), "longest": max(lengths), "seeds": rows}
        print(f"{count} rows ({min(lengths)}-{max(lengths)} tokens): padded share tunesmith "
              f"{[r['tunesmith'] for r in rows]}, transformers {[r['transformers'] for r in rows]}")
    atomic_write_json(RESULTS, results)


if __name__ == "__main__":
    main()
