"""Lengths chosen for the data: data.max_length: auto (the default) and the epochs of a small dataset.

A fixed 512 used to leave out every row whose answer lay past token 512; auto keeps them, records the length in
run.json so eval encodes as training did, and cuts only where the model itself cannot attend further. A recipe
that says nothing of how long to train gets one epoch, or up to three on a small dataset, to reach 50 steps.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.conftest import ORDERS, TINY_RECIPE, build_tiny_llama
from tunesmith.config import load_recipe
from tunesmith.data.lengths import AUTO_MIN_LENGTH, auto_max_length, resolve_max_length
from tunesmith.data.template import encode_split
from tunesmith.runs import create_run, open_run
from tunesmith.train import run_training

CONTEXT = 2048


@pytest.mark.parametrize(("longest", "context", "packed_text", "expected"), [
    (100, 8192, False, 512),  # short data: the old default, so nothing changes for it
    (700, 8192, False, 704),  # the longest row, rounded up to 64
    (704, 8192, False, 704),
    (5000, 2048, False, 2048),  # never past the model's context
    (700, None, False, 704),  # a config without a context length
    (9000, 8192, True, 512),  # raw text packed into blocks: documents straddle blocks, nothing is lost
])
def test_auto_max_length_covers_the_longest_row_within_the_context(longest, context, packed_text, expected):
    assert auto_max_length(longest, context, packed_text) == expected


STORY = ("we moved house last week and the old order went to the wrong door so please send it again to my sister "
         "who lives near the station with blue shirts red totes green hats")


def long_rows(count: int, words: int, seed: int = 0) -> list[dict]:
    """Orders whose request starts with `words` words of a customer's story (each row its own, so cleaning's
    near-duplicate filter keeps them all), so the answer lies past them."""
    rows = [json.loads(line) for line in (ORDERS / "train.jsonl").read_text(encoding="utf-8").splitlines()[:count]]
    for index, row in enumerate(rows):
        draw = random.Random(seed * 1000 + index)
        story = " ".join(draw.choice(STORY.split()) for _ in range(words))
        row["messages"][0]["content"] = f"{story}\n{row['messages'][0]['content']}"
    return rows


@pytest.fixture(scope="module")
def wide_model_dir(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tokenizer_dir, tmp_path_factory.mktemp("tiny-llama-2048"), context=CONTEXT)


def project_with_long_rows(root: Path, model_dir: Path, max_length: str | None) -> Path:
    (root / "data").mkdir(parents=True)
    for name, rows in (("train.jsonl", long_rows(16, 280)), ("eval.jsonl", long_rows(4, 280, seed=1))):
        (root / "data" / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    text = TINY_RECIPE.format(model_dir=model_dir).replace("  max_length: 128\n", "")
    if max_length:
        text = text.replace("  eval: data/eval.jsonl\n", f"  eval: data/eval.jsonl\n  max_length: {max_length}\n")
    recipe = root / "recipe.yaml"
    recipe.write_text(text.replace("max_steps: 48", "max_steps: 2"), encoding="utf-8")
    return recipe


def test_auto_trains_rows_a_fixed_512_would_leave_out_and_eval_reads_its_length(tmp_path, wide_model_dir):
    from tunesmith.models import load_tokenizer

    tokenizer = load_tokenizer(wide_model_dir)
    rows = long_rows(16, 280) + long_rows(4, 280, seed=1)
    longest = max(e.total_tokens for e in encode_split(tokenizer, rows, CONTEXT).examples)
    assert longest > AUTO_MIN_LENGTH + 64, "the rows must be long enough that 512 cuts their answers"
    assert encode_split(tokenizer, long_rows(16, 280), 512).counts()["trained_rows"] == 0  # what 512 did

    recipe = load_recipe(project_with_long_rows(tmp_path / "auto", wide_model_dir, None))
    assert recipe.data.max_length == "auto"
    run = create_run(recipe, tmp_path / "runs")
    run_training(recipe, run)

    expected = -(-longest // 64) * 64
    manifest = json.loads((run.path / "run.json").read_text(encoding="utf-8"))
    assert manifest["data"]["max_length"] == expected
    trained = json.loads((run.path / "data.json").read_text(encoding="utf-8"))["trained"]["train"]
    assert trained["trained_rows"] == 16 and trained["dropped"] == {} and trained["answer_tokens_cut"] == 0
    chosen = json.loads((run.path / "train.json").read_text(encoding="utf-8"))["chosen"]["max_length"]
    assert chosen["value"] == expected and chosen["why"].startswith("auto: every sequence fits")
    assert "max_length: auto" in run.recipe_file.read_text(encoding="utf-8")  # the recipe as the user wrote it
    assert open_run(run.path).load_recipe().data.max_length == expected  # what eval encodes at


def test_the_plan_sizes_auto_for_the_longest_row_not_512(tmp_path, wide_model_dir):
    from tunesmith.plan import plan_recipe

    auto = plan_recipe(load_recipe(project_with_long_rows(tmp_path / "auto", wide_model_dir, None)), "cpu")
    fixed = plan_recipe(load_recipe(project_with_long_rows(tmp_path / "fixed", wide_model_dir, "512")), "cpu")
    assert fixed.length == 512 < auto.length <= CONTEXT
    assert auto.peak_bytes > fixed.peak_bytes


def test_rows_past_the_context_are_cut_at_it_and_said_so(wide_model_dir):
    from tunesmith.config import DataSection
    from tunesmith.models import load_tokenizer

    tokenizer = load_tokenizer(wide_model_dir)
    rows = long_rows(3, 280) + long_rows(1, 1400, seed=1)
    data = DataSection(train="unused.jsonl")
    chosen = resolve_max_length(data, rows, "messages", tokenizer, CONTEXT, packed=False)
    assert data.max_length == CONTEXT == chosen["value"]
    assert chosen["longest"] > CONTEXT and chosen["why"].startswith("auto: 1 of 4 sequences are longer")

    given = DataSection(train="unused.jsonl", max_length=256)
    assert resolve_max_length(given, rows, "messages", tokenizer, CONTEXT, packed=False)["why"] == (
        "data.max_length in the recipe")
    assert given.max_length == 256


def test_max_length_below_a_template_turn_is_refused_naming_the_key(tmp_path, tiny_model_dir):
    from tunesmith.errors import RecipeError

    recipe = project_with_long_rows(tmp_path, tiny_model_dir, "8")
    with pytest.raises(RecipeError, match="max_length"):
        load_recipe(recipe)


@pytest.mark.parametrize(("rows", "given", "expected_epochs", "chosen"), [
    (120, {}, 3.0, "3 epochs (45 steps)"),  # 15 steps an epoch: ceil(50 / 15) = 4, capped at 3
    (200, {}, 2.0, "2 epochs (50 steps)"),
    (480, {}, 1.0, "1 epoch"),  # 60 steps in one epoch: as before
    (120, {"epochs": 1}, 1.0, None),  # the recipe decides
    (120, {"max_steps": 10}, 1.0, None),
    (120, {"time_budget": "5m"}, 1.0, None),
])
def test_a_small_dataset_gets_the_epochs_that_reach_fifty_steps(rows, given, expected_epochs, chosen):
    from tunesmith.config import TrainingSection
    from tunesmith.train.defaults import resolve_epochs

    training = TrainingSection(**given)
    entry = resolve_epochs(training, "sft", rows)
    assert training.epochs == expected_epochs
    assert (entry or {}).get("value") == chosen
    assert resolve_epochs(TrainingSection(), "cpt", rows) is None  # CPT's epoch is its packed blocks, not rows


def test_a_run_on_a_small_dataset_trains_the_chosen_epochs_and_says_why(tmp_path, tiny_model_dir):
    from tests.conftest import make_tiny_project

    recipe_file = make_tiny_project(tmp_path, tiny_model_dir, train_rows=24, eval_rows=4)
    text = recipe_file.read_text(encoding="utf-8").replace("  max_steps: 48\n", "")
    recipe_file.write_text(text, encoding="utf-8")
    recipe = load_recipe(recipe_file)
    run = create_run(recipe, tmp_path / "runs")
    run_training(recipe, run)
    report = json.loads((run.path / "train.json").read_text(encoding="utf-8"))
    assert report["steps"] == 9  # 24 rows at batch 8: 3 steps an epoch, 3 epochs
    assert report["chosen"]["steps"]["why"].startswith("auto: a small dataset (24 rows: 3 steps an epoch)")


def test_a_baseline_before_training_resolves_auto_and_records_it(tmp_path, wide_model_dir):
    from tunesmith.eval.before_training import run_baselines_before_training
    from tunesmith.models import load_tokenizer

    rows = long_rows(16, 280) + long_rows(4, 280, seed=1)
    longest = max(e.total_tokens for e in encode_split(load_tokenizer(wide_model_dir), rows, CONTEXT).examples)
    recipe = load_recipe(project_with_long_rows(tmp_path, wide_model_dir, None))
    run, path = run_baselines_before_training(recipe, ["zero_shot"], runs_dir=tmp_path / "runs")
    recorded = json.loads((run.path / "run.json").read_text(encoding="utf-8"))["data"]["max_length"]
    assert recorded == -(-longest // 64) * 64 > AUTO_MIN_LENGTH
    assert json.loads(path.read_text(encoding="utf-8"))["baselines"]["zero_shot"]["prompt_tokens"] > AUTO_MIN_LENGTH


def test_the_chosen_table_never_gives_a_cut_length_as_the_rows_longest():
    """With rows cut at max_length the table said "128 at most" while plan said the longest row was 632 tokens."""
    from tunesmith.train.defaults import max_length_choice

    cut = max_length_choice(128, [40, 90, 128, 128], "data.max_length in the recipe")
    assert "2 of 4 rows reach max_length and are cut there" in cut["why"] and "at most" not in cut["why"]
    whole = max_length_choice(128, [40, 90, 100], "data.max_length in the recipe")
    assert whole["why"].endswith("100 at most: none is cut")
