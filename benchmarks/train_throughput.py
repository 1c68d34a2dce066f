"""Training throughput, memory and quality: tunesmith's defaults against plain TRL scripts, side by side.

The same as `tunesmith bench train` (see tunesmith/bench.py for the variants and what is measured); writes
benchmarks/results/train_throughput.json and prints the README table. Run on an idle machine:

    .venv/bin/python benchmarks/train_throughput.py [--model DIR] [--datasets tickets] [--rows 64] [--spread-rows 24]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tunesmith.bench import DATASETS, VARIANTS, markdown_table, run_benchmark

RESULTS = Path(__file__).resolve().parent / "results" / "train_throughput.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a model id or folder (on a GPU: "
                        "benchmarks/random_llama.py --preset 1b)")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--spread-rows", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = run_benchmark(model=args.model, datasets=tuple(args.datasets.split(",")),
                            variants=tuple(args.variants.split(",")), rows=args.rows,
                            spread_rows_count=args.spread_rows, batch_size=args.batch_size,
                            max_length=args.max_length, out=args.out)
    print(markdown_table(results))


if __name__ == "__main__":
    main()
