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
from contextlib import nullcontext
from pathlib import Path

from adapter_scale import save_entry, scoring_setup  # benchmarks/ is on sys.path when a script in it runs

ROOT = Path(__file__).resolve().parents[1]


def measure(run_dir: Path, lambdas: list[float], top_k: int, epsilon: float) -> dict:
    from peft.tuners.lora.intruders import reduce_intruder_dimension

    recipe, score, model = scoring_setup(run_dir)
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
    save_entry(args.out, {"label": args.label or args.run.name,
                          **measure(args.run, [float(s) for s in args.lambdas.split(",")], args.top_k,
                                    args.epsilon)})


if __name__ == "__main__":
    main()
