"""Does scaling a finished LoRA adapter down keep the task and give back the probes?

Scaling the adapter's update by s in [0, 1] interpolates the weights between the base (0) and the tuned model (1),
the LoRA form of WiSE-FT (Wortsman et al. 2022, "Robust fine-tuning of zero-shot models", arXiv:2109.01903). For
each scale this scores the run's held-out rows (the task's headline metric, greedy) and the bundled probes, on
one loaded base, and writes benchmarks/results/adapter_scale.json (one entry per run, replaced when measured again):

    .venv/bin/python benchmarks/adapter_scale.py RUN_DIR [--scales 1,0.8,0.65,0.5]
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def scoring_setup(run_dir: Path) -> tuple:
    """The run's recipe, a scorer of one variant (the task's headline metric on the held-out rows, greedy, and the
    bundled probes) and the base with the run's adapter loaded, in fp32 on the CPU."""
    import torch
    from peft import PeftModel

    from tunesmith.eval.checkpoints import TaskAndProbes
    from tunesmith.eval.decoding import resolve_max_new_tokens
    from tunesmith.eval.evaluate import choose_metrics
    from tunesmith.eval.forgetting import recipe_probes
    from tunesmith.eval.rows import held_out_rows
    from tunesmith.models import load_tokenizer
    from tunesmith.models.loading import load_model
    from tunesmith.models.tuned import run_base_model
    from tunesmith.runs import open_run
    from tunesmith.scoring import recipe_scorer

    run = open_run(run_dir)
    recipe = run.load_recipe()
    tokenizer = load_tokenizer(run_base_model(run))
    rows = held_out_rows(recipe, run).rows[: recipe.eval.max_examples]
    _, choice = choose_metrics(recipe, run, rows)
    references = [row["messages"][-1]["content"] for row in rows]
    resolve_max_new_tokens(recipe.eval, tokenizer, references)
    score = TaskAndProbes(tokenizer, rows, references, recipe_scorer(recipe, choice["metrics"]), choice["metrics"],
                          recipe_probes(recipe), recipe)
    model = PeftModel.from_pretrained(load_model(run_base_model(run), torch.float32, "cpu"),
                                      run.trained_artifact()).eval()
    return recipe, score, model


def save_entry(out: Path, entry: dict) -> None:
    """Add `entry` to the JSON list in `out`, replacing the entry with the same label."""
    entries = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else []
    entries = [e for e in entries if e["label"] != entry["label"]] + [entry]
    out.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")


def measure(run_dir: Path, scales: list[float]) -> dict:
    from peft.tuners.lora import LoraLayer

    recipe, score, model = scoring_setup(run_dir)
    points = []
    for scale in scales:
        for module in model.modules():
            if isinstance(module, LoraLayer):
                module.set_scale("default", scale)  # scaling = scale x lora_alpha / r
        points.append({"scale": scale, **score(model, model.disable_adapter if scale == 0 else nullcontext,
                                               f"scale {scale:g}")})
    return {"run": str(run_dir), "recipe": recipe.name, "metric": score.metric, "points": points}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--scales", default="1,0.8,0.65,0.5")
    parser.add_argument("--label", default=None, help="the entry's name (default: the run's folder)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/adapter_scale.json")
    args = parser.parse_args()
    save_entry(args.out, {"label": args.label or args.run.name,
                          **measure(args.run, [float(s) for s in args.scales.split(",")])})


if __name__ == "__main__":
    main()
