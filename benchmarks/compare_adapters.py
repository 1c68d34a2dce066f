"""N adapters switched on one base (what `tunesmith compare` does) vs N separate model loads.

The adapters are LoRA adapters made with PEFT's random init (`init_lora_weights=False`), not trained:
their cost in memory and time is the same as trained ones, and their answers differ from the base's.
Each approach runs in its own fresh subprocess, which reports its wall time (loading and generating)
and its peak RSS (`ru_maxrss`); "separate" keeps all N models resident at once, as serving N
fine-tunes as N models would. Both must give the same answers, which the script checks.

    .venv/bin/python benchmarks/compare_adapters.py [--model smollm2-135m-instruct] [--adapters 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ORDERS_EVAL = Path(__file__).resolve().parents[1] / "examples" / "data" / "orders" / "eval.jsonl"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_adapters(model_dir: Path, count: int, rank: int, target: Path) -> list[Path]:
    """`count` random-init LoRA adapters on every linear layer (rank `rank`), saved in PEFT format."""
    from peft import LoraConfig, get_peft_model

    from tunesmith.models import load_model

    paths = []
    for index in range(count):
        torch.manual_seed(index)
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules="all-linear", init_lora_weights=False)
        model = get_peft_model(load_model(model_dir), config)
        with torch.no_grad():  # scale the random B down so answers change but stay language-like
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.mul_(0.02)
        model.save_pretrained(target / f"adapter-{index}")
        paths.append(target / f"adapter-{index}")
    return paths


def run_switch(model_dir: Path, adapters: list[Path], prompts: list, max_new: int, batch: int) -> list[list[str]]:
    """One base, every adapter attached to it, `set_adapter` between them."""
    from tunesmith.eval.compare import AdapterSource, attach_adapters, generate_for, peft_name
    from tunesmith.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    sources = [AdapterSource(path.name, path, model_dir) for path in adapters]
    model = attach_adapters(load_model(model_dir).eval(), sources)
    answers = []
    for index, source in enumerate(sources):
        model.set_adapter(peft_name(index, source.name))
        answers.append(generate_for(model, tokenizer, prompts, max_new, batch))
    return answers


def run_separate(model_dir: Path, adapters: list[Path], prompts: list, max_new: int, batch: int) -> list[list[str]]:
    """One full model (base + its adapter) per adapter, all kept loaded."""
    from peft import PeftModel

    from tunesmith.eval.compare import generate_for
    from tunesmith.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    models = [PeftModel.from_pretrained(load_model(model_dir), path).eval() for path in adapters]
    return [generate_for(model, tokenizer, prompts, max_new, batch) for model in models]


def child(mode: str, model_dir: Path, adapters: list[Path], count: int, max_new: int, batch: int) -> None:
    """Runs in the subprocess: prints one JSON line with the time, the memory and the answers."""
    from tunesmith.eval.compare import load_prompts

    prompts = load_prompts(ORDERS_EVAL)[:count]
    baseline = peak_rss_mb()  # interpreter + torch + transformers, before any model
    started = time.perf_counter()
    approach = run_switch if mode == "switch" else run_separate
    answers = approach(model_dir, adapters, prompts, max_new, batch)
    print(json.dumps({"mode": mode, "seconds": round(time.perf_counter() - started, 2),
                      "peak_rss_mb": round(peak_rss_mb(), 1), "rss_after_imports_mb": round(baseline, 1),
                      "answers": answers}))


def measure(mode: str, model_dir: Path, adapters: list[Path], args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--model-dir", str(model_dir), "--prompts", str(args.prompts),
               "--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.batch_size),
               *[arg for path in adapters for arg in ("--adapter-dir", str(path))]]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"{mode} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="Model alias or checkpoint folder.")
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", choices=["switch", "separate"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--adapter-dir", type=Path, action="append", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.model_dir, args.adapter_dir, args.prompts, args.max_new_tokens, args.batch_size)
        return

    from tunesmith.models import resolve_model_source

    model_dir = resolve_model_source(args.model)
    with tempfile.TemporaryDirectory(prefix="compare-adapters-") as tmp:
        adapters = make_adapters(model_dir, args.adapters, args.rank, Path(tmp))
        switch = measure("switch", model_dir, adapters, args)
        separate = measure("separate", model_dir, adapters, args)
    same = switch.pop("answers") == separate.pop("answers")
    report = {"model": args.model, "adapters": args.adapters, "rank": args.rank, "prompts": args.prompts,
              "max_new_tokens": args.max_new_tokens, "adapter_init": "random (init_lora_weights=False)",
              "switch": switch, "separate": separate, "same_answers": same,
              "memory_ratio_separate_over_switch": round(separate["peak_rss_mb"] / switch["peak_rss_mb"], 2),
              "model_memory_ratio": round((separate["peak_rss_mb"] - separate["rss_after_imports_mb"])
                                          / (switch["peak_rss_mb"] - switch["rss_after_imports_mb"]), 2),
              "time_ratio_separate_over_switch": round(separate["seconds"] / switch["seconds"], 2)}
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def print_report(report: dict) -> None:
    switch, separate = report["switch"], report["separate"]
    print(f"{report['adapters']} LoRA adapters (r={report['rank']}, {report['adapter_init']}) on {report['model']}, "
          f"{report['prompts']} prompts x {report['max_new_tokens']} new tokens each")
    print(f"{'':28}{'switch (1 base)':>18}{'separate loads':>18}{'ratio':>8}")
    print(f"{'wall time, s':28}{switch['seconds']:>18.2f}{separate['seconds']:>18.2f}"
          f"{report['time_ratio_separate_over_switch']:>8.2f}")
    print(f"{'peak RSS, MB':28}{switch['peak_rss_mb']:>18.1f}{separate['peak_rss_mb']:>18.1f}"
          f"{report['memory_ratio_separate_over_switch']:>8.2f}")
    print(f"{'peak RSS above imports, MB':28}{switch['peak_rss_mb'] - switch['rss_after_imports_mb']:>18.1f}"
          f"{separate['peak_rss_mb'] - separate['rss_after_imports_mb']:>18.1f}{report['model_memory_ratio']:>8.2f}")
    print(f"same answers from both: {report['same_answers']}")


if __name__ == "__main__":
    main()
