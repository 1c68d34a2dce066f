"""Does removing a finished LoRA adapter's intruder dimensions give back the probes and keep the task?

Shuttleworth et al. 2024 ("LoRA vs Full Fine-tuning: An Illusion of Equivalence", arXiv:2410.21228) find that
LoRA's updated weights carry new high-ranking singular vectors nearly orthogonal to the base's ("intruder
dimensions"), tie them to forgetting, and scale them down after training. PEFT implements that post-hoc step
(`peft.tuners.lora.intruders.reduce_intruder_dimension`); this scores the run's held-out rows (the task's
headline metric, greedy) and the bundled probes for the adapter as trained and after the reduction at each
`mitigation_lambda` (PEFT's default 0.75), on one loaded base, and writes
benchmarks/results/intruder_dimensions.json (one entry per run, replaced when measured again):

    .venv/bin/python benchmarks/intruder_dimensions.py RUN_DIR [--lambdas 0.75,0.5]
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(run_dir: Path, lambdas: list[float], top_k: int, epsilon: float) -> dict:
    import torch
    from peft import PeftModel
    from peft.tuners.lora.intruders import reduce_intruder_dimension

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
    points = [{"mitigation_lambda": None, **score(model, nullcontext, "as trained")}]
    for value in lambdas:
        name = f"reduced_{round(value * 100)}"  # module names cannot hold a dot
        found: list[str] = []
        reduce_intruder_dimension(model, old_adapter_name="default", new_adapter_name=name, top_k=top_k,
                                  threshold_epsilon=epsilon, mitigation_lambda=value, logging_sink=found.append)
        points.append({"mitigation_lambda": value,
                       "layers_with_intruders": sum("Intruders:" in line for line in found),
                       "layers": sum("ntruders" in line for line in found),
                       **score(model, nullcontext, f"intruders x {value:g}")})
        model.set_adapter("default")
    return {"run": str(run_dir), "recipe": recipe.name, "metric": score.metric, "top_k": top_k,
            "threshold_epsilon": epsilon, "points": points}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--lambdas", default="0.75,0.5")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--epsilon", type=float, default=0.5)
    parser.add_argument("--label", default=None, help="the entry's name (default: the run's folder)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/intruder_dimensions.json")
    args = parser.parse_args()
    entries = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else []
    entry = {"label": args.label or args.run.name,
             **measure(args.run, [float(s) for s in args.lambdas.split(",")], args.top_k, args.epsilon)}
    entries = [e for e in entries if e["label"] != entry["label"]] + [entry]
    args.out.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
