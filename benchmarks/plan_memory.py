"""`tunesmith plan`'s memory estimate against the measured peak, on recipes across methods, adapter kinds and
lengths: each case runs `tunesmith train` for two optimizer steps in its own subprocess (its peak RSS, read from
VmHWM, is its own; on a GPU its `torch.cuda.max_memory_allocated`), beside `plan_recipe(..., DEVICE)` for the
same recipe. Length-grouped batches put the longest batch first, so two steps reach the run's peak.

    .venv/bin/python benchmarks/plan_memory.py [--only NAME,...] [--device cpu|cuda]

The `llama-1b-*` cases train a random-initialised llama of TinyLlama-1.1B's shape (made here, with SmolLM2's
tokenizer; replay off, since a random model's answers are noise), LoRA and 4-bit QLoRA: fp32 compute on a CPU,
bf16 mixed precision on a GPU. Writes benchmarks/results/plan_memory.json (GPU rows: plan_memory_cuda.json) and prints
the README's table. The target: every estimate within ±25% of the measured peak.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from tunesmith.plan.devices import peaks_of_tunesmith

REPO = Path(__file__).resolve().parents[1]
RESULTS = {"cpu": REPO / "benchmarks" / "results" / "plan_memory.json",
           "cuda": REPO / "benchmarks" / "results" / "plan_memory_cuda.json"}
STEPS = ["training.max_steps=2", "training.save_steps=1000", "training.logging_steps=1"]
# name: (recipe, --set overrides)
CASES: dict[str, tuple[str, list[str]]] = {
    "sft-lora-short": ("recipes/quickstart.yaml", []),
    "sft-lora-long": ("recipes/tickets.yaml", ["data.train={spread}", "data.eval={held}", "data.max_length=512"]),
    "sft-lora-long-checkpointed": ("recipes/tickets.yaml", ["data.train={spread}", "data.eval={held}",
                                                            "data.max_length=512",
                                                            "training.gradient_checkpointing=true"]),
    "sft-lora-long-b2": ("recipes/tickets.yaml", ["data.train={spread}", "data.eval={held}", "data.max_length=1024",
                                                  "training.batch_size=2"]),
    "sft-full": ("recipes/quickstart.yaml", ["adapter=full", "training.lr=1e-5", "training.batch_size=4"]),
    "sft-qlora": ("recipes/quickstart.yaml", ["adapter=qlora"]),
    "dpo-lora": ("recipes/dpo.yaml", []),
    "grpo-lora": ("recipes/grpo.yaml", []),
    "llama-1b-lora": ("recipes/quickstart.yaml", ["model.source={llama1b}", "data.replay.ratio=0"]),
    "llama-1b-qlora": ("recipes/quickstart.yaml", ["model.source={llama1b}", "data.replay.ratio=0", "adapter=qlora"]),
}


def random_llama_1b(folder: Path) -> Path:
    """A random-initialised llama of TinyLlama-1.1B's shape (22 blocks, hidden 2,048, MLP 5,632, 32 heads over 4
    key/value heads; untied embeddings) over SmolLM2's tokenizer and chat template, saved in bf16: 1.2B
    parameters with SmolLM2's 49,152-token vocabulary."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunesmith.models.source import resolve_model_source

    target = folder / "llama-1b-random"
    if (target / "config.json").is_file():
        return target
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source("smollm2-135m-instruct"))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                         num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def recipe_file(recipe: str, sets: list[str], folder: Path) -> tuple[Path, list[str]]:
    """The recipe to run, and the overrides left: `adapter=KIND` replaces the whole adapter section (a copy of
    the recipe with absolute data paths is written to `folder`), since --set cannot drop the LoRA keys."""
    whole = [s.split("=", 1)[1] for s in sets if s.startswith("adapter=")]
    if not whole:
        return REPO / recipe, sets
    import yaml

    raw = yaml.safe_load((REPO / recipe).read_text(encoding="utf-8"))
    raw["adapter"] = {"kind": whole[0]}
    for key in ("train", "eval"):
        raw["data"][key] = str((REPO / recipe).parent / raw["data"][key])
    path = folder / f"{Path(recipe).stem}-{whole[0]}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path, [s for s in sets if not s.startswith("adapter=")]


def measured_peak(recipe: Path, sets: list[str], runs_dir: Path, device: str) -> tuple[float, int]:
    """Peak of one `tunesmith train` process in bytes (CPU: its own VmHWM; GPU: its max_memory_allocated), and
    its exit code."""
    args = ["train", str(recipe), "--runs-dir", str(runs_dir)]
    for item in [*sets, *STEPS]:
        args += ["--set", item]
    peaks, code, tail = peaks_of_tunesmith(args, runs_dir)
    if code:
        print(tail, file=sys.stderr)
    return float(peaks["cuda_bytes" if device == "cuda" else "rss_bytes"] or 0.0), code


def estimated(recipe: Path, sets: list[str], device: str) -> dict:
    from tunesmith.config import load_recipe
    from tunesmith.plan import plan_recipe

    report = plan_recipe(load_recipe(recipe, [*sets, *STEPS]), device)
    return {"peak_bytes": report.peak_bytes, "components": {c.name: c.bytes for c in report.components},
            "sequences": report.sequences, "length": report.length}


def spread_files(folder: Path) -> dict[str, Path]:
    """Rows of 40 to ~1,000 tokens (tunesmith.bench's spread set): long rows that make activations count."""
    from tunesmith.bench import spread_rows

    files = {"spread": folder / "spread.jsonl", "held": folder / "held.jsonl"}
    for path, seed in zip(files.values(), (0, 1), strict=True):
        path.write_text("".join(json.dumps(row) + "\n" for row in spread_rows(32, seed)), encoding="utf-8")
    return files


def previous_peak(case: str, device: str) -> tuple[float, int]:
    saved = json.loads(RESULTS[device].read_text())[case]
    return saved["measured_bytes"], saved["exit_code"]


def save(row: dict, device: str) -> dict:
    """Add one case to the device's results file (kept per case across invocations); all its cases."""
    results = RESULTS[device]
    old = json.loads(results.read_text()) if results.is_file() else {}
    old[row["case"]] = row
    results.write_text(json.dumps(old, indent=2) + "\n")
    return old


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--estimate-only", action="store_true",
                        help="Recompute the estimates beside the peaks measured before (no training runs).")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(CASES)
    old: dict = {}
    with tempfile.TemporaryDirectory() as runs:
        files = spread_files(Path(runs))
        if any(n.startswith("llama-1b") for n in names):
            files["llama1b"] = random_llama_1b(Path(runs))
        for name in names:
            recipe, sets = recipe_file(CASES[name][0], [s.format(**files) for s in CASES[name][1]], Path(runs))
            plan = estimated(recipe, sets, args.device)
            peak, code = (previous_peak(name, args.device) if args.estimate_only
                          else measured_peak(recipe, sets, Path(runs), args.device))
            row = {"case": name, "device": args.device, "recipe": CASES[name][0], "sets": CASES[name][1],
                   "estimated_bytes": plan["peak_bytes"],
                   "measured_bytes": peak, "exit_code": code, "ratio": round(plan["peak_bytes"] / peak, 3),
                   "components": plan["components"], "tokens": f"{plan['sequences']} x {plan['length']}"}
            print(f"{name:24} estimated {plan['peak_bytes'] / 2**30:6.2f} GiB  measured {peak / 2**30:6.2f} GiB  "
                  f"ratio {row['ratio']:.2f}  ({row['tokens']}){'  FAILED' if code else ''}", flush=True)
            old = save(row, args.device)
    print("\n| case | micro-batch | estimated GiB | measured GiB | estimate / measured |\n|---|---|---|---|---|")
    for r in old.values():
        print(f"| {r['case']} | {r['tokens']} | {r['estimated_bytes'] / 2**30:.2f} | "
              f"{r['measured_bytes'] / 2**30:.2f} | {r['ratio']:.2f} |")


if __name__ == "__main__":
    main()
