"""User mistakes a review found ending in "Internal error … report it" (or a crash after minutes of work): each is
now a usage error (exit 2) naming the file, key or option and the fix, said before any model loads or any work
that its outcome would waste."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import make_tiny_project
from tests.test_cli_usage import assert_not_internal, tunesmith
from tests.test_compare_chat import random_lora
from tunesmith.errors import TunesmithError


def refused(result, *phrases: str) -> None:
    assert result.returncode == 2, result.stderr
    assert_not_internal(result)
    for phrase in phrases:
        assert phrase in " ".join(result.stderr.split()), result.stderr


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    """A whole adapter; one copied without its weights; one with a cut-off adapter_config.json; one naming no base."""
    root = tmp_path_factory.mktemp("adapters")
    whole = random_lora(tiny_model_dir, root / "whole", seed=3)
    kinds = {"whole": whole}
    for name in ("no-weights", "broken-config", "no-base"):
        kinds[name] = Path(shutil.copytree(whole, root / name))
    (kinds["no-weights"] / "adapter_model.safetensors").unlink()
    (kinds["broken-config"] / "adapter_config.json").write_text('{"r": 4, "base_mo', encoding="utf-8")
    config = json.loads((whole / "adapter_config.json").read_text(encoding="utf-8"))
    (kinds["no-base"] / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    prompts = root / "prompts.jsonl"
    prompts.write_text('{"prompt": "Say hi."}\n', encoding="utf-8")
    kinds["prompts"] = prompts
    return kinds


def test_adapter_folders_that_cannot_be_used_are_named_by_merge_compare_and_chat(adapters, tiny_model_dir, tmp_path):
    refused(tunesmith("merge", str(adapters["no-weights"]), "--out", str(tmp_path / "m")), "has adapter_config.json "
            "but no weights")
    refused(tunesmith("compare", "--prompts", str(adapters["prompts"]), str(adapters["no-weights"])), "no weights")
    refused(tunesmith("merge", str(adapters["broken-config"]), "--out", str(tmp_path / "m")),
            "adapter_config.json cannot be read as JSON")
    refused(tunesmith("compare", "--prompts", str(adapters["prompts"]), str(adapters["no-base"])),
            "does not say which base model it was trained on")
    refused(tunesmith("merge", str(tmp_path / "nope"), "--out", str(tmp_path / "m")), "nope does not exist")
    refused(tunesmith("chat", str(tiny_model_dir), "--adapter", str(tmp_path / "typo")), "no such folder")
    refused(tunesmith("chat", str(tiny_model_dir), "--adapter", str(adapters["no-weights"])), "no weights")
    assert not (tmp_path / "m").exists()


def test_output_files_that_are_folders_and_bad_numbers_are_refused_before_the_work(adapters, tmp_path):
    refused(tunesmith("compare", "--prompts", str(adapters["prompts"]), str(adapters["whole"]), "--html",
                      str(tmp_path)), "--html", "is a folder")
    refused(tunesmith("compare", "--prompts", str(adapters["prompts"]), str(adapters["whole"]), "--batch-size", "0"))
    refused(tunesmith("data", "preview", str(adapters["prompts"]), "--html", str(tmp_path)), "is a folder")


def test_a_recipe_in_utf16_loads_and_one_in_cp1252_is_named(tmp_path, tiny_model_dir):
    from tunesmith.config import load_recipe

    project = make_tiny_project(tmp_path, tiny_model_dir, train_rows=8, eval_rows=2)
    text = project.read_text(encoding="utf-8") + "# café\n"
    (tmp_path / "utf16.yaml").write_text(text, encoding="utf-16")  # PowerShell's `>`: a byte-order mark, UTF-16
    assert load_recipe(tmp_path / "utf16.yaml").name == load_recipe(project).name
    (tmp_path / "cp1252.yaml").write_bytes(text.encode("cp1252"))
    refused(tunesmith("plan", str(tmp_path / "cp1252.yaml")), "is not UTF-8 text", "iconv -f cp1252")


def test_addresses_without_a_scheme_are_refused_where_they_are_given(tmp_path, tiny_model_dir):
    from tunesmith.config import load_recipe
    from tunesmith.errors import RecipeError

    refused(tunesmith("chat", "served-model", "--url", "myhost:8000/v1"), "--url", "not an http(s) address")
    project = make_tiny_project(tmp_path, tiny_model_dir, train_rows=8, eval_rows=2)
    with pytest.raises(RecipeError, match=r"eval\.judge\.url.*not an http\(s\) address"):
        load_recipe(project, ["eval.judge.url=api.openai.com/v1", "eval.judge.model=gpt"])
    assert load_recipe(project, ["eval.judge.url=https://api.openai.com/v1", "eval.judge.model=gpt"])


def test_schema_probe_tools_and_prompt_files_of_the_wrong_kind_are_named(tmp_path):
    from tunesmith.chat import load_tools_file
    from tunesmith.eval.compare import load_prompts
    from tunesmith.eval.forgetting import load_probes
    from tunesmith.scoring import load_schema_validator

    (tmp_path / "five.json").write_text("5", encoding="utf-8")
    (tmp_path / "latin.json").write_bytes('{"description": "café"}'.encode("latin-1"))
    for path, said in ((tmp_path, "is a folder"), (tmp_path / "five.json", "holds a JSON int"),
                       (tmp_path / "latin.json", "cannot be read as JSON")):
        with pytest.raises(TunesmithError, match=said):
            load_schema_validator(path)
    with pytest.raises(TunesmithError, match="not UTF-8"):
        load_tools_file(tmp_path / "latin.json")
    probes = tmp_path / "probes.jsonl"
    for line, said in (('["What is 2+2?", "contains", "4"]', "a probe is a JSON object"),
                       ('{"prompt": "Say three words.", "check": "word_count", "answer": "three"}',
                        "needs a whole number of words"),
                       ('{"prompt": "2+2?", "check": "number", "answer": "four"}', "needs a number")):
        probes.write_text(line + "\n", encoding="utf-8")
        with pytest.raises(TunesmithError, match=said):
            load_probes(probes)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"messages": ["hi"]}\n', encoding="utf-8")
    with pytest.raises(TunesmithError, match=r"line 1: messages\[0\] must be an object"):
        load_prompts(prompts)
    prompts.write_text('{"prompt": 5}\n', encoding="utf-8")
    with pytest.raises(TunesmithError, match=r"line 1: the prompt is neither text nor"):
        load_prompts(prompts)


def test_run_dir_seed_and_init_from_mistakes_stop_before_training(tmp_path, tiny_model_dir, adapters):
    from tunesmith.config import load_recipe
    from tunesmith.errors import RecipeError
    from tunesmith.train.resume import initial_weights

    project = make_tiny_project(tmp_path, tiny_model_dir, train_rows=8, eval_rows=2)
    refused(tunesmith("train", str(project), "--run-dir", str(project)), "--run-dir", "is a file")
    with pytest.raises(RecipeError, match=r"training\.seed"):
        load_recipe(project, ["training.seed=-1"])
    old = Path(shutil.copytree(adapters["whole"], tmp_path / "old-peft"))
    (old / "adapter_model.safetensors").rename(old / "adapter_model.bin")
    with pytest.raises(RecipeError, match=r"only adapter_model\.bin"):
        initial_weights(load_recipe(project, [f"training.init_from={old}"]))


def test_cleaning_that_removes_every_row_stops_instead_of_writing_empty_files(tmp_path, tiny_model_dir):
    from tunesmith.config import load_recipe
    from tunesmith.data import load_splits
    from tunesmith.errors import DataError

    project = make_tiny_project(tmp_path, tiny_model_dir, train_rows=8, eval_rows=2)
    assert load_recipe(project, ["data.clean.languages=[EN]"]).data.clean.languages == ["en"]
    with pytest.raises(DataError, match=r"data\.train: cleaning removed all 8 rows .*min_tokens"):
        load_splits(load_recipe(project, ["data.clean.min_tokens=100000"]))
    refused(tunesmith("data", "prepare", str(project), "--set", "data.clean.min_tokens=100000", "--out",
                      str(tmp_path / "prepared")), "cleaning removed all")
    assert not (tmp_path / "prepared").exists()


def test_a_user_metric_whose_keys_differ_between_rows_averages_the_shared_ones():
    from tunesmith.scoring import aggregate

    assert aggregate([{"a": 1.0, "b": 0.0}, {"a": 0.0}]) == {"a": 0.5}


def test_long_grid_values_make_folder_names_that_fit_and_stay_apart():
    from tunesmith.sweep import MAX_COMBINATION_NAME, combinations, parse_grid

    prompts = ",".join(f'"{"You answer in JSON only, with every field the order names. " * 3}{n}"' for n in range(2))
    names = [combo.name for combo in combinations([parse_grid(f"data.system_prompt={prompts}")])]
    assert len(set(names)) == 2 and all(len(name) <= MAX_COMBINATION_NAME for name in names)


def test_set_reaches_an_optional_section_a_runs_recipe_holds_as_null_and_reads_paths_from_here(tmp_path,
                                                                                               monkeypatch):
    """A run's recipe.yaml writes `judge: null`: `eval RUN --set eval.judge.url=...` said "'judge' is not a
    section". Paths typed after --set (a rubric, a metric's file) are read from the current folder."""
    from tunesmith.config import apply_override

    monkeypatch.chdir(tmp_path)
    (tmp_path / "rubric.txt").write_text("Be strict.")
    (tmp_path / "mine.py").write_text("def f(prediction, reference):\n    return 1.0\n")
    raw = {"eval": {"judge": None, "metrics": ["exact_match"]}}
    apply_override(raw, "eval.judge.url=http://127.0.0.1:8000/v1")
    apply_override(raw, "eval.judge.rubric=rubric.txt")
    apply_override(raw, "eval.metrics=[exact_match, mine.py:f]")
    assert raw["eval"]["judge"] == {"url": "http://127.0.0.1:8000/v1", "rubric": str(tmp_path / "rubric.txt")}
    assert raw["eval"]["metrics"] == ["exact_match", f"{tmp_path / 'mine.py'}:f"]
    apply_override(raw, "eval.judge={url: 'http://h:1/v1', model: m, rubric: rubric.txt}")
    assert raw["eval"]["judge"]["rubric"] == str(tmp_path / "rubric.txt")


def test_an_add_on_that_fails_after_the_answers_is_recorded_not_thrown_away():
    from tunesmith.eval.add_ons import guarded

    def needs_the_hub():
        raise ConnectionError("Couldn't reach 'Rowan/hellaswag' on the Hub (LocalEntryNotFoundError)")

    errors: dict = {}
    assert guarded("lm_eval", needs_the_hub, errors) == {}
    assert errors["lm_eval"]["error"].startswith("ConnectionError: Couldn't reach") and "include_path" in \
        errors["lm_eval"]["hint"]
