"""Every user mistake of issue 13, fed through the installed CLI: each exits 2 with what happened and the fix,
before any training step, and none is reported as "Internal error … report it" (that line means a bug)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import make_tiny_project
from tests.test_cli_usage import assert_not_internal, tunesmith
from tests.test_input_contract import GEMMA_LIKE, TOOL_ROW


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir) -> Path:
    root = tmp_path_factory.mktemp("mistakes")
    make_tiny_project(root, tiny_model_dir, train_rows=24, eval_rows=6)
    return root


@pytest.fixture(scope="module")
def gemma_like_model(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model with a chat template that raises on the system role, as Gemma's does."""
    from transformers import AutoTokenizer

    target = tmp_path_factory.mktemp("gemma-like") / "model"
    shutil.copytree(tiny_model_dir, target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    tokenizer.chat_template = GEMMA_LIKE
    tokenizer.save_pretrained(target)
    return target


def refused(result, *phrases: str) -> None:
    assert result.returncode == 2, result.stderr
    assert_not_internal(result)
    assert "Error:" in result.stderr
    for phrase in phrases:
        assert phrase in " ".join(result.stderr.split()), result.stderr
    assert "loss" not in result.stderr.split("Error:")[0], "it trained before refusing"


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_a_template_that_raises_on_system_is_refused_by_train_with_the_fallback(project, gemma_like_model):
    result = tunesmith("train", "recipe.yaml", "--set", f"model.source={gemma_like_model}",
                       "--set", "data.system_prompt=Answer in JSON.", "--runs-dir", "runs", cwd=project)
    refused(result, "refuses (raises on) the system role", "data.system_fallback: merge")


@pytest.mark.parametrize("command", [["data", "inspect"], ["data", "preview"]])
def test_inspect_and_preview_report_the_refusing_template_instead_of_crashing(project, gemma_like_model, command):
    result = tunesmith(*command, "recipe.yaml", "--set", f"model.source={gemma_like_model}",
                       "--set", "data.system_prompt=Answer in JSON.", "--json", cwd=project)
    assert result.returncode == 1, result.stderr  # found problems, like a linter
    assert_not_internal(result)
    report = json.loads(result.stdout)
    problems = report.get("problems") or report["template_contract"]["problems"]
    assert any("refuses (raises on) the system role" in p and "data.system_fallback: merge" in p for p in problems)


def test_the_merge_fallback_lets_the_same_run_train(project, gemma_like_model):
    result = tunesmith("train", "recipe.yaml", "--set", f"model.source={gemma_like_model}",
                       "--set", "data.system_prompt=Answer in JSON.", "--set", "data.system_fallback=merge",
                       "--set", "training.max_steps=1", "--runs-dir", "runs-merge", cwd=project)
    assert result.returncode == 0, result.stderr
    [run] = (project / "runs-merge").iterdir()
    contract = json.loads((run / "data.json").read_text())["template_contract"]
    assert contract["system_role"] == "refused" and not contract["problems"]
    assert "## Chat template contract" in (run / "README.md").read_text()


def test_tool_rows_on_a_template_without_tools_are_refused_with_hermes(project):
    write_rows(project / "data" / "tools.jsonl", [TOOL_ROW] * 8)
    result = tunesmith("train", "recipe.yaml", "--set", "data.train=data/tools.jsonl", "--runs-dir", "runs",
                       cwd=project)
    refused(result, "cannot express tools", "data.tool_format: hermes")


def test_json_fields_on_answers_that_are_not_json_is_refused_before_training(project):
    rows = [{"messages": [{"role": "user", "content": f"ticket {i}"}, {"role": "assistant", "content": label}]}
            for i, label in enumerate(["billing", "refund", "bug"] * 8)]
    write_rows(project / "data" / "labels.jsonl", rows)
    result = tunesmith("train", "recipe.yaml", "--set", "data.train=data/labels.jsonl", "--set", "data.eval=null",
                       "--set", "eval.task_metric=json_fields", "--runs-dir", "runs", cwd=project)
    refused(result, "eval.task_metric: json_fields", "eval.task_metric: auto")


@pytest.mark.parametrize("target", ["lm_head", "embed_tokens"])
def test_lora_on_a_tied_embedding_is_refused_before_the_model_loads(project, target):
    result = tunesmith("train", "recipe.yaml", "--set", f"adapter.targets=[q_proj, {target}]", "--runs-dir", "runs",
                       cwd=project)
    refused(result, f"adapter.targets includes {target}", "tie_word_embeddings: true", "train_lm_head: true")


def test_eval_naming_the_training_file_is_explained(project):
    result = tunesmith("train", "recipe.yaml", "--set", "data.eval=data/train.jsonl", "--runs-dir", "runs",
                       cwd=project)
    refused(result, "data.eval names the same file as data.train", "Remove data.eval")


def test_eval_that_duplicates_every_training_row_is_explained(project):
    shutil.copy(project / "data" / "train.jsonl", project / "data" / "copy.jsonl")
    result = tunesmith("train", "recipe.yaml", "--set", "data.eval=data/copy.jsonl", "--runs-dir", "runs",
                       cwd=project)
    refused(result, "also appear in the eval set", "none is left to train on")


def test_an_answer_past_max_length_is_counted_where_the_user_reads(project):
    long_row = {"messages": [{"role": "user", "content": "order " * 200}, {"role": "assistant", "content": "ok"}]}
    lines = (project / "data" / "train.jsonl").read_text().splitlines()[:4]
    write_rows(project / "data" / "one-long.jsonl", [json.loads(line) for line in lines] + [long_row])
    result = tunesmith("train", "recipe.yaml", "--set", "data.train=data/one-long.jsonl",
                       "--set", "training.max_steps=1", "--runs-dir", "runs-long", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "1 of 5 train rows are left out: 1 answer_past_max_length" in " ".join(result.stderr.split())
    [run] = (project / "runs-long").iterdir()
    data = json.loads((run / "data.json").read_text())
    assert data["train_rows"] == 4 and data["trained"]["train"]["dropped"] == {"answer_past_max_length": 1}
    assert "rows that carry loss: 4 of 5" in (run / "README.md").read_text()


@pytest.mark.parametrize("command", [["eval"], ["export", "--format", "merged"]])
def test_a_run_without_its_adapter_is_explained(project, command):
    run = project / "runs-broken" / f"tiny-{command[0]}"
    run.mkdir(parents=True, exist_ok=True)
    shutil.copy(project / "recipe.yaml", run / "recipe.yaml")
    result = tunesmith(*command[:1], str(run), *command[1:], cwd=project)
    refused(result, "has no trained model", "adapter/adapter_config.json")
    assert "--resume" not in result.stderr  # nothing to resume from
    (run / "checkpoints" / "checkpoint-4").mkdir(parents=True, exist_ok=True)  # stopped after a checkpoint
    result = tunesmith(*command[:1], str(run), *command[1:], cwd=project)
    refused(result, "has no trained model", f"--resume {run}")
