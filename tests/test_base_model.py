"""A base model (its tokenizer has no chat template): raw-text training, eval and export work; what needs a
conversation is refused before any weights load, naming the fix; and `model.chat_template` gives it one, which
the run keeps for eval, merge, export and chat."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ORDERS, build_tiny_llama
from tests.test_methods import method_recipe
from tunesmith.card import write_model_card
from tunesmith.chat import load_chat_model
from tunesmith.config import Recipe, validate_recipe
from tunesmith.data.contract import check_template_contract
from tunesmith.data.template import render
from tunesmith.errors import DataError, RecipeError, TunesmithError
from tunesmith.eval.compare import AdapterSource, shared_chat_template
from tunesmith.eval.evaluate import run_eval
from tunesmith.eval.forgetting import PLAIN_PROBE_FORMAT
from tunesmith.export.ollama import modelfile_text, translate_run_template
from tunesmith.merge.into_base import merge_adapter_into_base
from tunesmith.models import load_tokenizer
from tunesmith.models.templates import CHATML, chat_template_text, saved_chat_template
from tunesmith.models.tuned import run_tokenizer
from tunesmith.runs import create_run
from tunesmith.train import run_training


@pytest.fixture(scope="module")
def base_model_dir(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny llama, with a tokenizer saved without any chat template and with <|endoftext|> as its EOS (as the
    pretrained-only SmolLM2 ships: <|im_end|> is then no token generation stops at)."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("base-tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.chat_template = None
    tokenizer.eos_token = "<|endoftext|>"
    tokenizer.save_pretrained(folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    model_dir = build_tiny_llama(folder, tmp_path_factory.mktemp("base-model"))
    config = json.loads((model_dir / "generation_config.json").read_text(encoding="utf-8"))
    config["eos_token_id"] = tokenizer.convert_tokens_to_ids("<|im_end|>")  # as the helper's copy of SmolLM2 had
    (model_dir / "generation_config.json").write_text(json.dumps(config), encoding="utf-8")
    return model_dir


def test_the_tokenizer_of_a_base_model_loads_and_a_given_template_replaces_its_own(base_model_dir):
    assert load_tokenizer(base_model_dir).chat_template is None
    template = "{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}"
    assert load_tokenizer(base_model_dir, chat_template=template).chat_template == template


def test_raw_text_trains_evaluates_and_exports_on_a_base_model(tmp_path, base_model_dir):
    recipe = method_recipe(tmp_path, base_model_dir, "cpt", max_steps=2)
    run = create_run(recipe, tmp_path / "runs")
    run_training(recipe, run)
    results = json.loads(run_eval(recipe, run).read_text(encoding="utf-8"))
    again = run_eval(run.load_recipe(["eval.probes=false"]), run)  # another eval keeps the first one's results
    assert "probes" not in json.loads(again.read_text(encoding="utf-8"))
    (kept,) = (again.parent / "history").iterdir()
    assert json.loads(kept.read_text(encoding="utf-8")) == results
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
    assert "model.chat_template: chatml" in str(raised.value) and "method.kind: cpt" in str(raised.value)
    with pytest.raises(TunesmithError, match="cannot be given conversations"):
        load_chat_model(str(base_model_dir), None, "cpu")


def sft_recipe(root: Path, model_dir: Path, chat_template: str | None) -> Recipe:
    train = root / "train.jsonl"
    train.write_text("".join((ORDERS / "train.jsonl").read_text(encoding="utf-8").splitlines(True)[:24]),
                     encoding="utf-8")
    return validate_recipe({
        "name": "base-chatml", "model": {"source": str(model_dir), "chat_template": chat_template},
        "data": {"train": str(train), "eval_fraction": 0.25},
        "training": {"max_steps": 2, "batch_size": 4, "logging_steps": 1, "save_steps": 1000},
        "eval": {"probes": False, "baselines": []}, "base_dir": str(root)})


def test_chatml_gives_a_base_model_turns_that_end_in_its_eos_and_the_run_keeps_it(tmp_path, base_model_dir):
    run = create_run(recipe := sft_recipe(tmp_path, base_model_dir, "chatml"), tmp_path / "runs")
    run_training(recipe, run)  # the default replay: a base without a template of its own cannot answer its prompts
    replay = json.loads((run.path / "train.json").read_text(encoding="utf-8"))["chosen"]["replay"]
    assert replay["value"] == "off" and "no chat template of its own" in replay["why"]
    assert "- template: model.chat_template `chatml` in place of the model's own" in write_model_card(run).read_text(
        encoding="utf-8")
    contract = json.loads((run.path / "data.json").read_text(encoding="utf-8"))["template_contract"]
    assert contract["problems"] == [] and contract["eos_after_assistant"] is True
    assert run.chat_template_file.read_text(encoding="utf-8") == CHATML
    assert saved_chat_template(run.adapter_dir) == CHATML  # saved with the adapter: chat, compare, serve read it
    tokenizer = run_tokenizer(run)
    text = render(tokenizer, [{"role": "user", "content": "2 mugs"}, {"role": "assistant", "content": "mug x2"}])
    assert text == "<|im_start|>user\n2 mugs<|endoftext|>\n<|im_start|>assistant\nmug x2<|endoftext|>\n"
    translation = translate_run_template(run, recipe.data)  # checked against the Jinja template on its probes
    assert translation.family == "chatml" and "<|endoftext|>" in translation.stops
    assert "<|im_end|>" not in translation.go_template + "".join(translation.stops)
    merge_adapter_into_base(base_model_dir, run.adapter_dir, tmp_path / "merged")
    assert saved_chat_template(tmp_path / "merged") == CHATML  # what the GGUF's tokenizer.chat_template is read from
    stops = json.loads((tmp_path / "merged" / "generation_config.json").read_text(encoding="utf-8"))["eos_token_id"]
    assert tokenizer.eos_token_id in stops  # plain transformers stops where chatml closes a turn


def test_a_template_file_or_text_is_read_and_a_wrong_one_named(tmp_path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "mine.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert chat_template_text("templates/mine.jinja", tmp_path).startswith("{% for m in messages %}")
    assert chat_template_text("{{ messages[0].content }}", tmp_path) == "{{ messages[0].content }}"
    assert chat_template_text("ChatML", tmp_path) == CHATML
    with pytest.raises(RecipeError, match=r"model\.chat_template: 'templates/missing\.jinja' is neither a built-in"):
        chat_template_text("templates/missing.jinja", tmp_path)
    with pytest.raises(RecipeError, match=r"Did you mean 'chatml'\?"):
        chat_template_text("chatmll", tmp_path)
    (tmp_path / "notes.txt").write_text("just some words")
    with pytest.raises(RecipeError, match="is not a Jinja chat template"):
        chat_template_text("notes.txt", tmp_path)
    with pytest.raises(RecipeError, match=r"model\.chat_template"):
        validate_recipe({"data": {"train": "x.jsonl"}, "model": {"chat_template": " "}})


def test_compare_refuses_adapters_trained_with_different_templates(tmp_path):
    sources = []
    for name, template in (("a", CHATML), ("b", "{{ messages[0].content }}"), ("c", None)):
        (tmp_path / name).mkdir()
        if template:
            (tmp_path / name / "chat_template.jinja").write_text(template, encoding="utf-8")
        sources.append(AdapterSource(name, tmp_path / name, tmp_path))
    assert shared_chat_template([sources[0]], None) == CHATML
    assert shared_chat_template([sources[0], sources[2]], CHATML) == CHATML  # none saved: the base's own
    with pytest.raises(TunesmithError, match=r"different chat templates \(a, b\)"):
        shared_chat_template(sources[:2], None)


def test_doctor_checks_the_data_against_the_template_training_would_use(tmp_path, base_model_dir):
    from tunesmith.doctor.recipe import data_checks, template_fit_checks

    recipe = sft_recipe(tmp_path, base_model_dir, None)
    rows = data_checks(recipe)[1]["train"]
    failed = [check for check in template_fit_checks(recipe, rows) if check.status == "fail"]
    assert len(failed) == 1 and "has no chat template (a base model)" in failed[0].detail
    recipe = sft_recipe(tmp_path, base_model_dir, "chatml")
    assert not [check for check in template_fit_checks(recipe, rows) if check.status == "fail"]
    recipe = sft_recipe(tmp_path, base_model_dir, "missing.jinja")
    (failed,) = [check for check in template_fit_checks(recipe, rows) if check.status == "fail"]
    assert "model.chat_template: 'missing.jinja'" in failed.detail


def test_a_template_of_the_users_that_cannot_train_is_refused_with_what_to_fix_in_it(tmp_path, base_model_dir):
    """The user's own template (model.chat_template) is held to more than a model's: an answer with no token
    generation stops at is refused (a model's is a warning about its files), and a syntax error names its line."""
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    no_eos = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    with pytest.raises(DataError, match=r"model\.chat_template .* ends an assistant turn with no token generation "
                                        r"stops at .* End each assistant turn with \{\{ eos_token \}\}"):
        check_template_contract(load_tokenizer(base_model_dir, chat_template=no_eos), rows, "base", "mine.jinja")
    warned = check_template_contract(load_tokenizer(base_model_dir, chat_template=no_eos), rows, "base")
    assert any("no token generation stops at" in warning for warning in warned["warnings"])
    broken = "{% for m in messages %}\n{{ m['content'] }\n{% endfor %}"
    with pytest.raises(DataError, match=r"model\.chat_template \('broken\.jinja'\) fails .*TemplateSyntaxError.* at "
                                        r"line 2 of the template"):
        check_template_contract(load_tokenizer(base_model_dir, chat_template=broken), rows, "base", "broken.jinja")
