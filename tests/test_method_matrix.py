"""Every method × every artifact kind through every later stage, on a tiny llama (issue 14's matrix).

Each cell trains two steps, then goes through what a user does next, reading the run only through run.json:
eval (results.json with base and tuned), compare (adapter runs), merge, export merged + GGUF, and chat's first
reply. A reward model has no language-model head: what needs one (GGUF, chat) is refused, and the refusal of
GGUF happens when the recipe is validated, before any training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ORDERS, REPO
from tunesmith.config import validate_recipe
from tunesmith.errors import RecipeError, TunesmithError
from tunesmith.runs import create_run

PREFS = REPO / "examples" / "data" / "prefs"
TEXT = REPO / "examples" / "data" / "text"
ARITH = REPO / "examples" / "data" / "arith"
METHODS = ("sft", "cpt", "dpo", "orpo", "kto", "simpo", "grpo", "reward")
KINDS = ("lora", "full", "partial")
DATA = {"sft": ORDERS, "cpt": TEXT, "grpo": ARITH, "dpo": PREFS, "orpo": PREFS, "kto": PREFS, "simpo": PREFS,
        "reward": PREFS}
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "grpo": {"num_generations": 2, "max_completion_length": 4, "rewards": [{"name": "exact_match"}]}}


def slice_file(source: Path, target: Path, rows: int) -> str:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(source.read_text(encoding="utf-8").splitlines()[:rows]) + "\n", encoding="utf-8")
    return str(target)


def matrix_recipe(root: Path, model_dir: Path, method: str, kind: str, formats: list[str] | None = None) -> Any:
    source = DATA[method]
    adapter = {"kind": kind, **({"r": 4, "alpha": 8, "dropout": 0.0} if kind == "lora" else {})}
    if kind == "partial":
        adapter["train_lm_head"] = False
    raw = {
        "name": f"{method}-{kind}",
        "model": {"source": str(model_dir)},
        "data": {"train": slice_file(source / "train.jsonl", root / "data" / "train.jsonl", 16),
                 "eval": slice_file(source / "eval.jsonl", root / "data" / "eval.jsonl", 4), "max_length": 128,
                 # the preference methods' default replay would have each tiny model answer the bundled prompts
                 **({} if method == "sft" else {"replay": {"ratio": 0}})},
        "method": {"kind": method, **METHOD_SETTINGS.get(method, {})},
        "adapter": adapter,
        "training": {"max_steps": 2, "lr": 1e-3, "batch_size": 4, "packing": False, "warmup_ratio": 0.0,
                     "logging_steps": 1, "save_steps": 1000},
        "eval": {"batch_size": 4, "max_new_tokens": 4, "probes": False},
        "export": {"formats": formats or (["adapter"] if method == "reward" else ["merged"])},
        "base_dir": str(root),
    }
    return validate_recipe(raw)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_and_artifact_goes_through_every_stage(method, kind, tmp_path, tiny_model_dir):
    from tunesmith.chat import ChatSession, load_chat_model
    from tunesmith.eval import run_eval
    from tunesmith.eval.compare import adapter_source
    from tunesmith.export.stage import export_formats
    from tunesmith.merge import run_merge
    from tunesmith.train import run_training

    lm = method != "reward"
    recipe = matrix_recipe(tmp_path, tiny_model_dir, method, kind, ["merged", "gguf"] if lm else ["adapter"])
    run = create_run(recipe, tmp_path / "runs")
    run_training(recipe, run)
    manifest = run.manifest()
    assert manifest is not None and manifest.train is not None
    assert manifest.train.artifact == ("adapter" if kind == "lora" else "model")
    assert Path(manifest.train.base_model.path) == tiny_model_dir.resolve()

    results = json.loads(run_eval(recipe, run).read_text(encoding="utf-8"))
    assert {"base", "tuned"} <= set(results), sorted(results)

    if not lm:
        with pytest.raises(TunesmithError, match="reward model"):
            adapter_source(run.path)
    elif kind == "lora":
        assert adapter_source(run.path).base_model == tiny_model_dir.resolve()
    else:
        with pytest.raises(TunesmithError, match="whole-model run"):
            adapter_source(run.path)

    if lm:
        merged = run_merge([run.path, run.path] if kind != "lora" else [run.path], tmp_path / "merged")
        assert (merged / "config.json").is_file() and (merged / "merge.json").is_file()
        written = export_formats(recipe, run, verify=False).written
        assert (written["merged"] / "config.json").is_file() and written["gguf"].stat().st_size > 0
        model, tokenizer = load_chat_model(str(run.path))
        session = ChatSession(model, tokenizer, max_new_tokens=3)
        assert isinstance(session.reply("Hello", lambda _: None), str)
    else:
        written = export_formats(recipe, run).written
        if kind == "lora":
            assert written["adapter"].is_dir()
        else:  # a whole-model run has no adapter: skipped, and not recorded as exported
            manifest = json.loads((run.exports_dir / "manifest.json").read_text(encoding="utf-8"))
            assert "adapter" not in written and "skipped" in manifest["adapter"]
        for action in (lambda: run_merge([run.path], tmp_path / "merged"), lambda: load_chat_model(str(run.path))):
            with pytest.raises(TunesmithError, match="no language-model head"):
                action()
        with pytest.raises(RecipeError, match="reward model outputs one score"):
            matrix_recipe(tmp_path, tiny_model_dir, method, kind, ["gguf"])
