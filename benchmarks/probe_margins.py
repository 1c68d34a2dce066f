"""How firmly the base answered the probes a tuned model lost: each lost probe with the base's first-token margin.

A lost probe is one the base passes and the tuned model fails. For each run given, this reads the run's probe rows
(eval/results.json) and asks the run's base for the first answer token of every bundled probe once, recording its
top-1 minus top-2 probability (`tunesmith.eval.forgetting.ask`, as eval does since the margin was added; older
runs lack it in their rows). A lost probe whose base margin is under 0.05 turned on a near-tie in the base.
Writes benchmarks/results/probe_margins.json and prints one line per run.

    .venv/bin/python benchmarks/probe_margins.py RUN [RUN ...] [--label NAME ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def base_margins(run_path: Path) -> dict[str, float]:
    import torch

    from tunesmith.eval.forgetting import BUNDLED_PROBES, ask, load_probes
    from tunesmith.models import load_model, load_tokenizer
    from tunesmith.models.tuned import run_base_model
    from tunesmith.runs import open_run

    base = run_base_model(open_run(run_path))
    model, tokenizer = load_model(base, torch.float32, "cpu"), load_tokenizer(base)
    probes = load_probes(BUNDLED_PROBES)
    with torch.no_grad():
        margins = ask(model, tokenizer, probes, max_new_tokens=1, batch_size=16).first_token_margin
    return {p["id"]: m for p, m in zip(probes, margins, strict=True)}


def main() -> None:
    from tunesmith.eval.forgetting import NEAR_TIE_MARGIN

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--label", action="append", default=[], help="a name per run, in order (default: its folder)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/probe_margins.json")
    args = parser.parse_args()
    margins = base_margins(args.runs[0])  # every run here tunes the same base: asked once
    near_ties = sorted(i for i, m in margins.items() if m < NEAR_TIE_MARGIN)
    entries = []
    for index, run in enumerate(args.runs):
        rows = json.loads((run / "eval/results.json").read_text(encoding="utf-8"))["probes"]["rows"]
        lost = [r["id"] for r in rows if r["base_passed"] and not r["tuned_passed"]]
        label = args.label[index] if index < len(args.label) else run.name
        entry = {"run": label, "lost": {i: margins[i] for i in lost},
                 "lost_near_ties": [i for i in lost if margins[i] < NEAR_TIE_MARGIN]}
        entries.append(entry)
        print(f"{label}: lost {len(lost)} of {len(rows)}, {len(entry['lost_near_ties'])} of them near-ties in the "
              f"base ({', '.join(entry['lost_near_ties'])})", flush=True)
    result = {"threshold": NEAR_TIE_MARGIN, "base_margins": margins, "near_ties_in_base": near_ties, "runs": entries}
    print(f"the base answers {len(near_ties)} of the {len(margins)} probes by a near-tie: {', '.join(near_ties)}")
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
