"""How many bundled probes a change that learned nothing loses: the forgetting probes' false-alarm rate (issue 19).

A tuned run's probe count mixes what it forgot with the base's near-ties (probes whose first answer token leads
the runner-up by a hair, `benchmarks/probe_margins.py`), which any change flips. This measures the second part
alone. The base (default: the embedded SmolLM2-135M-Instruct) gets a LoRA (r 16, all-linear, as the quickstart
trains) whose A is drawn from N(0, 1/fan-in) and whose B from N(0, sigma^2), with sigma set so that the mean
KL(base || perturbed) of the first answer token on the held-out general questions
(benchmarks/data/general_heldout.jsonl) equals a target: the drift the quickstart's tuned runs show there
(`first_token_kl` in benchmarks/results/forgetting_settings.json: 0.008-0.019 nats). The perturbation teaches
nothing; every probe it loses is noise. Each seed is then asked the bundled probes exactly as eval asks them
(`tunesmith.eval.forgetting.run_probes`, the recipe defaults: margin 0.05, 24 new tokens), and the lost probes,
their base margins and the regression flag are recorded.

A second null is learned: `--self-distilled SEED ...` trains the quickstart recipe as it is (LoRA r 16, lr 1e-3,
40 steps, batch 8) with its training rows replaced by the base's own greedy answers to the bundled general
prompts (the answers shipped for the embedded model: the 123 it finishes within 160 tokens, the last 20 held out,
so 103 rows, about three passes over them) and replay off, then evaluates it as `tunesmith eval` does.
Its targets are what the base already says, so it too learns nothing; what it loses is what the optimizer's
steps alone cost.

Writes benchmarks/results/probe_noise.json and prints one line per seed and a summary per target.

    .venv/bin/python benchmarks/probe_noise.py [--targets 0.008 0.019] [--seeds 0 1 2 3 4 5]
    .venv/bin/python benchmarks/probe_noise.py --targets --self-distilled 42 1
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HELDOUT = ROOT / "benchmarks/data/general_heldout.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--targets", nargs="*", type=float, default=[0.008, 0.019],
                        help="mean first-token KL on the held-out general questions, nats")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--self-distilled", nargs="*", type=int, default=[], metavar="SEED",
                        help="also train the quickstart on the base's own answers at these training seeds")
    parser.add_argument("--runs-dir", type=Path, default=Path("/tmp/tunesmith-probe-noise"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/probe_noise.json")
    args = parser.parse_args()
    results = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else {}
    if args.targets:  # the targets measured again replace their old runs; the other targets' runs stay
        kept = [r for r in results.get("runs", []) if r["target_kl"] not in args.targets]
        measured = random_perturbations(args)
        runs = sorted(kept + measured["runs"], key=lambda r: (r["target_kl"], r["seed"]))
        results.update(measured, runs=runs, summary=summarised(runs))
    if args.self_distilled:
        results["self_distilled"] = [self_distilled(seed, args.runs_dir) for seed in args.self_distilled]
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def self_distilled(seed: int, runs_dir: Path) -> dict:
    """The quickstart recipe trained on the base's own answers (see the module's doc) at training.seed `seed`,
    evaluated; its probe result."""
    from tunesmith.config import load_recipe
    from tunesmith.data.replay import shipped_answers
    from tunesmith.eval import run_eval
    from tunesmith.results import read_results
    from tunesmith.runs import create_run
    from tunesmith.train import run_training

    answers = {prompt: answer for prompt, answer in shipped_answers("smollm2-135m-instruct", 160).items() if answer}
    rows = [{"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}
            for prompt, answer in answers.items()]
    runs_dir.mkdir(parents=True, exist_ok=True)
    train, held_out = runs_dir / "own_answers_train.jsonl", runs_dir / "own_answers_eval.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:-20]), encoding="utf-8")
    held_out.write_text("".join(json.dumps(r) + "\n" for r in rows[-20:]), encoding="utf-8")
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml", [
        f"data.train={train}", f"data.eval={held_out}", "data.replay.ratio=0", "eval.task_metric=exact_match",
        "data.max_length=512", "eval.max_new_tokens=160", f"training.seed={seed}"])
    run = create_run(recipe, runs_dir)
    run_training(recipe, run)
    probes = read_results(run_eval(recipe, run)).probes
    entry = {"seed": seed, "rows": len(rows) - 20, "run": str(run.path),
             "accuracy": {"base": probes.base.get("accuracy"), "tuned": probes.tuned.get("accuracy")},
             "regression": probes.regression, "lost": probes.lost}
    print(f"self-distilled seed {seed}: probes {entry['accuracy']['base']} -> {entry['accuracy']['tuned']}, lost "
          f"{[e['id'] for e in probes.lost]}, regression {entry['regression']}", flush=True)
    return entry


def random_perturbations(args: argparse.Namespace) -> dict:
    """The random-LoRA null at each target KL and seed: {"model", "margin", "runs"}."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tunesmith.config import EvalSection
    from tunesmith.eval.decoding import prompt_texts
    from tunesmith.eval.forgetting import BUNDLED_PROBES, general_paragraphs, load_probes, run_probes
    from tunesmith.models import load_model, load_tokenizer
    from tunesmith.models.source import resolve_model_source

    model_dir = resolve_model_source(args.model)
    tokenizer = load_tokenizer(model_dir)
    tokenizer.padding_side = "left"
    model = get_peft_model(load_model(model_dir, torch.float32, "cpu"),
                           LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")).eval()
    heldout = prompt_texts(tokenizer, [{"messages": [{"role": "user", "content": p["prompt"]},
                                                     {"role": "assistant", "content": ""}]}
                                       for p in load_probes(HELDOUT)])
    batch = tokenizer(heldout, return_tensors="pt", padding=True, add_special_tokens=False)

    def first_token_log_probs() -> torch.Tensor:
        with torch.no_grad():
            return torch.log_softmax(model(**batch).logits[:, -1].float(), dim=-1)

    with model.disable_adapter():
        base = first_token_log_probs()

    def perturb(seed: int, sigma: float) -> float:
        """Draw the LoRA (A and B) from `seed`, B scaled by `sigma`; the mean first-token KL it gives."""
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_A" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) / parameter.shape[1] ** 0.5)
                elif "lora_B" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * sigma)
        return (base.exp() * (base - first_token_log_probs())).sum(-1).mean().item()

    def calibrated(seed: int, target: float) -> tuple[float, float]:
        """sigma whose perturbation gives `target` KL (within 5%): KL grows about as sigma squared."""
        sigma = 1e-3
        kl = perturb(seed, sigma)
        for _ in range(8):
            if abs(kl / target - 1) < 0.05:
                break
            sigma *= (target / max(kl, 1e-9)) ** 0.5
            kl = perturb(seed, sigma)
        return sigma, kl

    settings = EvalSection()
    probes, paragraphs = load_probes(BUNDLED_PROBES), general_paragraphs()[:1]
    entries = []
    for target in args.targets:
        for seed in args.seeds:
            started = time.monotonic()
            sigma, kl = calibrated(seed, target)
            result = run_probes({"base": (model, model.disable_adapter), "tuned": (model, nullcontext)}, tokenizer,
                                probes, paragraphs, settings)
            entry = {"target_kl": target, "seed": seed, "sigma": round(sigma, 6), "kl": round(kl, 4),
                     "accuracy": {"base": result["base"]["accuracy"], "perturbed": result["tuned"]["accuracy"]},
                     "regression": result["regression"], "lost": result["lost"],
                     "gained": [r["id"] for r in result["rows"] if r["tuned_passed"] and not r["base_passed"]],
                     "seconds": round(time.monotonic() - started, 1)}
            entries.append(entry)
            print(f"target KL {target} seed {seed}: KL {entry['kl']}, probes {entry['accuracy']['base']} -> "
                  f"{entry['accuracy']['perturbed']}, lost {[e['id'] for e in entry['lost']]}, regression "
                  f"{entry['regression']}", flush=True)
        print(f"target KL {target}: {summarised(entries)[str(target)]}", flush=True)
    return {"model": args.model, "margin": settings.probe_margin, "runs": entries}


def summarised(runs: list[dict]) -> dict:
    """Per target KL: how many seeds were flagged, of how many, and the probes each lost."""
    targets = sorted({r["target_kl"] for r in runs})
    return {str(t): {"flagged": sum(r["regression"] for r in runs if r["target_kl"] == t),
                     "runs": sum(r["target_kl"] == t for r in runs),
                     "lost": [len(r["lost"]) for r in runs if r["target_kl"] == t]} for t in targets}


if __name__ == "__main__":
    main()
