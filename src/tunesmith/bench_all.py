"""`tunesmith bench all`: every stage's speed on this machine, in one invocation, one JSON and one table.

- train: tunesmith's default against the TRL expert's script on the same rows (`bench.run_benchmark`, each variant
  in its own process): tokens/s, MFU, peak memory, held-out loss, and the ratio;
- prepare: `data prepare` (load, normalize, PII redaction, exact and MinHash near-dedup, split, token lengths,
  write) on synthetic conversational rows with planted near-duplicates and fake PII (`data.synthetic`): rows/s;
- eval: batched greedy generation on the held-out rows of a short quickstart-shaped run, base and tuned: answer
  tokens per second;
- export: the same run merged, written as GGUF (seconds, and seconds per GB of the file), and the llama.cpp check of
  that file against the merged checkpoint (seconds), where llama-cpp-python is installed.

Run it on an otherwise idle machine: the stages run one after another.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.bench import dataset_files, run_benchmark

GB = 1e9


TRAIN_DATASETS = ("quickstart", "tickets")
TRAIN_VARIANTS = ("trl-expert", "tunesmith")


def run_all(model: str = "smollm2-135m-instruct", rows: int = 64, prepare_rows: int = 20_000,
            datasets: tuple[str, ...] = TRAIN_DATASETS, variants: tuple[str, ...] = TRAIN_VARIANTS,
            pipeline_steps: int = 8, eval_examples: int = 32, out: Path | None = None,
            report: Callable[[str], None] = print) -> dict[str, Any]:
    """Each stage's figures (see the module's docstring), written to `out` after each stage."""
    from tunesmith.runs import atomic_write_json, environment_snapshot

    results: dict[str, Any] = {"model": model, "environment": environment_snapshot()}

    def keep(stage: str, figures: dict[str, Any]) -> None:
        results[stage] = figures
        if out is not None:
            atomic_write_json(out, results)

    report("train: tunesmith's default against the TRL expert's script, side by side ...")
    keep("train", run_benchmark(model, datasets, variants, rows, out=None, report=report))
    report(f"prepare: {prepare_rows:,} synthetic rows ...")
    keep("prepare", prepare_throughput(model, prepare_rows))
    report(f"  {results['prepare']['prepare_rows_per_s']:,} rows/s")
    report(f"eval and export: a {pipeline_steps}-step run on the quickstart rows, {eval_examples} held-out rows ...")
    keep("pipeline", pipeline_figures(model, pipeline_steps, eval_examples))
    return results


def prepare_throughput(model: str, rows: int) -> dict[str, Any]:
    """`prepare_data` on `rows` synthetic rows (10% near-duplicates, 5% with PII; cleaning: PII redacted, near-dedup):
    its seconds and rows/s, each cleaning step's seconds, and the share of planted near-duplicates removed."""
    from tunesmith.config import validate_recipe
    from tunesmith.data.synthetic import make_dataset
    from tunesmith.data.workflow import prepare_data

    data = make_dataset(rows, near_dup_fraction=0.1, pii_fraction=0.05, seed=0)
    with tempfile.TemporaryDirectory(prefix="tunesmith-bench-prepare-") as tmp:
        source = Path(tmp) / "synthetic.jsonl"
        source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data.rows), encoding="utf-8")
        recipe = validate_recipe({"name": "bench-prepare", "model": {"source": model},
                                  "data": {"train": str(source), "eval_fraction": 0.05,
                                           "clean": {"pii": "redact", "dedup": "near"}}, "base_dir": tmp})
        started = time.perf_counter()
        prepared = prepare_data(recipe, Path(tmp) / "out")
        seconds = time.perf_counter() - started
    steps = prepared["cleaning"]["train"]
    removed = next((s.get("removed") for s in steps if s["step"] == "dedup_near"), None)
    return {"rows": rows, "seconds": round(seconds, 1), "prepare_rows_per_s": round(rows / seconds),
            "step_seconds": {s["step"]: s["seconds"] for s in steps},
            "planted_near_duplicates": len(data.near_duplicates), "near_dedup_removed": removed}


def pipeline_figures(model: str, steps: int, eval_examples: int) -> dict[str, Any]:
    """A short run on the quickstart rows (the data paths, `steps` steps), then: its eval's generation speed, base and
    tuned (answer tokens per second of batched greedy decoding); the merge, the GGUF write (recipe default type)
    and llama.cpp's check of the file, each timed."""
    from tunesmith.config import validate_recipe
    from tunesmith.eval import run_eval
    from tunesmith.export.gguf import run_gguf_export
    from tunesmith.export.merged import run_export
    from tunesmith.export.verify import llama_cpp_available, verify_gguf
    from tunesmith.results import read_results
    from tunesmith.runs import create_run
    from tunesmith.train import run_training

    with tempfile.TemporaryDirectory(prefix="tunesmith-bench-pipeline-") as tmp:
        train, held = dataset_files("quickstart", 400, Path(tmp) / "data")
        recipe = validate_recipe({
            "name": "bench-pipeline", "model": {"source": model}, "data": {"train": str(train), "eval": str(held)},
            "training": {"max_steps": steps, "save_steps": 100_000},
            "eval": {"max_examples": eval_examples, "probes": False, "baselines": []},
            "export": {"formats": ["adapter"]}, "base_dir": tmp})
        run = create_run(recipe, Path(tmp) / "runs")
        run_training(recipe, run)
        started = time.perf_counter()
        results = read_results(run_eval(recipe, run))
        figures: dict[str, Any] = {"steps": steps, "eval_examples": eval_examples,
                                   "eval_seconds": round(time.perf_counter() - started, 1),
                                   "generation": {side: generation_speed(getattr(results, side))
                                                  for side in ("base", "tuned")}}
        started = time.perf_counter()
        run_export(recipe, run, ["merged"])
        figures["merge_seconds"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        target = run_gguf_export(recipe, run, recipe.export.quant, verify=False)
        seconds = time.perf_counter() - started
        size = sum(f.stat().st_size for f in ([target] if target.is_file() else target.glob("*.gguf")))
        figures["gguf"] = {"quant": recipe.export.quant, "seconds": round(seconds, 1), "bytes": size,
                           "seconds_per_gb": round(seconds / (size / GB), 1) if size else None}
        if llama_cpp_available():
            started = time.perf_counter()
            check = verify_gguf(target, run.exports_dir / "merged", recipe.export.quant)
            figures["gguf"]["verify_seconds"] = round(time.perf_counter() - started, 1)
            figures["gguf"]["verify_agreement"] = check.agreement
        else:
            print("bench all: llama-cpp-python is not installed, so the GGUF check is not timed "
                  "(pip install 'tunesmith[gguf]')", file=sys.stderr, flush=True)
    return figures


def generation_speed(side: dict[str, Any] | None) -> dict[str, Any] | None:
    """Answer tokens per second of one side's eval (results.json's mean answer tokens over mean seconds per
    answer: batched greedy decoding, eval.batch_size rows at a time)."""
    if not side or not side.get("seconds_per_answer"):
        return None
    return {"answer_tokens": side["answer_tokens"], "seconds_per_answer": side["seconds_per_answer"],
            "tokens_per_s": round(side["answer_tokens"] / side["seconds_per_answer"], 1)}


def markdown_table(results: dict[str, Any]) -> str:
    """One row per stage and figure, for README.md."""
    lines = ["| stage | what | figure |", "|---|---|---|"]
    for name, block in results.get("train", {}).get("datasets", {}).items():
        for variant, f in block["variants"].items():
            if "failed" in f:
                lines.append(f"| train | {name}: {variant} | failed |")
                continue
            ratio = block["ratios_to_trl_expert"][variant]["real_tokens_per_s"]
            lines.append(f"| train | {name}: {variant} | {f['real_tokens_per_s']:.1f} tokens/s"
                         f"{f' ({ratio}x trl-expert)' if ratio and variant != 'trl-expert' else ''}, MFU "
                         f"{f['mfu']:.0%}, peak {f.get('peak_cuda_mb') or f['peak_rss_mb']:,.0f} MB |")
    prepare = results.get("prepare")
    if prepare:
        lines.append(f"| prepare | {prepare['rows']:,} rows (PII redaction, near-dedup) | "
                     f"{prepare['prepare_rows_per_s']:,} rows/s ({prepare['seconds']} s) |")
    pipeline = results.get("pipeline")
    if pipeline:
        for side, speed in pipeline["generation"].items():
            if speed:
                lines.append(f"| eval | {side}: batched greedy answers | {speed['tokens_per_s']} tokens/s "
                             f"({speed['answer_tokens']} tokens in {speed['seconds_per_answer']} s an answer) |")
        gguf = pipeline["gguf"]
        lines.append(f"| export | merge adapter into the base | {pipeline['merge_seconds']} s |")
        lines.append(f"| export | GGUF {gguf['quant']} ({gguf['bytes'] / GB:.3f} GB) | {gguf['seconds']} s, "
                     f"{gguf['seconds_per_gb']} s per GB |")
        if "verify_seconds" in gguf:
            lines.append(f"| export | llama.cpp check of the GGUF | {gguf['verify_seconds']} s "
                         f"(agreement {gguf['verify_agreement']:.3f}) |")
    return "\n".join(lines)
