"""End to end on a tiny llama: train → eval → export → card, and every run-directory file parses."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tests.conftest import make_tiny_project
from tunesmith.config import load_recipe
from tunesmith.quickstart import run_pipeline
from tunesmith.runs import open_run


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("pipeline")
    recipe = load_recipe(make_tiny_project(root, tiny_model_dir))
    return run_pipeline(recipe, runs_dir=root / "runs")


def test_loss_falls(finished_run):
    losses = [r["loss"] for r in finished_run.read_metrics() if "loss" in r]
    assert len(losses) >= 5
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:2]) / 2


def test_run_directory_files_exist_and_parse(finished_run):
    path = finished_run.path
    recipe = open_run(path).load_recipe()
    assert recipe.name == "tiny" and recipe.adapter.r == 8
    assert yaml.safe_load((path / "recipe.yaml").read_text())["training"]["scheduler"] == "cosine"
    env = json.loads((path / "env.json").read_text())
    assert env["packages"]["torch"] and env["packages"]["transformers"]
    data = json.loads((path / "data.json").read_text())
    assert data["train_rows"] == 64 and data["eval_rows"] == 12 and len(data["train_sha256"]) == 64
    for plot in ("loss.png", "base_vs_tuned.png"):
        assert (path / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(p.name.startswith("checkpoint-") for p in (path / "checkpoints").iterdir())
    assert (path / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((path / "adapter" / "adapter_config.json").read_text())["r"] == 8
    results = json.loads((path / "eval" / "results.json").read_text())
    assert results["examples"] == 12
    for variant in ("base", "tuned"):
        assert {"loss", "perplexity", "exact_match", "field_accuracy", "field/item"} <= set(results[variant])
    assert results["tuned"]["loss"] < results["base"]["loss"]
    manifest = json.loads((path / "exports" / "manifest.json").read_text())
    # fp32 rounding of W + s B A against x W + s (x A) B: ~1e-4 on this model's logits, depending on the trained
    # adapter (1.2e-4 after training with fused LoRA layers, under 1e-4 with PEFT's); the merge's own check is 1e-2
    assert manifest["merged"]["max_abs_logit_diff"] < 1e-3
    assert (path / "exports" / "merged" / "model.safetensors").is_file()
    assert (path / "exports" / "adapter" / "adapter_model.safetensors").is_file()
    card = (path / "README.md").read_text()
    assert "| exact_match |" in card and "tiny" in card
    first, final = re.search(r"- loss: (\S+) → (\S+) in", card).groups()  # 4 significant digits, not 17
    assert all(len(value.replace(".", "").lstrip("0")) <= 4 for value in (first, final)), (first, final)
    assert "![loss curve](plots/loss.png)" in card and "(`exports/merged/`) loads the same way" in card
    assert not [p for p in path.rglob(".*.tmp")], "temporary files left behind"
    from tunesmith.card import usage_lines

    assert "exports/merged" not in "".join(usage_lines(path / "nothing-exported" / "adapter", whole=False))


def test_adapter_reloads_in_standard_peft_format(finished_run, tiny_model_dir):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    tuned = AutoPeftModelForCausalLM.from_pretrained(finished_run.path / "adapter")
    merged = AutoModelForCausalLM.from_pretrained(finished_run.path / "exports" / "merged")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[1, 5, 9, 14, 30, 2]])
    with torch.no_grad():
        tuned_logits, merged_logits = tuned(input_ids=ids).logits, merged(input_ids=ids).logits
        base_logits = base(input_ids=ids).logits
    assert torch.allclose(tuned_logits, merged_logits, atol=1e-4)
    assert not torch.allclose(tuned_logits, base_logits, atol=1e-3)


def test_the_cards_loading_code_runs_in_a_moved_copy_of_the_run(finished_run, tmp_path, monkeypatch):
    """The card's Python block, run as written from the run's folder after the run was copied elsewhere (as a
    sweep moves its runs into place), loads the trained adapter."""
    from tunesmith.card import write_model_card

    write_model_card(finished_run)
    copy = Path(shutil.copytree(finished_run.path, tmp_path / "moved"))
    code = re.search(r"```python\n(.*?)```", (copy / "README.md").read_text(), re.S).group(1)
    assert str(finished_run.path) not in code
    monkeypatch.chdir(copy)
    scope: dict = {}
    exec(code, scope)
    assert type(scope["model"]).__name__ == "PeftModelForCausalLM"
    saved = json.loads((copy / "adapter" / "adapter_config.json").read_text())
    assert scope["model"].peft_config["default"].r == saved["r"]


def test_cli_eval_json_prints_one_document(finished_run):
    from tunesmith.cli import app

    result = CliRunner().invoke(app, ["eval", str(finished_run.path), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert set(document) >= {"base", "tuned", "examples", "samples"}


def test_the_final_loss_is_the_last_steps_not_the_last_multiple_of_logging_steps(tmp_path, tiny_model_dir):
    """6 steps logged every 4: the trainer alone logs step 4 only, and train.json called step 4's loss final."""
    from tunesmith.runs import create_run
    from tunesmith.train import run_training

    recipe = load_recipe(make_tiny_project(tmp_path, tiny_model_dir, train_rows=16, eval_rows=4),
                         ["training.max_steps=6", "training.logging_steps=4"])
    run = create_run(recipe, tmp_path / "runs")
    run_training(recipe, run)
    logged = [record for record in run.read_metrics() if "loss" in record]
    assert [record["step"] for record in logged] == [1, 4, 6]  # the first step, every 4th and the last
    assert json.loads((run.path / "train.json").read_text())["final_loss"] == pytest.approx(logged[-1]["loss"])


def test_a_run_shorter_than_one_warmup_step_trains_from_its_first_step(tmp_path, tiny_model_dir):
    """transformers rounds warmup_ratio x steps up: 6 steps at the default 0.03 had one warm-up step, and step 1
    trained at learning rate 0. Counted in whole steps rounded down, step 1 trains at the full rate; a run long
    enough for warm-up still has it (0.5 x 6 = 3 steps rising from 0)."""
    from tunesmith.runs import create_run
    from tunesmith.train import run_training

    rates = {}
    for ratio in (0.03, 0.5):
        recipe = load_recipe(make_tiny_project(tmp_path / str(ratio), tiny_model_dir, train_rows=16, eval_rows=4),
                             ["training.max_steps=6", "training.logging_steps=1", f"training.warmup_ratio={ratio}",
                              "training.lr=0.001"])
        run = create_run(recipe, tmp_path / str(ratio) / "runs")
        run_training(recipe, run)
        rates[ratio] = [record["learning_rate"] for record in run.read_metrics() if "learning_rate" in record]
    assert rates[0.03][0] == pytest.approx(0.001)  # the full rate at step 1, then the cosine decay
    assert rates[0.5][:3] == pytest.approx([0.0, 0.001 / 3, 0.002 / 3], rel=1e-2)  # logged to 3 digits


def test_a_reward_curve_is_drawn_only_where_rewards_were_logged(tmp_path):
    from tunesmith.train.plots import plot_reward_curve

    logged = [{"step": 1, "reward": 0.2, "rewards/exact_match/mean": 0.1}, {"step": 2, "reward": 0.5}]
    assert plot_reward_curve(logged, tmp_path / "r.png", "t") == tmp_path / "r.png"
    assert plot_reward_curve([{"step": 1, "loss": 2.0}], tmp_path / "none.png", "t") is None
    assert not (tmp_path / "none.png").exists()
