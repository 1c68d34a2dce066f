"""Prompts without answers (TRL's prompt-only rows): read, previewed, trained on by GRPO, scored by its rewards.

GRPO samples its own answers, so a dataset of prompts is enough when the rewards judge an answer alone (a format
regex, a JSON schema, a reward model, a user function). The rows are a shape of their own (`prompt`); SFT refuses
them with the fix; rewards and eval metrics that need a reference answer are refused before the model loads; eval
scores the tuned model against its base by the run's own rewards on held-out prompts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tunesmith.data.formats import load_rows
from tunesmith.data.loaders import load_records
from tunesmith.errors import DataError, TunesmithError
from tunesmith.runs import create_run

QUESTIONS = ["What is {a} + {b}?", "How much is {a} times {b}?", "Subtract {b} from {a}.", "What is {a} minus {b}?"]
SHORT_ANSWER = "def short_answer(completion, reference):\n    return 1.0 if len(completion.split()) <= 3 else 0.0\n"


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def prompt_rows(count: int, offset: int = 0) -> list[dict[str, Any]]:
    return [{"prompt": QUESTIONS[i % len(QUESTIONS)].format(a=i + offset, b=3 * i + 1)} for i in range(count)]


def test_prompt_only_rows_are_their_own_shape(tmp_path):
    rows = [{"prompt": "What is 2 + 2?", "id": 7},
            {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Oslo?"}],
             "tools": [{"name": "get_weather", "parameters": {"type": "object", "properties": {}}}]},
            {"prompt": [{"role": "user", "content": "Weather?"},
                        {"role": "assistant", "content": "", "tool_calls": [
                            {"type": "function", "function": {"name": "get_weather", "arguments": {}}}]},
                        {"role": "tool", "content": "4 degrees"}],
             "tools": [{"name": "get_weather", "parameters": {"type": "object", "properties": {}}}]}]
    loaded = load_records(write_jsonl(tmp_path / "p.jsonl", rows))
    assert (loaded.source_shape, loaded.shape, loaded.unused_columns) == ("prompt", "prompt", ["id"])
    assert loaded.rows[0] == {"prompt": "What is 2 + 2?"}
    assert loaded.rows[1]["tools"][0]["type"] == "function"  # LLaMA-Factory's bare schema wrapped, as elsewhere
    assert loaded.rows[2]["prompt"][-1]["role"] == "tool"  # a prompt may end at a tool's result: the model answers
    from tunesmith.data.shapes import as_conversation

    schemas = [{"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}]
    [text_with_tools] = load_records(write_jsonl(tmp_path / "t.jsonl", [{"prompt": "Time?", "tools": schemas}])).rows
    assert as_conversation(text_with_tools) == {"prompt": [{"role": "user", "content": "Time?"}], "tools": schemas}
    # a prompt that ends with the answer, an empty user turn: refused by file and line
    for bad, message in (
            ({"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
             r"line 1: prompt\[1\]: a prompt ends with the turn the model answers"),
            ({"prompt": [{"role": "user", "content": "  "}]}, r"line 1: prompt\[0\] is an empty user turn"),
            ({"prompt": ""}, r"line 1: 'prompt' must be a non-empty string")):
        with pytest.raises(DataError, match=message):
            load_records(write_jsonl(tmp_path / "bad.jsonl", [bad]))


def test_supervised_fine_tuning_refuses_prompts_and_names_the_fix(tmp_path):
    path = write_jsonl(tmp_path / "questions.jsonl", [{"prompt": "What is 2 + 2?", "answer": "4"}] * 3)
    with pytest.raises(DataError) as caught:
        load_rows(path, ("messages", "prompt_completion"), "supervised fine-tuning")
    assert "holds prompt rows" in caught.value.message
    assert "method.kind grpo" in caught.value.hint and "data.columns.answer=completion" in caught.value.hint
    # mapped as the hint says, they are prompt-completion rows
    assert load_rows(path, ("prompt_completion",), "sft", columns={"answer": "completion"}).shape == "prompt_completion"


def test_a_conversation_without_its_answer_points_at_the_prompt_shape(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": "Hi"}]}])
    with pytest.raises(DataError) as caught:
        load_records(path)
    assert "last message must be a non-empty assistant turn" in caught.value.message
    assert '{"prompt": [turns ending with the user' in caught.value.hint


def test_a_prompt_previews_as_the_generation_prompt_with_nothing_trained(tokenizer_dir):
    from transformers import AutoTokenizer

    from tunesmith.data.preview import preview_rows
    from tunesmith.data.shapes import as_conversation

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    row = as_conversation({"prompt": "What is 2 + 2?"})
    preview = preview_rows(tokenizer, [row], 64)
    [example] = preview.examples
    rendered = "".join(token.text for token in example.tokens)
    expected = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}], tokenize=False,
                                             add_generation_prompt=True)
    assert rendered == expected and example.drop_reason is None
    assert not any(token.loss for token in example.tokens)
    assert not [w for w in preview.warnings if "no answer token" in w or "plain-text prompt" in w]


def grpo_prompt_recipe(root: Path, model_dir: Path, **method: Any):
    """test_grpo's tiny recipe on 16 training and 4 held-out prompts without answers, rewarded by a format regex
    and a user function, 2 steps."""
    from tests.test_grpo import grpo_recipe

    (root / "prompt_rewards.py").write_text(SHORT_ANSWER, encoding="utf-8")
    data = root / "prompts"
    write_jsonl(data / "train.jsonl", prompt_rows(16))
    write_jsonl(data / "eval.jsonl", prompt_rows(6, offset=100))
    rewards = [{"name": "regex", "pattern": r"\s*-?\d+\s*"}, {"name": "prompt_rewards.py:short_answer", "weight": 0.5}]
    return grpo_recipe(root, model_dir, source=data, method={"beta": 0.0, "rewards": rewards, **method},
                       eval_section={"probes": False, "max_examples": 6, "batch_size": 6}, max_steps=2)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_model_dir) -> dict[str, Any]:
    """One tiny GRPO run on prompts alone, then its eval."""
    from tunesmith.eval.evaluate import run_eval
    from tunesmith.train import run_training

    root = tmp_path_factory.mktemp("grpo-prompts")
    recipe = grpo_prompt_recipe(root, tiny_model_dir)
    run = create_run(recipe, root / "runs")
    run_training(recipe, run)
    path = run_eval(recipe, run)
    return {"run": run, "recipe": recipe, "results": json.loads(path.read_text())}


def test_grpo_trains_on_prompts_alone(evaluated):
    run = evaluated["run"]
    data = json.loads((run.path / "data.json").read_text())
    assert data["shape"] == "prompt" and data["train_rows"] == 16
    steps = [r for r in run.read_metrics() if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for record in steps:  # TRL's weighted sum of the recipe's two reference-free rewards
        expected = record["rewards/regex/mean"] + 0.5 * record["rewards/short_answer/mean"]
        assert record["reward"] == pytest.approx(expected, abs=1e-4)
    assert (run.adapter_dir / "adapter_model.safetensors").is_file()
    saved = run.eval_rows()
    assert saved and all(row["prompt"][-1]["role"] == "user" for row in saved)  # prompts, as turns


def test_eval_scores_prompts_by_the_runs_own_rewards(evaluated):
    results = evaluated["results"]
    assert results["metrics"] == [] and results["metrics_chosen"]["kind"] == "prompts"
    assert "loss" not in results["tuned"]  # no reference answer: nothing to measure a loss on
    assert results["max_new_tokens"]["value"] == 8  # method.max_completion_length, the length GRPO sampled
    rewards = results["rewards"]
    assert rewards["weights"] == {"reward/regex": 1.0, "reward/short_answer": 0.5}
    pattern = re.compile(r"\s*-?\d+\s*")
    for variant in ("base", "tuned"):  # recomputed from the answers eval shows, as the rewards define them
        answers = [sample[variant] for sample in results["samples"]]
        regex = [float(pattern.fullmatch(answer) is not None) for answer in answers]
        short = [float(len(answer.split()) <= 3) for answer in answers]
        assert rewards[variant]["reward/regex"] == pytest.approx(sum(regex) / len(regex), abs=1e-4)
        assert rewards[variant]["reward"] == pytest.approx((sum(regex) + 0.5 * sum(short)) / len(regex), abs=1e-4)
    assert set(rewards["comparison"]) == {"reward", "reward/regex", "reward/short_answer"}
    assert rewards["comparison"]["reward"]["ci95"] is not None
    assert all(sample["reference"] == "" and sample["prompt"] for sample in results["samples"])


def test_the_rewards_table_reads_the_block(evaluated):
    from tunesmith.eval.add_ons import add_on_tables
    from tunesmith.results import EvalResults

    [table] = add_on_tables(EvalResults.model_validate(evaluated["results"]))
    assert table.title == "GRPO rewards on the held-out answers"
    assert [row[0] for row in table.rows] == ["reward", "reward/regex", "reward/short_answer"]
    assert "1 x regex + 0.5 x short_answer" in table.note


def test_rewards_that_need_answers_are_refused_on_prompts_before_the_model_loads(tmp_path):
    """The model source does not exist: the refusal comes first, from the recipe and data alone."""
    from tunesmith.train import run_training

    recipe = grpo_prompt_recipe(tmp_path, tmp_path / "no-such-model",
                                rewards=[{"name": "exact_match"}, {"name": "regex", "pattern": r"\d+"}])
    with pytest.raises(DataError) as caught:
        run_training(recipe, create_run(recipe, tmp_path / "runs"))
    assert "exact_match" in caught.value.message and "prompts without answers" in caught.value.message
    assert "data.columns.answer=completion" in caught.value.hint


@pytest.mark.parametrize("eval_section", [{"metrics": ["exact_match", "regex"], "regex": r"\d+"},
                                          {"task_metric": "exact_match"}])
def test_eval_metrics_that_need_answers_are_refused_on_prompts_before_training(tmp_path, eval_section):
    from tunesmith.train import run_training

    recipe = grpo_prompt_recipe(tmp_path, tmp_path / "no-such-model")
    recipe = recipe.model_copy(update={"eval": recipe.eval.model_copy(update=eval_section)})
    with pytest.raises(DataError, match=r"asks for exact_match, which need the reference answer"):
        run_training(recipe, create_run(recipe, tmp_path / "runs"))


def test_doctor_says_the_same_before_training(tmp_path):
    from tunesmith.doctor.recipe import data_checks, metric_checks

    recipe = grpo_prompt_recipe(tmp_path, tmp_path / "no-such-model", rewards=[{"name": "numeric_match"}])
    recipe = recipe.model_copy(update={"eval": recipe.eval.model_copy(update={"metrics": ["chrf"]})})
    _, rows = data_checks(recipe)
    checks = metric_checks(recipe, rows["train"], rows["eval"])
    assert [(check.name, check.status) for check in checks] == [("GRPO rewards", "fail"), ("eval metrics", "fail")]
    assert "numeric_match" in checks[0].detail and "chrf" in checks[1].detail
    fine = grpo_prompt_recipe(tmp_path, tmp_path / "no-such-model")
    assert metric_checks(fine, rows["train"], rows["eval"]) == []


def test_checkpoint_scoring_says_it_needs_answers(evaluated):
    from tunesmith.eval.checkpoints import score_checkpoints

    with pytest.raises(TunesmithError, match="prompts without answers"):
        score_checkpoints(evaluated["recipe"], evaluated["run"])


def test_a_user_reward_with_a_prompt_parameter_is_given_the_question(tmp_path):
    """TRL hands rewards the prompt as turns; a user function that names `prompt` gets the question's text, one
    without it is called as before."""
    from tunesmith.config import RewardSpec
    from tunesmith.train.rewards import build_rewards

    (tmp_path / "check.py").write_text(
        "def echo_len(completion, reference, prompt):\n    return float(len(prompt))\n"
        "def plain(completion, reference):\n    return float(len(completion))\n", encoding="utf-8")
    rewards, _ = build_rewards([RewardSpec(name="check.py:echo_len"), RewardSpec(name="check.py:plain")], tmp_path)
    prompts = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}],
               "Add 1 and 2."]
    completions = [[{"role": "assistant", "content": "4"}], "3!"]
    called = [reward(prompts=prompts, completions=completions, completion_ids=[[1], [2, 3]]) for reward in rewards]
    assert called == [[float(len("What is 2 + 2?")), float(len("Add 1 and 2."))], [1.0, 2.0]]


def test_the_bundled_arithmetic_reward_checks_the_answer_from_the_prompt():
    from tests.conftest import REPO
    from tunesmith.config import load_recipe
    from tunesmith.train.rewards import build_rewards

    recipe = load_recipe(REPO / "recipes" / "grpo_prompts.yaml")
    right = build_rewards(recipe.method.rewards, Path(recipe.base_dir))[0][0]
    prompts = [json.loads(line)["prompt"] for line in
               (REPO / "examples" / "data" / "number_prompts" / "train.jsonl").read_text().splitlines()]
    results = [eval(re.search(r"What is (.+)\?", prompt)[1]) for prompt in prompts]  # our own sums
    ids = [[1]] * len(prompts)
    assert right(prompts=prompts, completions=[str(n) for n in results], completion_ids=ids) == [1.0] * len(prompts)
    assert right(prompts=prompts, completions=[f"{n + 1}" for n in results], completion_ids=ids) == [0.0] * len(prompts)
    worded = {"Subtract 5 from 40.": "35", "Take 3 away from 10.": "10 - 3 = 7",
              "What is the product of 6 and 9?": "6 x 9 = 54", "Add 12 and 30.": "The sum is 42.",
              "What is the sum of 8 and 9?": "17"}
    assert right(prompts=list(worded), completions=list(worded.values()), completion_ids=[[1]] * 5) == [1.0] * 5
    assert right(prompts=["Subtract 5 from 40."], completions=["45"], completion_ids=[[1]]) == [0.0]


def test_one_answer_to_most_prompts_is_flagged_as_reward_hacking():
    from tunesmith.eval.grpo_rewards import same_answer

    base = [f"To solve this, {i} ..." for i in range(10)]
    assert same_answer(["1"] * 6 + ["2", "3", "4", "5"], base) == {"answer": "1", "count": 6, "of": 10}
    assert same_answer(["1"] * 4 + [str(i) for i in range(2, 8)], base) is None  # under half: not flagged
    assert same_answer(["yes"] * 8 + ["no"] * 2, ["yes"] * 7 + ["no"] * 3) is None  # the base answers alike too


def test_the_model_card_shows_the_reward_where_the_loss_says_nothing(evaluated):
    from tunesmith.card import write_model_card

    card = write_model_card(evaluated["run"]).read_text(encoding="utf-8")
    rewards = [record["reward"] for record in evaluated["run"].read_metrics() if "reward" in record]
    quarter = max(1, len(rewards) // 4)  # one step's mean over a few prompts is noise: a quarter of them each
    first, final = (f"{sum(part) / len(part):.4g}" for part in (rewards[:quarter], rewards[-quarter:]))
    span = "step" if quarter == 1 else f"{quarter} steps"
    assert (f"- mean reward of the sampled completions, first and last {span} of {len(rewards)} logged: {first} → "
            f"{final} in") in card
    assert "- loss:" not in card and "`plots/rewards.png`" in card
    assert "prompts without answers: the run's GRPO rewards score the answers" in card
    assert "### GRPO rewards on the held-out answers" in card and "| reward/regex |" in card


def test_baselines_need_answers_and_say_so_before_a_model_loads(evaluated):
    from tunesmith.eval.evaluate import run_eval

    with pytest.raises(TunesmithError, match="prompts without answers") as caught:
        run_eval(evaluated["recipe"], evaluated["run"], baselines=["zero_shot", "few_shot"])
    assert "Baselines zero_shot, few_shot" in caught.value.message and "data.eval" in caught.value.hint


def test_a_run_whose_gradient_was_always_zero_says_it_learnt_nothing(evaluated):
    from tunesmith.train.grpo import learning_signal_warnings

    method = evaluated["recipe"].method
    flat = [{"frac_reward_zero_std": 1.0, "grad_norm": 0.0, "reward": reward} for reward in (0.2, 0.7)]
    assert any("adapter did not change" in warning for warning in learning_signal_warnings(flat, method))
    moving = [{**row, "grad_norm": 0.3} for row in flat]
    assert not any("adapter did not change" in warning for warning in learning_signal_warnings(moving, method))


def test_runs_list_shows_the_reward_where_no_metric_scored_the_prompts(evaluated):
    from tunesmith.runs import run_summary

    listed = run_summary(evaluated["run"])
    rewards = evaluated["results"]["rewards"]
    assert (listed["metric"], listed["base"], listed["tuned"]) == ("reward", rewards["base"]["reward"],
                                                                    rewards["tuned"]["reward"])


def test_doctor_loads_each_reward_as_train_would(tmp_path):
    from tunesmith.doctor.recipe import data_checks, metric_checks

    (tmp_path / "mine.py").write_text("def one_arg(text):\n    return 1.0\n", encoding="utf-8")
    (tmp_path / "schema.json").write_text("not json", encoding="utf-8")
    recipe = grpo_prompt_recipe(tmp_path, tmp_path / "no-such-model", rewards=[
        {"name": "mine.py:one_arg"}, {"name": "mine.py:missing"}, {"name": "json_schema", "json_schema": "schema.json"},
        {"name": "reward_model", "path": "runs/nope"}])
    recipe = recipe.model_copy(update={"eval": recipe.eval.model_copy(update={"metrics": ["mine.py:gone"]})})
    _, rows = data_checks(recipe)
    details = [(check.name, check.detail) for check in metric_checks(recipe, rows["train"], rows["eval"])]
    assert [name for name, _ in details] == ["GRPO rewards"] * 4 + ["eval metrics"]
    for (_, detail), said in zip(details, ("takes (text)", "no function 'missing'", "schema.json",
                                           "runs/nope does not exist", "no function 'gone'"), strict=True):
        assert said in detail, detail


def test_doctor_describes_prompt_rows_without_speaking_of_answers(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer

    from tunesmith.data.shapes import as_conversation
    from tunesmith.doctor.recipe import preview_check

    recipe = grpo_prompt_recipe(tmp_path, tmp_path / "no-such-model")
    rows = [as_conversation(row) for row in prompt_rows(4)]
    check = preview_check(AutoTokenizer.from_pretrained(tokenizer_dir), recipe, rows, 512)
    assert check.status == "pass" and "prompts without answers, each ending at the generation prompt" in check.detail


def test_a_reward_model_path_written_from_the_current_folder_is_named_as_the_recipe_must_write_it(tmp_path,
                                                                                                  monkeypatch):
    """Runs are made under ./runs, but a recipe's paths are relative to the recipe's folder: `runs/reward-1` in a
    recipe kept in recipes/ is looked for in recipes/runs/. The refusal says which path to write."""
    from tunesmith.config import RewardSpec
    from tunesmith.doctor.recipe import check_reward_loads

    (tmp_path / "runs" / "reward-1").mkdir(parents=True)
    (tmp_path / "recipes").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TunesmithError, match=r"runs/reward-1 exists from the current folder: write it as "
                                             r"\.\./runs/reward-1"):
        check_reward_loads(RewardSpec(name="reward_model", path="runs/reward-1"), tmp_path / "recipes")
    with pytest.raises(TunesmithError) as refused:
        check_reward_loads(RewardSpec(name="reward_model", path="runs/reward-2"), tmp_path / "recipes")
    assert "current folder" not in str(refused.value)
