"""tunesmith from Python (tunesmith.api): train, evaluate, export and load a run as a notebook would, with the checks
the CLI makes and errors as exceptions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import make_tiny_project
from tunesmith import api
from tunesmith.errors import RecipeError, TunesmithError
from tunesmith.results import EvalResults
from tunesmith.runs import Run


def test_a_run_is_trained_scored_exported_and_loaded_from_python(tmp_path: Path, tiny_model_dir: Path):
    recipe = make_tiny_project(tmp_path, tiny_model_dir, train_rows=16, eval_rows=4)
    run = api.train(recipe, ["training.max_steps=2"], runs_dir=tmp_path / "runs")
    assert isinstance(run, Run) and (run.adapter_dir / "adapter_config.json").is_file()
    assert run.path.is_absolute()  # a notebook that changes folder keeps its paths
    assert (run.path / "README.md").is_file()  # the model card, as `tunesmith train` writes it
    assert not (run.path / ".training.json").exists()  # the training lock is let go

    results = api.evaluate(str(run.path))
    assert isinstance(results, EvalResults) and results.examples == 4
    assert set(results.tuned) >= {"exact_match"} and results.base is not None

    written = api.export(run, ["adapter"])
    assert written == {"adapter": run.exports_dir / "adapter"}
    assert (written["adapter"] / "adapter_model.safetensors").is_file()

    if not torch.cuda.is_available():
        with pytest.raises(TunesmithError, match="no CUDA GPU"):
            api.load_tuned(run, device="cuda")
    tokenizer, model = api.load_tuned(run)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    assert model.generate(**ids, max_new_tokens=2, do_sample=False).shape[1] == ids["input_ids"].shape[1] + 2


def test_mistakes_are_exceptions_with_a_hint_not_exits(tmp_path: Path, tiny_model_dir: Path):
    recipe = make_tiny_project(tmp_path, tiny_model_dir)
    with pytest.raises(RecipeError, match="Did you mean 'lr'"):
        api.train(recipe, ["training.lrr=1e-4"], runs_dir=tmp_path / "runs")
    with pytest.raises(RecipeError, match="a Python call is one process") as launched:
        api.train(recipe, ["training.distributed=ddp"], runs_dir=tmp_path / "runs")
    assert "--nproc N" in launched.value.hint
    with pytest.raises(TunesmithError, match="does not exist"):
        api.evaluate(tmp_path / "runs" / "missing")
    with pytest.raises(TypeError, match="a list of 'key=value' strings"):  # not read one character at a time
        api.train(recipe, "training.lr=1e-4", runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing half-made


def test_the_rows_a_run_kept_train_a_new_run_on_the_same_rows(tmp_path: Path, tiny_model_dir: Path):
    """What the changed-data resume refusal offers: a new run on the run's own data/train.jsonl and data/eval.jsonl
    (cleaned, split, system prompt in) reads back the same rows, byte for byte, and trains the same losses."""
    import json

    recipe = make_tiny_project(tmp_path, tiny_model_dir, train_rows=16, eval_rows=4)
    first = api.train(recipe, ["training.max_steps=2"], runs_dir=tmp_path / "runs")
    kept = [f"data.{split}={first.path / 'data' / f'{split}.jsonl'}" for split in ("train", "eval")]
    again = api.train(recipe, ["training.max_steps=2", *kept], runs_dir=tmp_path / "runs")
    data = [json.loads((run.path / "run.json").read_text())["data"] for run in (first, again)]
    hashes = [(d["train"]["sha256"], d["eval"]["sha256"]) for d in data]
    assert hashes[0] == hashes[1]
    losses = [[json.loads(line).get("loss") for line in (run.path / "metrics.jsonl").read_text().splitlines()]
              for run in (first, again)]
    assert losses[0] == losses[1] and any(loss is not None for loss in losses[0])


def test_runs_show_says_what_one_run_is(tmp_path: Path, tiny_model_dir: Path):
    import json

    from typer.testing import CliRunner

    from tunesmith.cli import app

    recipe = make_tiny_project(tmp_path, tiny_model_dir, train_rows=16, eval_rows=4)
    run = api.train(recipe, ["training.max_steps=2"], runs_dir=tmp_path / "runs", evaluate=True)
    shown = CliRunner().invoke(app, ["runs", "show", str(run.path), "--json"])
    assert shown.exit_code == 0, shown.output
    details = json.loads(shown.stdout)
    assert details["status"] == "trained" and details["steps"] == 2 and details["rows"]["train"] == 16
    assert details["scores"]["tuned"]["exact_match"] == api.evaluate(run).tuned["exact_match"]
    assert "README.md" in details["files"] and details["tokens_per_s"] > 0
    table = CliRunner().invoke(app, ["runs", "show", str(run.path)])
    assert table.exit_code == 0 and "eval exact_match" in table.stderr + table.stdout
    listed = CliRunner().invoke(app, ["runs", "list", str(run.path)])  # a run, not a folder of runs
    assert isinstance(listed.exception, TunesmithError)  # the CLI's main() makes it exit 2
    assert f"tunesmith runs show {run.path}" in listed.exception.hint


def test_deepspeeds_log_goes_to_stderr_not_to_the_stdout_json_and_replies_use():
    """Importing accelerate imports DeepSpeed, whose logger writes to stdout ("Setting accelerator to CPU")."""
    import subprocess
    import sys

    pytest.importorskip("deepspeed")
    done = subprocess.run([sys.executable, "-c", "import tunesmith\nfrom deepspeed.utils import logger\n"
                                                 "logger.warning('a deepspeed note')"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "a deepspeed note" not in done.stdout and "a deepspeed note" in done.stderr
