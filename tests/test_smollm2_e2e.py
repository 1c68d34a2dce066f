"""Slow end-to-end tests on the real embedded model (run by scripts/test.sh and CI). The tests sharing the
short quickstart run live in this one file, so that pytest-xdist (`--dist loadfile`) trains it on one worker once."""

import json
import math
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_dir():
    from tunesmith.models import pull_model

    return pull_model("smollm2-135m-instruct")


def test_pulled_model_is_plain_safetensors_and_answers(smollm2_dir):
    from tunesmith.models import load_model, load_tokenizer

    assert (smollm2_dir / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((smollm2_dir / "config.json").read_text())
    tokenizer, model = load_tokenizer(smollm2_dir), load_model(smollm2_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
    assert any(p.requires_grad for p in model.parameters())


def test_quickstart_handful_of_steps(smollm2_dir, smollm2_quickstart_run):
    run = smollm2_quickstart_run  # conftest: 4 steps, 10 eval examples; the eval test below reuses it
    losses = [r["loss"] for r in run.read_metrics() if "loss" in r]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    results = json.loads((run.path / "eval" / "results.json").read_text())
    assert results["examples"] == 10 and "exact_match" in results["base"]
    assert results["tuned"]["loss"] < results["base"]["loss"]
    manifest = json.loads((run.path / "exports" / "manifest.json").read_text())
    assert manifest["merged"]["max_abs_logit_diff"] < 1e-3


def test_eval_reports_task_win_and_forgetting_probes(smollm2_quickstart_run):
    """`tunesmith eval` on the run: the tuned model wins on the task; the probes are reported for both."""
    run = smollm2_quickstart_run
    result = subprocess.run([sys.executable, "-m", "tunesmith", "eval", str(run.path), "--json"],
                            capture_output=True, text=True, timeout=1800, cwd=run.path.parent)
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)
    task = results["comparison"]["field_accuracy"]
    assert task["tuned"] > task["base"] and task["wins"] > task["losses"]
    probes = results["probes"]
    assert probes["count"] >= 40 and isinstance(probes["regression"], bool)
    assert probes["regression"] == bool(probes["reasons"])
    for variant in ("base", "tuned"):
        assert 0 <= probes[variant]["accuracy"] <= 1 and probes[variant]["perplexity"] > 1
        assert {"factual", "reasoning", "instruction"} <= set(probes[variant])
    assert probes["base"]["accuracy"] >= 0.7  # the set is chosen so that the base mostly passes
    card = (run.path / "README.md").read_text()
    assert "Forgetting probes" in card and ("no regression" in card or "REGRESSION" in card)
