"""Preference accuracy summed over the answer's tokens vs per token, base and tuned, on DPO runs of two kinds of pairs.

Why: eval's preference accuracy compared the summed log-probability of chosen and rejected, and a full answer is
always less likely in total than a curt one: on helpful-vs-curt pairs it read 0.0 for base and tuned alike. It now
compares the mean per answer token (SimPO's reward, Meng et al. 2024). This trains `recipes/dpo.yaml` on the bundled
`prefs` pairs (chosen and rejected about as long; developed on) and on `care_pairs` (chosen ten times longer; the
held-out kind, `examples/data/make_care_pairs.py`), then scores each run's held-out pairs both ways with eval's own
functions (`eval/preference.py`).

    .venv/bin/python benchmarks/preference_accuracy.py            # trains both (about 6 min on 2 CPU cores)
    .venv/bin/python benchmarks/preference_accuracy.py RUN [RUN]  # scores runs that already exist

Writes benchmarks/results/preference_accuracy.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from tunesmith.eval.preference import completion_logps, likelihood_variants, per_token
from tunesmith.eval.rows import held_out_rows
from tunesmith.runs import Run

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "preference_accuracy.json"
CARE = REPO / "examples" / "data" / "care_pairs"
DATASETS = {"prefs": [], "care_pairs": [f"data.train={CARE / 'train.jsonl'}", f"data.eval={CARE / 'eval.jsonl'}",
                                         "name=dpo-care"]}


def train(runs_dir: Path, overrides: list[str]) -> Path:
    """`tunesmith train recipes/dpo.yaml` with `overrides` (probes off: only the pairs are scored here)."""
    sets = [arg for item in ["eval.probes=false", *overrides] for arg in ("--set", item)]
    subprocess.run([sys.executable, "-m", "tunesmith", "train", str(REPO / "recipes" / "dpo.yaml"), "--runs-dir",
                    str(runs_dir), *sets], check=True)
    return max(runs_dir.iterdir(), key=lambda path: path.stat().st_mtime)


def accuracies(run_dir: Path) -> dict:
    """Both accuracies, and the mean answer lengths, for base and tuned on the run's held-out pairs."""
    run = Run(run_dir)
    recipe = run.load_recipe()
    rows = held_out_rows(recipe, run, ("preference",), "preference evaluation", None).rows
    tokenizer, variants, _ = likelihood_variants(recipe, run, None)
    scores = {"pairs": len(rows), "data": recipe.data.train}
    for name, (model, context) in variants.items():
        with context(), torch.no_grad():
            chosen = completion_logps(model, tokenizer, rows, "chosen", recipe)
            rejected = completion_logps(model, tokenizer, rows, "rejected", recipe)
        pairs = list(zip(chosen, rejected, strict=True))
        scores[name] = {"summed": round(sum(c[0] > r[0] for c, r in pairs) / len(rows), 4),
                        "per_token": round(sum(per_token(c) > per_token(r) for c, r in pairs) / len(rows), 4),
                        "chosen_tokens": round(sum(c[1] for c, _ in pairs) / len(rows), 1),
                        "rejected_tokens": round(sum(r[1] for _, r in pairs) / len(rows), 1)}
    return scores


def main() -> None:
    if len(sys.argv) > 1:
        runs = [Path(arg) for arg in sys.argv[1:]]
    else:
        root = Path(tempfile.mkdtemp(prefix="preference-accuracy-"))
        runs = [train(root / name, overrides) for name, overrides in DATASETS.items()]
    results = [accuracies(run) for run in runs]
    RESULTS.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    for entry in results:
        print(f"{Path(entry['data']).parent.name}: {entry['pairs']} pairs; summed base {entry['base']['summed']} -> "
              f"tuned {entry['tuned']['summed']}; per token base {entry['base']['per_token']} -> tuned "
              f"{entry['tuned']['per_token']} (answers {entry['tuned']['chosen_tokens']} vs "
              f"{entry['tuned']['rejected_tokens']} tokens)")


if __name__ == "__main__":
    main()
