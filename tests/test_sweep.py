"""The experiment matrix: grid parsing, the product and its names, fail-fast validation, and real sweeps."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import make_tiny_project
from tunesmith.errors import RecipeError, TunesmithError
from tunesmith.results import EvalResults
from tunesmith.sweep import (
    GridAxis,
    child_status,
    combinations,
    parse_grid,
    run_sweep,
    table_cells,
    time_left,
    validate_combinations,
)


def test_grid_values_split_on_top_level_commas():
    axis = parse_grid("adapter.targets=qv,qkvo,all-linear")
    assert axis == GridAxis("adapter.targets", ("qv", "qkvo", "all-linear"))
    assert parse_grid("adapter.targets=[q_proj, v_proj],qkvo").values == ("[q_proj, v_proj]", "qkvo")
    assert parse_grid("data.system_prompt='a, b',c").values == ("'a, b'", "c")


def test_grid_values_parse_as_yaml_through_set():
    """Values are handed to --set as written, so `1e-3` and `[0,1]` get the same YAML types as there."""
    axis = parse_grid("training.lr=1.0e-3,2.0e-4")
    combos = combinations([axis, parse_grid("adapter.layers=[0,1],last-half")])
    assert combos[0].overrides == ("training.lr=1.0e-3", "adapter.layers=[0,1]")


@pytest.mark.parametrize("text", ["adapter.targets", "=qv", "adapter.targets=", "adapter.targets=qv,,qkvo",
                                  "adapter.layers=[0,1", "adapter.targets=qv,qv", "adapter.layers=[0,1]]"])
def test_bad_grid_names_the_flag(text):
    with pytest.raises(RecipeError) as caught:
        parse_grid(text)
    assert "--grid" in caught.value.message and repr(text) in caught.value.message
    assert "section.key=value1,value2" in caught.value.hint


def test_same_key_twice_is_refused():
    with pytest.raises(RecipeError, match=r"same key twice: adapter\.r"):
        combinations([parse_grid("adapter.r=4,8"), parse_grid("adapter.r=16")])


def test_cartesian_product_and_names():
    axes = [parse_grid("adapter.targets=qv,qkvo,all-linear"), parse_grid("adapter.layers=all,last-half")]
    combos = combinations(axes)
    assert len(combos) == 6
    assert [c.name for c in combos[:3]] == ["targets=qv,layers=all", "targets=qv,layers=last-half",
                                           "targets=qkvo,layers=all"]
    assert combos[5].overrides == ("adapter.targets=all-linear", "adapter.layers=last-half")
    assert len({c.name for c in combos}) == 6


def test_names_of_lists_and_clashing_leaves():
    combos = combinations([parse_grid("adapter.targets=[q_proj,v_proj]"), parse_grid("model.dtype=float32"),
                           parse_grid("eval.dtype=x")])
    assert combos[0].name == "targets=q_proj+v_proj,model.dtype=float32,eval.dtype=x"


def headline(**results) -> str | None:
    return EvalResults.model_validate({"examples": 1, "task_metric": "auto", **results}).headline_metric()


def test_headline_metric_is_the_recipes_task_score():
    assert headline(metrics=["loss", "perplexity", "json_fields"],
                    tuned={"loss": 1.0, "field_accuracy": 0.5, "exact_match": 0.1}) == "field_accuracy"
    assert headline(metrics=["loss", "exact_match"], tuned={"exact_match": 0.2}) == "exact_match"
    assert headline(task_metric="preference_accuracy", tuned={"preference_accuracy": 0.7}) == "preference_accuracy"
    assert headline(metrics=["loss", "perplexity"], tuned={"loss": 1.0}) is None


def test_a_killed_child_is_reported_from_its_exit_code(tmp_path):
    log = tmp_path / "run.log"
    log.write_text("step 3/10\n", encoding="utf-8")
    status = child_status(tmp_path / "missing.json", -9, log)
    assert status.exit_code == -9 and "killed by signal 9" in status.error and "step 3/10" in status.error


def test_table_records_failures_with_their_message():
    rows = [{"combination": "r=4", "status": "ok", "final_train_loss": 1.5, "eval_loss": 1.25, "metric": "exact_match",
             "metric_value": 0.5, "trainable_params": 1234, "wall_time_s": 3.0, "peak_rss_mb": 500.0,
             "peak_cuda_mb": None},
            {"combination": "r=8", "status": "failed", "error": "boom", "wall_time_s": 1.0, "peak_rss_mb": 400.0}]
    columns, cells = table_cells(rows)
    assert columns[3] == "exact_match" and "peak CUDA (MB)" not in columns
    assert cells[0][:8] == ["r=4", "1.5000", "1.2500", "0.5000", "1,234", "3.0", "500", "ok"]
    assert cells[1][0] == "r=8" and cells[1][-1] == "failed: boom" and cells[1][1] == "—"


def test_table_and_chart_show_what_each_setting_cost_in_forgetting(tmp_path):
    import struct

    from tunesmith.sweep import outcome_line, plot_sweep, run_figures

    def row(name: str, value: float, probes: float | None, regression: bool | None) -> dict:
        return {"combination": name, "status": "ok", "final_train_loss": 1.0, "eval_loss": 1.1,
                "metric": "exact_match", "metric_value": value, "metric_base": 0.1, "trainable_params": 10,
                "wall_time_s": 2.0, "peak_rss_mb": 300.0, "probe_accuracy": probes,
                "probe_accuracy_base": 1.0 if probes is not None else None, "regression": regression}

    rows = [row("lr=1e-4", 0.5, 1.0, False), row("lr=1e-3", 0.7, 0.875, True)]
    columns, cells = table_cells(rows)
    assert columns[columns.index("exact_match") + 1:][:3] == ["probes", "forgetting", "trainable"]
    assert [cell[columns.index("probes")] for cell in cells] == ["1.000", "0.875"]
    assert [cell[columns.index("forgetting")] for cell in cells] == ["none", "REGRESSION"]
    assert outcome_line(rows[1]).endswith("exact_match 0.7000, probes 0.875 (REGRESSION)")
    assert "probes" not in table_cells([row("a", 0.5, None, None)])[0]

    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    from tunesmith.eval.forgetting import accuracies

    probes = [{"category": "factual"}] * 8  # the probes block as eval/forgetting.py writes it
    results = EvalResults(examples=4, task_metric="exact_match", metrics=["exact_match"], base={"exact_match": 0.1},
                          tuned={"exact_match": 0.7},
                          comparison={"exact_match": {"base": 0.1, "tuned": 0.7, "delta": 0.6, "ci95": [0.25, 1.0],
                                                      "higher_is_better": True}},
                          probes={"count": 8, "margin": 0.02, "perplexity_margin": 0.1, "regression": True,
                                  "base": {**accuracies(probes, [1.0] * 8), "perplexity": 17.0},
                                  "tuned": {**accuracies(probes, [1.0] * 7 + [0.0]), "perplexity": 17.2}})
    (run / "eval" / "results.json").write_text(results.model_dump_json(), encoding="utf-8")
    figures = run_figures(run)
    assert (figures["metric_value"], figures["probe_accuracy"], figures["probe_accuracy_base"],
            figures["regression"]) == (0.7, 0.875, 1.0, True)
    assert (figures["metric_ci95"], figures["examples"]) == ([0.25, 1.0], 4)  # how sure the bar is, and on what
    columns, cells = table_cells([{**rows[1], **figures}, rows[0]])
    assert [cell[columns.index("95% CI vs base")] for cell in cells] == ["[+0.25, +1.00]", "—"]

    def png_width(path: Path) -> int:
        return struct.unpack(">I", path.read_bytes()[16:20])[0]

    both = plot_sweep(rows, tmp_path / "both.png")
    task_only = plot_sweep([row("lr=1e-4", 0.5, None, None), row("lr=1e-3", 0.7, None, None)], tmp_path / "one.png")
    assert png_width(both) > 1.8 * png_width(task_only)  # a second panel: the probes beside the task score
    failed = {"combination": "lr=1e-2", "status": "failed", "error": "boom", "wall_time_s": 1.0}
    holes = [failed | {"combination": f"lr={n}"} for n in (1, 2, 3, 4)]
    with_hole = plot_sweep([row("lr=1e-4", 0.5, None, None), *holes, row("lr=1e-3", 0.7, None, None)],
                           tmp_path / "hole.png")
    assert png_width(with_hole) > png_width(task_only)  # the failed combinations keep their slots
    assert plot_sweep([failed], tmp_path / "none.png") is None  # nothing to draw
    from tunesmith.figures import pyplot

    plt, drawn = pyplot(), []
    original = plt.subplots

    def keep(*args: object, **kwargs: object) -> object:
        fig, axes = original(*args, **kwargs)
        drawn.append(axes[0])
        return fig, axes

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plt, "subplots", keep)
        plot_sweep([{**rows[1], **figures, "combination": "lr=1e-3"}], tmp_path / "ci.png")
    task, probes_panel = drawn[0]
    (whiskers,) = [c for c in task.containers if type(c).__name__ == "ErrorbarContainer"]
    low, high = whiskers.lines[2][0].get_segments()[0][:, 1]  # from the interval of the change, held to 0..1
    assert (low, high) == (pytest.approx(0.7 - 0.35), pytest.approx(1.0))
    assert task.get_title() == "exact_match per combination (4 held-out rows)"
    assert "forgetting flagged (eval's probes check)" in [t.get_text() for t in probes_panel.get_legend().get_texts()]
    rounded = {**rows[0], "metric_value": 0.7333, "metric_base": 0.4333, "metric_ci95": [0.3, 0.3]}  # 0.30000000000004
    percent = {**rows[0], "metric_value": 35.2, "metric_base": 20.0, "metric_ci95": [10.0, 20.0]}  # a 0-100 metric
    for odd in (rounded, percent):  # matplotlib refuses a negative error bar: the chart must still draw
        assert plot_sweep([odd], tmp_path / "odd.png") is not None


def test_the_time_left_is_said_at_the_pace_so_far():
    rows = [{"wall_time_s": 100.0}, {"wall_time_s": 140.0}]
    assert time_left(rows, 5) == "; about 10 min left for 5 more"
    assert time_left(rows[:1], 0) == "" and time_left([{"wall_time_s": 80.0}], 1) == "; about 80 s left for 1 more"
    assert time_left(rows, 0) == ""


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("sweep")
    return root, make_tiny_project(root, tiny_model_dir, train_rows=32, eval_rows=4)


def test_a_bad_value_fails_before_any_run_starts(project):
    root, recipe = project
    runs = root / "never"
    with pytest.raises(RecipeError) as caught:
        run_sweep(recipe, ["adapter.targets=qv,qkvx"], runs_dir=runs, report=lambda line: None)
    assert caught.value.message.startswith("Combination targets=qkvx: Invalid recipe")
    assert "'qkvx'" in caught.value.message
    assert not runs.exists()


def test_a_target_the_model_lacks_fails_before_any_run_starts_in_sweep_plan_and_train(project, tmp_path):
    """`adapter.targets: [foo_proj]` passed validation and failed each run after its weights loaded, as
    "Internal error: NoMatchingPeftModuleError": now refused from the model's config alone, with the close name."""
    from tunesmith.config import load_recipe
    from tunesmith.plan import plan_recipe
    from tunesmith.runs import create_run
    from tunesmith.train import run_training

    root, recipe = project
    with pytest.raises(RecipeError, match=r"Combination targets=q_porj: adapter.targets names \['q_porj'\], "
                                          r"which match no layer of .*Did you mean 'q_proj'"):
        run_sweep(recipe, ["adapter.targets=[q_proj],[q_porj]"], runs_dir=root / "never", report=lambda line: None)
    assert not (root / "never").exists()
    mistyped = load_recipe(recipe, ["adapter.targets=[q_proj, foo_proj]"])
    with pytest.raises(RecipeError, match=r"names \['foo_proj'\]"):
        plan_recipe(mistyped, "cpu")
    with pytest.raises(RecipeError, match=r"names \['foo_proj'\]"):
        run_training(mistyped, create_run(mistyped, tmp_path / "runs"))
    assert not any((tmp_path / "runs").glob("*/adapter"))


def test_cli_validation_error_exits_2_and_creates_nothing(project):
    from tunesmith.cli import app

    root, recipe = project
    result = CliRunner().invoke(app, ["sweep", str(recipe), "--grid", "training.lr=1e-3,-1",
                                      "--runs-dir", str(root / "never")])
    assert result.exit_code != 0 and isinstance(result.exception, RecipeError)
    assert "training.lr" in result.exception.message
    assert not (root / "never").exists()


def test_two_values_that_read_the_same_are_refused_before_any_run(project):
    """`--grid training.lr=1e-3,0.001` trained one learning rate twice."""
    root, recipe = project
    with pytest.raises(RecipeError, match=r"Combinations lr=1e-3 and lr=0.001 are the same recipe"):
        run_sweep(recipe, ["training.lr=1e-3,0.001"], runs_dir=root / "never-twice", report=lambda line: None)
    assert not (root / "never-twice").exists()


def test_validation_uses_set_and_returns_the_base(project):
    _, recipe = project
    base = validate_combinations(recipe, ["training.max_steps=3"], combinations([parse_grid("adapter.r=4,8")]))
    assert base.training.max_steps == 3 and base.name == "tiny"


def sweep_cli(recipe: Path, runs: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tunesmith", "sweep", str(recipe), "--runs-dir", str(runs),
               "--set", "training.max_steps=4", "--set", "training.logging_steps=1", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=recipe.parent, check=False)


@pytest.fixture(scope="module")
def finished_sweep(project):
    root, recipe = project
    result = sweep_cli(recipe, root / "runs", "--grid", "adapter.targets=qv,all-linear", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    sweeps = list((root / "runs").iterdir())
    assert len(sweeps) == 1 and sweeps[0].name.startswith("sweep-tiny-")
    return sweeps[0], result


def test_sweep_has_one_run_per_combination_named_after_it(finished_sweep):
    sweep_dir, result = finished_sweep
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["logs", "targets=all-linear", "targets=qv"]
    for name in ("targets=qv", "targets=all-linear"):
        assert (sweep_dir / name / "adapter" / "adapter_model.safetensors").is_file()
    assert "[1/2] targets=qv" in result.stderr and "[2/2] targets=all-linear" in result.stderr
    assert "left for 1 more" in result.stderr  # said after the first of two
    assert not list(sweep_dir.rglob(".*.tmp")) and not list(sweep_dir.glob(".staging-*"))


def test_sweep_table_numbers_come_from_each_run(finished_sweep):
    sweep_dir, result = finished_sweep
    document = json.loads((sweep_dir / "sweep.json").read_text())
    assert json.loads(result.stdout) == document
    rows = {row["combination"]: row for row in document["rows"]}
    assert list(rows) == ["targets=qv", "targets=all-linear"] and document["metric"] == "field_accuracy"
    for name, row in rows.items():
        train = json.loads((sweep_dir / name / "train.json").read_text())
        results = json.loads((sweep_dir / name / "eval" / "results.json").read_text())
        assert row["status"] == "ok" and row["run_dir"] == str(sweep_dir / name)
        assert row["final_train_loss"] == train["final_loss"]
        assert row["trainable_params"] == train["trainable"]["trainable"]
        assert row["eval_loss"] == results["tuned"]["loss"]
        assert row["metric_value"] == results["tuned"]["field_accuracy"]
        assert row["metric_base"] == results["base"]["field_accuracy"]  # what the tuned score is read against
        assert row["wall_time_s"] >= train["wall_time_s"] and row["peak_rss_mb"] > 50
    assert rows["targets=qv"]["trainable_params"] < rows["targets=all-linear"]["trainable_params"]


def test_sweep_writes_markdown_and_chart(finished_sweep):
    sweep_dir, result = finished_sweep
    markdown = (sweep_dir / "sweep.md").read_text()
    assert ("| combination | train loss | eval loss | field_accuracy (base) | field_accuracy | 95% CI vs base | "
            "trainable |") in markdown
    assert "| targets=qv |" in markdown and "| targets=all-linear |" in markdown
    assert (sweep_dir / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "targets=all-linear" in result.stderr and "Sweep directory" in result.stderr


def test_failed_combination_is_recorded_and_the_others_run(project):
    root, recipe = project
    known = sweep_cli(recipe, root / "refused", "--grid", "adapter.layers=[7],all", "--no-eval")
    assert known.returncode == 2 and "Combination layers=7: adapter.layers: block(s) [7] do not exist" in known.stderr
    assert not (root / "refused").exists() or not any((root / "refused").iterdir())  # known before any run: none ran
    # a failure only training can show: the loss turns non-finite and training.max_bad_steps stops the run
    result = sweep_cli(recipe, root / "failing", "--grid", "training.lr=1e30,1e-3", "--no-eval")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "1 of 2 combinations failed: lr=1e30" in result.stderr, result.stderr[-3000:]
    sweep_dir = next((root / "failing").iterdir())
    rows = json.loads((sweep_dir / "sweep.json").read_text())["rows"]
    assert [row["status"] for row in rows] == ["failed", "ok"]
    assert "non-finite" in rows[0]["error"], rows[0]["error"]
    assert rows[1]["trainable_params"] > 0 and rows[1]["eval_loss"] is None
    assert "failed: " in (sweep_dir / "sweep.md").read_text()
    assert (sweep_dir / "sweep.png").is_file()  # no eval: the chart shows the final train loss
    again = sweep_cli(recipe, root / "failing", "--resume", str(sweep_dir))  # a failed combination is tried again
    assert again.returncode == 1 and "[2/2] lr=1e-3: kept from before (ok)" in again.stderr, again.stderr[-3000:]
    assert "[1/2] lr=1e30 (resumed)" in again.stderr
    assert [row["status"] for row in json.loads((sweep_dir / "sweep.json").read_text())["rows"]] == ["failed", "ok"]


def test_a_grpo_sweep_shows_the_final_reward_where_its_loss_says_nothing(tmp_path):
    from tunesmith.sweep import outcome_line, plot_sweep, run_figures

    run = tmp_path / "run"
    run.mkdir()
    (run / "train.json").write_text(json.dumps({"method": "grpo", "final_loss": 0.0, "steps": 3,
                                                "final_metrics": {"reward": 0.625}}), encoding="utf-8")
    figures = run_figures(run)
    assert figures["final_train_loss"] is None and figures["final_reward"] == 0.625
    rows = [{"combination": f"temperature={t}", "status": "ok", "wall_time_s": 9.0, "peak_rss_mb": 700.0,
             **figures, "final_reward": reward} for t, reward in ((0.7, 0.625), (1.0, 0.25))]
    columns, cells = table_cells(rows)
    assert columns[1] == "final reward" and [cell[1] for cell in cells] == ["0.6250", "0.2500"]
    assert "reward 0.6250" in outcome_line(rows[0])
    assert plot_sweep(rows, tmp_path / "sweep.png") is not None  # a chart of the rewards, not an empty one


def test_a_set_of_a_key_the_grid_varies_is_refused(project):
    root, recipe = project
    with pytest.raises(RecipeError, match=r"--set adapter\.r=16 names adapter\.r, which --grid varies"):
        run_sweep(recipe, ["adapter.r=4,8"], sets=["adapter.r=16"], runs_dir=root / "never")
    assert not (root / "never").exists()


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_stopped_sweep_stops_its_run_as_train_does_and_keeps_what_ran(project, signal_name):
    """Ctrl-C killed the running combination before its checkpoint and printed nothing; SIGTERM left it training
    with no parent; both hid it in .staging-*. Now the signal reaches the run once, it checkpoints, moves into place
    under its name, the table says how to resume it, and the sweep exits 128 + the signal."""
    import os
    import signal
    import time

    root, recipe = project
    runs = root / f"stopped-{signal_name}"
    command = [sys.executable, "-m", "tunesmith", "sweep", str(recipe), "--runs-dir", str(runs), "--no-eval",
               "--set", "training.max_steps=400", "--set", "training.logging_steps=1",
               "--grid", "adapter.targets=qv,all-linear"]
    sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root)
    deadline = time.monotonic() + 300
    while not list(runs.glob("sweep-*/.staging-*/*/metrics.jsonl")):  # the first combination is training
        assert sweep.poll() is None and time.monotonic() < deadline, sweep.communicate()
        time.sleep(0.2)
    sweep.send_signal(getattr(signal, signal_name))
    _, stderr = sweep.communicate(timeout=600)  # generous: two test workers share the CPU
    assert sweep.returncode == 128 + getattr(signal, signal_name), stderr[-3000:]
    said = " ".join(stderr.split())
    assert f"Stopped: Sweep stopped by {signal_name} during targets=qv" in said
    assert "not started: targets=all-linear" in said
    (sweep_dir,) = runs.iterdir()
    run_dir = sweep_dir / "targets=qv"
    assert list(run_dir.glob("checkpoints/checkpoint-*")) and not list(sweep_dir.glob(".staging-*"))
    (row,) = json.loads((sweep_dir / "sweep.json").read_text())["rows"]
    assert row["status"] == "stopped" and row["signal"] == signal_name
    assert f"tunesmith train {run_dir / 'recipe.yaml'} --resume {run_dir}" in row["error"]
    children = [pid for pid in os.listdir("/proc") if pid.isdigit() and str(sweep_dir).encode() in
                Path(f"/proc/{pid}/cmdline").read_bytes()] if Path("/proc").is_dir() else []
    assert children == []  # no combination goes on training without its sweep
    from tunesmith.config import load_recipe
    from tunesmith.train.resume import resumed_run

    assert resumed_run(load_recipe(run_dir / "recipe.yaml"), str(run_dir), None).path == run_dir  # it resumes
    if signal_name == "SIGINT":
        resume_the_stopped_sweep(recipe, runs, sweep_dir, stderr)


def resume_the_stopped_sweep(recipe: Path, runs: Path, sweep_dir: Path, stopped_stderr: str) -> None:
    """A stopped sweep could not be carried on: a second `sweep` started a new folder from scratch, the table kept
    saying "stopped", and `train --resume latest` said no run of the recipe was unfinished. Now `--resume latest`
    resumes the stopped combination from its checkpoint, runs the one not started and rewrites the table; the logs
    name the combination's own folder, not the staging one it ran in."""
    from tunesmith.config import load_recipe
    from tunesmith.train.resume import resumed_run

    assert f"tunesmith sweep {recipe} --resume {sweep_dir}" in " ".join(stopped_stderr.split())
    with pytest.raises(TunesmithError, match="No unfinished run") as latest:
        resumed_run(load_recipe(recipe), "latest", runs)
    assert f"--resume {sweep_dir}" in latest.value.hint
    result = subprocess.run([sys.executable, "-m", "tunesmith", "sweep", str(recipe), "--runs-dir", str(runs),
                             "--resume", "latest"], capture_output=True, text=True, timeout=1200, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[1/2] targets=qv (resumed)" in result.stderr and "[2/2] targets=all-linear" in result.stderr
    assert [path.name for path in runs.iterdir()] == [sweep_dir.name]  # carried on in its own folder
    rows = json.loads((sweep_dir / "sweep.json").read_text())["rows"]
    assert [(row["combination"], row["status"]) for row in rows] == [("targets=qv", "ok"), ("targets=all-linear", "ok")]
    assert json.loads((sweep_dir / "targets=qv" / "train.json").read_text())["steps"] == 400
    assert "stopped" not in (sweep_dir / "sweep.md").read_text()
    assert "`--set training.max_steps=400`" in (sweep_dir / "sweep.md").read_text()
    for log in (sweep_dir / "logs").iterdir():
        assert ".staging-" not in log.read_text(), log.name


def test_a_run_whose_loss_rose_is_said_diverged_in_the_table_train_json_the_card_and_runs_list(project):
    """lr=100 took the loss from 0.5 to 45 (grad_norm 0 from step 5) and the sweep called it "ok"."""
    from tunesmith.card import write_model_card
    from tunesmith.runs import Run, run_summary

    root, recipe = project
    result = sweep_cli(recipe, root / "diverging", "--grid", "training.lr=1e-3,100", "--no-eval",
                       "--set", "training.max_steps=8")
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir = next((root / "diverging").iterdir())
    rows = {row["combination"]: row for row in json.loads((sweep_dir / "sweep.json").read_text())["rows"]}
    assert rows["lr=1e-3"]["status"] == "ok" and rows["lr=100"]["status"] == "diverged"
    said = rows["lr=100"]["error"]
    assert "DIVERGED" in result.stderr and f"diverged: {said}" in (sweep_dir / "sweep.md").read_text()
    diverged = Run(sweep_dir / "lr=100")
    logged = [row for row in diverged.read_metrics() if "loss" in row]
    if said.startswith("the training loss rose"):  # what the warning says, checked on the run's own log
        assert sum(r["loss"] for r in logged[-2:]) / 2 > 1.25 * logged[0]["loss"]
        assert "Lower training.lr (100)" in said
    else:  # the tiny model: its loss sat at the uniform distribution's with no gradient left
        assert said.startswith("the gradient was 0 for the last 3 logged steps")
        assert [r["grad_norm"] for r in logged[-3:]] == [0, 0, 0]
    assert all(row["grad_norm"] > 0 for row in Run(sweep_dir / "lr=1e-3").read_metrics() if "grad_norm" in row)
    assert json.loads((diverged.path / "train.json").read_text())["warnings"] == [rows["lr=100"]["error"]]
    assert run_summary(diverged)["status"] == "trained (loss diverged)"
    write_model_card(diverged)
    assert f"**warning**: {said}" in (diverged.path / "README.md").read_text()


def test_a_sweep_whose_every_combination_diverged_exits_1(tmp_path):
    """Every model got worse than its base as it trained, and the sweep exited 0 for scripts and CI to read as a
    success."""
    from tunesmith.sweep import SweepFailedError, raise_if_any_failed, write_sweep_table

    header = {"recipe": "r.yaml", "grid": ["training.lr=0.5,5.0"], "set": ["eval.probes=false"], "evaluate": False}
    rows = [{"combination": f"lr={lr}", "status": "diverged", "error": "the training loss rose", "wall_time_s": 3.0,
             "final_train_loss": 70.0} for lr in (0.5, 5.0)]
    write_sweep_table(tmp_path, header, rows)
    with pytest.raises(SweepFailedError, match="Every combination diverged"):
        raise_if_any_failed(tmp_path)
    assert "`--set eval.probes=false`" in (tmp_path / "sweep.md").read_text()
    write_sweep_table(tmp_path, header, [{**rows[0], "status": "ok"}, rows[1]])
    raise_if_any_failed(tmp_path)  # one that trained: the table says which diverged, the exit is 0


def test_a_run_a_killed_sweep_left_in_staging_is_adopted_and_two_are_refused_not_deleted(tmp_path):
    """A sweep killed outright (SIGKILL, the OOM killer) leaves its combination's run in `.staging-NAME/`: resuming
    retrained it from scratch beside it, then deleted both as it could not tell them apart."""
    from tunesmith.sweep import adopt_run_dir, resumed_arguments

    staging, target, log = tmp_path / ".staging-r=4", tmp_path / "r=4", tmp_path / "r=4.log"
    (staging / "tiny-20261206-101500" / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    printed = str(staging / "tiny-20261206-101500")
    wrapped = printed[:20] + "\n" + printed[20:]  # the console wraps a long path at 80 columns
    log.write_text(f"Resume with: tunesmith train --resume {printed}\nRun directory: {wrapped}\n", encoding="utf-8")
    assert adopt_run_dir(staging, target, log, keep_staging=True) == target
    assert log.read_text(encoding="utf-8") == (f"Resume with: tunesmith train --resume {target}\n"
                                               f"Run directory: {target}\n")
    assert resumed_arguments(target, evaluate=False)[:2] == ["train", str(target / "recipe.yaml")]
    (staging / "tiny-20261206-101600").mkdir(parents=True)
    with pytest.raises(TunesmithError, match="cannot tell apart"):
        adopt_run_dir(staging, target, log)
    assert (staging / "tiny-20261206-101600").is_dir() and target.is_dir()  # nothing deleted
    (target / "train.json").write_text("{}", encoding="utf-8")
    assert resumed_arguments(target, evaluate=False) == []  # trained, no eval asked: nothing to run
    assert resumed_arguments(target, evaluate=True) == ["eval", str(target)]
