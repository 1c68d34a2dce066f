"""The run's README.md: a model card saying what was trained, how, and how it scored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.runs import Run, atomic_write_text
from tunesmith.train.adapters import trained_model_dir, trains_whole_model


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_model_card(run: Run) -> Path:
    recipe = run.load_recipe()
    train = _load(run.path / "train.json")
    data = _load(run.path / "data.json")
    results = _load(run.eval_dir / "results.json")
    whole = trains_whole_model(recipe.adapter)
    artifact = "Fine-tuned model" if whole else f"{recipe.adapter.kind} adapter"
    lines = [
        f"# {recipe.name}",
        "",
        f"{artifact} for `{recipe.model.source}`, trained with tunesmith ({recipe.method.kind}).",
        "",
        "## Training",
        f"- data: {data.get('train_rows', '?')} train rows, {data.get('eval_rows', '?')} held out "
        f"(sha256 of train rows `{str(data.get('train_sha256', '?'))[:16]}…`)",
        f"- adapter: {adapter_line(recipe.adapter)}",
        f"- steps: {train.get('steps', '?')}, lr {recipe.training.lr}, batch {recipe.training.batch_size}",
        f"- loss: {train.get('first_loss', '?')} → {train.get('final_loss', '?')} "
        f"in {train.get('wall_time_s', '?')} s",
        "- loss curve: `plots/loss.png`",
        "",
        "## Results on held-out examples, base vs tuned",
        *results_table(results),
        "",
        *(["![base vs tuned](plots/base_vs_tuned.png)", ""] if (run.plots_dir / "base_vs_tuned.png").is_file() else []),
        "## Use",
        *usage_lines(run, whole),
    ]
    return atomic_write_text(run.path / "README.md", "\n".join(lines) + "\n")


def adapter_line(adapter: Any) -> str:
    """The adapter's settings as the recipe states them (kind first)."""
    settings = adapter.model_dump(exclude={"kind"})
    return adapter.kind + ": " + ", ".join(f"{key}={value}" for key, value in settings.items())


def usage_lines(run: Run, whole: bool) -> list[str]:
    if whole:
        return ["```python", "from transformers import AutoModelForCausalLM",
                f'model = AutoModelForCausalLM.from_pretrained("{trained_model_dir(run)}")', "```"]
    return ["```python", "from peft import AutoPeftModelForCausalLM",
            f'model = AutoPeftModelForCausalLM.from_pretrained("{run.adapter_dir}")', "```",
            "Merged checkpoint (if exported): `exports/merged/`."]


def results_table(results: dict[str, Any]) -> list[str]:
    if "tuned" not in results:
        return ["(not evaluated yet: run `tunesmith eval`)"]
    variants = [v for v in ("base", "tuned") if v in results]
    metrics = [k for k in results["tuned"] if k != "seconds"]
    rows = ["| metric | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
    rows += [f"| {m} | " + " | ".join(str(results[v].get(m, "")) for v in variants) + " |"
             for m in metrics]
    return rows
