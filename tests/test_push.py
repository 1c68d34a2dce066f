"""`tunesmith push`: what a run uploads, and the failures users meet, for real (no mocked huggingface_hub):
offline mode, an unreachable Hub, no token. Each ends in exit code 2 and a message naming the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith.errors import TunesmithError
from tunesmith.export.hub import folder_to_upload, upload_operations


def push(args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess:
    """`tunesmith push` in a clean Hugging Face environment: no saved token, no inherited HF_* settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    clean |= {"HF_HOME": str(home), **env}
    return subprocess.run([sys.executable, "-m", "tunesmith", "push", *args], capture_output=True, text=True,
                          env=clean, timeout=120)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "adapter"
    path.mkdir()
    (path / "adapter_config.json").write_text("{}", encoding="utf-8")
    (path / ".adapter_model.safetensors.tmp").write_text("half-written", encoding="utf-8")
    return path


def test_offline_mode_names_the_fix(folder, tmp_path):
    result = push([str(folder), "someone/tiny-lora"], tmp_path / "hf", HF_HUB_OFFLINE="1", HF_TOKEN="hf_notreal")
    assert result.returncode == 2, result.stderr
    assert "HF_HUB_OFFLINE is set" in result.stderr and "hf auth login" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_hub_names_the_endpoint_and_the_fix(folder, tmp_path):
    result = push([str(folder), "someone/tiny-lora", "--private"], tmp_path / "hf",
                  HF_ENDPOINT="http://127.0.0.1:9", HF_TOKEN="hf_notreal")
    assert result.returncode == 2, result.stderr
    assert "Cannot reach the Hugging Face Hub at http://127.0.0.1:9" in result.stderr
    assert "hf auth login" in result.stderr and "Traceback" not in result.stderr


def test_no_token_is_caught_before_any_network_call(folder, tmp_path):
    result = push([str(folder), "someone/tiny-lora"], tmp_path / "hf", HF_ENDPOINT="http://127.0.0.1:9")
    assert result.returncode == 2, result.stderr
    assert "not logged in" in result.stderr and "hf auth login" in result.stderr and "HF_TOKEN" in result.stderr


def make_run(root: Path) -> Path:
    run = root / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "recipe.yaml").write_text("data:\n  train: t.jsonl\n", encoding="utf-8")
    (run / "adapter" / "adapter_config.json").write_text("{}", encoding="utf-8")
    (run / "README.md").write_text("# card\n", encoding="utf-8")
    return run


def test_a_run_uploads_its_adapter_with_its_model_card(tmp_path):
    from huggingface_hub import CommitOperationAdd

    run = make_run(tmp_path)
    folder, card = folder_to_upload(run, None)
    assert folder == run / "adapter" and card == run / "README.md"
    operations = upload_operations(folder, card)
    assert all(isinstance(op, CommitOperationAdd) for op in operations)
    assert sorted(op.path_in_repo for op in operations) == ["README.md", "adapter_config.json"]
    (run / "adapter" / "README.md").write_text("# Model Card for Model ID\n", encoding="utf-8")  # PEFT's template
    readme = [op for op in upload_operations(folder, card) if op.path_in_repo == "README.md"]
    assert len(readme) == 1 and readme[0].path_or_fileobj == str(run / "README.md")  # the run's card wins


def test_hidden_temporary_files_are_not_uploaded(folder):
    assert [op.path_in_repo for op in upload_operations(folder, None)] == ["adapter_config.json"]


def test_a_missing_export_says_which_export_to_run(tmp_path):
    run = make_run(tmp_path)
    with pytest.raises(TunesmithError, match="no exported merged") as error:
        folder_to_upload(run, "merged")
    assert error.value.hint == f"Export it first: tunesmith export {run} --format merged"
    with pytest.raises(TunesmithError, match="--what applies to run directories"):
        folder_to_upload(run / "adapter", "gguf")


def test_push_help_has_an_example():
    from typer.testing import CliRunner

    from tunesmith.cli import app

    result = CliRunner().invoke(app, ["push", "--help"])
    assert result.exit_code == 0 and "Example: tunesmith push" in result.output


def test_a_bad_repo_id_an_empty_folder_and_offline_mode_are_said_before_the_token_or_the_network(folder, tmp_path):
    """`push RUN "me/bad name!"` ended in 'Internal error: HFValidationError'; offline mode without a token said
    'not logged in'; an empty folder went to the network."""
    for repo_id in ("me/bad name!", "https://huggingface.co/me/x", "a/b/c"):
        result = push([str(folder), repo_id], tmp_path / "hf", HF_TOKEN="hf_notreal",
                      HF_ENDPOINT="http://127.0.0.1:9")
        assert result.returncode == 2 and "is not a Hub repository id" in result.stderr, result.stderr
        assert "owner/name" in result.stderr
    offline = push([str(folder), "me/x"], tmp_path / "hf", HF_HUB_OFFLINE="1")
    assert offline.returncode == 2 and "HF_HUB_OFFLINE is set" in offline.stderr, offline.stderr
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".hidden").write_text("x")
    empty = push([str(tmp_path / "empty"), "me/x"], tmp_path / "hf", HF_ENDPOINT="http://127.0.0.1:9")
    assert empty.returncode == 2 and "holds no files to upload" in empty.stderr, empty.stderr


def test_a_dry_run_lists_what_would_go_up_without_a_token(tmp_path):
    run = make_run(tmp_path)
    result = push([str(run), "me/orders-lora", "--dry-run"], tmp_path / "hf", HF_ENDPOINT="http://127.0.0.1:9")
    assert result.returncode == 0, result.stderr
    assert "adapter_config.json  (2 bytes" in result.stderr and "README.md  (7 bytes" in result.stderr
    assert "Would upload 2 file(s), 9 bytes, to me/orders-lora" in result.stderr


def test_an_adapter_trained_on_a_hub_model_goes_up_naming_that_id_as_its_base(tmp_path):
    """PEFT writes the base's snapshot folder on this machine into adapter_config.json: uploaded as it is, nobody
    else could load the adapter. The uploaded copy names the recipe's Hub id; the file here is left alone."""
    import json

    from tunesmith.export.hub import hub_base_id, upload_plan

    run = make_run(tmp_path)
    (run / "recipe.yaml").write_text("model:\n  source: someone/base-model\ndata:\n  train: t.jsonl\n")
    local = {"base_model_name_or_path": "/home/me/.cache/huggingface/hub/models--someone--base-model/snapshots/1"}
    (run / "adapter" / "adapter_config.json").write_text(json.dumps(local), encoding="utf-8")
    assert hub_base_id(run) == ("someone/base-model", None)  # a run older than run.json: its recipe's source
    folder, card = folder_to_upload(run, None)
    config = next(op for op in upload_operations(folder, card, hub_base_id(run))
                  if op.path_in_repo == "adapter_config.json")
    assert json.loads(config.path_or_fileobj)["base_model_name_or_path"] == "someone/base-model"
    assert json.loads((run / "adapter" / "adapter_config.json").read_text()) == local
    assert "its base named someone/base-model" in upload_plan(run, "me/x")["files"][0]["from"]
    (run / "recipe.yaml").write_text("data:\n  train: t.jsonl\n")  # the embedded model: no Hub id to name
    assert hub_base_id(run) is None


def test_the_uploaded_adapter_names_the_hub_commit_run_json_recorded_and_no_local_folder(tmp_path, monkeypatch):
    """run.json, not the recipe, says what the base was: a Hub download names its id at the commit trained on
    (PEFT's `revision`, which AutoPeftModel loads the base at); a local folder, even one named like an id and read
    from another working directory, names nothing."""
    import json

    from tunesmith.export.hub import hub_base_id, upload_plan
    from tunesmith.manifest import BaseModelRecord, TrainRecord
    from tunesmith.runs import Run, record_stage

    run = make_run(tmp_path)
    (run / "recipe.yaml").write_text("model:\n  source: someone/base-model\ndata:\n  train: t.jsonl\n")

    def trained_on(source: str, commit: str | None) -> None:
        base = BaseModelRecord(source=source, path=f"/cache/snapshots/{commit}", commit=commit)
        record_stage(Run(run), "train", TrainRecord(artifact="adapter", path="adapter", method="sft", adapter="lora",
                                                    base_model=base))

    trained_on("someone/base-model", "0123abc")
    assert hub_base_id(run) == ("someone/base-model", "0123abc")
    uploaded = next(op for op in upload_operations(*folder_to_upload(run, None), hub_base_id(run))
                    if op.path_in_repo == "adapter_config.json")
    assert json.loads(uploaded.path_or_fileobj)["revision"] == "0123abc"
    assert "its base named someone/base-model at 0123abc" in upload_plan(run, "me/x")["files"][0]["from"]
    trained_on("someone/base-model", None)  # the same name as a local folder's (no Hub commit): names nothing
    assert hub_base_id(run) is None
    (run / "run.json").unlink()  # a run older than run.json: its recipe's source, unless a folder beside the recipe
    (tmp_path / "someone" / "base-model").mkdir(parents=True)  # has that name, seen from any working directory
    (run / "recipe.yaml").write_text(f"model:\n  source: someone/base-model\nbase_dir: {tmp_path}\n"
                                     "data:\n  train: t.jsonl\n")
    monkeypatch.chdir(run)
    assert hub_base_id(run) is None
