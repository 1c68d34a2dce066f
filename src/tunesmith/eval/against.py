"""`tunesmith eval RUN --against OTHER_RUN`: this run's tuned model against another run's, not the base.

Both adapters must belong to one base model: it is loaded once and the two adapters are switched on
it (as `tunesmith compare` does). The other run takes the `base` side of every comparison (scores,
paired intervals, wins/losses/ties, probes, judge, the gate); results.json names it under `against`.
The results go to eval/against-<other run>/, so the run's own base-vs-tuned results stay as they are.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError
from tunesmith.models.tuned import Variant, adapter_active
from tunesmith.runs import Run


def against_sources(run: Run, other: Path) -> tuple[Any, Any]:
    """(this run's, the other run's) AdapterSource, refused when the base models differ or they are one run."""
    from tunesmith.eval.compare import adapter_source

    mine, theirs = adapter_source(run.path), adapter_source(other)
    if theirs.adapter_dir.resolve() == mine.adapter_dir.resolve():
        raise TunesmithError(f"--against {other} is the run being evaluated.",
                             "Name another run of the same base model, or leave --against out to compare with base.")
    if mine.base_model != theirs.base_model:
        raise TunesmithError(f"--against {other}: that run was trained on {theirs.base_model}, this one on "
                             f"{mine.base_model}; only runs of the same base model can be compared.",
                             "Evaluate each run against its own base (leave --against out).")
    from tunesmith.models.templates import saved_chat_template

    templates = saved_chat_template(mine.adapter_dir), saved_chat_template(theirs.adapter_dir)
    if all(templates) and templates[0] != templates[1]:  # both are prompted with this run's
        raise TunesmithError(f"--against {other}: that run was trained with another chat template than this one, so "
                             "one rendering of the prompts would score it on a format it never saw.",
                             "Compare runs of one chat template (model.chat_template), or evaluate each against "
                             "its own base (leave --against out).")
    return mine, theirs


def against_variants(run: Run, other: Path, device: str) -> tuple[dict[str, Variant], dict[str, str]]:
    """`base` (the other run's adapter) and `tuned` (this run's) on one loaded base model (two where their PEFT
    types differ: one model holds adapters of one type); and who `base` is."""
    import torch

    from tunesmith.eval.compare import attach_adapters, peft_name, peft_type
    from tunesmith.models import load_model

    mine, theirs = against_sources(run, other)
    model = load_model(mine.base_model, torch.float32, device).eval()
    if peft_type(mine) == peft_type(theirs):  # one base holds both
        tuned = base = attach_adapters(model, [mine, theirs])
    else:  # PEFT holds adapters of one type together: each on a base of its own
        tuned = attach_adapters(model, [mine])
        base = attach_adapters(load_model(mine.base_model, torch.float32, device).eval(), [theirs], [1])
    variants = {"base": (base, lambda: adapter_active(base, peft_name(1, theirs.name))),
                "tuned": (tuned, lambda: adapter_active(tuned, peft_name(0, mine.name)))}
    return variants, {"name": theirs.name, "path": str(Path(other).resolve())}


def against_dir(run: Run, against: dict[str, str] | None) -> Path:
    """Where this eval's results go: eval/ for base vs tuned, eval/against-<name>/ against another run. Runs of one
    name in two places (`lr=1e-3` of two sweeps) do not overwrite each other: while eval/against-<name>/ holds the
    results against another path, this one goes to eval/against-<name>-<6 hex of its path's sha256>/."""
    if not against:
        return run.eval_dir
    folder = run.eval_dir / f"against-{against['name']}"
    earlier = folder / "results.json"
    try:
        other_path = json.loads(earlier.read_text(encoding="utf-8")).get("against", {}).get("path")
    except (OSError, ValueError, AttributeError):
        other_path = None
    if other_path is not None and other_path != against["path"]:
        digest = hashlib.sha256(against["path"].encode()).hexdigest()[:6]
        return run.eval_dir / f"against-{against['name']}-{digest}"
    return folder
