"""`tunesmith eval RUN --checkpoints [--rollback]`: every saved checkpoint scored on the task and the probes, the
best one that keeps the probes chosen, and made the run's adapter on request."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_tiny_project
from tunesmith.config import load_recipe
from tunesmith.errors import TunesmithError
from tunesmith.eval import run_eval
from tunesmith.eval.checkpoints import (
    FINAL_ADAPTER,
    adapter_checkpoints,
    choose_checkpoint,
    roll_back,
    score_checkpoints,
)
from tunesmith.results import headline_of, read_results
from tunesmith.runs import create_run, open_run
from tunesmith.train import run_training

PROBES = [{"id": "echo-a", "prompt": "Say the letter a.", "check": "contains", "answer": "a"},
          {"id": "echo-e", "prompt": "Say the letter e.", "check": "contains", "answer": "e"},
          {"id": "number", "prompt": "Say a number.", "check": "regex", "answer": "[0-9]"}]


def point(step: int, task: float | None, probes: float | None) -> dict:
    return {"step": step, "task": task, "probe_accuracy": probes}


def test_the_best_task_score_among_checkpoints_that_keep_the_probes_is_chosen():
    points = [point(0, 0.0, 1.0), point(10, 0.5, 0.98), point(20, 0.8, 0.96), point(30, 0.9, 0.9)]
    chosen = choose_checkpoint(points, margin=0.05)
    assert chosen["chosen_step"] == 20 and "the final step 30 scores 0.9" in chosen["why"]
    assert choose_checkpoint(points, margin=0.1)["chosen_step"] == 30  # the final one keeps them at this margin


def test_a_tie_goes_to_the_earlier_checkpoint_and_none_is_chosen_when_all_forget():
    assert choose_checkpoint([point(0, 0.0, 1.0), point(5, 0.7, 1.0), point(9, 0.7, 1.0)], 0.05)["chosen_step"] == 5
    none = choose_checkpoint([point(0, 0.0, 1.0), point(5, 0.7, 0.8), point(9, 0.9, 0.7)], 0.05)
    assert none["chosen_step"] is None and "the closest is step 5 (0.800)" in none["why"]


def test_without_probes_the_task_score_alone_chooses():
    chosen = choose_checkpoint([point(0, 0.1, None), point(5, 0.9, None), point(9, 0.6, None)], 0.05)
    assert chosen["chosen_step"] == 5 and "probes is off" in chosen["why"]


@pytest.mark.parametrize("probes", [None, 1.0])
def test_no_checkpoint_is_chosen_when_none_beats_the_base(probes):
    """A diverged run (every checkpoint under the base) was rolled back to its "best" broken checkpoint."""
    none = choose_checkpoint([point(0, 0.31, probes), point(4, 0.0, probes), point(8, 0.02, probes)], 0.05)
    assert none["chosen_step"] is None and "no checkpoint scores above the base's 0.31" in none["why"]
    assert "step 8" in none["why"]


@pytest.fixture(scope="module")
def checkpointed_run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    recipe_file = make_tiny_project(root, tiny_model_dir, train_rows=32, eval_rows=6)
    (root / "probes.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROBES), encoding="utf-8")
    recipe = load_recipe(recipe_file, ["training.max_steps=12", "training.save_steps=4", "training.keep_checkpoints=3",
                                       "eval.probes=true", "eval.probe_file=probes.jsonl"])
    run = create_run(recipe, root / "runs")
    run_training(recipe, run)
    return recipe, run


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_each_checkpoint_is_scored_and_rolling_back_gives_the_adapter_its_score(checkpointed_run, monkeypatch, capsys):
    recipe, run = checkpointed_run
    assert [step for step, _ in adapter_checkpoints(run)] == [4, 8, 12]
    final_weights = digest(run.adapter_dir / "adapter_model.safetensors")
    report = json.loads(score_checkpoints(recipe, run).read_text(encoding="utf-8"))
    assert [p["step"] for p in report["points"]] == [0, 4, 8, 12] and report["probes"] == len(PROBES)
    assert all(0 <= p["probe_accuracy"] <= 1 and p["task"] is not None for p in report["points"])
    assert (run.plots_dir / "checkpoints.png").stat().st_size > 1000
    assert report["rolled_back_to"] is None  # not asked to
    assert open_run(run.path).manifest().eval.checkpoints == "eval/checkpoints.json"
    assert digest(run.adapter_dir / "adapter_model.safetensors") == final_weights

    run.exports_dir.mkdir(exist_ok=True)
    (run.exports_dir / "made-from-the-final-adapter.txt").write_text("stale after a rollback", encoding="utf-8")
    roll_back(run, run.checkpoints_dir / "checkpoint-4", 4)
    assert (run.path / "exports-final" / "made-from-the-final-adapter.txt").is_file()
    assert not run.exports_dir.exists()
    assert digest(run.adapter_dir / "adapter_model.safetensors") == digest(
        run.checkpoints_dir / "checkpoint-4" / "adapter_model.safetensors")
    assert digest(run.path / FINAL_ADAPTER / "adapter_model.safetensors") == final_weights
    assert open_run(run.path).manifest().train.checkpoint_step == 4
    from tunesmith.runs import run_summary

    assert run_summary(run)["status"] == "trained, adapter rolled back to step 4"  # `runs list` says which it is
    results = read_results(run_eval(load_recipe(run.recipe_file), run))
    metric = headline_of(results.metrics, results.tuned)
    # the same score as its checkpoint point (every point scores 0 on this random tiny model, so this alone could not
    # tell step 4 from the final adapter: the weights' digests above do)
    assert results.tuned[metric] == report["points"][1]["task"]
    assert open_run(run.path).manifest().eval.checkpoints == "eval/checkpoints.json"  # kept beside the results
    from tunesmith.card import rollback_lines

    # chosen on the rows it is then scored on: the card and the eval say its scores read a little high
    assert "chosen on the held-out rows its scores below come from" in " ".join(rollback_lines(run))
    from tunesmith.cli.app import _print_results

    capsys.readouterr()
    _print_results(run.path)  # what `tunesmith eval RUN` prints of the results just written
    assert "chosen (--checkpoints --rollback) on these held-out rows" in " ".join(capsys.readouterr().err.split())

    def interrupted_copy(*args, **kwargs):  # Ctrl-C while the checkpoint's files are copied in
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(shutil, "copy2", interrupted_copy)
        with pytest.raises(KeyboardInterrupt):
            roll_back(run, run.checkpoints_dir / "checkpoint-12", 12)
    assert digest(run.adapter_dir / "adapter_model.safetensors") == digest(
        run.checkpoints_dir / "checkpoint-4" / "adapter_model.safetensors")  # nothing moved: the run is as it was
    assert open_run(run.path).manifest().eval.results and (run.eval_dir / "report.html").is_file()

    roll_back(run, run.checkpoints_dir / "checkpoint-12", 12)  # back to the end; adapter-final/ stays the original
    assert digest(run.adapter_dir / "adapter_model.safetensors") == final_weights
    assert digest(run.path / FINAL_ADAPTER / "adapter_model.safetensors") == final_weights
    record = open_run(run.path).manifest().eval  # step 4's scores no longer describe the run's adapter
    assert record.results == {} and record.checkpoints == "eval/checkpoints.json"
    assert not (run.eval_dir / "results.json").exists() and not (run.eval_dir / "report.html").exists()
    assert not (run.plots_dir / "base_vs_tuned.png").exists()
    assert len(list((run.eval_dir / "history").glob("results-*.json"))) == 1
    assert not list(run.path.glob(".adapter-*"))  # no staging or replaced adapter left behind


def test_the_cli_refuses_rollback_alone_and_runs_without_checkpoints_say_how_to_get_them(checkpointed_run, tmp_path):
    _, run = checkpointed_run
    alone = subprocess.run([sys.executable, "-m", "tunesmith", "eval", str(run.path), "--rollback"],
                           capture_output=True, text=True, timeout=300)
    assert alone.returncode == 2 and "--checkpoints" in alone.stderr
    listed = subprocess.run([sys.executable, "-m", "tunesmith", "eval", str(run.path), "--checkpoints", "--json"],
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert [p["step"] for p in json.loads(listed.stdout)["points"]] == [0, 4, 8, 12]
    bare = open_run(run.path)
    for folder in sorted(bare.checkpoints_dir.iterdir()):
        folder.rename(tmp_path / folder.name)
    try:
        with pytest.raises(TunesmithError, match=r"training\.save_steps"):
            adapter_checkpoints(bare)
    finally:
        for folder in sorted(tmp_path.iterdir()):
            folder.rename(bare.checkpoints_dir / folder.name)


def test_the_gate_judges_the_adapter_rollback_leaves_and_needs_rollback_to_run_with_checkpoints(checkpointed_run):
    """`eval --checkpoints --fail-if-worse ...` exited 0 without applying the gate."""
    _, run = checkpointed_run
    alone = subprocess.run([sys.executable, "-m", "tunesmith", "eval", str(run.path), "--checkpoints",
                            "--fail-if-worse", "loss"], capture_output=True, text=True, timeout=300)
    said = " ".join(alone.stderr.split())
    assert alone.returncode == 2 and "add --rollback to gate the checkpoint it chooses" in said
    gated = subprocess.run([sys.executable, "-m", "tunesmith", "eval", str(run.path), "--checkpoints", "--rollback",
                            "--fail-if-worse", "loss:-100"],  # a demand no adapter meets: the gate must fail
                           capture_output=True, text=True, timeout=600)
    assert gated.returncode == 3, gated.stderr[-3000:]
    assert "NOT ENOUGH: loss" in gated.stderr or "WORSE: loss" in gated.stderr


def test_a_stopped_runs_checkpoints_are_scored_without_finishing_it(tiny_model_dir, tmp_path, monkeypatch):
    """`eval --checkpoints` refused a run that never finished: scoring what it saved is what such a run needs."""
    from tests.test_resume import Crash, crash_at_step, only_run

    recipe_file = make_tiny_project(tmp_path, tiny_model_dir, train_rows=32, eval_rows=6)
    recipe = load_recipe(recipe_file, ["training.max_steps=12", "training.save_steps=4", "eval.probes=false"])
    crash_at_step(monkeypatch, 9)
    with pytest.raises(Crash):
        run_training(recipe, create_run(recipe, tmp_path / "runs"))
    monkeypatch.undo()
    run = only_run(tmp_path / "runs")
    assert not (run.adapter_dir / "adapter_config.json").exists()
    listed = subprocess.run([sys.executable, "-m", "tunesmith", "eval", str(run.path), "--checkpoints", "--json"],
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert [p["step"] for p in json.loads(listed.stdout)["points"]] == [0, 4, 8]
    rolled = subprocess.run([sys.executable, "-m", "tunesmith", "eval", str(run.path), "--checkpoints", "--rollback"],
                            capture_output=True, text=True, timeout=300)
    assert rolled.returncode == 2 and "has no trained model" in rolled.stderr  # rolling back needs a finished run


def test_the_checkpoints_picture_labels_its_axis_draws_the_probe_floor_and_says_when_none_was_chosen(
        tmp_path, monkeypatch):
    """The probes' margin was a green band over the whole plot (exact match at 1.0 looked "within margin"), the y axis
    had no label, and a report that chose no checkpoint looked like one that did."""
    from tunesmith.eval.checkpoints import plot_checkpoints
    from tunesmith.figures import pyplot

    plt, axes = pyplot(), []
    original = plt.subplots

    def keep(*args, **kwargs):
        fig, ax = original(*args, **kwargs)
        axes.append(ax)
        return fig, ax

    monkeypatch.setattr(plt, "subplots", keep)
    points = [{"step": s, "task": t, "probe_accuracy": p} for s, t, p in ((0, 0.1, 1.0), (10, 0.867, 0.771))]
    report = {"metric": "exact_match", "probe_margin": 0.05, "points": points, "chosen_step": None}
    plot_checkpoints(report, tmp_path / "none.png", "weather")
    plot_checkpoints({**report, "chosen_step": 10}, tmp_path / "chosen.png", "weather")
    none, chosen = axes
    assert none.get_title() == "weather: no checkpoint chosen" and chosen.get_title() == "weather: checkpoints"
    assert none.get_ylabel().startswith("score")
    floor = next(line for line in none.get_lines() if line.get_label().startswith("probe floor"))
    assert list(floor.get_ydata()) == [pytest.approx(0.95)] * 2 and not none.patches  # a line, not a band
    assert any(line.get_label() == "chosen: step 10" for line in chosen.get_lines())
