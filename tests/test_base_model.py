"""A base model (its tokenizer has no chat template): raw-text training, eval and export work; what needs a
conversation is refused before any weights load, naming the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import build_tiny_llama
from tests.test_methods import method_recipe
from tunesmith.chat import load_chat_model
from tunesmith.data.contract import check_template_contract
from tunesmith.errors import DataError, TunesmithError
from tunesmith.eval.evaluate import run_eval
from tunesmith.eval.forgetting import PLAIN_PROBE_FORMAT
from tunesmith.export.ollama import modelfile_text, translate_run_template
from tunesmith.models import load_tokenizer
from tunesmith.runs import create_run
from tunesmith.train import run_training


@pytest.fixture(scope="module")
def base_model_dir(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny llama, with a tokenizer saved without any chat template (as a pretrained-only model ships)."""
    from transformers import AutoTokenizer


    folder = tmp_path_factory.mktemp("base-tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    return build_tiny_llama(folder, tmp_path_factory.mktemp("base-model"))


def test_the_tokenizer_of_a_base_model_loads_and_a_given_template_replaces_its_own(base_model_dir):
    assert load_tokenizer(base_model_dir).chat_template is None
    template = "{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}"
    assert load_tokenizer(base_model_dir, chat_template=template).chat_template == template


def test_raw_text_trains_evaluates_and_exports_on_a_base_model(tmp_path, base_model_dir):
    recipe = method_recipe(tmp_path, base_model_dir, "cpt", max_steps=2)
    run = create_run(recipe, tmp_path / "runs")
    run_training(recipe, run)
    results = json.loads(run_eval(recipe, run).read_text(encoding="utf-8"))
    probes = results["probes"]
    assert probes["asked_as"] == PLAIN_PROBE_FORMAT and probes["count"] == len(probes["rows"]) > 0
    assert set(results["tuned"]) >= {"perplexity"} and probes["tuned"]["perplexity"] > 0
    translation = translate_run_template(run, recipe.data)
    modelfile = modelfile_text("model-F16.gguf", translation, None)
    assert 'TEMPLATE """{{ .Prompt }}"""' in modelfile and "PARAMETER stop" not in modelfile
    assert "the prompt is sent as it is" in modelfile


def test_conversations_on_a_base_model_are_refused_naming_the_fix(base_model_dir):
    tokenizer = load_tokenizer(base_model_dir)
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    with pytest.raises(DataError, match="has no chat template") as raised:
        check_template_contract(tokenizer, rows, "base-model")
    assert "chat_template.jinja" in str(raised.value) and "method.kind: cpt" in str(raised.value)
    with pytest.raises(TunesmithError, match="cannot be given conversations"):
        load_chat_model(str(base_model_dir), None, "cpu")
