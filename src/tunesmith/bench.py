"""`tunesmith bench train`: tunesmith's default training against plain TRL scripts, on the same work, side by side.

Four variants train the same model with LoRA r=16 on all linear layers, one epoch over the same rows, at the
same batch (in rows) and max_length, each in its own subprocess (so its peak memory is its own):
- `trl-plain`: SFTTrainer + LoraConfig as the guides write it, SFTConfig defaults (bf16 autocast, gradient
  checkpointing, loss on every token) except the shared settings and `use_cpu=True`, without which it does
  not start on a CPU;
- `trl-expert`: what a knowledgeable user sets: fp32 weights and compute on CPU, no gradient checkpointing,
  BFD packing, completion-only loss (prompt/completion rows), lr 2e-4;
- `tunesmith`: `tunesmith train` with the data paths and the shared settings only (its SFT default includes the
  replay anchor against forgetting: extra passes over general rows each step, counted in MFU, not in tokens/s);
- `tunesmith-no-replay`: the same with `data.replay.ratio: 0`, the TRL scripts' work and no more.
Run only when named: `tunesmith-checkpointing` (no replay, activation checkpointing on) and
`tunesmith-anchor-16` (the anchor on each replay row's prompt and first 16 answer tokens:
`data.replay.anchor_answer_tokens: 16`), and `trl-expert-kept-malloc` (trl-expert with glibc's malloc keeping
freed blocks for the next step, as `tunesmith train` sets it on a CPU without checkpointing); for a GPU,
`trl-expert-liger` (`use_liger_kernel`), `trl-expert-qlora` (the base in 4-bit NF4, bf16 compute) and
`tunesmith-qlora` (`adapter.kind: qlora`, without replay); `tunesmith-bf16` / `tunesmith-no-replay-bf16`
(`training.precision: bf16`: bf16 autocast, where `auto` on a CPU multiplies only the frozen base in bf16);
`tunesmith-fp32` (the default with `training.precision: fp32`); `tunesmith-unfused` (`training.fused_lora: false`:
PEFT's own LoRA forward); `tunesmith-unmerged` (micro-batches of one row set in the recipe, so that each runs as
its own pass: the spread rows' default before micro-batch merging); and
`trl-expert-micro-K`: trl-expert with `per_device_train_batch_size=K` and gradient accumulation to the same batch,
what the expert does when the whole batch runs out of memory. The ratios are taken to trl-expert, or where it
failed, to the fastest `trl-expert-micro-K` that ran (`reference_variant`). On a
GPU the expert loads the base in bf16 and trains under bf16 autocast; tunesmith does the same by default
(`frozen_base_dtype`).

For each: tokens per second (all positions, not padding, carrying loss), wall time, peak RSS (CUDA: peak
allocation), final training loss, held-out loss (the same function for all: mean cross-entropy of the
answers of 32 held-out rows), MFU against this machine's matmul peak in the variant's compute dtype (measured
first, in the same run), and the ratios to the reference (trl-expert). For tunesmith, also the null space's set-up
before training (`data.replay.null_space`), which the timed steps do not include, as the TRL scripts' tokenization
is not.
"""

from __future__ import annotations

import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

VARIANTS = ("trl-plain", "trl-expert", "tunesmith", "tunesmith-no-replay")
# not run unless named: tunesmith-no-replay with activation checkpointing on at the whole batch, the plan's way to
# fit long rows before it preferred micro-batches (`plan.fit.fitting_changes`), to compare the two side by side;
# the anchor on the replay rows' first 16 answer tokens, to compare with the default's whole rows; and trl-expert
# with glibc's malloc set as tunesmith sets it on a CPU (`keep_freed_blocks_for_reuse`), to tell that share apart
# On a GPU: trl-expert with Liger's kernels (fused linear cross-entropy, RMSNorm, RoPE, SwiGLU), and QLoRA (4-bit
# NF4 base, bitsandbytes) as each side sets it up (tunesmith's without replay: the TRL script's work)
# tunesmith-micro-K (any K dividing the batch): without replay, micro-batches of K rows accumulated to the same batch
# (K = the batch: the whole batch at once, what the plan would otherwise split on a CPU); -bf16: with and without
# replay under training.precision bf16 (bf16 autocast, also on a CPU); -fp32: the default under training.precision
# fp32 (the frozen base's matmuls too, where auto runs them in bf16 on a CPU with fast bf16);
# trl-expert-micro-K (any K dividing the batch): trl-expert with micro-batches of K packed rows accumulated to the
# batch, the expert's answer to running out of memory
EXTRA_VARIANTS = ("tunesmith-checkpointing", "tunesmith-anchor-16", "trl-expert-kept-malloc", "trl-expert-liger",
                  "trl-expert-qlora", "tunesmith-qlora", "tunesmith-micro-4", "tunesmith-micro-2",
                  "tunesmith-bf16", "tunesmith-no-replay-bf16", "tunesmith-fp32", "trl-expert-micro-2",
                  "trl-expert-micro-1", "tunesmith-unfused", "tunesmith-unmerged")
# data.replay settings of each tunesmith variant beside the data paths
REPLAY_SETTINGS = {"tunesmith": {}, "tunesmith-no-replay": {"ratio": 0}, "tunesmith-checkpointing": {"ratio": 0},
                   "tunesmith-anchor-16": {"anchor_answer_tokens": 16},
                   "tunesmith-qlora": {"ratio": 0}, "tunesmith-micro-4": {"ratio": 0},
                   "tunesmith-micro-2": {"ratio": 0}, "tunesmith-bf16": {}, "tunesmith-fp32": {},
                   "tunesmith-unfused": {}, "tunesmith-unmerged": {}}
# training settings of each tunesmith variant beside the shared ones
TRAINING_SETTINGS = {"tunesmith-checkpointing": {"gradient_checkpointing": True},
                     "tunesmith-bf16": {"precision": "bf16"}, "tunesmith-no-replay-bf16": {"precision": "bf16"},
                     "tunesmith-fp32": {"precision": "fp32"}, "tunesmith-unfused": {"fused_lora": False}}
DATASETS = ("quickstart", "tickets", "spread")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"
BUNDLED = {"quickstart": "orders", "tickets": "tickets"}
EVAL_ROWS = 32


def variant_mfu(figures: dict[str, Any], peaks: dict[str, float]) -> float:
    """A variant's MFU against this invocation's peaks: its bf16 FLOPs (the frozen linears tunesmith casts, from
    train.json `bf16_tflops`) against the bf16 peak, the rest against its dtype's (`mixed_peak`)."""
    from tunesmith.train.throughput import mfu, mixed_peak

    peak = peaks[figures["dtype"]]
    bf16 = figures.get("bf16_flops", 0.0)
    if bf16:
        peak = mixed_peak(figures["model_flops"], bf16, peak, peaks["bf16"])
    return mfu(figures["model_flops"], figures["seconds"], peak)


def spread_rows(count: int, seed: int) -> list[dict[str, Any]]:
    """Rows whose lengths spread evenly from ~40 (the chat template's own) to ~1,000 tokens (SmolLM2's
    tokenizer): a text of random words, and the task of naming its last word. Batched at random, a third of
    every batch would be padding."""
    rng = random.Random(seed)
    words = ["river", "stone", "amber", "window", "copper", "lantern", "meadow", "signal", "harbor", "violet",
             "engine", "paper", "orbit", "canyon", "thunder", "basket", "mirror", "velvet", "falcon", "garden"]
    rows = []
    for index in range(count):
        length = 1 + int((index + rng.random()) / count * 950)
        text = " ".join(rng.choice(words) for _ in range(length))
        rows.append({"messages": [{"role": "user", "content": f"Name the last word of this text.\n{text}"},
                                  {"role": "assistant", "content": text.rsplit(" ", 1)[-1]}]})
    rng.shuffle(rows)
    return rows


def dataset_files(name: str, rows: int, folder: Path) -> tuple[Path, Path]:
    """train.jsonl (the first `rows` rows) and eval.jsonl (EVAL_ROWS rows) of a benchmark dataset, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    if name == "spread":
        train, held = spread_rows(rows, seed=0), spread_rows(EVAL_ROWS, seed=1)
    elif not (EXAMPLES / BUNDLED[name]).is_dir():
        from tunesmith.errors import TunesmithError

        raise TunesmithError(f"The {name} dataset is read from {EXAMPLES / BUNDLED[name]}, which this installation "
                             "does not have.",
                             "Run the benchmark from a tunesmith checkout (`tunesmith bench train --datasets spread` "
                             "needs none: its rows are generated).")
    else:
        source = EXAMPLES / BUNDLED[name]
        train = [json.loads(line) for line in (source / "train.jsonl").read_text().splitlines()[:rows]]
        held = [json.loads(line) for line in (source / "eval.jsonl").read_text().splitlines()[:EVAL_ROWS]]
    paths = folder / "train.jsonl", folder / "eval.jsonl"
    for path, part in zip(paths, (train, held), strict=True):
        path.write_text("".join(json.dumps(row) + "\n" for row in part), encoding="utf-8")
    return paths


def run_benchmark(model: str = "smollm2-135m-instruct", datasets: tuple[str, ...] = DATASETS,
                  variants: tuple[str, ...] = VARIANTS, rows: int = 64, spread_rows_count: int = 24,
                  batch_size: int = 8, max_length: int = 512, out: Path | None = None,
                  report: Callable[[str], None] = print) -> dict[str, Any]:
    """Every variant on every dataset, one subprocess each; returns (and writes to `out`) the figures."""
    import torch

    from tunesmith.models import resolve_model_source
    from tunesmith.plan.devices import matmul_peak
    from tunesmith.runs import atomic_write_json, environment_snapshot

    model_dir = resolve_model_source(model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    def measured_peaks() -> dict[str, float]:
        peaks = {dtype: matmul_peak(getattr(torch, name), device, seconds=1.0)
                 for dtype, name in (("fp32", "float32"), ("bf16", "bfloat16"))}
        report(f"matmul peak ({device}): fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} "
               "GFLOP/s")
        return peaks

    peaks = measured_peaks()
    results: dict[str, Any] = {"model": model, "batch_size": batch_size, "max_length": max_length,
                               "peak_flops": peaks, "environment": environment_snapshot(), "datasets": {}}
    with tempfile.TemporaryDirectory(prefix="tunesmith-bench-") as tmp:
        for name in datasets:
            count = spread_rows_count if name == "spread" else rows
            length = max(max_length, 1024) if name == "spread" else max_length
            train, held = dataset_files(name, count, Path(tmp) / name)
            figures = {}
            for variant in variants:
                report(f"{name}: {variant} ({count} rows, batch {batch_size}, max_length {length}) ...")
                figures[variant] = run_worker(variant, model_dir, train, held, batch_size, length, Path(tmp))
                figures[variant]["mfu"] = variant_mfu(figures[variant], peaks)
                report(f"  {summary_line(figures[variant])}")
                results["datasets"][name] = {"rows": count, "max_length": length, "variants": figures,
                                             "reference": reference_variant(figures),
                                             "ratios_to_trl_expert": ratios(figures)}
                if out is not None:  # after each variant: a benchmark stopped midway keeps what it measured
                    atomic_write_json(out, results)
    # a shared host's peak moves within minutes (bf16 471 and 1,120 GFLOP/s in one hour): MFU is against the higher
    # of the peaks measured before and after the variants, so that a slow moment at the start does not inflate it
    results["peak_flops_start"], after = peaks, measured_peaks()
    results["peak_flops"] = peaks = {dtype: max(peaks[dtype], after[dtype]) for dtype in peaks}
    for dataset in results["datasets"].values():
        for figures in dataset["variants"].values():
            figures["mfu"] = variant_mfu(figures, peaks)
    if out is not None:
        atomic_write_json(out, results)
    return results


def run_worker(variant: str, model_dir: Path, train: Path, held: Path, batch_size: int, max_length: int,
               tmp: Path) -> dict[str, Any]:
    result_file = tmp / f"{variant}-{train.parent.name}.json"
    command = [sys.executable, "-m", "tunesmith.bench", variant, str(model_dir), str(train), str(held),
               str(batch_size), str(max_length), str(result_file)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not result_file.is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        return {"failed": f"exit code {done.returncode}: {tail}", "seconds": 1, "model_flops": 0, "dtype": "fp32"}
    return json.loads(result_file.read_text())


def reference_variant(figures: dict[str, dict[str, Any]]) -> str | None:
    """The variant the ratios are taken to: trl-expert where it ran, else the fastest `trl-expert-micro-K` that ran
    (the expert's own way out of an out-of-memory batch), else None."""
    if "trl-expert" in figures and "failed" not in figures["trl-expert"]:
        return "trl-expert"
    fitted = [name for name, f in figures.items() if name.startswith("trl-expert-micro-") and "failed" not in f]
    return max(fitted, key=lambda name: figures[name]["real_tokens_per_s"], default=None)


def ratios(figures: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Each variant's tokens/s, peak memory and held-out loss over the reference's (`reference_variant`)."""
    reference = reference_variant(figures)
    expert = figures[reference] if reference else {}

    def ratio(value: Any, reference: Any) -> float | None:
        return round(value / reference, 3) if value and reference else None

    return {name: {key: ratio(f.get(key), expert.get(key))
                   for key in ("real_tokens_per_s", "loss_tokens_per_s", "peak_rss_mb", "peak_cuda_mb",
                               "heldout_loss")}
            for name, f in figures.items()}


def summary_line(f: dict[str, Any]) -> str:
    if "failed" in f:
        return f"failed: {f['failed']}"
    cuda = f", CUDA {f['peak_cuda_mb']:.0f} MB" if "peak_cuda_mb" in f else ""
    return (f"{f['real_tokens_per_s']:.1f} tokens/s ({f['loss_tokens_per_s']:.1f} with loss), {f['seconds']:.0f} s, "
            f"peak RSS {f['peak_rss_mb']:.0f} MB{cuda}, MFU {f['mfu']:.0%}, train loss {f['final_loss']}, "
            f"held-out loss {f['heldout_loss']:.4f}"
            + (f"; null-space set-up {f['null_space_setup_s']} s before training" if "null_space_setup_s" in f else ""))


def markdown_table(results: dict[str, Any]) -> str:
    """One row per dataset and variant, for README.md; peak memory is the CUDA allocator's on a GPU, else RSS. Where a
    dataset's ratios are to a `trl-expert-micro-K` (trl-expert failed), a line under the table says so."""
    gpu = any("peak_cuda_mb" in f for block in results["datasets"].values() for f in block["variants"].values())
    memory = "peak_cuda_mb" if gpu else "peak_rss_mb"
    lines = [f"| dataset | variant | tokens/s (not padding) | x trl-expert | with loss/s | wall s | "
             f"peak {'CUDA' if gpu else 'RSS'} MB | x trl-expert | MFU | held-out loss |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, block in results["datasets"].items():
        for variant, f in block["variants"].items():
            if "failed" in f:
                lines.append(f"| {name} | {variant} | failed | | | | | | | |")
                continue
            r = block["ratios_to_trl_expert"][variant]
            lines.append(f"| {name} | {variant} | {f['real_tokens_per_s']:.1f} | {r['real_tokens_per_s'] or ''} | "
                         f"{f['loss_tokens_per_s']:.1f} | {f['seconds']:.0f} | {f[memory]:.0f} | "
                         f"{r[memory] or ''} | {f['mfu']:.0%} | {f['heldout_loss']:.4f} |")
    lines += [f"\n{name}: the ratios are to {block['reference']} (trl-expert's whole batch did not run)"
              for name, block in results["datasets"].items()
              if block.get("reference") not in (None, "trl-expert")]
    return "\n".join(lines)


# --- the workers: one variant, in its own process ------------------------------------------------------------


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def as_prompt_completion(row: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": row["messages"][:-1], "completion": row["messages"][-1:]}


def trl_worker(variant: str, model_dir: Path, train: Path, batch_size: int, max_length: int,
               output_dir: Path) -> tuple[Any, Any, dict[str, Any]]:
    """A plain TRL script (as written in TRL's and PEFT's guides), or the expert's; returns (model, tokenizer,
    figures). The expert trains in fp32 on a CPU and in bf16 (weights and autocast) on a GPU; `-liger` adds
    `use_liger_kernel`, `-qlora` loads the base in 4-bit NF4 with bf16 compute (bitsandbytes), as PEFT's QLoRA
    guide does."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    rows = read_rows(train)
    gpu = torch.cuda.is_available()
    micro_batch = int(variant.rsplit("-", 1)[1]) if variant.startswith("trl-expert-micro-") else batch_size
    shared = {"output_dir": str(output_dir), "num_train_epochs": 1, "per_device_train_batch_size": micro_batch,
              "gradient_accumulation_steps": batch_size // micro_batch,
              "max_length": max_length, "use_cpu": not gpu, "report_to": "none",
              "save_strategy": "no", "logging_steps": 1, "seed": 0}
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    if variant == "trl-plain":
        args, model, dataset = SFTConfig(**shared), str(model_dir), Dataset.from_list(rows)
    else:
        args = SFTConfig(**shared, bf16=gpu, fp16=False, gradient_checkpointing=False, packing=True,
                         packing_strategy="bfd", completion_only_loss=True, learning_rate=2e-4,
                         use_liger_kernel=variant == "trl-expert-liger")
        loading: dict[str, Any] = {"dtype": torch.bfloat16 if gpu else torch.float32}
        if variant == "trl-expert-qlora":
            from transformers import BitsAndBytesConfig

            loading["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(model_dir, **loading)
        dataset = Dataset.from_list([as_prompt_completion(row) for row in rows])
    dtype = "bf16" if args.bf16 else "fp32"  # TRL turns bf16 autocast on when it is left unset
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, peft_config=lora,
                         processing_class=AutoTokenizer.from_pretrained(model_dir))
    return trainer.model, trainer.processing_class, {"dtype": dtype, **timed_train(trainer)}


def timed_train(trainer: Any) -> dict[str, Any]:
    from tunesmith.train.throughput import TokenCounter, count_trained_batches, model_shape, training_flops

    counter = TokenCounter()
    count_trained_batches(trainer, counter)
    started = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - started
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {**counter.figures(seconds), "seconds": round(seconds, 1), "steps": trainer.state.global_step,
            "final_loss": losses[-1] if losses else None,
            "model_flops": training_flops(counter, model_shape(trainer.model))}


def tunesmith_worker(model_dir: Path, train: Path, held: Path, batch_size: int, max_length: int,
                     runs_dir: Path, replay: dict[str, Any] | None = None, training: dict[str, Any] | None = None,
                     adapter: dict[str, Any] | None = None,
                     micro_batch: int | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """`tunesmith train` on a recipe with the data paths and the shared settings only: planned for this device
    first, as `train` does (micro-batches or activation checkpointing where the batch would not fit). `replay`:
    data.replay settings over the defaults (`{"ratio": 0}`: without the replay anchor, the same work as the TRL
    scripts do); `training`: training settings over the shared ones (`{"precision": "fp32"}`); `adapter`: the
    adapter section (`{"kind": "qlora"}`); `micro_batch`: rows per micro-batch, accumulated to `batch_size` a step."""
    from tunesmith.config import validate_recipe
    from tunesmith.models.tuned import load_tuned
    from tunesmith.plan import plan_recipe
    from tunesmith.plan.fit import fit_recipe
    from tunesmith.runs import create_run
    from tunesmith.train import run_training

    recipe, note = fit_recipe(validate_recipe({
        "name": "bench", "model": {"source": str(model_dir)},
        "data": {"train": str(train), "eval": str(held), "max_length": max_length,
                 **({"replay": replay} if replay else {})},
        **({"adapter": adapter} if adapter else {}),
        "training": {"epochs": 1, "save_steps": 100_000,
                     **({"batch_size": micro_batch, "grad_accum": batch_size // micro_batch} if micro_batch
                        else {"batch_size": batch_size}),
                     **(training or {})}}))
    if note:
        print(note, file=sys.stderr, flush=True)
    planned = plan_recipe(recipe, recipe.training.device)  # what `tunesmith plan` says a step takes, to compare
    run = create_run(recipe, runs_dir)
    run_training(recipe, run)
    report = json.loads((run.path / "train.json").read_text())
    speed = report["throughput"]
    import torch

    tokenizer, model = load_tuned(run, device="cuda" if torch.cuda.is_available() else "cpu")
    figures = {key: speed[key] for key in ("tokens", "real_tokens", "loss_tokens", "tokens_per_s",
                                           "real_tokens_per_s", "loss_tokens_per_s", "padding_share", "seconds")}
    return model, tokenizer, {"dtype": report["precision"], **figures, "steps": report["steps"],
                              "final_loss": report["final_loss"], "model_flops": speed["model_tflops"] * 1e12,
                              "bf16_flops": speed.get("bf16_tflops", 0.0) * 1e12,
                              "packing": report.get("packing"),
                              "activation_checkpointing": recipe.training.gradient_checkpointing,
                              "micro_batch": recipe.training.batch_size, "grad_accum": recipe.training.grad_accum,
                              "frozen_matmuls": speed.get("frozen_matmuls", "fp32"),
                              "plan_step_seconds": round(planned.step_seconds, 3),
                              "step_seconds": round(speed["seconds"] / max(report["steps"], 1), 3),
                              **null_space_setup(report)}


def null_space_setup(report: dict[str, Any]) -> dict[str, Any]:
    """The null space's set-up before training (outside the timed steps): its seconds, of which reading the replay
    rows (the anchor's base pass, kept), from train.json's replay block; {} where it did not run."""
    space = report.get("replay", {}).get("null_space") or {}
    if "seconds" not in space:
        return {}
    return {"null_space_setup_s": space["seconds"], "null_space_read_s": space.get("read_seconds")}


def unmerged_micro_batch(variant: str) -> int | None:
    """Rows per micro-batch that a variant sets in its recipe (training.grad_accum with it: the micro-batches run
    as they are, not merged): K for `tunesmith-micro-K`, 1 for `tunesmith-unmerged`; None where the plan decides."""
    if variant.startswith("tunesmith-micro-"):
        return int(variant.rsplit("-", 1)[1])
    return 1 if variant == "tunesmith-unmerged" else None


def worker_main(argv: list[str]) -> None:
    import torch

    from tunesmith.eval.decoding import heldout_loss

    variant, model_dir, train, held, batch, length, out = argv
    model_dir, train, held, out = Path(model_dir), Path(train), Path(held), Path(out)
    with tempfile.TemporaryDirectory(prefix=f"bench-{variant}-") as tmp:
        if variant.startswith("tunesmith"):
            model, tokenizer, figures = tunesmith_worker(model_dir, train, held, int(batch), int(length), Path(tmp),
                                                         replay=REPLAY_SETTINGS.get(variant, {"ratio": 0}),
                                                         training=TRAINING_SETTINGS.get(variant),
                                                         adapter={"kind": "qlora"} if variant.endswith("qlora")
                                                         else None,
                                                         micro_batch=unmerged_micro_batch(variant))
        else:
            if variant == "trl-expert-kept-malloc":
                from tunesmith.train.upstream import keep_freed_blocks_for_reuse

                keep_freed_blocks_for_reuse()
            model, tokenizer, figures = trl_worker(variant, model_dir, train, int(batch), int(length), Path(tmp))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        figures["peak_rss_mb"] = round(rss, 1)
        if torch.cuda.is_available():
            figures["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
        with torch.no_grad():  # a 4-bit base cannot be cast; it is scored as it trained
            figures["heldout_loss"] = round(heldout_loss((model if quantized else model.float()).eval(), tokenizer,
                                                         read_rows(held), int(length), 8), 4)
    out.write_text(json.dumps(figures), encoding="utf-8")


if __name__ == "__main__":
    worker_main(sys.argv[1:])
