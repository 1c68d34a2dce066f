"""Do a run's failed forgetting probes follow the probes' wording? The same 48 probes, asked in other words.

The bundled probes (src/tunesmith/eval/probes/general.jsonl, kept as they are: they are the measure) end 31 of
their 48 prompts in "Answer with a number." or "Answer with one word.", and the base answers every probe. A
task whose own instruction reads the same way ("Answer with the team name only.") can teach the tuned model what
that sentence means. This asks base and tuned the same probes three ways (the bundled wording, and two rewordings
of those two sentences, made here and never used for training or for choosing a setting), with the probes'
own checks, and writes benchmarks/results/probe_phrasing.json (one entry per run, replaced when measured again):

    .venv/bin/python benchmarks/probe_phrasing.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDINGS = {  # the bundled sentence -> its rewording, per wording
    "bundled": {},
    "give": {"Answer with a number.": "Give the number.", "Answer with one word.": "Give one word."},
    "reply": {"Answer with a number.": "Reply in digits.", "Answer with one word.": "Reply in one word."},
}


def reworded(probes: list[dict], changes: dict[str, str]) -> list[dict]:
    """The probes with each of `changes`' sentences replaced in their prompts (checks and answers unchanged)."""
    rewritten = []
    for probe in probes:
        prompt = probe["prompt"]
        for old, new in changes.items():
            prompt = prompt.replace(old, new)
        rewritten.append({**probe, "prompt": prompt})
    return rewritten


def measure(run_dir: Path) -> dict:
    from tunesmith.eval.evaluate import eval_variants
    from tunesmith.eval.forgetting import BUNDLED_PROBES, general_paragraphs, load_probes, run_probes
    from tunesmith.models import load_tokenizer, pick_device
    from tunesmith.models.tuned import run_base_model
    from tunesmith.runs import open_run

    run = open_run(run_dir)
    recipe = run.load_recipe()
    variants, _ = eval_variants(recipe, run, pick_device(recipe.training.device), None, with_base=True)
    tokenizer = load_tokenizer(run_base_model(run))
    probes = load_probes(BUNDLED_PROBES)
    entry: dict = {"run": str(run_dir), "recipe": recipe.name, "wordings": {}}
    for name, changes in WORDINGS.items():
        result = run_probes(variants, tokenizer, reworded(probes, changes), general_paragraphs()[:1], recipe.eval)
        failed = {variant: [row["id"] for row in result["rows"] if not row[f"{variant}_passed"]]
                  for variant in ("base", "tuned")}
        entry["wordings"][name] = {"changes": changes, "base": result["base"]["accuracy"],
                                   "tuned": result["tuned"]["accuracy"], "regression": result["regression"],
                                   "failed": failed}
        print(f"{recipe.name} {name}: base {result['base']['accuracy']} -> tuned {result['tuned']['accuracy']} "
              f"(regression {result['regression']}); tuned fails {', '.join(failed['tuned']) or 'none'}", flush=True)
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--label", action="append", default=[], help="a name per run (default: the run's folder)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/probe_phrasing.json")
    args = parser.parse_args()
    entries = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else []
    for index, run_dir in enumerate(args.runs):
        entry = {"label": args.label[index] if index < len(args.label) else run_dir.name, **measure(run_dir)}
        entries = [e for e in entries if e["label"] != entry["label"]] + [entry]
        args.out.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
