"""Slow tests: each method's own metric improves on the real embedded SmolLM2, with its bundled recipe.

Each test runs the recipe from recipes/ for a handful of steps (constant learning rate, no warmup, a log
record per step) and checks the figure that method optimises, not just that training ran. DPO's test
lives in test_methods.py; GRPO's in test_grpo.py would need the same model, so it is here too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import mean

import pytest

from tests.conftest import REPO
from tunesmith.config import load_recipe
from tunesmith.runs import Run, create_run
from tunesmith.train import run_training

pytestmark = pytest.mark.slow

FEW_STEPS = ["training.logging_steps=1", "training.warmup_ratio=0", "training.scheduler=constant"]


def train_recipe(name: str, tmp_path: Path, *overrides: str) -> Run:
    recipe = load_recipe(REPO / "recipes" / f"{name}.yaml", [*FEW_STEPS, *overrides])
    run = create_run(recipe, tmp_path / "runs")
    run_training(recipe, run)
    return run


def logged(run: Run, key: str) -> list[float]:
    return [record[key] for record in run.read_metrics() if key in record]


def rising(values: list[float], tail: int = 3) -> bool:
    """The last few values beat the first two on average: each step sees new rows, so single steps are noisy."""
    return mean(values[-tail:]) > mean(values[:2])


@pytest.mark.parametrize("kind", ["orpo", "simpo"])
def test_reference_free_preference_methods_widen_the_margin(kind, tmp_path):
    run = train_recipe(kind, tmp_path, "training.max_steps=8")
    margins = logged(run, "rewards/margins")
    assert len(margins) == 8 and all(math.isfinite(m) for m in margins)
    assert rising(margins) and mean(margins[-3:]) > 0, margins


def test_kto_separates_desirable_from_undesirable(tmp_path):
    run = train_recipe("kto", tmp_path, "training.max_steps=8")
    margins = logged(run, "rewards/margins")  # mean reward of desirable minus undesirable answers
    assert len(margins) >= 6, margins
    assert rising(margins) and mean(margins[-3:]) > 0, margins


def test_cpt_lowers_held_out_perplexity(tmp_path):
    from tunesmith.eval import run_eval

    run = train_recipe("cpt", tmp_path, "training.max_steps=8", "training.epochs=1")
    recipe = run.load_recipe()
    results = json.loads(run_eval(recipe, run).read_text(encoding="utf-8"))
    base, tuned = results["base"]["perplexity"], results["tuned"]["perplexity"]
    assert math.isfinite(tuned) and tuned < base, (base, tuned)


def test_grpo_mean_reward_rises_on_arithmetic(tmp_path):
    """The bundled arithmetic task: the reward (bare number, close to the right length) rises in a few steps."""
    run = train_recipe("grpo", tmp_path, "training.max_steps=8")
    rewards = logged(run, "reward")
    assert len(rewards) == 8 and all(math.isfinite(r) for r in rewards)
    assert rising(rewards), rewards


def test_grpo_on_prompts_alone_is_scored_by_its_reward_on_the_real_model(tmp_path):
    """recipes/grpo_prompts.yaml end to end, shortened: trains on questions without answers, and eval's rewards block
    is the bundled reward of the answers it shows (recomputed here from each question)."""
    import importlib.util

    from tunesmith.eval import run_eval

    run = train_recipe("grpo_prompts", tmp_path, "training.max_steps=4", "eval.max_examples=8", "eval.probes=false")
    assert len(logged(run, "rewards/right_number/mean")) == 4
    results = json.loads(run_eval(run.load_recipe(), run).read_text(encoding="utf-8"))
    spec = importlib.util.spec_from_file_location("arithmetic", REPO / "recipes" / "rewards" / "arithmetic.py")
    arithmetic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(arithmetic)
    assert all(arithmetic.expected_number(sample["prompt"]) is not None for sample in results["samples"])
    for variant in ("base", "tuned"):
        right = [arithmetic.right_number(sample[variant], "", sample["prompt"]) for sample in results["samples"]]
        assert results["rewards"][variant]["reward"] == pytest.approx(sum(right) / len(right), abs=1e-4)
