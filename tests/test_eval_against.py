"""`tunesmith eval RUN --against OTHER`: two tiny runs of one base compared adapter against adapter, and a run of
another base refused, through the real command line."""

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import build_tiny_llama, make_tiny_project
from tunesmith.config import load_recipe
from tunesmith.errors import TunesmithError
from tunesmith.eval import run_eval
from tunesmith.manifest import weights_signature
from tunesmith.runs import Run, create_run
from tunesmith.train import run_training


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_model_dir):
    """A run trained 12 steps and one trained 2 steps, of the same tiny base; probes off to stay quick."""
    root = tmp_path_factory.mktemp("against")
    recipe_file = make_tiny_project(root, tiny_model_dir, eval_rows=6)
    runs = []
    for steps in (12, 2):
        recipe = load_recipe(recipe_file, [f"training.max_steps={steps}", "eval.probes=false"])
        run = create_run(recipe, root / "runs")
        run_training(recipe, run)
        runs.append(run)
    return runs


def eval_cli(run: Run, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunesmith", "eval", str(run.path), *args], capture_output=True,
                          text=True, timeout=600, cwd=run.path.parent)


def test_against_another_run_compares_the_two_adapters(two_runs):
    longer, shorter = two_runs
    result = eval_cli(longer, "--against", str(shorter.path), "--json")
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)
    assert results["against"] == {"name": shorter.path.name, "path": str(shorter.path.resolve())}
    assert results["tuned"]["loss"] < results["base"]["loss"]  # 12 steps beat 2 steps on held-out loss
    entry = results["comparison"]["exact_match"]
    assert entry["wins"] + entry["losses"] + entry["ties"] == 6
    folder = longer.eval_dir / f"against-{shorter.path.name}"
    assert json.loads((folder / "results.json").read_text()) == results
    assert f"tuned vs {shorter.path.name}" in (folder / "report.html").read_text()
    assert not (longer.eval_dir / "results.json").exists()  # the run's own base-vs-tuned results are untouched


def test_against_the_other_way_round_scores_the_same_models_swapped(two_runs):
    longer, shorter = two_runs
    forward = json.loads((longer.eval_dir / f"against-{shorter.path.name}" / "results.json").read_text())
    backward = json.loads(run_eval(load_recipe(shorter.recipe_file), shorter, longer.path).read_text())
    assert backward["base"]["loss"] == forward["tuned"]["loss"] and backward["tuned"]["loss"] == forward["base"]["loss"]
    assert backward["comparison"]["loss"]["delta"] == pytest.approx(-forward["comparison"]["loss"]["delta"], abs=1e-4)


def test_against_a_run_of_another_adapter_kind_loads_each_on_its_own_base(two_runs, tmp_path, tiny_model_dir):
    """A LoRA run against an IA3 run: PEFT cannot hold both on one model, so each gets a base of its own; the LoRA
    side scores as it does against a LoRA run."""
    longer, shorter = two_runs
    recipe = load_recipe(longer.recipe_file, ["adapter.kind=ia3", "training.max_steps=2"])
    ia3 = create_run(recipe, tmp_path / "runs")
    run_training(recipe, ia3)
    results = json.loads(run_eval(load_recipe(longer.recipe_file), longer, ia3.path).read_text())
    own = json.loads(run_eval(load_recipe(longer.recipe_file), longer, shorter.path).read_text())  # LoRA beside LoRA
    assert results["against"]["name"] == ia3.path.name and results["tuned"]["loss"] == own["tuned"]["loss"]


def test_a_run_of_the_same_name_elsewhere_does_not_overwrite_the_first_comparison(two_runs, tmp_path):
    """Sweeps name their runs alike (`lr=1e-3`): --against the second replaced the results against the first."""
    longer, shorter = two_runs
    first = longer.eval_dir / f"against-{shorter.path.name}" / "results.json"
    kept = first.read_text()
    twin = tmp_path / "another-sweep" / shorter.path.name
    shutil.copytree(shorter.path, twin)
    path = run_eval(load_recipe(longer.recipe_file), longer, twin)
    assert path.parent != first.parent and path.parent.name.startswith(f"against-{shorter.path.name}-")
    assert json.loads(path.read_text())["against"]["path"] == str(twin.resolve())
    assert first.read_text() == kept  # the comparison with the first run is as it was
    again = run_eval(load_recipe(longer.recipe_file), longer, shorter.path)  # the first again: its own folder
    assert again == first


def test_against_base_is_todays_behaviour_and_prints_the_comparison(two_runs):
    longer, _ = two_runs
    result = eval_cli(longer, "--against", "base", "--fail-if-worse", "loss")
    assert result.returncode == 0, result.stderr
    assert "base vs tuned on 6 held-out examples" in " ".join(result.stderr.split())
    assert "against" not in json.loads((longer.eval_dir / "results.json").read_text())


def test_a_run_of_another_base_model_is_refused(two_runs, tmp_path, tokenizer_dir):
    longer, shorter = two_runs
    other_base = build_tiny_llama(tokenizer_dir, tmp_path / "other-base", seed=1)
    foreign = tmp_path / "foreign-run"
    shutil.copytree(shorter.path, foreign)
    manifest = json.loads((foreign / "run.json").read_text())  # the base a run trained on is run.json's record
    manifest["train"]["base_model"]["path"] = str(other_base)
    manifest["train"]["base_model"]["weights"] = weights_signature(other_base)  # as if it had trained on it
    (foreign / "run.json").write_text(json.dumps(manifest))
    result = eval_cli(longer, "--against", str(foreign))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    assert "only runs of the same base model can be compared" in message and str(other_base) in message
    with pytest.raises(TunesmithError, match="is the run being evaluated"):
        run_eval(load_recipe(longer.recipe_file), longer, longer.path)
    with pytest.raises(TunesmithError, match="neither a run directory"):
        run_eval(load_recipe(longer.recipe_file), longer, tmp_path)


def test_a_preference_eval_says_its_scores_are_likelihoods_and_how_to_read_answers(tmp_path, capsys):
    from tunesmith.cli.app import _print_results
    from tunesmith.results import EvalResults

    def printed(task_metric: str, judge: dict | None = None) -> str:
        results = EvalResults(examples=8, task_metric=task_metric, base={task_metric: 0.375},
                              tuned={task_metric: 0.875}, judge=judge)
        (tmp_path / "results.json").write_text(results.model_dump_json(), encoding="utf-8")
        _print_results(tmp_path / "run", tmp_path / "results.json")
        return " ".join(capsys.readouterr().err.split())

    said = printed("preference_accuracy")
    assert "how likely the held-out answers are" in said and "tunesmith compare --prompts PROMPTS.jsonl" in said
    assert "how likely" in printed("label_gap")  # KTO's
    assert "how likely" not in printed("exact_match")
    judged = {"tuned": {"judge_score": 0.7}, "mode": "score", "model": "j", "examples": 8}
    assert "how likely" not in printed("preference_accuracy", judge=judged)


def test_a_run_trained_with_another_chat_template_is_refused(two_runs, tmp_path):
    """--against prompted the other run with this run's template: one of them was scored on a format it never saw."""
    from tunesmith.eval.against import against_sources
    from tunesmith.models.templates import TEMPLATE_FILE

    longer, shorter = two_runs
    foreign = tmp_path / "chatml-run"
    shutil.copytree(shorter.path, foreign)
    (adapter,) = [path.parent for path in foreign.rglob(TEMPLATE_FILE) if "checkpoint" not in str(path)]
    (adapter / TEMPLATE_FILE).write_text("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
                                         "<|im_end|>\n{% endfor %}", encoding="utf-8")
    with pytest.raises(TunesmithError, match="another chat template") as refused:
        against_sources(longer, foreign)
    assert "model.chat_template" in refused.value.hint
    assert against_sources(longer, shorter.path)  # the same template: compared
