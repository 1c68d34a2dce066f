"""Slow end-to-end: the embedded SmolLM2, tuned briefly on the orders task, exported for Ollama as Q8_0,
checked in llama.cpp, and answering held-out orders in the tuned JSON format inside llama.cpp."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ORDERS

pytestmark = pytest.mark.slow
FIELDS = {"item", "qty", "size", "color", "when"}


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory: pytest.TempPathFactory):
    """A quickstart run trained for 12 of its 28 steps (~1.5 CPU minutes): enough to learn the format."""
    from tunesmith.quickstart import quickstart_recipe
    from tunesmith.runs import create_run
    from tunesmith.train import run_training

    recipe = quickstart_recipe(["training.max_steps=12", "training.logging_steps=4"])
    run = create_run(recipe, tmp_path_factory.mktemp("runs"))
    run_training(recipe, run)
    return run


def test_q8_0_ollama_export_answers_held_out_orders_as_json_in_llama_cpp(tuned_run, tmp_path, monkeypatch):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (pip install '.[gguf]')")
    from typer.testing import CliRunner

    from tunesmith.cli import app
    from tunesmith.export.verify import compute_threads

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no `ollama create`, whatever the machine has
    result = CliRunner().invoke(app, ["export", str(tuned_run.path), "--format", "ollama", "--quant", "Q8_0"])
    assert result.exit_code == 0, result.output
    check = json.loads((tuned_run.exports_dir / "manifest.json").read_text(encoding="utf-8"))["gguf"]["Q8_0"]["verify"]
    assert check["passed"] and check["agreement"] >= 0.95 and check["tokenization_matches"] == check["prompts"]
    folder = tuned_run.exports_dir / "ollama"
    modelfile = (folder / "Modelfile").read_text(encoding="utf-8")
    assert "FROM ./model-Q8_0.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile

    held_out = [json.loads(line)["messages"] for line in
                (ORDERS / "eval.jsonl").read_text(encoding="utf-8").splitlines()[-4:]]
    llm = llama_cpp.Llama(model_path=str(folder / "model-Q8_0.gguf"), n_ctx=512, verbose=False,
                          n_threads=compute_threads(), n_threads_batch=compute_threads())
    right = 0
    try:
        for messages in held_out:  # the GGUF's own chat template renders the prompt
            reply = llm.create_chat_completion(messages=messages[:-1], temperature=0.0, max_tokens=64)
            answer = json.loads(reply["choices"][0]["message"]["content"])
            expected = json.loads(messages[-1]["content"])
            assert set(answer) == FIELDS, answer
            right += sum(answer[key] == expected[key] for key in FIELDS)
    finally:
        llm.close()
    assert right >= len(held_out) * len(FIELDS) // 2  # the full quickstart reaches ~0.89 of the fields
