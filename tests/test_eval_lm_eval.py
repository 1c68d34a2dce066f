"""The lm-evaluation-harness bridge on a tiny llama: the bundled local task and a task of the user's own (with a
relative data file) run on base and tuned, and their scores land in results.json and the report."""

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import make_tiny_project
from tunesmith.config import load_recipe
from tunesmith.errors import TunesmithError
from tunesmith.eval import run_eval
from tunesmith.eval.lm_eval_bridge import absolute_files, doc_scores, require_lm_eval, task_scores
from tunesmith.runs import create_run
from tunesmith.train import run_training

USER_TASK = """task: colours_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: data/colours.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "Q: {{question}}\\nA:"
doc_to_choice: "{{choices}}"
doc_to_target: label
metric_list:
  - metric: acc
"""
COLOURS = [{"question": "Colour of grass?", "choices": ["green", "red"], "label": 0},
           {"question": "Colour of the sky?", "choices": ["pink", "blue"], "label": 1},
           {"question": "Colour of snow?", "choices": ["white", "black"], "label": 0}]


def test_missing_harness_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what `import lm_eval` meets when it is not installed
    with pytest.raises(TunesmithError, match="needs lm-evaluation-harness") as error:
        require_lm_eval()
    assert "tunesmith[eval]" in error.value.hint


def test_relative_data_files_resolve_from_the_task_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl").write_text("{}\n")
    files = {"test": "data/a.jsonl", "train": ["data/a.jsonl", "hf://elsewhere.jsonl"], "x": "missing.jsonl"}
    assert absolute_files(files, tmp_path) == {"test": str(tmp_path / "data" / "a.jsonl"),
                                               "train": [str(tmp_path / "data" / "a.jsonl"), "hf://elsewhere.jsonl"],
                                               "x": "missing.jsonl"}


def test_scores_keep_numbers_and_pair_documents_in_order():
    assert task_scores({"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": "N/A", "exact,strict": 1,
                              "sample_len": 4}}) == {"t/acc": 0.5, "t/exact,strict": 1.0}
    samples = {"t": [{"doc_id": 1, "metrics": ["acc"], "acc": 0.0}, {"doc_id": 0, "metrics": ["acc"], "acc": 1.0}]}
    assert doc_scores(samples) == {"t/acc": [1.0, 0.0]}
    # a sample per document and filter (gsm8k): one column per filter, named as task_scores names them
    two = {"g": [{"doc_id": d, "filter": f, "metrics": ["exact_match"], "exact_match": float(f == "flexible" or d)}
                 for d in (1, 0) for f in ("strict-match", "flexible")]}
    assert doc_scores(two) == {"g/exact_match,strict-match": [0.0, 1.0], "g/exact_match,flexible": [1.0, 1.0]}


@pytest.fixture(scope="module")
def lm_eval_run(tmp_path_factory, tiny_model_dir):
    pytest.importorskip("lm_eval", reason="lm-eval is an optional extra: pip install 'tunesmith[eval]'")
    root = tmp_path_factory.mktemp("lm_eval")
    recipe_file = make_tiny_project(root, tiny_model_dir, eval_rows=2)
    recipe = load_recipe(recipe_file, ["training.max_steps=4", "eval.probes=false",
                                       "eval.lm_eval={tasks: [tunesmith_general_mc], limit: 6, batch_size: 6}"])
    run = create_run(recipe, root / "runs")
    run_training(recipe, run)
    run_eval(recipe, run)
    return root, run


def test_the_bundled_task_scores_base_and_tuned(lm_eval_run):
    _, run = lm_eval_run
    results = json.loads((run.eval_dir / "results.json").read_text())
    block = results["lm_eval"]
    assert block["tasks"] == ["tunesmith_general_mc"] and block["limit"] == 6
    for variant in ("base", "tuned"):
        assert 0 <= block[variant]["tunesmith_general_mc/acc"] <= 1
        assert 0 <= block[variant]["tunesmith_general_mc/acc_norm"] <= 1
    entry = block["comparison"]["tunesmith_general_mc/acc"]
    assert entry["wins"] + entry["losses"] + entry["ties"] == 6
    assert entry["base"] == block["base"]["tunesmith_general_mc/acc"]
    assert "lm-eval harness (tunesmith_general_mc" in (run.eval_dir / "report.html").read_text()


def test_the_tuned_column_scores_the_adapter_not_the_base_again(lm_eval_run, tmp_path):
    """A copy of the run whose adapter is made huge (lora_B x 200) answers the same documents otherwise: its tuned
    column and the comparison move, its base column does not (were the adapter not applied, neither would move)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from tunesmith.runs import open_run

    _, run = lm_eval_run
    before = json.loads((run.eval_dir / "results.json").read_text())["lm_eval"]
    copy = Path(shutil.copytree(run.path, tmp_path / run.path.name))
    weights_file = copy / "adapter" / "adapter_model.safetensors"
    save_file({name: tensor * 200 if "lora_B" in name else tensor for name, tensor in load_file(weights_file).items()},
              weights_file)
    after = json.loads(run_eval(load_recipe(copy / "recipe.yaml"), open_run(copy)).read_text())["lm_eval"]
    key = "tunesmith_general_mc/acc_norm"
    assert after["base"][key] == before["base"][key]
    entry = after["comparison"]["tunesmith_general_mc/acc"]
    assert entry["wins"] + entry["losses"] > 0, (entry, after)  # some document is answered otherwise than the base


def test_a_users_task_folder_with_a_relative_data_file(lm_eval_run):
    root, run = lm_eval_run
    tasks = root / "my_tasks"
    (tasks / "data").mkdir(parents=True)
    (tasks / "colours.yaml").write_text(USER_TASK)
    (tasks / "data" / "colours.jsonl").write_text("".join(json.dumps(row) + "\n" for row in COLOURS))
    recipe = load_recipe(run.recipe_file, ["eval.lm_eval={tasks: [colours_mc], include_path: " + str(tasks) + "}",
                                           "eval.max_examples=2"])
    block = json.loads(run_eval(recipe, run).read_text())["lm_eval"]
    assert set(block["tuned"]) == {"colours_mc/acc", "seconds"}
    assert block["comparison"]["colours_mc/acc"]["ties"] + block["comparison"]["colours_mc/acc"]["wins"] + \
        block["comparison"]["colours_mc/acc"]["losses"] == 3
    bad = load_recipe(run.recipe_file, ["eval.lm_eval={tasks: [colours], include_path: " + str(tasks) + "}"])
    with pytest.raises(TunesmithError, match="unknown task 'colours'") as error:
        run_eval(bad, run)
    assert "colours_mc" in error.value.hint


def test_a_task_of_lm_evals_own_index_is_refused_offline_and_noted_otherwise(monkeypatch, capsys):
    """hellaswag reads its dataset from the Hub: with the Hub switched off it failed after every answer was
    generated ("Internal error: ConnectionError"); now before any model loads, or with a note where it may work."""
    pytest.importorskip("lm_eval")
    from tunesmith.errors import TunesmithError
    from tunesmith.eval.lm_eval_bridge import BUNDLED_TASKS, load_tasks

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TunesmithError, match="hellaswag come from lm-eval's own index"):
        load_tasks(BUNDLED_TASKS, ["hellaswag"])
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    load_tasks(BUNDLED_TASKS, ["tunesmith_general_mc"])
    assert "Hugging Face Hub" not in capsys.readouterr().err  # a bundled task reads a local file
    load_tasks(BUNDLED_TASKS, ["hellaswag"])
    assert "lm-eval tasks hellaswag read their datasets from the Hugging Face Hub" in capsys.readouterr().err
