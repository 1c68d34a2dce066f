"""Held-out rows that end in a tool call are scored on the call: the reference is the call written out
(`answer_text`), the answers' kind is `tool_calls`, and tool_call_match / tool_name_match read calls back from
whatever wrapper the model writes them in. Hand-made rows, plus one train-then-eval on the tiny llama."""

import json
import re

import pytest

from tunesmith.config import DataSection, load_recipe
from tunesmith.data.answers import classify_answers, default_metrics
from tunesmith.data.fallbacks import apply_fallbacks
from tunesmith.data.template import answer_text, context_text
from tunesmith.scoring import build_scorer, tool_call_match_score, tool_calls_in

WEATHER = {"name": "get_weather", "arguments": {"city": "Oslo", "days": 3}}


def call(name: str, arguments: dict | str) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def tool_row(question: str, *calls: dict, content: str = "") -> dict:
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": content, "tool_calls": list(calls)}]}


@pytest.mark.parametrize("text", [
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "days": 3}}\n</tool_call>',  # Hermes, Qwen
    '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"days": 3, "city": "Oslo"}}]',  # Mistral
    '{"name": "get_weather", "parameters": {"city": "Oslo", "days": 3.0}}',  # Llama 3.1, 3.0 == 3
    'Let me look. {"type": "function", "function": {"name": "get_weather", '
    '"arguments": "{\\"city\\": \\"Oslo\\", \\"days\\": 3}"}}',  # OpenAI's shape, arguments as a JSON string
])
def test_a_call_is_read_back_from_every_common_wrapper(text):
    assert tool_calls_in(text) == [("get_weather", {"city": "Oslo", "days": 3})]
    assert tool_call_match_score(text, answer_text(tool_row("q", call("get_weather", WEATHER["arguments"]))
                                                   ["messages"][-1])) == {"tool_call_match": 1.0,
                                                                          "tool_name_match": 1.0,
                                                                          "tool_call_decision": 1.0}


def test_text_that_holds_no_call_reads_as_no_call():
    assert tool_calls_in('It is {"sunny"} in Oslo, {not json') == []
    assert tool_calls_in('{"name": "Ada", "age": 36}') == []  # an object with a name is not a call


def test_wrong_arguments_a_missing_or_extra_call_and_a_text_answer_do_not_match():
    expected = answer_text(tool_row("q", call("get_weather", {"city": "Oslo"}), call("get_time", {"tz": "CET"}))
                           ["messages"][-1])
    swapped = ('<tool_call>{"name": "get_time", "arguments": {"tz": "CET"}}</tool_call>'
               '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>')
    assert tool_call_match_score(swapped, expected)["tool_call_match"] == 1.0  # parallel calls, in any order
    wrong_city = swapped.replace("Oslo", "Bergen")
    assert tool_call_match_score(wrong_city, expected) == {"tool_call_match": 0.0, "tool_name_match": 1.0,
                                                           "tool_call_decision": 1.0}
    one_call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    assert tool_call_match_score(one_call, expected) == {"tool_call_match": 0.0, "tool_name_match": 0.0,
                                                         "tool_call_decision": 1.0}  # called when it should
    assert tool_call_match_score(swapped + swapped, expected)["tool_call_match"] == 0.0
    assert tool_call_match_score("It is sunny in Oslo.", expected) == {"tool_call_match": 0.0, "tool_name_match": 0.0,
                                                                       "tool_call_decision": 0.0}  # did not call
    # a reference in words is matched by an answer that calls nothing, and missed by one that calls
    assert tool_call_match_score("Hello!", "Hi there.")["tool_call_match"] == 1.0
    assert tool_call_match_score(one_call, "Hi there.") == {"tool_call_match": 0.0, "tool_name_match": 0.0,
                                                            "tool_call_decision": 0.0}  # called on small talk


def test_rows_that_end_in_calls_are_tool_call_answers_in_both_tool_formats():
    rows = [tool_row(f"weather in city {i}?", call("get_weather", json.dumps({"city": f"c{i}"}))) for i in range(6)]
    rows += [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]}]
    native = classify_answers(rows)
    assert (native.kind, native.tool_calls, native.rows) == ("tool_calls", 6, 7)
    assert native.reason.startswith("the last answer of 6 of 7 rows calls tools")
    assert default_metrics("tool_calls") == ["loss", "perplexity", "tool_call_match", "tool_name_match",
                                             "tool_call_decision", "chrf"]
    hermes = [apply_fallbacks(row, DataSection(train="x", tool_format="hermes")) for row in rows]
    assert classify_answers(hermes) == native  # the Hermes text of a call is the reference text of the call
    reference = answer_text(rows[0]["messages"][-1])
    assert tool_calls_in(reference) == [("get_weather", {"city": "c0"})]


def test_the_chosen_metrics_score_each_call():
    score = build_scorer(default_metrics("tool_calls"), None, None, None)
    reference = answer_text(tool_row("q", call("get_weather", {"city": "Oslo"}))["messages"][-1])
    scores = score('<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>', reference)
    assert scores["tool_call_match"] == 1.0 and scores["tool_name_match"] == 1.0 and 0 < scores["chrf"] <= 1


def test_a_report_shows_the_turns_an_answer_follows_not_only_the_last_one():
    """A row answering after a tool's result: the sample's prompt is the question, the call and the result (it
    was the result alone); a one-question row still shows just the question."""
    row = tool_row("Weather in Oslo?", call("get_weather", {"city": "Oslo"}))
    messages = [{"role": "system", "content": "Be brief."}, *row["messages"],
                {"role": "tool", "content": '{"temp_c": 4}'}]
    assert context_text(messages) == ("user: Weather in Oslo?\n"
                                      'assistant: <tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}'
                                      '\n</tool_call>\ntool: {"temp_c": 4}')
    assert context_text(messages[:2]) == "Weather in Oslo?"


def test_train_then_eval_on_rows_ending_in_calls_scores_the_calls(tmp_path, tiny_model_dir):
    """The real path on the tiny llama (2 steps, Hermes tool format): the references are the calls, not the
    empty text of a tool-calling turn, and the answer limit leaves room to write one."""
    from tests.conftest import TINY_RECIPE
    from tunesmith.eval import run_eval
    from tunesmith.runs import create_run
    from tunesmith.train import run_training

    (tmp_path / "data").mkdir()
    for name, count in (("train.jsonl", 12), ("eval.jsonl", 3)):
        rows = [tool_row(f"{name}: weather in city {i}?", call("get_weather", {"city": f"{name}-{i}"}))
                for i in range(count)]
        (tmp_path / "data" / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "recipe.yaml").write_text(TINY_RECIPE.format(model_dir=tiny_model_dir))
    recipe = load_recipe(tmp_path / "recipe.yaml", ["training.max_steps=2", "data.tool_format=hermes",
                                                       "eval.max_new_tokens=auto"])
    run = create_run(recipe, tmp_path / "runs")
    run_training(recipe, run)
    assert json.loads((run.path / "data.json").read_text())["answers"]["kind"] == "tool_calls"
    results = json.loads(run_eval(recipe, run).read_text())
    assert results["metrics"] == default_metrics("tool_calls")
    assert {"tool_call_match", "tool_name_match"} <= set(results["comparison"])
    assert all('"name": "get_weather"' in sample["reference"] for sample in results["samples"])
    longest = re.search(r"reference answers is (\d+) tokens", results["max_new_tokens"]["why"])
    assert int(longest.group(1)) >= 20  # the call's tokens, not the 0 of an empty tool-calling turn
