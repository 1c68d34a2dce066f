"""Nothing half-written: a command that fails or is interrupted leaves the earlier output whole (or the new one), and
the run's records never name a file that is not there or describe one that was replaced."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tunesmith.runs import atomic_directory


def test_replacing_a_folder_interrupted_while_the_old_one_is_deleted_leaves_a_whole_one(tmp_path: Path,
                                                                                       monkeypatch):
    """atomic_directory deleted the old folder in place before renaming the new one in: a Ctrl-C during that delete
    left the old folder part-deleted at the output's name (an index without its shard). Now the old folder is
    renamed aside first and deleted last, so the name always holds one whole folder."""
    target = tmp_path / "merged"
    target.mkdir()
    for name in ("index.json", "shard-1", "shard-2"):
        (target / name).write_text("old")
    real_rmtree = shutil.rmtree
    calls: list[Path] = []

    def interrupted_rmtree(path, *args, **kwargs):  # deletes one file of the folder, then Ctrl-C
        calls.append(Path(path))
        if len(calls) == 1:
            next(Path(path).iterdir()).unlink()
            raise KeyboardInterrupt
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", interrupted_rmtree)
    with pytest.raises(KeyboardInterrupt), atomic_directory(target) as staging:
        for name in ("index.json", "shard-1"):
            (staging / name).write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["index.json", "shard-1"]
    assert {p.read_text() for p in target.iterdir()} == {"new"}
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:  # a failure keeps the earlier folder
        (staging / "index.json").write_text("newer")
        raise RuntimeError("disk full")
    assert {p.read_text() for p in target.iterdir()} == {"new"}
    assert all(p.name == "merged" or p.name.startswith(".merged.") for p in tmp_path.iterdir())  # hidden leftovers


def test_a_baseline_that_fails_before_its_results_leaves_no_run_behind(tmp_path: Path, tiny_model_dir: Path,
                                                                       monkeypatch):
    """`tunesmith baseline` made its run directory and then loaded and generated: a failure there (out of memory, a
    full disk, Ctrl-C) left a run with a recipe and data but no results, which `runs list` showed as "not trained".
    Now the directory goes with the failure, as a training run's does before its first step."""
    import tunesmith.eval.before_training as before_training
    from tests.conftest import make_tiny_project
    from tunesmith.config import load_recipe

    recipe = load_recipe(make_tiny_project(tmp_path, tiny_model_dir, eval_rows=4))

    def out_of_memory(*args, **kwargs):
        raise MemoryError("the base does not fit")

    monkeypatch.setattr(before_training, "load_model", out_of_memory)
    with pytest.raises(MemoryError):
        before_training.run_baselines_before_training(recipe, ["zero_shot"], tmp_path / "runs")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_resumed_sweep_stopped_again_keeps_the_rows_of_combinations_it_had_not_reached(tmp_path: Path,
                                                                                         tiny_model_dir: Path,
                                                                                         monkeypatch):
    """A resumed sweep wrote its table after each combination it ran with only the rows reached so far: stopped (or
    killed) while retrying its first combination, sweep.json lost the later ones that had finished, and the next
    --resume trained them again. The rows not reached yet are now written too."""
    import json

    import tunesmith.sweep as sweep
    from tests.conftest import make_tiny_project

    recipe = make_tiny_project(tmp_path, tiny_model_dir, eval_rows=4).resolve()
    grid = "training.lr=0.0001,0.0002"
    sweep_dir = tmp_path / "runs" / "sweep-tiny"
    sweep_dir.mkdir(parents=True)
    finished = {"combination": "lr=0.0002", "overrides": ["training.lr=0.0002"], "status": "ok", "wall_time_s": 12.0,
                "recipe": str(recipe), "final_train_loss": 1.5, "run_dir": str(sweep_dir / "b")}
    failed = {"combination": "lr=0.0001", "overrides": ["training.lr=0.0001"], "status": "failed",
              "error": "out of memory", "wall_time_s": 3.0, "recipe": str(recipe), "run_dir": None}
    (sweep_dir / "sweep.json").write_text(json.dumps({"recipe": str(recipe), "grid": [grid], "set": [],
                                                      "evaluate": False, "rows": [failed, finished]}))

    def stopped_again(recipe_path, sets, combo, sweep_dir, evaluate, resumed=False):
        return {**failed, "status": "stopped", "signal": "SIGINT", "error": "stopped before a checkpoint"}

    monkeypatch.setattr(sweep, "run_combination", stopped_again)
    with pytest.raises(sweep.SweepInterrupted) as stopped:
        sweep.run_sweep(recipe, [], resume=str(sweep_dir), report=lambda line: None)
    assert "not started" not in stopped.value.message  # the other combination had finished before
    rows = json.loads((sweep_dir / "sweep.json").read_text())["rows"]
    assert [(row["combination"], row["status"]) for row in rows] == [("lr=0.0001", "stopped"),
                                                                       ("lr=0.0002", "ok")]
    assert "| lr=0.0002 |" in (sweep_dir / "sweep.md").read_text()


def test_results_that_cannot_be_written_leave_the_earlier_ones_where_run_json_names_them(tmp_path: Path,
                                                                                        monkeypatch):
    """save_results moved the earlier results.json into history/ and then wrote the new one: a full disk in between
    left run.json naming a file that was gone. The earlier file now stays until the new one replaces it; history/
    gets a link to it."""
    import json

    import tunesmith.eval.rows as rows
    from tunesmith.runs import Run

    run = Run(tmp_path / "run")
    earlier = {"examples": 1, "task_metric": "exact_match", "tuned": {"exact_match": 0.5}}
    path = rows.save_results(run, run.eval_dir / "results.json", earlier)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rows, "atomic_write_json", disk_full)
    with pytest.raises(OSError):
        rows.save_results(run, path, {**earlier, "tuned": {"exact_match": 0.75}})
    assert json.loads(path.read_text())["tuned"] == {"exact_match": 0.5}
    [kept] = (path.parent / "history").iterdir()
    assert json.loads(kept.read_text())["tuned"] == {"exact_match": 0.5}
    monkeypatch.undo()
    rows.save_results(run, path, {**earlier, "tuned": {"exact_match": 0.75}})  # the link does not follow the new file
    assert json.loads(kept.read_text())["tuned"] == {"exact_match": 0.5}
    assert json.loads(path.read_text())["tuned"] == {"exact_match": 0.75}


def test_two_runs_started_in_the_same_second_never_share_a_folder(tmp_path: Path, tiny_model_dir: Path, monkeypatch):
    """create_run looked for a free name, then made it: two `train` started together could both pick the one folder,
    and the second's clean-up (its lock refused) deleted the first's live run. The folder is now made, not looked
    for: here the look always says free, as it did to the second process in that race."""
    from tests.conftest import make_tiny_project
    from tunesmith.config import load_recipe
    from tunesmith.runs import create_run

    recipe = load_recipe(make_tiny_project(tmp_path, tiny_model_dir))
    monkeypatch.setattr(Path, "exists", lambda self: False)
    first, second = create_run(recipe, tmp_path / "runs"), create_run(recipe, tmp_path / "runs")
    monkeypatch.undo()
    assert first.path != second.path and first.recipe_file.is_file() and second.recipe_file.is_file()


def test_records_written_together_by_two_commands_are_all_kept(tmp_path: Path):
    """Each recorder read run.json (or exports/manifest.json), merged its entry and wrote the whole file back: two
    commands finishing together kept only one's entry. They now merge under one lock."""
    import json
    import threading

    from tunesmith.export import update_export_manifest
    from tunesmith.runs import Run

    run = Run(tmp_path / "run")
    run.exports_dir.mkdir(parents=True)

    def export(writer: int) -> None:
        for n in range(40):
            update_export_manifest(run, {f"{writer}-{n}": {"path": f"gguf/{writer}-{n}.gguf"}}, group="gguf")

    threads = [threading.Thread(target=export, args=(writer,)) for writer in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(json.loads((run.exports_dir / "manifest.json").read_text())["gguf"]) == 120


def test_a_run_another_process_is_training_is_said_to_be_in_training_not_unfinished(tmp_path: Path,
                                                                                     tiny_model_dir: Path):
    """eval, export and serve on a run still training said "training did not finish ... resume it", advice that the
    training lock then refuses. They now say it is being trained, by which process."""
    from tests.conftest import make_tiny_project
    from tunesmith.config import load_recipe
    from tunesmith.errors import TunesmithError
    from tunesmith.eval.checkpoints import adapter_checkpoints
    from tunesmith.runs import create_run, training_lock

    run = create_run(load_recipe(make_tiny_project(tmp_path, tiny_model_dir)), tmp_path / "runs")
    with pytest.raises(TunesmithError, match="has no trained model"):
        run.trained_artifact()
    with training_lock(run), pytest.raises(TunesmithError, match=r"is being trained by another process \(process "):
        run.trained_artifact()
    (run.checkpoints_dir / "checkpoint-2").mkdir(parents=True)  # the trainer deletes older ones as it saves
    with training_lock(run), pytest.raises(TunesmithError, match="is being trained") as refused:
        adapter_checkpoints(run)
    assert "deletes older checkpoints as it saves new ones" in refused.value.hint


def test_a_resumed_sweep_never_moves_or_deletes_a_combination_still_training(tmp_path: Path):
    """A sweep whose terminal closed leaves its child training in `.staging-*`; `sweep --resume` moved that live run
    into place (or deleted it, where it had no checkpoint yet). It now stops, naming the process."""
    from tunesmith.errors import TunesmithError
    from tunesmith.runs import Run, training_lock
    from tunesmith.sweep import adopt_run_dir

    staging = tmp_path / "sweep" / ".staging-lr=0.001"
    live = staging / "tiny-20261207-010101"
    live.mkdir(parents=True)
    target = tmp_path / "sweep" / "lr=0.001"
    with training_lock(Run(live)), pytest.raises(TunesmithError, match="is being trained by another process"):
        adopt_run_dir(staging, target, tmp_path / "sweep" / "logs" / "lr=0.001.log", keep_staging=True)
    assert live.is_dir() and not target.exists()
    assert adopt_run_dir(staging, target, tmp_path / "log", keep_staging=True) == target  # once it stopped


def test_two_evals_of_one_run_finishing_together_leave_one_evals_results_and_report(tmp_path: Path, monkeypatch):
    """Eval A is between its results.json and its report.html when eval B finishes: without a lock B's results.json
    ended beside A's report.html. B now waits, and the folder holds B's pair (A's results go to history/)."""
    import json
    import threading

    import tunesmith.eval.rows as rows
    from tunesmith.runs import Run

    run = Run(tmp_path / "run")
    results_a = {"examples": 1, "task_metric": "exact_match", "tuned": {"exact_match": 0.25}}
    results_b = {**results_a, "tuned": {"exact_match": 0.75}}
    real_report = rows.write_html_report
    second = threading.Thread(target=rows.write_eval_outputs, args=(run, run.eval_dir, results_b))

    def report_while_b_finishes(results, path, chart=None):
        if results is results_a:  # A has written results.json: B finishes now, or waits for A's lock
            monkeypatch.setattr(rows, "write_html_report", real_report)
            second.start()
            second.join(timeout=3)
        return real_report(results, path, chart)

    monkeypatch.setattr(rows, "write_html_report", report_while_b_finishes)
    rows.write_eval_outputs(run, run.eval_dir, results_a)
    second.join(timeout=60)
    assert not second.is_alive()
    assert json.loads((run.eval_dir / "results.json").read_text())["tuned"] == {"exact_match": 0.75}
    report = (run.eval_dir / "report.html").read_text()
    assert "0.75" in report and "0.25" not in report
