"""Runs that survive (issue 16): a run killed anywhere resumes and ends where the uninterrupted run ends.

Each kill test trains a tiny llama three ways on the same recipe: uninterrupted (in this process), killed at a
random step in a subprocess (SIGKILL or SIGTERM, sent from inside at a known step by tests/signal_at_step.py),
then resumed through the CLI's own path. The resumed run's final weights must equal the uninterrupted run's
(max abs diff <= 1e-6, CPU fp32) and its per-step losses after the resume point must be the same.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.test_method_matrix import matrix_recipe
from tunesmith.config import load_recipe, recipe_to_yaml
from tunesmith.errors import RecipeError, TunesmithError
from tunesmith.runs import Run, create_run

STEPS, SAVE_STEPS = 8, 2


def write_recipe(root: Path, model_dir: Path, method: str, kind: str, adapter: dict[str, Any] | None = None,
                 **training: Any) -> Path:
    recipe = matrix_recipe(root, model_dir, method, kind)
    for key, value in (adapter or {}).items():
        setattr(recipe.adapter, key, value)
    recipe.training.max_steps = training.pop("max_steps", STEPS)
    recipe.training.save_steps = training.pop("save_steps", SAVE_STEPS)
    for key, value in training.items():
        setattr(recipe.training, key, value)
    path = root / "recipe.yaml"
    path.write_text(recipe_to_yaml(recipe), encoding="utf-8")
    return path


def train_in_process(recipe_path: Path, runs_dir: Path, overrides: list[str] | None = None) -> Run:
    from tunesmith.train import run_training

    recipe = load_recipe(recipe_path, overrides)
    run = create_run(recipe, runs_dir)
    run_training(recipe, run)
    return run


def cli(*args: str, signal_at: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    module = ["-m", "tests.signal_at_step", signal_at[0], str(signal_at[1])] if signal_at else ["-m", "tunesmith"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def only_run(runs_dir: Path) -> Run:
    (path,) = [p for p in runs_dir.iterdir() if p.is_dir()]
    return Run(path)


def final_weights(run: Run) -> dict[str, Any]:
    from safetensors.torch import load_file

    artifact = run.trained_artifact()
    return {name: tensor for file in sorted(artifact.glob("*.safetensors")) for name, tensor in load_file(file).items()}


def max_abs_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[name] - b[name]).abs().max()) for name in a)


def step_losses(run: Run) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in run.read_metrics() if "loss" in r}


def assert_same_end(resumed: Run, reference: Run, after_step: int) -> None:
    assert max_abs_diff(final_weights(resumed), final_weights(reference)) <= 1e-6
    ours, theirs = step_losses(resumed), step_losses(reference)
    assert sorted(ours) == sorted(theirs) == list(range(1, STEPS + 1))  # every step logged once, none twice
    for step in range(after_step + 1, STEPS + 1):
        assert ours[step] == pytest.approx(theirs[step], abs=1e-6), step
    tokens = [{r["step"]: r["num_tokens"] for r in run.read_metrics() if "num_tokens" in r}
              for run in (resumed, reference)]
    assert tokens[0] == tokens[1]  # TRL's running token count goes on from the checkpoint, not from 0


CASES = [("sft", "lora"), ("dpo", "lora"), ("grpo", "lora"), ("sft", "full")]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "kind"), CASES)
def test_kill_9_at_a_random_step_then_resume_ends_like_the_uninterrupted_run(method, kind, tmp_path, tiny_model_dir):
    recipe = write_recipe(tmp_path, tiny_model_dir, method, kind)
    reference = train_in_process(recipe, tmp_path / "reference")
    kill_at = random.Random(f"{method}-{kind}").randint(SAVE_STEPS, STEPS - 1)
    died = cli("train", str(recipe), "--runs-dir", str(tmp_path / "runs"), signal_at=("SIGKILL", kill_at))
    assert died.returncode == -9, died.stderr[-2000:]
    run = only_run(tmp_path / "runs")
    assert not (run.path / "run.json").is_file() or json.loads((run.path / "run.json").read_text()).get("train") is None
    resumed = cli("train", str(recipe), "--resume", str(run.path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    last_checkpoint = kill_at - kill_at % SAVE_STEPS
    assert f"from step {last_checkpoint}" in resumed.stderr
    assert_same_end(run, reference, last_checkpoint)
    assert json.loads((run.path / "train.json").read_text())["resumed_from_step"] == last_checkpoint


@pytest.mark.slow
def test_sigterm_finishes_the_step_checkpoints_and_says_how_to_resume(tmp_path, tiny_model_dir):
    recipe = write_recipe(tmp_path, tiny_model_dir, "sft", "lora", save_steps=100)  # only the signal saves mid-run
    reference = train_in_process(recipe, tmp_path / "reference")
    stopped = cli("train", str(recipe), "--runs-dir", str(tmp_path / "runs"), signal_at=("SIGTERM", 3))
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    run = only_run(tmp_path / "runs")
    assert "SIGTERM" in stopped.stderr and f"--resume {run.path}" in stopped.stderr
    assert "Stopped: Training stopped by SIGTERM" in stopped.stderr and "Error" not in stopped.stderr
    assert (run.checkpoints_dir / "checkpoint-4").is_dir()  # step 4 finished, then the checkpoint
    resumed = cli("train", str(recipe), "--resume", "latest", "--runs-dir", str(tmp_path / "runs"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_end(run, reference, 4)
    summaries = [r for r in run.read_metrics() if "train_runtime" in r]  # the stopped process's is dropped
    assert [r["step"] for r in summaries] == [STEPS]


def test_a_resumed_run_keeps_its_frozen_matmul_dtype_and_reports_the_whole_run(tmp_path, tiny_model_dir,
                                                                                monkeypatch):
    from tunesmith.card import write_model_card
    from tunesmith.plan import precision
    from tunesmith.train import run_training
    from tunesmith.train.survival import checkpoint_state

    recipe = write_recipe(tmp_path, tiny_model_dir, "sft", "lora")
    monkeypatch.setattr(precision, "cpu_matmul_peaks", lambda: (1e11, 4e11))  # bf16 is fast: the frozen base in bf16
    reference, run = uninterrupted_and_crashed_at_step_5(recipe, tmp_path, monkeypatch)
    before = checkpoint_state(run.checkpoints_dir / "checkpoint-4")["throughput"]["earlier_seconds"]
    monkeypatch.setattr(precision, "cpu_matmul_peaks", lambda: (1e11, 1e11))  # now it reads slow (a busy machine)
    run_training(load_recipe(run.recipe_file), run)
    assert_same_end(run, reference, 4)  # the resumed steps ran in bf16, as the first four did
    ours, theirs = (json.loads((r.path / "train.json").read_text()) for r in (run, reference))
    assert ours["chosen"]["frozen_matmuls"]["value"] == "bf16"
    assert ours["chosen"]["frozen_matmuls"]["why"].startswith("as before the resume: auto:")
    assert ours["first_loss"] == pytest.approx(theirs["first_loss"], abs=1e-6)  # step 1's, before the crash
    # the tokens of all 8 steps, exactly: not the batch the data loader had fetched ahead when step 4 was saved
    for key in ("tokens", "real_tokens", "loss_tokens"):
        assert ours["throughput"][key] == theirs["throughput"][key] > 0, key
    assert ours["wall_time_s"] > round(before, 1) > 0  # the crashed process's four steps, and the resumed four
    from tunesmith.runs import diff_runs

    assert diff_runs(run, reference)["outcomes"] == {"resumed_from_step": (4, None)}  # the one difference there is
    write_model_card(run)
    assert "resumed from step 4" in (run.path / "README.md").read_text()


class Crash(Exception):
    """Stands in for a kill in this process: raised at the start of a step, nothing after it runs."""


def crash_at_step(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    from transformers.trainer_callback import CallbackHandler

    original = CallbackHandler.on_step_begin

    def on_step_begin(self, args, state, control):  # type: ignore[no-untyped-def]
        if state.global_step == step:
            raise Crash(step)
        return original(self, args, state, control)

    monkeypatch.setattr(CallbackHandler, "on_step_begin", on_step_begin)


def uninterrupted_and_crashed_at_step_5(recipe: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Run, Run]:
    """The recipe trained to the end, and trained again until a crash at the start of step 5 (checkpoint at 4)."""
    reference = train_in_process(recipe, root / "reference")
    with monkeypatch.context() as patch:
        crash_at_step(patch, 5)
        with pytest.raises(Crash):
            train_in_process(recipe, root / "runs")
    return reference, only_run(root / "runs")


def test_a_cut_short_checkpoint_is_ignored_and_the_previous_one_resumed(tmp_path, tiny_model_dir, monkeypatch):
    from tunesmith.cli.app import resumed_run
    from tunesmith.train import run_training

    recipe = write_recipe(tmp_path, tiny_model_dir, "sft", "lora")
    reference, run = uninterrupted_and_crashed_at_step_5(recipe, tmp_path, monkeypatch)
    # then a save of step 6 cut short (a file truncated, its marker written) and one of step 8 without a marker
    checkpoint = run.checkpoints_dir / "checkpoint-4"
    for step, damage in ((6, "truncate"), (8, "no-marker")):
        copy = shutil.copytree(checkpoint, run.checkpoints_dir / f"checkpoint-{step}")
        if damage == "truncate":
            optimizer = copy / "optimizer.pt"
            optimizer.write_bytes(optimizer.read_bytes()[:100])
        else:
            (copy / "tunesmith-complete.json").unlink()
    (run.checkpoints_dir / ".staging-10").mkdir()
    resumed_run(load_recipe(recipe), str(run.path), None)
    assert sorted(p.name for p in run.checkpoints_dir.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    run_training(load_recipe(run.recipe_file), run)
    assert_same_end(run, reference, 4)


def test_resume_refuses_data_that_changed_or_went_since_the_run_started(tmp_path, tiny_model_dir, monkeypatch):
    """An edited data file would train the rest of the run on other rows and overwrite the run's copy of its data:
    refused by name before anything loads; restored, the run resumes."""
    from tunesmith.cli.app import resumed_run
    from tunesmith.train.resume import initial_weights

    recipe = write_recipe(tmp_path, tiny_model_dir, "sft", "lora")
    # as a user writes it: data paths relative to the recipe, no base_dir (what lets the project move, below)
    recipe.write_text(re.sub(r"(?m)^base_dir: .*\n", "", recipe.read_text()).replace(f"{tmp_path}/data/", "data/"))
    with monkeypatch.context() as patch:
        crash_at_step(patch, 3)
        with pytest.raises(Crash):
            train_in_process(recipe, tmp_path / "runs")
    run = only_run(tmp_path / "runs")
    source = Path(run.manifest().data.sources["train"].resolved)
    saved_rows = (run.path / "data" / "train.jsonl").read_bytes()
    original = source.read_bytes()
    source.write_bytes(original + original.splitlines(keepends=True)[0])  # one row more
    with pytest.raises(TunesmithError, match=rf"its train data {re.escape(str(source))} has changed since") as refused:
        resumed_run(load_recipe(recipe), str(run.path), None)
    assert "Put the original file back" in refused.value.hint
    started_from = re.search(r"--init-from (\S+)`", refused.value.hint).group(1)  # a new run from the last checkpoint
    assert initial_weights(load_recipe(recipe, [f"training.init_from={started_from}"])) == Path(started_from)
    source.unlink()
    with pytest.raises(TunesmithError, match="is gone"):
        resumed_run(load_recipe(recipe), str(run.path), None)
    source.write_bytes(original)
    assert resumed_run(load_recipe(recipe), str(run.path), None).path == run.path
    assert (run.path / "data" / "train.jsonl").read_bytes() == saved_rows
    moved = Path(shutil.copytree(tmp_path, tmp_path.with_name(tmp_path.name + "-moved")))  # the project, runs and all
    source.unlink()  # gone from where the run first read it; the same bytes beside the moved recipe
    moved_run = moved / run.path.relative_to(tmp_path)
    assert resumed_run(load_recipe(moved / recipe.name), str(moved_run), None).path == moved_run
    # the run's own recipe.yaml records the project's first folder, whose data went: its relative paths are read
    # beside the moved run instead
    assert load_recipe(moved_run / "recipe.yaml").base_dir == str(moved)
    assert resumed_run(load_recipe(moved_run / "recipe.yaml"), str(moved_run), None).path == moved_run


def test_same_recipe_data_and_seed_give_identical_weights_and_runs_diff_says_what_differs(tmp_path, tiny_model_dir):
    from tunesmith.runs import diff_runs

    recipe = write_recipe(tmp_path, tiny_model_dir, "sft", "lora", max_steps=3)
    first, second = (train_in_process(recipe, tmp_path / name) for name in ("a", "b"))
    assert max_abs_diff(final_weights(first), final_weights(second)) == 0.0
    assert diff_runs(first, second) == {"recipe": {}, "data": {}, "packages": {}, "hardware": {}, "outcomes": {}}
    third = train_in_process(recipe, tmp_path / "c", ["training.lr=5e-4"])
    found = diff_runs(first, third)
    assert found["recipe"] == {"training.lr": (1e-3, 5e-4)}
    loss = json.loads((third.path / "train.json").read_text())["final_loss"]
    assert found["outcomes"]["final_loss"][1] == loss != found["outcomes"]["final_loss"][0]  # what came of it
    shown = cli("runs", "diff", str(first.path), str(third.path))
    assert shown.returncode == 0 and "training.lr" in shown.stdout + shown.stderr


def test_resume_refuses_a_changed_recipe_naming_the_key_and_a_finished_run(tmp_path, tiny_model_dir):
    from tunesmith.cli.app import resumed_run

    recipe = write_recipe(tmp_path, tiny_model_dir, "sft", "lora", max_steps=4)
    run = train_in_process(recipe, tmp_path / "runs")
    with pytest.raises(TunesmithError, match=r"finished training.*") as finished:
        resumed_run(load_recipe(recipe), str(run.path), None)
    assert "--init-from" in str(finished.value)
    (run.path / "run.json").unlink()  # as if killed after its last checkpoint
    with pytest.raises(RecipeError, match=r"training\.lr: 0\.001 -> 0\.01"):
        resumed_run(load_recipe(recipe, ["training.lr=0.01"]), str(run.path), None)
    resumed_run(load_recipe(recipe, ["training.logging_steps=2"]), str(run.path), None)  # logging may change
    assert load_recipe(run.recipe_file).training.logging_steps == 2


def test_init_from_a_run_and_from_a_bare_adapter_starts_from_its_weights(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    recipe = write_recipe(tmp_path, tiny_model_dir, "sft", "lora", max_steps=2)
    first = train_in_process(recipe, tmp_path / "first")
    for source in (first.path, first.adapter_dir):
        start = train_in_process(recipe, tmp_path / f"from-{source.name}",
                                 [f"training.init_from={source}", "training.lr=1e-12"])  # lr ~0: weights stay
        assert max_abs_diff(final_weights(start), final_weights(first)) < 1e-6
        manifest = start.manifest()
        assert manifest is not None and manifest.train is not None
        assert manifest.train.init_from == str(first.adapter_dir.resolve())
    fresh = load_file(first.adapter_dir / "adapter_model.safetensors")
    assert any(float(t.abs().max()) > 0 for name, t in fresh.items() if "lora_B" in name)  # B moved from zero
    (first.path / "run.json").unlink()
    with pytest.raises(RecipeError, match=r"(?s)did not finish.*--resume"):
        train_in_process(recipe, tmp_path / "x", [f"training.init_from={first.path}"])
    with pytest.raises(RecipeError, match="another shape"):
        train_in_process(recipe, tmp_path / "y", [f"training.init_from={first.adapter_dir}", "adapter.r=8"])


def test_non_finite_updates_are_skipped_and_k_in_a_row_stop_the_run(tmp_path, tiny_model_dir, monkeypatch):
    from trl import SFTTrainer

    bad_steps: set[int] = {3}
    compute_loss = SFTTrainer.compute_loss

    def poisoned(self, model, inputs, *args, **kwargs):  # type: ignore[no-untyped-def]
        loss = compute_loss(self, model, inputs, *args, **kwargs)
        step = self.state.global_step + 1
        if step in bad_steps:
            return loss * float("nan") if not isinstance(loss, tuple) else (loss[0] * float("nan"), *loss[1:])
        return loss

    monkeypatch.setattr(SFTTrainer, "compute_loss", poisoned)
    recipe = write_recipe(tmp_path, tiny_model_dir, "sft", "lora", max_steps=5)
    run = train_in_process(recipe, tmp_path / "one")
    report = json.loads((run.path / "train.json").read_text())
    (skipped,) = report["skipped_updates"]
    assert skipped["step"] == 3 and "data/train.jsonl line" in skipped["batch"]
    assert all(v == v for v in final_weights(run)["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
               .flatten().tolist())  # no NaN reached the weights
    bad_steps.update({4, 5, 6})
    with pytest.raises(TunesmithError, match=r"stopped at step 5: 3 updates in a row.*steps 3, 4, 5") as stopped:
        train_in_process(recipe, tmp_path / "two", ["training.max_steps=8"])
    assert "checkpoint-2" in str(stopped.value) and "training.lr" in str(stopped.value)


def test_a_full_disk_stops_before_the_checkpoint_and_keeps_the_previous_one(tmp_path, tiny_model_dir, monkeypatch):
    from tunesmith import runs
    from tunesmith.train import survival

    checks: list[int] = []

    def free_bytes(path: Path) -> int:
        checks.append(1)
        return 10**12 if len(checks) == 1 else 1000  # room for the first checkpoint only

    monkeypatch.setattr(runs, "free_bytes", free_bytes)
    recipe = write_recipe(tmp_path, tiny_model_dir, "sft", "lora")
    with pytest.raises(TunesmithError, match=r"Not enough disk space for the checkpoint at step 4.*MB free"):
        train_in_process(recipe, tmp_path / "runs")
    run = only_run(tmp_path / "runs")
    assert [p.name for p in run.checkpoints_dir.iterdir() if p.name.startswith("checkpoint")] == ["checkpoint-2"]
    assert survival.complete_checkpoints(run.checkpoints_dir) == [run.checkpoints_dir / "checkpoint-2"]


def test_a_write_that_fails_midway_leaves_the_previous_checkpoint_intact(tmp_path, tiny_model_dir, monkeypatch):
    from transformers import Trainer

    save = Trainer._save_optimizer_and_scheduler

    def no_space_at_step_4(self, output_dir):  # type: ignore[no-untyped-def]
        if self.state.global_step == 4:
            Path(output_dir, "optimizer.pt").write_bytes(b"half")
            raise OSError(28, "No space left on device")
        return save(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", no_space_at_step_4)
    recipe = write_recipe(tmp_path, tiny_model_dir, "sft", "lora")
    with pytest.raises(TunesmithError, match=r"disk filled up .* step 4.*checkpoint-2 is intact"):
        train_in_process(recipe, tmp_path / "runs")
    run = only_run(tmp_path / "runs")
    assert sorted(p.name for p in run.checkpoints_dir.iterdir()) == ["checkpoint-2"]


@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once_and_leaves_the_last_checkpoint_whole(tmp_path, tiny_model_dir):
    recipe = write_recipe(tmp_path, tiny_model_dir, "sft", "lora")
    stopped = cli("train", str(recipe), "--runs-dir", str(tmp_path / "runs"), signal_at=("SIGINT,SIGINT", 5))
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    assert "SIGINT again: stopping now" in stopped.stderr
    run = only_run(tmp_path / "runs")
    from tunesmith.train.survival import complete_checkpoints

    assert [p.name for p in complete_checkpoints(run.checkpoints_dir)] == ["checkpoint-2", "checkpoint-4"]


# Every other method, and the adapter kinds that carry training state beyond weights and optimizer: crashed in
# this process at step 5 (after the checkpoint at 4), resumed, compared with the uninterrupted run.
# HFT swaps halves every 3 steps, so the resume at 4 lands inside the second round; AdaLoRA reallocates ranks
# at every step from 1 and fixes them for the last 2, so its budget state matters on both sides of the resume.
MORE_CASES = [("cpt", "lora", {}), ("orpo", "lora", {}), ("kto", "lora", {}), ("simpo", "lora", {}),
              ("reward", "lora", {}), ("sft", "partial", {}), ("sft", "hft", {"round_steps": 3}),
              ("sft", "adalora", {"tinit": 1, "tfinal": 2}), ("sft", "pissa", {}), ("sft", "dora", {})]


@pytest.mark.parametrize(("method", "kind", "adapter"), MORE_CASES)
def test_every_method_and_stateful_adapter_resumes_exactly(method, kind, adapter, tmp_path, tiny_model_dir,
                                                           monkeypatch):
    from tunesmith.cli.app import resumed_run
    from tunesmith.train import run_training

    recipe = write_recipe(tmp_path, tiny_model_dir, method, kind, adapter)
    reference, run = uninterrupted_and_crashed_at_step_5(recipe, tmp_path, monkeypatch)
    run_training(load_recipe(recipe), resumed_run(load_recipe(recipe), str(run.path), None))
    assert_same_end(run, reference, 4)


def test_exports_check_free_space_first_and_write_nothing_when_it_will_not_fit(tmp_path, tiny_model_dir,
                                                                                monkeypatch):
    from tunesmith import runs
    from tunesmith.export.gguf import write_gguf
    from tunesmith.export.merged import export_merged

    recipe = write_recipe(tmp_path, tiny_model_dir, "sft", "lora", max_steps=1)
    run = train_in_process(recipe, tmp_path / "runs")
    from safetensors.torch import load_file

    fp32_mb = sum(t.numel() * 4 for t in load_file(tiny_model_dir / "model.safetensors").values()) / 1e6
    monkeypatch.setattr(runs, "free_bytes", lambda path: 1000)
    with pytest.raises(TunesmithError, match=rf"disk space for the merged model merged: about {fp32_mb:.1f} MB"):
        export_merged(tiny_model_dir, run.adapter_dir, run.exports_dir / "merged")
    with pytest.raises(TunesmithError, match=r"Not enough disk space for tiny\.F16\.gguf"):
        write_gguf(tiny_model_dir, run.exports_dir / "tiny.F16.gguf")
    assert not run.exports_dir.exists() or not any(run.exports_dir.iterdir())


@pytest.mark.slow
def test_the_quickstart_on_smollm2_killed_at_step_6_resumes_to_identical_weights(tmp_path):
    recipe = str(REPO / "recipes" / "quickstart.yaml")
    short = ["--set", "training.max_steps=8", "--set", "training.save_steps=4", "--set", "training.logging_steps=1"]
    reference = cli("train", recipe, *short, "--runs-dir", str(tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr[-2000:]
    died = cli("train", recipe, *short, "--runs-dir", str(tmp_path / "runs"), signal_at=("SIGKILL", 6))
    assert died.returncode == -9
    resumed = cli("train", recipe, *short, "--resume", "latest", "--runs-dir", str(tmp_path / "runs"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "from step 4" in resumed.stderr
    run, uninterrupted = only_run(tmp_path / "runs"), only_run(tmp_path / "reference")
    assert max_abs_diff(final_weights(run), final_weights(uninterrupted)) <= 1e-6
    ours, theirs = step_losses(run), step_losses(uninterrupted)
    assert sorted(ours) == sorted(theirs) == list(range(1, 9))
    assert all(ours[step] == pytest.approx(theirs[step], abs=1e-6) for step in range(5, 9))


def test_a_time_budget_run_resumes_its_revised_plan_and_schedule(tmp_path, tiny_model_dir, monkeypatch):
    """The budget's measurement says 30 s a step, so 5 minutes plan 9 steps; the steps' own times revise that at
    step 5 to the 3-epoch cap (12 steps of 4 rows). A crash at step 7 resumes from the checkpoint at 6 with the
    revised count and learning-rate schedule (budget.json and the scheduler's state), and ends where the
    uninterrupted run ends."""
    import tunesmith.train.budget as budget
    from tunesmith.cli.app import resumed_run
    from tunesmith.train import run_training

    monkeypatch.setattr(budget, "measure_step_seconds", lambda trainer, grad_accum: (30.0, 0.0))
    recipe = write_recipe(tmp_path, tiny_model_dir, "sft", "lora", max_steps=-1, save_steps=2, time_budget="5m")
    lines = recipe.read_text(encoding="utf-8").splitlines(keepends=True)  # the budget, not epochs, sets the steps
    recipe.write_text("".join(line for line in lines if not line.strip().startswith("epochs:")), encoding="utf-8")
    reference = train_in_process(recipe, tmp_path / "reference")
    assert json.loads((reference.path / "train.json").read_text())["steps"] == 12
    with monkeypatch.context() as patch:
        crash_at_step(patch, 7)
        with pytest.raises(Crash):
            train_in_process(recipe, tmp_path / "runs")
    run = only_run(tmp_path / "runs")
    assert json.loads((run.path / "budget.json").read_text())["steps"] == 12
    run_training(load_recipe(recipe), resumed_run(load_recipe(recipe), str(run.path), None))
    assert json.loads((run.path / "train.json").read_text())["steps"] == 12
    assert max_abs_diff(final_weights(run), final_weights(reference)) <= 1e-6
    ours, theirs = step_losses(run), step_losses(reference)
    assert sorted(ours) == sorted(theirs) == list(range(1, 13))
    assert all(ours[step] == pytest.approx(theirs[step], abs=1e-6) for step in range(7, 13))


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_an_interruption_while_setting_up_removes_the_new_run_and_says_so(signal_name, tmp_path, tiny_model_dir):
    """Ctrl-C while the model loaded exited 130 without a word and left a run directory with nothing to resume;
    SIGTERM killed the process outright, leaving the same."""
    recipe = write_recipe(tmp_path, tiny_model_dir, "sft", "lora")
    stopped = cli("train", str(recipe), "--runs-dir", str(tmp_path / "runs"), signal_at=(signal_name, "load"))
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    message = " ".join(stopped.stderr.split())
    assert "Stopped: Interrupted before training started; there is nothing to resume" in message
    assert "Traceback" not in stopped.stderr and not list((tmp_path / "runs").iterdir())


HOLD_LOCK = """import sys, time
from pathlib import Path
from tunesmith.runs import Run, training_lock
with training_lock(Run(Path(sys.argv[1]))):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_run_another_process_is_training_is_not_resumed_alongside_it(tmp_path, tiny_model_dir):
    """--resume (and --resume latest) picked a run still training and would have written into it beside the
    process training it; `runs list` called it stopped."""
    recipe = write_recipe(tmp_path, tiny_model_dir, "sft", "lora", save_steps=2)
    died = cli("train", str(recipe), "--runs-dir", str(tmp_path / "runs"), signal_at=("SIGKILL", 3))
    assert died.returncode == -9, died.stderr[-2000:]
    run = only_run(tmp_path / "runs")
    holder = subprocess.Popen(  # holds the lock as `tunesmith train` does while it trains in the run
        [sys.executable, "-c", HOLD_LOCK, str(run.path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        listed = cli("runs", "list", str(tmp_path / "runs"), "--json")
        assert json.loads(listed.stdout)[0]["status"] == f"training (process {holder.pid})"
        for target in (str(run.path), "latest"):
            refused = cli("train", str(recipe), "--resume", target, "--runs-dir", str(tmp_path / "runs"))
            assert refused.returncode == 2, refused.stderr[-2000:]
            assert f"is being trained by another process (process {holder.pid} on" in " ".join(refused.stderr.split())
        assert not (run.path / "train.json").exists()
    finally:
        holder.kill()
        holder.wait()
    stopped = json.loads(cli("runs", "list", str(tmp_path / "runs"), "--json").stdout)[0]
    assert stopped["status"] == "stopped (checkpoint at step 2)"
    logged = [row for row in run.read_metrics() if "loss" in row]  # how far it got, from its log
    assert (stopped["steps"], stopped["final_loss"]) == (logged[-1]["step"], logged[-1]["loss"])
    resumed = cli("train", str(recipe), "--resume", str(run.path))  # the lock went with the process
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not (run.path / ".training.json").exists()


def test_a_run_stopped_at_its_last_step_resumes_to_the_same_step_count(tmp_path, tiny_model_dir):
    """Stopped just after step 8 of 8 mid-epoch, the resume trained a step 9 (lr 0) and reported 9 steps."""
    recipe = write_recipe(tmp_path, tiny_model_dir, "sft", "lora", batch_size=3)  # 6 steps an epoch: 8 is mid-epoch
    stopped = cli("train", str(recipe), "--runs-dir", str(tmp_path / "runs"), signal_at=("SIGINT", STEPS - 1))
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    run = only_run(tmp_path / "runs")
    assert (run.checkpoints_dir / f"checkpoint-{STEPS}").is_dir()
    resumed = cli("train", str(recipe), "--resume", str(run.path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run.path / "train.json").read_text())["steps"] == STEPS
    assert not (run.checkpoints_dir / f"checkpoint-{STEPS + 1}").exists()
    assert_same_end(run, train_in_process(recipe, tmp_path / "reference"), STEPS)  # the same weights and steps


def test_the_resume_hint_names_the_launch_a_run_had(tmp_path, tiny_model_dir):
    """Alone: no --nproc; one process of a distributed strategy with no launch config of tunesmith's, so started by a
    launcher: that launch again (`train` refuses a ddp recipe without --nproc, and ddp with --nproc 1)."""
    import shlex

    from tests.conftest import make_tiny_project
    from tunesmith.runs import create_run
    from tunesmith.train.resume import resume_hint

    recipe = make_tiny_project(tmp_path, tiny_model_dir)
    alone = create_run(load_recipe(recipe), tmp_path / "my runs")  # pasted as printed, a path with a space works
    command = shlex.split(resume_hint(alone).removeprefix("Resume with: "))
    assert command == ["tunesmith", "train", str(alone.recipe_file), "--resume", str(alone.path)]
    launched = create_run(load_recipe(recipe, ["training.distributed=ddp"]), tmp_path / "runs")
    assert resume_hint(launched).startswith("Start the launch that trained it again, unchanged")


def test_a_resume_trains_on_the_hub_commit_it_started_on_not_a_newer_one(tmp_path, tiny_model_dir, monkeypatch):
    """A Hub id without model.revision resolves to the newest commit: one published between the stop and the resume
    would train the rest of the run on another model. The resume keeps the commit its checkpoints trained on while
    it is here (nothing newer is resolved, let alone downloaded), and resolves that commit again once it is gone."""
    from huggingface_hub import constants
    from safetensors.torch import load_file, save_file

    from tunesmith.cli.app import resumed_run
    from tunesmith.errors import ModelSourceError
    from tunesmith.train import run_training
    from tunesmith.train.resume import base_the_run_started_on

    repo = tmp_path / "hub" / "models--someone--tiny"
    first, second = "a" * 40, "b" * 40
    for commit in (first, second):
        shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    weights = next((repo / "snapshots" / second).glob("*.safetensors"))
    save_file({name: t + 1e-3 for name, t in load_file(weights).items()}, weights, metadata={"format": "pt"})
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(first)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    recipe = write_recipe(tmp_path, tiny_model_dir, "sft", "lora")
    recipe.write_text(recipe.read_text().replace(f"source: {tiny_model_dir}", "source: someone/tiny"))
    with monkeypatch.context() as patch:
        crash_at_step(patch, 3)
        with pytest.raises(Crash):
            train_in_process(recipe, tmp_path / "runs")
    run = only_run(tmp_path / "runs")
    (repo / "refs" / "main").write_text(second)  # published while the run was stopped
    assert base_the_run_started_on(Run(tmp_path / "fresh"), load_recipe(recipe)) == repo / "snapshots" / second
    resumed_run(load_recipe(recipe), str(run.path), None)
    assert base_the_run_started_on(run, load_recipe(recipe)) == repo / "snapshots" / first
    run_training(load_recipe(run.recipe_file), run)
    assert run.manifest().train.base_model.commit == first
    shutil.rmtree(repo / "snapshots" / first)  # gone: that commit is resolved again (offline here: not in the cache)
    with pytest.raises(ModelSourceError, match="someone/tiny"):
        base_the_run_started_on(run, load_recipe(recipe))
