"""Slow end-to-end tests on the real embedded model (run by scripts/test.sh and CI)."""

import json
import math

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
    run = smollm2_quickstart_run  # conftest: 4 steps, 10 eval examples; tests/test_eval_smollm2.py reuses it
    losses = [r["loss"] for r in run.read_metrics() if "loss" in r]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    results = json.loads((run.path / "eval" / "results.json").read_text())
    assert results["examples"] == 10 and "exact_match" in results["base"]
    assert results["tuned"]["loss"] < results["base"]["loss"]
    manifest = json.loads((run.path / "exports" / "manifest.json").read_text())
    assert manifest["merged"]["max_abs_logit_diff"] < 1e-3
