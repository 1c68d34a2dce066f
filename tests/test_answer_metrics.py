"""Metrics that fit the user's answers: what the answers look like (json / labels / free text), the metrics
`eval.task_metric: auto` picks from that, label_accuracy with its confusion matrix, and the refusal of JSON
metrics on answers that are not JSON, before training. Hand-made rows; no model is loaded."""

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tunesmith.config import EvalSection, load_recipe, validate_recipe
from tunesmith.data import Splits, fingerprint, load_splits
from tunesmith.data.answers import (
    AnswerSummary,
    bare_input_warnings,
    check_metrics_fit_answers,
    classify_answers,
    default_metrics,
)
from tunesmith.errors import DataError, TunesmithError
from tunesmith.eval.evaluate import add_scores, choose_metrics
from tunesmith.eval.html_report import render_report
from tunesmith.runs import Run
from tunesmith.scoring import aggregate, build_scorer, label_report, score_columns

REPO = Path(__file__).resolve().parents[1]
QUEUES = ["billing", "login", "refund", "shipping"]


def chat(answer: str, question: str = "q?") -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def label_rows(per_label: int = 5) -> list[dict]:
    return [chat(label, f"ticket {i} about {label}") for label in QUEUES for i in range(per_label)]


# --- what the answers look like ------------------------------------------------------------------------------

def test_json_objects_are_json():
    rows = [chat(json.dumps({"item": "pen", "qty": n})) for n in range(30)]
    summary = classify_answers(rows)
    assert (summary.kind, summary.rows, summary.json_objects) == ("json", 30, 30)
    assert summary.reason == "all 30 answers are JSON objects"


def test_json_arrays_numbers_and_one_stray_answer_are_not_json():
    arrays = classify_answers([chat(json.dumps([n, n + 1])) for n in range(30)])
    assert arrays.kind == "short" and arrays.json_values == 30 and arrays.json_objects == 0
    numbers = classify_answers([chat(str(n % 3)) for n in range(30)])  # JSON values, but a label set
    assert numbers.kind == "labels" and numbers.labels == ["0", "1", "2"]
    mostly = classify_answers([chat(json.dumps({"n": n, "note": "a longer object than a short value"}))
                               for n in range(29)] + [chat("Sorry, no idea.")])
    assert mostly.kind == "free_text" and mostly.json_objects == 29


def test_a_small_closed_set_of_repeated_short_answers_is_labels():
    summary = classify_answers(label_rows())
    assert summary.kind == "labels"
    assert summary.labels == QUEUES and summary.counts == dict.fromkeys(QUEUES, 5)
    assert summary.reason == "answers take 4 distinct values over 20 rows"


@pytest.mark.parametrize(("answers", "why"), [
    (["The capital of France is Paris.", "Water boils at 100 degrees Celsius."], "too few repeats"),
    ([f"this is answer number {n} of many" for n in range(25)] * 4, "more than 20"),
    (["A long answer that keeps going well past one short line of text, " * 2, "Another one."] * 10,
     "longer than one short line"),
])
def test_distinct_long_or_unrepeated_answers_are_free_text(answers, why):
    summary = classify_answers([chat(answer) for answer in answers])
    assert summary.kind == "free_text" and why in summary.reason
    assert summary.labels == [] and summary.counts == {}


def test_answers_come_from_the_last_assistant_turn_and_other_shapes():
    multi_turn = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "not this"},
                               {"role": "user", "content": "b"}, {"role": "assistant", "content": " yes "}]}
    no_answer = {"messages": [{"role": "user", "content": "only a question"}]}
    summary = classify_answers([multi_turn] * 6 + [no_answer] + [{"prompt": "p", "completion": "no"}] * 6)
    assert summary.kind == "labels" and summary.rows == 12 and summary.labels == ["no", "yes"]
    assert classify_answers([no_answer]).kind == "free_text" and classify_answers([]).rows == 0


@pytest.mark.parametrize("answers", [
    [f"{n * 2.54:.2f} cm" for n in range(1, 31)],  # unit conversions
    [f"${n * 3 + 0.99}" for n in range(30)] + ["1,024", "-7", "15%", "98.6 °F", "3e-4", "60 km/h"],  # assorted
])
def test_answers_that_are_all_numbers_are_scored_by_the_number_not_by_character_overlap(answers):
    summary = classify_answers([chat(answer) for answer in answers])
    assert summary.kind == "numbers" and summary.numbers == len(answers)
    assert summary.reason == f"all {len(answers)} answers are numbers ({len(set(answers))} distinct values)"
    assert default_metrics("numbers") == ["loss", "perplexity", "numeric_match", "exact_match"]
    one_off = classify_answers([chat(answer) for answer in [*answers, "about twelve centimetres"]])
    assert one_off.kind == "short" and one_off.numbers == len(answers)  # not all numbers: short values


def test_short_values_of_one_shape_are_scored_exactly_and_give_constrained_decoding_their_regex():
    """ISO dates pulled out of sentences were free text, scored by chrF: `2019-03-03` got 0.86 of `2019-03-06`, the
    headline read 0.78 where exact match was 0.55, and constrained decoding had "no structure to hold to"."""
    import re

    from tunesmith.data.constraint import infer_constraint

    dates = [f"20{n % 30:02d}-{n % 12 + 1:02d}-{n % 28 + 1:02d}" for n in range(40)]
    summary = classify_answers([chat(date, f"When? It was on day {n}.") for n, date in enumerate(dates)])
    assert (summary.kind, summary.pattern) == ("short", r"\d{4}-\d{2}-\d{2}")
    assert default_metrics("short")[2] == "exact_match"  # the headline: the value is right or it is not
    assert all(re.fullmatch(summary.pattern, date) for date in dates)
    constraint = infer_constraint([chat(date) for date in dates])
    assert (constraint.kind, constraint.spec) == ("regex", summary.pattern)
    assert constraint.satisfied_by("1999-12-31") and not constraint.satisfied_by("31/12/1999")
    names = classify_answers([chat(name) for name in ["Paris", "Oslo", "New Delhi", "Lima"] * 2])
    assert names.kind == "short" and names.pattern is None  # short values of several shapes: no regex
    with pytest.raises(TunesmithError, match="short values of no one shape"):
        infer_constraint([chat(name) for name in ["Paris", "Oslo", "New Delhi", "Lima", "Rome", "Kyiv"] * 1])


@pytest.mark.parametrize(("prediction", "reference", "expected"), [
    ("42", "42", 1.0), ("The answer is 1,024.", "1024", 1.0), ("12.70 cm", "12.7 cm", 1.0),
    ("12.7 in", "12.7 cm", 1.0),  # the number is right; exact_match tells the units apart
    ("24", "42", 0.0), ("First 3, then 5", "3", 0.0),  # the last number counts (GSM8K's flexible extract)
    ("no idea", "4", 0.0), ("-7", "7", 0.0), ("3e-4", "0.0003", 1.0),
])
def test_numeric_match_compares_the_last_number_of_the_answer(prediction, reference, expected):
    scores = build_scorer(["numeric_match", "chrf"], None, None, REPO)(prediction, reference)
    assert scores["numeric_match"] == expected
    if (prediction, reference) == ("24", "42"):
        assert scores["chrf"] > 0  # the credit character overlap gives a wrong number


def test_default_metrics_per_kind_and_auto_resolves_them():
    assert default_metrics("json") == ["loss", "perplexity", "json_fields", "json_valid"]
    assert default_metrics("labels") == ["loss", "perplexity", "exact_match", "label_accuracy"]
    assert default_metrics("free_text") == ["loss", "perplexity", "chrf", "rouge_l"]
    section = EvalSection()
    assert section.task_metric == "auto" and section.chosen_metrics("free_text") == default_metrics("free_text")
    assert EvalSection(metrics=["contains"]).chosen_metrics("labels") == ["contains"]  # explicit wins


def test_fingerprint_records_the_answers_kind_for_data_json():
    record = fingerprint(Splits(train=label_rows(), eval=[chat("billing")], source={"train": "t.jsonl"}))
    assert record["answers"]["kind"] == "labels" and record["answers"]["labels"] == QUEUES
    assert AnswerSummary.model_validate(json.loads(json.dumps(record["answers"]))).reason.startswith("answers take 4")


# --- label_accuracy ------------------------------------------------------------------------------------------

# reference, answer: billing 2/3 right (one called refund), login 1/2 (one answered in prose), refund 1/1
PAIRS = [("billing", "billing"), ("billing", "Billing."), ("billing", "refund"),
         ("login", "login"), ("login", "I think it is a login problem"), ("refund", '"refund"')]


def test_label_accuracy_per_label_and_confusion_matrix():
    scorer = build_scorer(["exact_match", "label_accuracy"], None, None, base_dir=None)
    scores = [scorer(answer, reference) for reference, answer in PAIRS]
    summary = aggregate(scores)
    assert summary["label_accuracy"] == round(4 / 6, 4) and summary["exact_match"] == round(2 / 6, 4)
    assert summary["label/billing"] == round(2 / 3, 4) and summary["label/login"] == 0.5
    assert summary["label/refund"] == 1.0
    columns = score_columns(scores)  # per-example floats only: the paired comparison reads these
    assert columns["label_accuracy"] == [1.0, 1.0, 0.0, 1.0, 0.0, 1.0] and "label" not in columns
    report = label_report({"tuned": scores}, labels=["billing", "login", "refund", "shipping"])
    assert report["labels"] == ["billing", "login", "refund", "shipping"]
    confusion = report["confusion"]["tuned"]
    assert confusion["billing"] == {"billing": 2, "login": 0, "refund": 1, "shipping": 0, "(other)": 0}
    assert confusion["login"] == {"billing": 0, "login": 1, "refund": 0, "shipping": 0, "(other)": 1}
    assert confusion["refund"]["refund"] == 1 and "shipping" not in confusion  # no eval row says shipping
    assert report["per_label"]["tuned"]["billing"] == {"examples": 3, "correct": 2, "accuracy": 0.6667}


def test_eval_results_and_html_report_carry_the_label_table_and_heatmap():
    scorer = build_scorer(["label_accuracy"], None, None, base_dir=None)
    references = [reference for reference, _ in PAIRS]
    outputs = {"base": ["refund"] * len(PAIRS), "tuned": [answer for _, answer in PAIRS]}
    results = {"examples": len(PAIRS), "task_metric": "auto", "base": {"loss": 2.0, "seconds": 1.0},
               "tuned": {"loss": 1.0, "seconds": 1.0},
               "metrics_chosen": {"metrics": ["loss", "label_accuracy"], "by": "eval.task_metric: auto",
                                  "kind": "labels", "reason": "answers take 3 distinct values over 60 rows",
                                  "from": "training answers"}}
    add_scores(results, outputs, references, scorer, labels=["billing", "login", "refund"])
    assert results["comparison"]["label_accuracy"]["delta"] == round(4 / 6 - 1 / 6, 4)
    assert results["label_accuracy"]["confusion"]["base"]["billing"]["refund"] == 3
    page = render_report(results, None)
    HTMLParser().feed(page)
    assert "Accuracy per label" in page and "Confusion matrix, tuned" in page and "Confusion matrix, base" in page
    assert "answers take 3 distinct values over 60 rows" in page
    tuned_matrix = page.split("Confusion matrix, tuned")[1].split("</table>")[0]
    assert "<th>(other)</th>" in tuned_matrix and "rgba(46,160,67,0.50)'>2</td>" in tuned_matrix  # 2 of 3 right
    per_label = page.split("Accuracy per label")[1].split("</table>")[0]
    assert "class='better'" not in per_label and "fewer than 5 held-out rows are not coloured" in page  # 2-3 rows each
    from tunesmith.results import EvalResults

    titled = EvalResults.model_validate(results)
    assert titled.metric_title("label/billing") == "label/billing (3 rows)" and titled.metric_title("loss") == "loss"


def test_json_fields_on_a_reference_that_is_not_json_is_a_user_error():
    scorer = build_scorer(["json_fields"], None, None, base_dir=None)
    with pytest.raises(TunesmithError, match="not one: 'billing'"):
        scorer('{"a": 1}', "billing")


# --- refused before training ---------------------------------------------------------------------------------

def test_json_metrics_on_label_answers_are_refused_with_the_fix():
    answers = classify_answers(label_rows())
    with pytest.raises(DataError) as caught:
        check_metrics_fit_answers(EvalSection(task_metric="json_fields"), answers)
    message = str(caught.value)  # the message and its hint
    assert "eval.task_metric: json_fields asks for json_fields" in message
    assert "0 of 20 are JSON objects" in message and "for example 'billing'" in message
    assert "eval.task_metric: auto" in message and "eval.metrics: [exact_match, label_accuracy]" in message
    with pytest.raises(DataError, match=r"eval\.metrics asks for json_valid, json_schema"):
        check_metrics_fit_answers(EvalSection(metrics=["json_valid", "json_schema"], json_schema="s.json"), answers)
    check_metrics_fit_answers(EvalSection(), answers)  # auto picks metrics that fit


def test_json_valid_accepts_any_json_but_json_fields_needs_objects():
    arrays = classify_answers([chat(json.dumps([n])) for n in range(30)])
    check_metrics_fit_answers(EvalSection(metrics=["json_valid"]), arrays)
    with pytest.raises(DataError, match="not all JSON objects"):
        check_metrics_fit_answers(EvalSection(metrics=["json_fields"]), arrays)


def test_prepare_training_refuses_before_loading_the_tokenizer_or_model(tmp_path, monkeypatch):
    from tunesmith.train import common

    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in label_rows()))
    recipe = validate_recipe({"data": {"train": str(tmp_path / "train.jsonl")}, "eval": {"task_metric": "json_fields"}})
    monkeypatch.setattr(common, "base_the_run_started_on", lambda run, recipe: tmp_path)

    def must_not_load(*args, **kwargs):
        raise AssertionError("loaded before the metric check")

    monkeypatch.setattr(common, "load_tokenizer", must_not_load)
    monkeypatch.setattr(common, "check_targets_fit_model", must_not_load)
    with pytest.raises(DataError, match=r"eval\.task_metric: json_fields"):
        common.prepare_training(recipe, Run(tmp_path / "run"), accept=("messages",), purpose="supervised fine-tuning")


# --- eval reads the kind from the run's data.json -----------------------------------------------------------

def test_eval_takes_the_kind_from_data_json_and_falls_back_to_the_eval_rows(tmp_path):
    recipe = validate_recipe({"data": {"train": "t.jsonl"}})
    run = Run(tmp_path)
    free_rows = [chat(f"a sentence number {n} with words") for n in range(30)]
    (tmp_path / "data.json").write_text(json.dumps({"answers": classify_answers(label_rows()).model_dump()}))
    answers, choice = choose_metrics(recipe, run, free_rows)  # data.json wins over the eval rows
    assert answers.labels == QUEUES
    assert choice == {"metrics": ["loss", "perplexity", "exact_match", "label_accuracy"],
                      "by": "eval.task_metric: auto", "kind": "labels",
                      "reason": "answers take 4 distinct values over 20 rows", "from": "training answers"}
    (tmp_path / "data.json").write_text(json.dumps({"train_rows": 30}))  # a run from before `answers`
    _, choice = choose_metrics(recipe, run, free_rows)
    assert choice["kind"] == "free_text" and choice["from"] == "eval answers"
    assert choice["metrics"] == ["loss", "perplexity", "chrf", "rouge_l"]
    with pytest.raises(DataError, match="json_fields"):
        choose_metrics(validate_recipe({"data": {"train": "t.jsonl"}, "eval": {"task_metric": "json_fields"}}),
                       run, free_rows)


# --- the bundled classification dataset ----------------------------------------------------------------------

def test_bundled_tickets_recipe_is_a_label_task_that_auto_scores_per_label():
    recipe = load_recipe(REPO / "recipes" / "tickets.yaml")
    assert recipe.eval.metrics == [] and recipe.eval.task_metric == "auto"
    splits = load_splits(recipe)
    assert len(splits.train) >= 400 and len(splits.eval) >= 100
    assert splits.cleaning["train_eval_overlap"]["removed"] == 0
    answers = fingerprint(splits)["answers"]
    assert answers["kind"] == "labels" and len(answers["labels"]) == 8
    assert recipe.eval.chosen_metrics(answers["kind"]) == default_metrics("labels")
    assert classify_answers(splits.eval).labels == answers["labels"]  # every label is held out too


def test_train_then_eval_on_label_data_picks_label_metrics_from_data_json(tmp_path, tiny_model_dir):
    """The real path on the tiny llama (2 steps): data.json records the kind, eval reads it from there."""
    from tests.conftest import TINY_RECIPE
    from tunesmith.eval import run_eval
    from tunesmith.runs import create_run
    from tunesmith.train import run_training

    (tmp_path / "data").mkdir()
    for name, count in (("train.jsonl", 8), ("eval.jsonl", 2)):
        rows = [chat(label, f"{name} ticket {i} about {label}") for label in QUEUES for i in range(count)]
        (tmp_path / "data" / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "recipe.yaml").write_text(TINY_RECIPE.format(model_dir=tiny_model_dir))
    recipe = load_recipe(tmp_path / "recipe.yaml", ["training.max_steps=2", "eval.max_new_tokens=4"])
    run = create_run(recipe, tmp_path / "runs")
    run_training(recipe, run)
    assert json.loads((run.path / "data.json").read_text())["answers"]["labels"] == QUEUES
    results = json.loads(run_eval(recipe, run).read_text())
    assert results["metrics"] == default_metrics("labels") and results["metrics_chosen"]["from"] == "training answers"
    assert results["metrics_chosen"]["reason"] == "answers take 4 distinct values over 32 rows"
    assert set(results["label_accuracy"]["confusion"]["tuned"]) == set(QUEUES)
    assert results["label_accuracy"]["per_label"]["tuned"]["login"]["examples"] == 2
    assert {"label_accuracy", "exact_match"} <= set(results["comparison"])
    assert "Confusion matrix, tuned" in (run.path / "eval" / "report.html").read_text()


def test_eval_says_that_tool_calls_before_the_last_answer_are_not_scored(capsys):
    from tunesmith.eval.evaluate import note_unscored_tool_calls

    call = {"id": "c0", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    tool_row = {"messages": [{"role": "user", "content": "time?"},
                             {"role": "assistant", "content": "", "tool_calls": [call]},
                             {"role": "tool", "content": "12:00"}, {"role": "assistant", "content": "Noon."}]}
    assert note_unscored_tool_calls([tool_row, chat("billing")]) == 1
    assert "1 of 2 held-out rows make tool calls before their last answer" in capsys.readouterr().err
    assert note_unscored_tool_calls([chat("billing")]) == 0 and capsys.readouterr().err == ""


def test_eval_data_of_another_kind_is_scored_by_metrics_chosen_from_its_own_answers(tmp_path, tiny_model_dir):
    """`eval RUN --data labels.jsonl` on a run trained on JSON chose json_fields from the training answers, generated
    every answer, then failed on the first label reference with a hint to set what was set."""
    from tests.conftest import make_tiny_project
    from tunesmith.config import load_recipe
    from tunesmith.eval.evaluate import choose_metrics
    from tunesmith.runs import atomic_write_json, create_run

    recipe = load_recipe(make_tiny_project(tmp_path, tiny_model_dir))
    run = create_run(recipe, tmp_path / "runs")
    atomic_write_json(run.path / "data.json", {"answers": {"kind": "json", "reason": "all 40 are JSON objects"}})
    rows = [{"messages": [{"role": "user", "content": f"review {i}"}, {"role": "assistant", "content": label}]}
            for i, label in enumerate(["positive", "negative", "neutral"] * 4)]
    _, trained = choose_metrics(recipe, run, rows)
    assert trained["kind"] == "json" and trained["from"] == "training answers"
    _, chosen = choose_metrics(recipe, run, rows, from_file=True)
    assert chosen["kind"] == "labels" and chosen["from"] == "--data answers" and "json_fields" not in chosen["metrics"]
    # a few rows of the trained kind keep the training answers' metrics (3 label rows are too few to be labels alone)
    atomic_write_json(run.path / "data.json", {"answers": {"kind": "labels", "reason": "4 values over 40 rows",
                                                           "labels": ["negative", "neutral", "positive", "spam"]}})
    answers, same = choose_metrics(recipe, run, rows[:3], from_file=True)
    assert same["from"] == "training answers" and "label_accuracy" in same["metrics"] and "spam" in answers.labels


# --- a classifier trained on bare inputs ---------------------------------------------------------------------

def bundled_rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (REPO / "examples" / "data" / name / "train.jsonl").open(encoding="utf-8")]


def with_prompt(rows: list[dict], edit) -> list[dict]:
    return [{"messages": [{"role": "user", "content": edit(row["messages"][0]["content"])}, row["messages"][1]]}
            for row in rows]


def test_the_bare_label_sets_are_rebuilt_by_their_generator_and_share_no_text_across_splits(tmp_path):
    from tests.conftest import load_example_generator

    load_example_generator("make_bare_labels").main(tmp_path)
    for name in ("weather", "reviews"):
        splits = {}
        for split in ("train", "eval"):
            bundled = REPO / "examples" / "data" / name / f"{split}.jsonl"
            assert (tmp_path / name / f"{split}.jsonl").read_bytes() == bundled.read_bytes(), bundled
            splits[split] = {json.loads(line)["messages"][0]["content"] for line in bundled.open(encoding="utf-8")}
        assert not splits["train"] & splits["eval"]


@pytest.mark.parametrize("name", ["weather", "reviews"])
def test_label_answers_to_bare_inputs_are_warned_of_and_an_instruction_in_the_prompt_is_not(name):
    """The bundled bare-input sets (texts alone, labels as answers) are named, with their labels and the fix; the same
    rows behind an instruction (as a shared opening, a shared ending, or naming the labels in other words each time)
    are not, nor are the bundled tickets and routing sets (instruction + label list), nor JSON answers."""
    rows = bundled_rows(name)
    labels = sorted({row["messages"][1]["content"] for row in rows})
    warned = bare_input_warnings(rows)
    assert len(warned) == 1 and f"one of {len(labels)} labels ({', '.join(labels)})" in warned[0]
    assert "in each user turn" in warned[0] and f"The {len(rows)} training prompts" in warned[0]
    assert not bare_input_warnings(with_prompt(rows, lambda text: f"Classify the text below.\nText: {text}"))
    assert not bare_input_warnings(with_prompt(rows, lambda text: f"{text}\nAnswer with the label only please."))
    phrasings = ["Is it {}?", "Pick {}.", "One of {} fits:"]
    assert not bare_input_warnings(with_prompt(rows, lambda text: phrasings[len(text) % 3].format(
        " or ".join(labels)) + " " + text))
    half = len(rows) // 2 - 1  # fewer than half instructed: still bare
    assert bare_input_warnings(with_prompt(rows[:half], lambda text: f"Classify the text below.\nText: {text}")
                               + rows[half:])
    for bundled in ("tickets", "routing", "orders"):
        assert not bare_input_warnings(bundled_rows(bundled)), bundled


def test_an_instruction_is_found_as_users_write_it_and_a_system_turn_alone_is_named():
    """A cue line after the text ("Sentiment:"), four phrasings a quarter each (FLAN-style), an instructed first
    exchange before the text (few-shot): instructed. Questions answered yes or no without saying so, and the
    instruction only in a system turn (measured to keep less than in the user turn): warned, the second saying so."""
    rows = bundled_rows("reviews")
    assert not bare_input_warnings(with_prompt(rows, lambda text: f"Review: {text}\nSentiment:"))
    phrasings = ["What is the tone here? ", "Tell me how the writer feels. ", "Judge this review. ",
                 "How was the product received? "]
    assert not bare_input_warnings(with_prompt(rows, lambda text: phrasings[len(text) % 4] + text))
    shot = [{"role": "user", "content": "Classify the sentiment of each review. Review: Great kettle."},
            {"role": "assistant", "content": "positive"}]
    assert not bare_input_warnings([{"messages": shot + row["messages"]} for row in rows])
    questions = [chat("yes" if (n % 2 == 0) == (parity == "even") else "no", f"Is {n} {parity}?")
                 for n in range(40) for parity in ("even", "odd")]
    (warned,) = bare_input_warnings(questions)
    assert "one of 2 labels (no, yes)" in warned and "system turn" not in warned
    system = [{"messages": [{"role": "system", "content": "Classify the sentiment."}, *row["messages"]]}
              for row in rows]
    (warned,) = bare_input_warnings(system)
    assert "with it in the system turn alone" in warned


def test_training_says_it_before_loading_the_model(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """prepare_training prints the warning with the others, before any weights load."""
    from tunesmith.train import common

    weather = REPO / "examples" / "data" / "weather" / "train.jsonl"
    recipe = validate_recipe({"model": {"source": str(tiny_model_dir)}, "data": {"train": str(weather)}})
    monkeypatch.setattr(common, "base_the_run_started_on", lambda run, recipe: tiny_model_dir)

    def stop(*args, **kwargs):
        raise KeyboardInterrupt("the model would load now")

    monkeypatch.setattr(common, "load_model", stop)
    with pytest.raises(KeyboardInterrupt, match="the model would load now"):
        common.prepare_training(recipe, Run(tmp_path / "run"), accept=("messages",), purpose="supervised fine-tuning")
    printed = " ".join(capsys.readouterr().err.split())
    assert "The 138 training prompts carry no instruction in the user turn" in printed  # 12 held out for eval
