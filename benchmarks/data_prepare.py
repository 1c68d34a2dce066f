"""The data stage at scale: `tunesmith data prepare` on a synthetic conversational set with planted
near-duplicates and sprinkled PII, timed step by step in one run.

Reports rows/s for loading, for normalize + PII redaction + exact dedup, for MinHash near-dedup, for the
token-length pass, and for the whole `prepare` (load → clean → split → token lengths → write + report);
plus the near-duplicate recall against the planted pairs and how many unrelated rows were removed.

    .venv/bin/python benchmarks/data_prepare.py [--rows 100000] [--model smollm2-135m-instruct] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tunesmith.config import CleanSection, validate_recipe
from tunesmith.data import recipe_tokenizer
from tunesmith.data.loaders import load_records
from tunesmith.data.prepare import clean_rows, token_lengths
from tunesmith.data.rowtext import row_text
from tunesmith.data.synthetic import make_dataset
from tunesmith.data.workflow import prepare_data


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    data = make_dataset(args.rows, near_dup_fraction=0.1, pii_fraction=0.05, seed=0)
    planted = data.near_duplicates
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "synthetic.jsonl"
        source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data.rows), encoding="utf-8")
        recipe = validate_recipe({"name": "bench", "model": {"source": args.model},
                                  "data": {"train": str(source), "eval_fraction": 0.05,
                                           "clean": {"pii": "redact", "dedup": "near"}},
                                  "base_dir": tmp})
        tokenizer = recipe_tokenizer(recipe)
        loaded, load_s = timed(lambda: load_records(source))
        rows = loaded.rows
        fast = CleanSection(normalize=True, pii="redact", dedup="exact")
        cleaned_fast, fast_s = timed(lambda: clean_rows(rows, fast))
        near_only = CleanSection(normalize=False, dedup="near")
        cleaned_near, near_s = timed(lambda: clean_rows(rows, near_only))
        _, lengths_s = timed(lambda: token_lengths(tokenizer, rows))
        report, prepare_s = timed(lambda: prepare_data(recipe, Path(tmp) / "out"))

    survivors = set(cleaned_near.origins)  # 1-based positions of the rows near-dedup kept
    duplicates = {dup for _, dup in planted}
    caught = sum(dup + 1 not in survivors for dup in duplicates)
    false_removals = sum(i + 1 not in survivors for i in range(len(rows)) if i not in duplicates)
    pii_step = next(s for s in cleaned_fast.steps if s.name == "pii_redact")
    redacted = {origin - 1: row_text(row) for origin, row in zip(cleaned_fast.origins, cleaned_fast.rows, strict=True)}
    planted_values = [(index, value) for index, values in data.pii.items() if index in redacted for value in values]
    leaked = sum(value in redacted[index] for index, value in planted_values)
    results = {
        "rows": len(rows),
        "load_rows_per_s": round(len(rows) / load_s),
        "normalize_pii_exact_rows_per_s": round(len(rows) / fast_s),
        "step_seconds": {s.name: s.seconds for s in cleaned_fast.steps},
        "minhash_rows_per_s": round(len(rows) / near_s),
        "token_lengths_rows_per_s": round(len(rows) / lengths_s),
        "prepare_total_s": round(prepare_s, 1),
        "prepare_rows_per_s": round(len(rows) / prepare_s),
        "prepare_step_seconds": {s["step"]: s["seconds"] for s in report["cleaning"]["train"]},
        "near_duplicate_recall": round(caught / max(len(duplicates), 1), 4),
        "unrelated_rows_removed": false_removals,
        "pii_found_by_kind": pii_step.details["found_by_kind"],
        "rows_with_planted_pii": len(data.pii),
        "planted_pii_values_redacted": round(1 - leaked / max(len(planted_values), 1), 4),
    }
    print(json.dumps(results, indent=2))
    print(f"\nprepare of {len(rows):,} rows: {prepare_s:.1f} s ({len(rows) / prepare_s:,.0f} rows/s); "
          f"normalize+PII+exact {len(rows) / fast_s:,.0f} rows/s; MinHash {len(rows) / near_s:,.0f} rows/s; "
          f"near-dup recall {results['near_duplicate_recall']:.3f}, unrelated removed {false_removals}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
