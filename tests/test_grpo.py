"""Proof tests for GRPO and its rewards on a tiny llama.

The rewards are pure functions, each shown to score a right and a wrong completion apart. One short
GRPO run (2 completions per prompt, 8 new tokens, 3 steps) is shared by the module: the mean reward is
logged into metrics.jsonl and train.json, only the adapter trains, and wrong data or batch sizes are
refused with a message that names the fix.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import REPO
from tunesmith.config import RewardSpec, recipe_to_yaml, validate_recipe
from tunesmith.errors import DataError, RecipeError, TunesmithError
from tunesmith.runs import create_run
from tunesmith.train import run_training
from tunesmith.train.rewards import build_rewards, completion_text

ARITH = REPO / "examples" / "data" / "arith"
PREFS = REPO / "examples" / "data" / "prefs"
USER_REWARD = "def char_share(completion, reference):\n    return min(len(completion), 40) / 40\n"


def score(spec: dict[str, Any], completions: list[str], reference: str = "", base_dir: Path = REPO,
          ids: list[list[int]] | None = None) -> list[float]:
    """One reward's scores for `completions`, called the way TRL's GRPOTrainer calls it."""
    (reward,), _ = build_rewards([RewardSpec(**spec)], base_dir)
    return reward(prompts=["q"] * len(completions), completions=completions,
                  completion_ids=ids or [[1, 2]] * len(completions), reference=[reference] * len(completions),
                  trainer_state=None)


def test_exact_match_rewards_only_the_reference_answer():
    assert score({"name": "exact_match"}, ["42", " 42\n", "41", "The answer is 42"], reference="42") == [1, 1, 0, 0]


def test_numeric_match_rewards_the_right_number_however_it_is_written():
    completions = ["42", "The answer is 42.", "42.0 apples", "24", "forty-two"]
    assert score({"name": "numeric_match"}, completions, reference="42") == [1, 1, 1, 0, 0]


def test_tool_call_match_rewards_the_right_call_against_a_rows_reference():
    from tunesmith.train.grpo import prompt_and_reference

    call = {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    row = prompt_and_reference({"messages": [{"role": "user", "content": "Weather in Oslo?"},
                                             {"role": "assistant", "content": "", "tool_calls": [call]}]})
    completions = ['<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>',
                   '<tool_call>{"name": "get_weather", "arguments": {"city": "Lima"}}</tool_call>',
                   "It is sunny in Oslo."]
    assert score({"name": "tool_call_match"}, completions, reference=row["reference"]) == [1, 0, 0]


def test_regex_rewards_a_whole_match():
    assert score({"name": "regex", "pattern": r"-?\d+"}, ["-45", "x = 45", "45."]) == [1, 0, 0]


def test_json_valid_rewards_parseable_json():
    assert score({"name": "json_valid"}, ['{"a": 1}', "[1, 2]", "{a: 1}", "sure!", "0"]) == [1, 1, 0, 0, 0]


def test_json_schema_rewards_only_valid_objects(tmp_path):
    schema = {"type": "object", "required": ["qty"], "properties": {"qty": {"type": "integer"}}}
    (tmp_path / "order.schema.json").write_text(json.dumps(schema))
    spec = {"name": "json_schema", "json_schema": "order.schema.json"}
    assert score(spec, ['{"qty": 2}', '{"qty": "two"}', '{"item": "mug"}', "qty 2"], base_dir=tmp_path) == [1, 0, 0, 0]


def test_length_penalty_costs_only_tokens_beyond_the_target():
    ids = [[1] * 3, [1] * 4, [1] * 6, [1] * 40]
    assert score({"name": "length_penalty", "target": 4}, ["a"] * 4, ids=ids) == [0.0, 0.0, -0.5, -1.0]


def test_user_reward_from_a_file_path(tmp_path):
    (tmp_path / "my_rewards.py").write_text(USER_REWARD)
    assert score({"name": "my_rewards.py:char_share"}, ["x" * 10, "x" * 80], base_dir=tmp_path) == [0.25, 1.0]


def test_user_reward_that_returns_no_number_is_named(tmp_path):
    (tmp_path / "bad.py").write_text("def verdict(completion, reference):\n    return 'good'\n"
                                     "def forgot(completion, reference):\n    completion.strip()\n"
                                     "def contains(completion, reference):\n    return 'x' in completion\n")
    with pytest.raises(TunesmithError, match=r"bad\.py:verdict returned 'good' \(str\)"):
        score({"name": "bad.py:verdict"}, ["x"], base_dir=tmp_path)
    with pytest.raises(TunesmithError, match=r"returned None") as caught:
        score({"name": "bad.py:forgot"}, ["x"], base_dir=tmp_path)
    assert "without `return` gives None" in caught.value.hint
    assert score({"name": "bad.py:contains"}, ["x", "y"], base_dir=tmp_path) == [1.0, 0.0]  # a bool is 1 or 0


def test_a_user_reward_beside_the_recipe_its_signature_and_its_errors_are_the_users(tmp_path):
    """`module:function` finds module.py in the recipe's folder; a function that cannot take (completion, reference)
    is refused when the rewards are built (before any model loads); one that raises is named with the completion it
    failed on: a usage error, not tunesmith's "Internal error"."""
    from tunesmith.errors import TunesmithError

    (tmp_path / "myrewards.py").write_text(USER_REWARD + "def one_arg(completion):\n    return 1.0\n"
                                           "def explodes(completion, reference):\n    raise ValueError('boom')\n")
    assert score({"name": "myrewards:char_share"}, ["x" * 20], base_dir=tmp_path) == [0.5]
    with pytest.raises(TunesmithError, match=r"User reward myrewards:one_arg takes \(completion\), but a reward is "
                                             r"called with two arguments"):
        build_rewards([RewardSpec(name="myrewards:one_arg")], tmp_path)
    with pytest.raises(TunesmithError, match=r"User reward myrewards:explodes raised ValueError: boom \(on completion "
                                             r"'xyz'") as raised:
        score({"name": "myrewards:explodes"}, ["xyz"], base_dir=tmp_path)
    assert raised.value.exit_code == 2
    with pytest.raises(TunesmithError, match=r"cannot import 'absent_rewards'.*absent_rewards\.py does not exist"):
        build_rewards([RewardSpec(name="absent_rewards:f")], tmp_path)


def test_a_reward_file_named_like_a_python_module_is_the_users_and_a_misspelt_name_is_guessed(tmp_path):
    """test.py beside the recipe, not Python's own `test` package (nor code, types, json...); a function name one
    letter off is named with the file's functions."""
    from tunesmith.errors import TunesmithError

    (tmp_path / "test.py").write_text(USER_REWARD, encoding="utf-8")
    assert score({"name": "test:char_share"}, ["x" * 20], base_dir=tmp_path) == [0.5]
    with pytest.raises(TunesmithError, match=r"test\.py\) has no function 'char_shar'\. Did you mean 'char_share'\?"):
        build_rewards([RewardSpec(name="test:char_shar")], tmp_path)


@pytest.mark.parametrize(("source", "message"), [
    ("def f(completion, reference)\n    return 1.0\n",
     r"User reward broken(\.py)?:f: .*broken\.py, line 1: expected ':'"),
    ("import nonexistent_pkg_xyz\n\ndef f(completion, reference):\n    return 1.0\n",
     r"broken\.py imports 'nonexistent_pkg_xyz', which is not installed"),
    ("raise RuntimeError('no config')\n", r"importing .*broken\.py raised RuntimeError: no config"),
    ("f = 3\n", r"'f' in broken(\.py)? is not a function \(it is 3\)"),
])
def test_a_reward_module_that_cannot_be_loaded_is_the_users_error(tmp_path, source, message):
    """A syntax error, a missing import or a failing top level in the user's file: a usage error naming the file
    and line (exit 2, before any model loads), not tunesmith's "Internal error ... report it"."""
    from tunesmith.errors import TunesmithError

    (tmp_path / "broken.py").write_text(source, encoding="utf-8")
    for name in ("broken.py:f", "broken:f"):  # a file path, and a module found beside the recipe
        with pytest.raises(TunesmithError, match=message) as raised:
            build_rewards([RewardSpec(name=name)], tmp_path)
        assert raised.value.exit_code == 2


@pytest.mark.parametrize("value", ["float('nan')", "float('inf')", "-float('inf')"])
def test_a_reward_that_is_not_finite_is_refused(tmp_path, value):
    """A NaN reward dropped out of the sum and an infinite one zeroed every advantage: training ran, learning
    nothing, and said nothing."""
    (tmp_path / "odd.py").write_text(f"def f(completion, reference):\n    return {value}\n", encoding="utf-8")
    with pytest.raises(TunesmithError, match=r"(?s)odd\.py:f returned .* must be finite"):
        score({"name": "odd.py:f"}, ["x"], base_dir=tmp_path)


def test_conversational_completions_are_scored_on_the_assistant_text():
    assert completion_text([{"role": "assistant", "content": "42"}]) == "42"
    assert score({"name": "exact_match"}, [[{"role": "assistant", "content": "42"}]], reference="42") == [1.0]


def test_weighted_rewards_combine_as_named(tmp_path):
    specs = [RewardSpec(name="exact_match"), RewardSpec(name="length_penalty", weight=0.1, target=2)]
    rewards, weights = build_rewards(specs, tmp_path)
    assert [r.__name__ for r in rewards] == ["exact_match", "length_penalty"] and weights == [1.0, 0.1]
    kwargs = {"prompts": ["q", "q"], "completions": ["7", "seven"], "completion_ids": [[1], [1, 2, 3, 4]],
              "reference": ["7", "7"]}
    per_reward = [reward(**kwargs) for reward in rewards]
    combined = [sum(w * r[i] for w, r in zip(weights, per_reward, strict=True)) for i in range(2)]
    assert combined == pytest.approx([1.0, -0.1])


@pytest.mark.parametrize(("spec", "message"), [
    ({"name": "exakt_match"}, "unknown reward 'exakt_match'. Did you mean 'exact_match'"),
    ({"name": "regex"}, "needs 'pattern'"),
    ({"name": "exact_match", "target": 8}, "does not use target"),
    ({"name": "regex", "pattern": "("}, "not a valid regular expression"),
])
def test_bad_reward_specs_are_refused_in_the_recipe(tmp_path, spec, message):
    raw = {"data": {"train": "t.jsonl"}, "method": {"kind": "grpo", "rewards": [spec]}, "base_dir": str(tmp_path)}
    with pytest.raises(RecipeError, match=message):
        validate_recipe(raw)


def slice_file(source: Path, target: Path, rows: int) -> str:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(source.read_text(encoding="utf-8").splitlines()[:rows]) + "\n", encoding="utf-8")
    return str(target)


def grpo_recipe(root: Path, model_dir: Path, source: Path = ARITH, method: dict[str, Any] | None = None,
                eval_section: dict[str, Any] | None = None, **training: Any):
    """A 3-step GRPO recipe on the first 16/4 rows of `source`'s train/eval files; `method` and `eval_section`
    replace keys of those sections, `training` of the training section."""
    (root / "rewards.py").write_text(USER_REWARD)
    raw = {
        "name": "grpo",
        "model": {"source": str(model_dir)},
        "data": {"train": slice_file(source / "train.jsonl", root / "data" / "train.jsonl", 16),
                 "eval": slice_file(source / "eval.jsonl", root / "data" / "eval.jsonl", 4), "max_length": 64},
        "method": {"kind": "grpo", "num_generations": 2, "max_completion_length": 8, "beta": 0.04,
                   "rewards": [{"name": "exact_match"}, {"name": "rewards.py:char_share", "weight": 0.5}],
                   **(method or {})},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
        "training": {"max_steps": 3, "lr": 5e-2, "batch_size": 4, "scheduler": "constant", "warmup_ratio": 0.0,
                     "logging_steps": 1, "save_steps": 1000, **training},
        **({"eval": eval_section} if eval_section else {}),
        "base_dir": str(root),
    }
    return validate_recipe(raw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir) -> dict[str, Any]:
    """One tiny GRPO run, keeping its trainer and every weight as it was just before training."""
    import tunesmith.train.common as common

    root = tmp_path_factory.mktemp("grpo")
    recipe = grpo_recipe(root, tiny_model_dir)
    run = create_run(recipe, root / "runs")
    seen: dict[str, Any] = {"run": run}

    def capture(trainer, *args):
        seen["trainer"] = trainer
        seen["before"] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        return common.fit_and_save(trainer, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("tunesmith.train.grpo.fit_and_save", capture)
        run_training(recipe, run)
    return seen


def test_mean_reward_is_logged_per_step_and_in_train_json(trained):
    run = trained["run"]
    steps = [r for r in run.read_metrics() if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for record in steps:
        assert 0.0 <= record["rewards/exact_match/mean"] <= 1.0
        assert 0.0 <= record["rewards/char_share/mean"] <= 1.0
        expected = record["rewards/exact_match/mean"] + 0.5 * record["rewards/char_share/mean"]
        assert record["reward"] == pytest.approx(expected, abs=1e-4)  # TRL sums the recipe's weighted rewards
        assert math.isfinite(record["loss"]) and "kl" in record  # beta > 0: KL to the adapter-disabled base
    report = json.loads((run.path / "train.json").read_text())
    assert report["method"] == "grpo" and report["steps"] == 3
    assert report["final_metrics"]["reward"] == pytest.approx(steps[-1]["reward"], abs=1e-5)
    assert (run.adapter_dir / "adapter_model.safetensors").is_file()
    assert (run.plots_dir / "rewards.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the curve that shows progress
    from tunesmith.runs import run_summary

    listed = run_summary(run)  # `runs list`: the reward where the loss says nothing
    assert listed["final_loss"] is None and listed["final_reward"] == report["final_metrics"]["reward"]
    # the throughput counts what GRPO sampled and trained on (its collator only sees prompts): TRL's tokens seen,
    # of which the completions' carry the loss
    speed = report["throughput"]
    assert speed["real_tokens"] == steps[-1]["num_tokens"] > speed["loss_tokens"] > 0
    assert speed["mfu"] > 0 if speed["mfu"] is not None else speed["achieved_gflops"] > speed["peak_gflops"]
    from tunesmith.runs import run_summary

    assert run_summary(run)["final_loss"] is None  # a policy-gradient surrogate: `runs list` and sweeps leave it out


def test_grpo_trains_only_the_adapter(trained):
    trainer, before = trained["trainer"], trained["before"]
    assert trainer.ref_model is None  # the reference is the base with the adapter switched off
    after = dict(trainer.model.named_parameters())
    lora = {name for name in after if ".lora_" in name}
    assert lora and {name for name, p in after.items() if p.requires_grad} == lora
    changed = {name for name, p in after.items() if not torch.equal(p.detach(), before[name])}
    assert changed and changed <= lora
    assert any(".lora_B." in name for name in changed)


def test_preference_pairs_are_refused(tmp_path, tiny_model_dir):
    recipe = grpo_recipe(tmp_path, tiny_model_dir, source=PREFS)
    with pytest.raises(DataError) as caught:
        run_training(recipe, create_run(recipe, tmp_path / "runs"))
    assert "holds preference rows" in caught.value.message and "GRPO" in caught.value.message
    assert "prompt_completion or messages" in caught.value.message


def test_batch_that_splits_a_group_is_refused_by_the_recipe_and_so_by_plan(tmp_path, tiny_model_dir):
    """Checked when the recipe is read, so plan, doctor and a sweep's up-front checks refuse it too."""
    from typer.testing import CliRunner

    from tunesmith.cli import app

    with pytest.raises(RecipeError, match=r"not a multiple of method\.num_generations \(2\).*multiple of 2"):
        grpo_recipe(tmp_path, tiny_model_dir, batch_size=3)
    recipe = grpo_recipe(tmp_path, tiny_model_dir)
    (tmp_path / "grpo.yaml").write_text(recipe_to_yaml(recipe))
    planned = CliRunner().invoke(app, ["plan", str(tmp_path / "grpo.yaml"), "--set", "training.batch_size=3"])
    assert isinstance(planned.exception, RecipeError)  # main() prints it and exits 2
    assert "not a multiple of method.num_generations" in planned.exception.message


def test_groups_that_all_score_alike_and_cut_completions_are_warned_of(tmp_path, tiny_model_dir):
    from tunesmith.train.grpo import learning_signal_warnings

    method = grpo_recipe(tmp_path, tiny_model_dir).method
    flat = [{"step": step, "frac_reward_zero_std": 1.0, "completions/clipped_ratio": 1.0} for step in (1, 2, 3)]
    uniform, cut = learning_signal_warnings(flat, method)
    assert "100% of the sampled groups (mean over 3 logged steps) gave every completion the same reward" in uniform
    assert "cut at method.max_completion_length (8 tokens)" in cut
    varied = [{"step": 1, "frac_reward_zero_std": 0.5, "completions/clipped_ratio": 0.25}]
    assert learning_signal_warnings(varied, method) == [] and learning_signal_warnings([{"loss": 1}], method) == []


def test_repeated_reward_names_are_logged_apart(tmp_path):
    specs = [RewardSpec(name="regex", pattern="a"), RewardSpec(name="regex", pattern="b"),
             RewardSpec(name="json_valid")]
    rewards, _ = build_rewards(specs, tmp_path)
    assert [r.__name__ for r in rewards] == ["regex", "regex_2", "json_valid"]


def test_a_json_schema_reward_with_no_schema_file_names_the_rewards_key(tmp_path):
    from tunesmith.errors import TunesmithError

    with pytest.raises(TunesmithError, match=r"method\.rewards \(the json_schema reward's json_schema\): no such file"):
        build_rewards([RewardSpec(name="json_schema", json_schema="nope.json")], tmp_path)


def test_a_user_reward_that_fails_on_the_reference_is_named_before_the_model_loads(tmp_path):
    """The user's reward is tried once on the first row's own reference: one that raises on it (or returns no
    number) is named before the model loads. The model source here does not exist: the reward's error comes first."""
    from tunesmith.errors import TunesmithError

    (tmp_path / "bad.py").write_text("def number_only(completion, reference):\n    return float(completion) / 0\n",
                                     encoding="utf-8")
    rows = [{"prompt": f"What is {i} + {i}?", "completion": str(2 * i)} for i in range(12)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recipe = validate_recipe({"model": {"source": str(tmp_path / "no-such-model")}, "base_dir": str(tmp_path),
                              "data": {"train": "train.jsonl"},
                              "method": {"kind": "grpo", "num_generations": 2, "max_completion_length": 8,
                                         "rewards": [{"name": "bad.py:number_only"}]},
                              "training": {"batch_size": 2, "max_steps": 1}})
    with pytest.raises(TunesmithError, match=r"User reward bad\.py:number_only raised ZeroDivisionError"):
        run_training(recipe, create_run(recipe, tmp_path / "runs"))


def test_doctor_and_train_try_a_user_reward_on_the_first_reference_alike(tmp_path):
    """A reward returning None is named by `doctor` as by `train` (both before the model loads), saying the text it
    was given is the first row's reference answer; a numpy or torch scalar is a number like any other."""
    from tunesmith.doctor.recipe import data_checks, metric_checks
    from tunesmith.errors import TunesmithError

    (tmp_path / "mine.py").write_text("import numpy\n\ndef nothing(completion, reference):\n    pass\n\n"
                                      "def numpy_number(completion, reference):\n    return numpy.float32(0.5)\n",
                                      encoding="utf-8")
    rows = [{"prompt": f"What is {i} + {i}?", "completion": str(2 * i)} for i in range(12)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    def recipe_with(reward: str):
        return validate_recipe({"model": {"source": str(tmp_path / "no-such-model")}, "base_dir": str(tmp_path),
                                "data": {"train": "train.jsonl"},
                                "method": {"kind": "grpo", "num_generations": 2, "max_completion_length": 8,
                                           "rewards": [{"name": reward}]},
                                "training": {"batch_size": 2, "max_steps": 1}})

    said = r"User reward mine\.py:nothing returned None \(NoneType\) for the first training row's reference answer '0'"
    recipe = recipe_with("mine.py:nothing")
    _, loaded = data_checks(recipe)
    failed = [check for check in metric_checks(recipe, loaded["train"]) if check.status == "fail"]
    assert len(failed) == 1 and re.search(said, failed[0].detail), failed
    with pytest.raises(TunesmithError, match=said):
        run_training(recipe, create_run(recipe, tmp_path / "runs"))
    recipe = recipe_with("mine.py:numpy_number")
    assert not [check for check in metric_checks(recipe, data_checks(recipe)[1]["train"]) if check.status == "fail"]
    assert score({"name": "mine.py:numpy_number"}, ["x"], base_dir=tmp_path) == [0.5]


def test_runs_list_scores_a_grpo_run_by_the_rewards_it_maximised(trained):
    """With reference answers too, a GRPO run's one-number score is its held-out reward (a partial-credit reward can
    rise while exact_match stays 0), not the first eval metric."""
    from tunesmith.eval.evaluate import run_eval
    from tunesmith.runs import run_summary

    run = trained["run"]
    results = json.loads(run_eval(run.load_recipe(["eval.probes=false"]), run).read_text(encoding="utf-8"))
    listed = run_summary(run)
    assert "exact_match" in results["tuned"] and listed["metric"] == "reward"
    assert (listed["base"], listed["tuned"]) == (results["rewards"]["base"]["reward"],
                                                 results["rewards"]["tuned"]["reward"])
