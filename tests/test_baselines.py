"""Baselines beside the tuned model: few-shot examples never come from the eval rows, constrained decoding always
gives an allowed answer, the constraint is inferred from training answers (and refused from free text), and the
eval, the `baseline` command, the report and the card carry the columns and the verdict."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tests.conftest import make_tiny_project
from tunesmith.data.constraint import (
    Constraint,
    choices_constraint,
    infer_constraint,
    json_constraint,
    option_constraint,
)
from tunesmith.errors import TunesmithError
from tunesmith.eval.baselines import few_shot_pool, pick_examples, prompt_text, with_examples
from tunesmith.eval.verdict import verdict

LABELS = ["billing", "bug_report", "how_to", "refund_request"]


def chat_row(prompt: str, answer: str, system: str | None = None) -> dict:
    turns = [{"role": "system", "content": system}] if system else []
    return {"messages": [*turns, {"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


# --- few-shot examples ---------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(train_prompts=st.lists(st.sampled_from([f"ticket {i} about the app" for i in range(12)]), min_size=1,
                              max_size=30),
       eval_prompts=st.lists(st.sampled_from([f"ticket {i} about the app" for i in range(12)]), min_size=1,
                             max_size=10),
       k=st.integers(1, 6), select=st.sampled_from(["seeded", "similar"]), seed=st.integers(0, 5))
def test_few_shot_examples_never_include_an_eval_prompt(train_prompts, eval_prompts, k, select, seed):
    train = [chat_row(p, "billing") for p in train_prompts]
    held_out = [chat_row(p, "how_to", system="Sort tickets.") for p in eval_prompts]
    pool = few_shot_pool(train, held_out)
    asked = {prompt_text(row) for row in held_out}
    for row, examples in zip(held_out, pick_examples(pool, held_out, k, select, seed), strict=True):
        assert len(examples) == min(k, len(pool))
        assert not {prompt_text(example) for example in examples} & asked
        shown = with_examples(row, examples)["messages"]
        assert shown[0] == row["messages"][0] and shown[-1] == row["messages"][-1]  # system first, answer last
        assert [m["content"] for m in shown[1:-2]] == [m["content"] for e in examples for m in e["messages"]]


def test_seeded_examples_are_the_same_for_every_prompt_and_depend_on_the_seed():
    train = [chat_row(f"question number {i}", str(i)) for i in range(40)]
    rows = [chat_row("a new question", "x"), chat_row("another one", "y")]
    first, second = pick_examples(train, rows, 4, "seeded", 1)
    assert first == second
    assert pick_examples(train, rows, 4, "seeded", 1)[0] == first
    assert pick_examples(train, rows, 4, "seeded", 2)[0] != first


def test_similar_examples_share_the_most_words():
    train = [chat_row("my invoice shows a double charge", "billing"), chat_row("the app crashes on start", "bug"),
             chat_row("how do I export my data", "how_to"), chat_row("charge on my invoice is wrong", "billing")]
    rows = [chat_row("invoice charge looks wrong", "?")]
    [examples] = pick_examples(train, rows, 2, "similar", 0)
    assert {e["messages"][-1]["content"] for e in examples} == {"billing"}


# --- what the constraint is ------------------------------------------------------------------------------------


def test_labels_are_inferred_as_the_choices():
    rows = [chat_row(f"ticket {i}", LABELS[i % 4]) for i in range(40)]
    constraint = infer_constraint(rows)
    assert constraint.kind == "choices" and json.loads(constraint.spec) == sorted(LABELS)
    assert "40 training answers" in constraint.source


def test_json_answers_of_one_shape_give_a_schema_every_answer_satisfies():
    orders = Path(__file__).resolve().parents[1] / "examples/data/orders/train.jsonl"
    rows = [json.loads(line) for line in orders.read_text(encoding="utf-8").splitlines()]
    constraint = infer_constraint(rows)
    assert constraint.kind == "json_schema"
    schema = json.loads(constraint.spec)
    assert set(schema["required"]) == {"item", "qty", "size", "color", "when"}
    assert all(constraint.satisfied_by(row["messages"][-1]["content"]) for row in rows)
    assert not constraint.satisfied_by('{"item": "tote"}') and not constraint.satisfied_by("tote")


def test_mixed_json_shapes_and_free_text_are_refused_with_the_fix():
    with pytest.raises(TunesmithError, match="2 different shapes") as mixed:
        json_constraint([{"a": 1}, {"b": 2}], "test")
    assert "eval.json_schema" in str(mixed.value)
    prose = [chat_row(f"describe item {i}", f"It is a lovely thing number {i}, made by hand.") for i in range(30)]
    with pytest.raises(TunesmithError, match="free text") as free:
        infer_constraint(prose)
    assert "eval.choices" in str(free.value)


def test_bare_numbers_get_a_regex_as_long_as_the_longest_answer_and_numbers_with_units_none():
    """`-?[0-9]+` let the base write digits until max_new_tokens (15000000); the inferred pattern ends where the
    training answers do."""
    import re

    numbers = [chat_row(f"how many in box {i}?", str(answer)) for i, answer in enumerate([3, 12, -7, 40, 5, 12])]
    constraint = infer_constraint(numbers)
    assert (constraint.kind, constraint.spec) == ("regex", r"-?\d{1,3}")
    assert re.fullmatch(constraint.spec, "120") and not re.fullmatch(constraint.spec, "1200")
    decimals = [chat_row(f"price {i}?", answer) for i, answer in enumerate(["2.5", "10.25", "3", "2.5"])]
    assert infer_constraint(decimals).spec == r"\d{1,3}(\.\d{1,2})?"
    units = [chat_row(f"length {i}?", f"{i} cm") for i in range(8)]
    with pytest.raises(TunesmithError, match="numbers"):
        infer_constraint(units)


def test_option_constraint_checks_files_and_refuses_both(tmp_path):
    assert option_constraint(None, None) is None
    assert json.loads(option_constraint(None, "yes, no ,yes").spec) == ["no", "yes"]
    with pytest.raises(TunesmithError, match="both"):
        option_constraint(tmp_path / "s.json", "a,b")
    with pytest.raises(TunesmithError, match="no such file"):
        option_constraint(tmp_path / "missing.json", None)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(TunesmithError, match="not a JSON Schema object"):
        option_constraint(tmp_path / "list.json", None)


# --- constrained decoding on a random tiny model -----------------------------------------------------------------

BOUNDED_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["item", "qty", "size"],
                  "properties": {"item": {"type": "string", "maxLength": 6},
                                 "qty": {"type": "integer", "minimum": 1, "maximum": 99},
                                 "size": {"enum": ["small", "large", None]}}}
CONSTRAINTS = {
    "choices": choices_constraint(LABELS, "test"),
    "json_schema": Constraint("json_schema", json.dumps(BOUNDED_SCHEMA), "test"),
    "regex": Constraint("regex", r"[0-9]{1,3}-(yes|no)", "test"),
}


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from tunesmith.models import load_model, load_tokenizer

    return load_model(tiny_model_dir).eval(), load_tokenizer(tiny_model_dir)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompts=st.lists(st.text(alphabet="abcdefghij klmnop{}\":,0123456789", min_size=1, max_size=40), min_size=1,
                        max_size=4), kind=st.sampled_from(sorted(CONSTRAINTS)))
def test_constrained_answers_always_satisfy_the_constraint(tiny_model, prompts, kind):
    """The tiny model is untrained: unconstrained, it writes noise; constrained, every answer must be allowed."""
    import functools

    from tunesmith.eval.constrained import logits_processor
    from tunesmith.eval.decoding import generate_from_prompts, prompt_texts

    model, tokenizer = tiny_model
    constraint = CONSTRAINTS[kind]
    rows = [chat_row(prompt, "") for prompt in prompts]
    vocab = model.get_output_embeddings().weight.shape[0]
    make = functools.partial(logits_processor, constraint, tokenizer, vocab)
    generated = generate_from_prompts(model, tokenizer, prompt_texts(tokenizer, rows), 48, 3, make)
    for answer in generated.answers:
        assert constraint.satisfied_by(answer), (kind, answer)
    if kind == "regex":
        assert all(re.fullmatch(constraint.spec, a) for a in generated.answers)


# --- the verdict ----------------------------------------------------------------------------------------------


def fake_results(tuned: list[float], few_shot: list[float]) -> dict:
    n = len(tuned)
    zero = [0.0] * n
    return {"examples": n, "metrics": ["exact_match"], "task_metric": "auto",
            "tuned": {"exact_match": sum(tuned) / n, "prompt_tokens": 100.0, "seconds_per_answer": 0.1},
            "baselines": {"zero_shot": {"exact_match": 0.0},
                          "few_shot": {"exact_match": sum(few_shot) / n, "few_shot_k": 4, "prompt_tokens": 500.0,
                                       "seconds_per_answer": 0.4}},
            "per_example": {"base": {"exact_match": zero}, "tuned": {"exact_match": tuned},
                            "few_shot": {"exact_match": few_shot}}}


def test_one_row_gets_no_interval_and_no_recommendation():
    """`eval --data` of a single row showed "95% CI [+0.75, +0.75]": a bootstrap over one example is that example."""
    from tunesmith.eval.stats import compare_metric
    from tunesmith.eval.verdict import lead_cell

    single = compare_metric([0.25], [1.0])
    assert single["ci95"] is None and single["delta"] == 0.75 and single["wins"] == 1
    assert lead_cell(single) == "+0.75"
    text = verdict(fake_results([1.0], [0.0]))
    assert "one row cannot tell options apart" in text and "Evaluate on more held-out rows" in text


def test_verdict_says_train_when_nothing_cheaper_comes_close():
    text = verdict(fake_results([1.0] * 40, [0.0] * 30 + [1.0] * 10))
    assert "best is the tuned model at 1.00" in text and "fine-tuning is worth it" in text
    assert "4-shot" in text and "0.25" in text


def test_verdict_names_the_cheaper_option_within_the_interval_and_its_cost():
    tuned = [1.0] * 30 + [0.0] * 10
    few = [1.0] * 29 + [0.0] * 11
    text = verdict(fake_results(tuned, few))
    assert "cheapest option within its 95% interval is 4-shot at 0.72" in text
    assert "try it before fine-tuning" in text and "5.0× the tuned model's prompt tokens" in text


def test_verdict_on_too_few_rows_asks_for_more_instead_of_recommending_a_cheaper_option():
    text = verdict(fake_results([1.0, 1.0, 0.0, 0.0], [0.0] * 4))  # tuned 0.50, zero-shot and 4-shot 0.00
    assert "best is the tuned model at 0.50" in text and "4 rows cannot tell it from zero-shot" in text
    assert "too wide to decide on" in text and "try it before fine-tuning" not in text


def test_verdict_says_where_the_tuned_model_stands_when_a_prompt_beats_it():
    """eval RUN --baselines answers "did fine-tuning beat prompting?": when a prompt is best, the tuned model's score
    and its gap are said, even where the interval is too wide to recommend anything."""
    few = [1.0] * 9 + [0.0] * 7  # 4-shot 0.56
    tuned = [1.0] * 7 + [0.0] * 9  # tuned 0.44
    text = verdict(fake_results(tuned, few))
    assert "best is 4-shot at 0.56" in text and "The tuned model reaches 0.44 (best − it: +0.12" in text
    assert "The tuned model reaches" not in verdict(fake_results([1.0] * 40, [0.0] * 30 + [1.0] * 10))  # it is best


# --- eval, the report, the card and the baseline command on a tiny run --------------------------------------------

BASELINES_EVAL = """  baselines: [zero_shot, few_shot, constrained, few_shot_constrained]
  few_shot_k: 2
  constrain_tuned: true
"""


def tiny_recipe_with(root: Path, model_dir: Path, eval_lines: str) -> Path:
    recipe = make_tiny_project(root, model_dir, train_rows=48, eval_rows=6)
    text = recipe.read_text(encoding="utf-8").replace("eval:\n", "eval:\n" + eval_lines, 1)
    recipe.write_text(text, encoding="utf-8")
    return recipe


def test_eval_scores_every_baseline_beside_the_tuned_model(tmp_path, tiny_model_dir):
    from tunesmith.config import load_recipe
    from tunesmith.quickstart import run_pipeline
    from tunesmith.results import read_results

    recipe = load_recipe(tiny_recipe_with(tmp_path, tiny_model_dir, BASELINES_EVAL), ["training.max_steps=6"])
    run = run_pipeline(recipe, runs_dir=tmp_path / "runs")
    results = read_results(run.eval_dir / "results.json")
    assert set(results.baselines) == {"zero_shot", "few_shot", "constrained", "few_shot_constrained"}
    assert results.baselines["zero_shot"]["exact_match"] == results.base["exact_match"]
    assert results.baselines["few_shot"]["prompt_tokens"] > results.baselines["constrained"]["prompt_tokens"]
    assert results.baselines["few_shot"]["few_shot_k"] == 2
    for name in results.baselines:
        assert results.baseline_comparison[name]["field_accuracy"].ci95 is not None
        assert results.baselines[name]["seconds_per_answer"] > 0
    assert results.constraint["kind"] == "json_schema" and results.tuned_constrained
    assert results.verdict and "held-out rows" in results.verdict
    report = (run.eval_dir / "report.html").read_text(encoding="utf-8")
    assert "Do you need to fine-tune?" in report and "2-shot + constrained decoding" in report
    card = (run.path / "README.md").read_text(encoding="utf-8")
    assert "### Do you need to fine-tune?" in card and "decoded constrained" in card
    # without baselines, a constrained tuned model beside an unconstrained base was not said to be one
    from tunesmith.eval import run_eval

    alone = read_results(run_eval(load_recipe(run.recipe_file, ["eval.baselines=[]"]), run))
    assert not alone.baselines and alone.tuned_constrained and alone.constraint["kind"] == "json_schema"
    assert "decoded constrained to JSON valid against the schema" in (run.eval_dir / "report.html").read_text()


def test_baseline_command_runs_before_training(tmp_path, tiny_model_dir, monkeypatch):
    from tunesmith.cli import app

    monkeypatch.chdir(tmp_path)
    recipe = tiny_recipe_with(tmp_path, tiny_model_dir, "  few_shot_k: 2\n")
    result = CliRunner().invoke(app, ["baseline", str(recipe), "--baselines", "zero_shot,few_shot,constrained",
                                      "--json", "--runs-dir", "elsewhere"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert list(printed["baselines"]) == ["zero_shot", "few_shot", "constrained"]
    said = " ".join(result.stderr.split())  # as train says it: a verdict on 6 rows is read with that in mind
    assert "held-out rows:" in said and "Only 6 held-out row(s)" in said
    [run_dir] = (tmp_path / "elsewhere").iterdir()  # --runs-dir, as train and sweep take it
    assert (run_dir / "baseline" / "results.json").is_file() and (run_dir / "data" / "eval.jsonl").is_file()
    assert not (run_dir / "adapter").exists()
    evaluated = CliRunner().invoke(app, ["eval", str(run_dir)])  # eval on it says what it is, not "did not finish"
    assert isinstance(evaluated.exception, TunesmithError)
    assert "holds the baselines" in str(evaluated.exception) and "did not finish" not in str(evaluated.exception)


def test_constrained_baseline_on_free_text_fails_before_training(tmp_path, tiny_model_dir):
    import subprocess
    import sys

    recipe = tiny_recipe_with(tmp_path, tiny_model_dir, "  baselines: [constrained]\n")
    rows = [chat_row(f"describe item {i}", f"It is a lovely thing number {i}, made by hand.") for i in range(40)]
    (tmp_path / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    def tunesmith(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tunesmith", *args], capture_output=True, text=True, cwd=tmp_path,
                              timeout=300)

    result = tunesmith("train", str(recipe))
    assert result.returncode == 2, result.stderr
    assert "free text" in result.stderr and "eval.choices" in result.stderr and "Internal error" not in result.stderr
    assert not list(tmp_path.rglob("adapter_model.safetensors"))
    bad = tunesmith("baseline", str(recipe), "--baselines", "few_shots")
    assert bad.returncode == 2 and "few_shots" in bad.stderr


def test_default_baselines_leave_out_the_constrained_ones_on_free_text_and_say_why(tmp_path, tiny_model_dir):
    """`tunesmith baseline RECIPE` (no --baselines) on answers with no structure stopped with exit 2 and ran no
    baseline at all; it runs the unconstrained ones and records why the others were left out."""
    from tunesmith.config import load_recipe
    from tunesmith.eval.before_training import run_baselines_before_training

    recipe = tiny_recipe_with(tmp_path, tiny_model_dir, "  few_shot_k: 1\n  max_new_tokens: 4\n")
    rows = [chat_row(f"describe item {i}", f"It is a lovely thing number {i}, made by hand.") for i in range(40)]
    (tmp_path / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "data" / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]), encoding="utf-8")
    _, path = run_baselines_before_training(load_recipe(recipe), runs_dir=tmp_path / "runs")
    results = json.loads(path.read_text(encoding="utf-8"))
    assert list(results["baselines"]) == ["zero_shot", "few_shot"]
    assert set(results["left_out"]) == {"constrained", "few_shot_constrained"}
    assert "free text" in results["left_out"]["constrained"]


@pytest.mark.parametrize("method", ["dpo", "reward"])
def test_baselines_are_refused_for_runs_scored_by_likelihood_before_anything_loads(tmp_path, method):
    from tests.test_method_matrix import matrix_recipe
    from tunesmith.eval.evaluate import run_eval
    from tunesmith.runs import create_run

    recipe = matrix_recipe(tmp_path, tmp_path / "no-model-needed", method, "lora")
    run = create_run(recipe, tmp_path / "runs")
    with pytest.raises(TunesmithError, match=rf"--baselines zero_shot: .*a {method} run is scored by likelihoods"):
        run_eval(recipe, run, baselines=["zero_shot"])


def test_an_interval_over_ties_only_is_said_as_no_example_differing_not_as_zero_width_certainty():
    """48 forgetting probes both models pass: the bootstrap interval is [+0, +0], which read as a certainty that
    nothing changed; it says no example differs. An interval with wins or losses keeps its bounds."""
    from tunesmith.eval.stats import compare_metric
    from tunesmith.results import interval_text

    tied = compare_metric([1.0] * 48, [1.0] * 48)
    assert tied["ci95"] == [0.0, 0.0] and interval_text(tied, "{:+.4f}".format) == "(no example differs)"
    moved = compare_metric([1.0] * 40 + [0.0] * 8, [1.0] * 48)
    assert interval_text(moved, "{:+.4f}".format).startswith("[+0.0")
    assert interval_text({"delta": 0.5, "ci95": None}, str) == ""


def test_the_probe_verdict_names_what_played_the_base_under_against():
    from tunesmith.eval.add_ons import add_on_tables
    from tunesmith.results import EvalResults

    probes = {"base": {"probe_accuracy": 1.0}, "tuned": {"probe_accuracy": 1.0}, "comparison": {}, "count": 48,
              "margin": 0.05, "perplexity_margin": 0.1, "regression": False}
    results = {"examples": 1, "task_metric": "exact_match", "base": {}, "tuned": {}, "comparison": {},
               "probes": probes}
    alone = add_on_tables(EvalResults.model_validate(results))[0].note
    against = add_on_tables(EvalResults.model_validate({**results, "against": {"name": "run-b", "path": "/x"}}))[0]
    assert "within 0.05 of base" in alone and "within 0.05 of run-b" in against.note
