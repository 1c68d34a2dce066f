"""LLM-as-judge against a real HTTP server started in the test (an OpenAI-compatible /v1/chat/completions with
deterministic judging): score and pairwise modes, position swapping, and the errors a user can fix."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from tests.conftest import make_tiny_project
from tunesmith.config import load_recipe
from tunesmith.errors import TunesmithError
from tunesmith.eval import run_eval
from tunesmith.eval.judge import DEFAULT_RUBRIC, judge_outputs, parse_score, parse_verdict
from tunesmith.runs import create_run
from tunesmith.train import run_training

KEY = "test-key-123"


def section(block: str, name: str) -> str:
    """The text after `name:` up to the next blank line in a judge prompt."""
    return block.split(f"{name}:\n", 1)[1].split("\n\n", 1)[0] if f"{name}:\n" in block else ""


class JudgeHandler(BaseHTTPRequestHandler):
    """Scores 9 when the answer contains the reference, else 2; pairwise prefers the answer that contains it.

    `behaviour` on the server switches to a judge that always picks A, or to broken replies.
    """

    def do_GET(self):
        if self.path != "/v1/models":
            return self.reply(404, {"error": {"message": f"no route {self.path}"}})
        return self.reply(200, {"object": "list", "data": [{"id": "stub-judge", "object": "model"}]})

    def do_POST(self):
        if self.path != "/v1/chat/completions":
            return self.reply(404, {"error": {"message": f"no route {self.path}"}})
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            return self.reply(401, {"error": {"message": "invalid api key"}})
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(request)
        system, user = request["messages"][0]["content"], request["messages"][1]["content"]
        behaviour = self.server.behaviour
        if behaviour == "not-json":
            return self.send_raw(200, b"<html>proxy error</html>")
        if behaviour == "garbage" or (behaviour == "half" and "2 + 2?" in user):
            content = "I am not sure, both are fine I guess."
        elif "Verdict" in system:
            content = self.verdict(user, behaviour)
        else:
            reference, answer = section(user, "Reference answer"), section(user, "Answer")
            content = f"The answer is judged.\nScore: {9 if reference and reference in answer else 2}"
        return self.reply(200, {"id": "x", "object": "chat.completion", "model": request["model"],
                                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                             "finish_reason": "stop"}]})

    @staticmethod
    def verdict(user: str, behaviour: str) -> str:
        if behaviour == "always-a":
            return "Verdict: A"
        reference = section(user, "Reference answer")
        a, b = reference in section(user, "Answer A"), reference in section(user, "Answer B")
        return "Verdict: " + ("tie" if a == b else "A" if a else "B")

    def reply(self, status: int, body: dict) -> None:
        self.send_raw(status, json.dumps(body).encode())

    def send_raw(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def judge_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), JudgeHandler)
    server.requests, server.behaviour = [], "fair"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def judge(judge_server, monkeypatch):
    monkeypatch.setenv("TUNESMITH_TEST_JUDGE_KEY", KEY)
    judge_server.behaviour = "fair"
    judge_server.requests.clear()
    return judge_server


def settings(server, **overrides):
    values = {"url": f"http://127.0.0.1:{server.server_port}/v1", "model": "stub-judge",
              "api_key_env": "TUNESMITH_TEST_JUDGE_KEY", "mode": "score", "max_examples": None, "timeout": 10.0}
    return SimpleNamespace(**{**values, **overrides})


PROMPTS = ["Capital of France?", "2 + 2?", "Colour of the sky?", "Opposite of hot?"]
REFERENCES = ["Paris", "4", "blue", "cold"]
OUTPUTS = {"base": ["Lyon", "4", "green", "warm"], "tuned": ["It is Paris.", "4", "blue", "freezing"]}


def test_score_mode_grades_each_answer_and_compares_them(judge):
    results = judge_outputs(settings(judge), DEFAULT_RUBRIC, PROMPTS, REFERENCES, OUTPUTS)
    assert results["per_example"] == {"base": [2, 9, 2, 2], "tuned": [9, 9, 9, 2]}
    assert results["base"]["judge_score"] == 3.75 and results["tuned"]["judge_score"] == 7.25
    entry = results["comparison"]["judge_score"]
    assert (entry["wins"], entry["losses"], entry["ties"]) == (2, 0, 2) and entry["delta"] == 3.5
    assert len(judge.requests) == 8 and judge.requests[0]["model"] == "stub-judge"
    assert judge.requests[0]["messages"][0]["content"].startswith(DEFAULT_RUBRIC)


def test_pairwise_asks_both_orders_and_counts_wins(judge):
    results = judge_outputs(settings(judge, mode="pairwise"), "Be fair.", PROMPTS, REFERENCES, OUTPUTS)
    assert len(judge.requests) == 8  # every example twice, the answers swapped
    assert results["verdicts"][0] == ["B", "A"]  # tuned (B first, A after the swap) wins both times
    entry = results["comparison"]["judge_preference"]
    assert (entry["wins"], entry["losses"], entry["ties"]) == (2, 0, 2)
    assert results["tuned"]["judge_preference"] == 0.75 and results["position_consistency"] == 1.0


def test_pairwise_swapping_cancels_a_judge_that_always_picks_the_first_answer(judge):
    judge.behaviour = "always-a"
    results = judge_outputs(settings(judge, mode="pairwise"), "Be fair.", PROMPTS, REFERENCES, OUTPUTS)
    entry = results["comparison"]["judge_preference"]
    assert (entry["wins"], entry["losses"], entry["ties"]) == (0, 0, 4)
    assert results["first_position_rate"] == 1.0 and results["position_consistency"] == 0.0


def test_garbage_replies_are_a_clear_error(judge):
    judge.behaviour = "garbage"
    with pytest.raises(TunesmithError, match="Could not read a 1-10 score from the judge's reply: 'I am not sure"):
        judge_outputs(settings(judge), "r", PROMPTS, REFERENCES, OUTPUTS)
    with pytest.raises(TunesmithError, match="Could not read a verdict"):
        judge_outputs(settings(judge, mode="pairwise"), "r", PROMPTS, REFERENCES, OUTPUTS)
    judge.behaviour = "not-json"
    with pytest.raises(TunesmithError, match="did not return a chat completion: '<html>proxy error") as error:
        judge_outputs(settings(judge), "r", PROMPTS, REFERENCES, OUTPUTS)
    assert "OpenAI-compatible" in error.value.hint


def test_a_wrong_or_missing_key_is_named(judge, monkeypatch):
    monkeypatch.setenv("TUNESMITH_TEST_JUDGE_KEY", "wrong")
    with pytest.raises(TunesmithError, match=r"refused the API key \(HTTP 401\)") as error:
        judge_outputs(settings(judge), "r", PROMPTS, REFERENCES, OUTPUTS)
    assert "Check the key in $TUNESMITH_TEST_JUDGE_KEY" in error.value.hint
    monkeypatch.delenv("TUNESMITH_TEST_JUDGE_KEY")
    with pytest.raises(TunesmithError, match="HTTP 401") as error:
        judge_outputs(settings(judge), "r", PROMPTS, REFERENCES, OUTPUTS)
    assert "Set $TUNESMITH_TEST_JUDGE_KEY" in error.value.hint


def test_an_unreachable_endpoint_and_a_wrong_path_are_named(judge):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TunesmithError, match=f"127.0.0.1:{port}/v1/chat/completions cannot be reached"):
        judge_outputs(settings(judge, url=f"http://127.0.0.1:{port}/v1"), "r", PROMPTS, REFERENCES, OUTPUTS)
    with pytest.raises(TunesmithError, match=r"was not found \(HTTP 404\)"):
        judge_outputs(settings(judge, url=f"http://127.0.0.1:{judge.server_port}/api"), "r", PROMPTS, REFERENCES,
                      OUTPUTS)


def test_parsers_take_the_last_marker_and_refuse_out_of_range_scores():
    assert parse_score("Score: 3. On reflection... Score: 8") == 8
    assert parse_score("**Score:** 7/10") == 7 and parse_score("6") == 6
    with pytest.raises(TunesmithError, match=r"Could not read a 1-10 score .*Score: 42"):
        parse_score("Score: 42")
    assert parse_verdict("[[B]]") == "B" and parse_verdict("Verdict: TIE") == "tie" and parse_verdict("a") == "A"


def test_eval_with_a_judge_writes_its_block_and_report(judge, tmp_path, tiny_model_dir):
    recipe_file = make_tiny_project(tmp_path, tiny_model_dir, eval_rows=4)
    (tmp_path / "rubric.txt").write_text("Judge whether the JSON matches the reference.")
    recipe = load_recipe(recipe_file, ["training.max_steps=4", "eval.probes=false",
                                       f"eval.judge={{url: 'http://127.0.0.1:{judge.server_port}/v1', "
                                       "model: stub-judge, api_key_env: TUNESMITH_TEST_JUDGE_KEY, "
                                       "rubric: rubric.txt, mode: score}"])
    run = create_run(recipe, tmp_path / "runs")
    run_training(recipe, run)
    results = json.loads(run_eval(recipe, run).read_text())
    block = results["judge"]
    assert block["mode"] == "score" and block["examples"] == 4 and len(judge.requests) == 8
    assert judge.requests[0]["messages"][0]["content"].startswith("Judge whether the JSON matches the reference.")
    assert set(block["comparison"]["judge_score"]) >= {"base", "tuned", "delta", "ci95", "wins"}
    report = (run.eval_dir / "report.html").read_text()
    assert "LLM judge stub-judge" in report and "LLM judge, example by example (4 of 4)" in report
    assert report.count("The answer is judged.") == 8  # each reply, base and tuned, beside its score


def test_a_missing_rubric_fails_before_any_model_loads(tmp_path, tiny_model_dir):
    recipe_file = make_tiny_project(tmp_path, tiny_model_dir, eval_rows=2)
    recipe = load_recipe(recipe_file, ["eval.judge={url: 'http://127.0.0.1:9/v1', model: m, rubric: nope.txt}"])
    with pytest.raises(TunesmithError, match=r"eval\.judge\.rubric: no such file"):
        run_eval(recipe, create_run(recipe, tmp_path / "runs"))


def test_a_reply_without_a_score_is_counted_and_kept_not_fatal(judge):
    """One of four examples gets a reply without a score: it is counted and left out (of the means and of the
    paired comparison), and every reply is kept, to see why the judge scored what it did."""
    judge.behaviour = "half"
    results = judge_outputs(settings(judge), DEFAULT_RUBRIC, PROMPTS, REFERENCES, OUTPUTS)
    assert results["unparsed"] == {"base": 1, "tuned": 1}
    assert results["per_example"]["tuned"] == [9, None, 9, 2] and results["tuned"]["judge_score"] == round(20 / 3, 4)
    entry = results["comparison"]["judge_score"]
    assert entry["wins"] + entry["losses"] + entry["ties"] == 3
    assert results["replies"]["tuned"][1].startswith("I am not sure")
    pairwise = judge_outputs(settings(judge, mode="pairwise"), "r", PROMPTS, REFERENCES, OUTPUTS)
    assert pairwise["unparsed"] == {"tuned": 1} and pairwise["verdicts"][1] == [None, None]


def test_the_judge_is_checked_before_any_model_loads(judge):
    """The endpoint, the judge model's name (GET /models) and pairwise without a base: said in seconds, not after
    every answer was generated."""
    import socket

    from tunesmith.eval.judge import check_judge, key_variable

    check_judge(settings(judge), True)
    with pytest.raises(TunesmithError, match=r"eval\.judge\.model 'gpt-4o' is not served .*\(it serves stub-"):
        check_judge(settings(judge, model="gpt-4o"), True)
    with pytest.raises(TunesmithError, match=r"eval\.compare_base is false"):
        check_judge(settings(judge, mode="pairwise"), False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TunesmithError, match="cannot be reached") as unreachable:
        check_judge(settings(judge, url=f"http://127.0.0.1:{port}/v1"), True)
    assert "checked before any model loads" in unreachable.value.hint
    assert key_variable("http://127.0.0.1:8000/v1", None) is None  # OPENAI_API_KEY is not sent to another server
    assert key_variable("https://api.openai.com/v1", None) == "OPENAI_API_KEY"
    assert key_variable("http://127.0.0.1:8000/v1", "MY_KEY") == "MY_KEY"


def test_a_judge_that_fails_after_the_answers_keeps_the_other_results(judge, tmp_path, tiny_model_dir):
    """The judge fails once every answer is generated: results.json is saved with the task metrics and the failure
    (add_on_errors), and eval still ends with the judge's error and fix (exit 2)."""
    from tunesmith.eval.add_ons import AddOnFailedError

    recipe_file = make_tiny_project(tmp_path, tiny_model_dir, eval_rows=2)
    recipe = load_recipe(recipe_file, ["training.max_steps=2", "eval.probes=false",
                                       f"eval.judge.url=http://127.0.0.1:{judge.server_port}/v1",
                                       "eval.judge.model=stub-judge",
                                       "eval.judge.api_key_env=TUNESMITH_TEST_JUDGE_KEY"])
    run = create_run(recipe, tmp_path / "runs")
    run_training(recipe, run)
    judge.behaviour = "not-json"
    with pytest.raises(AddOnFailedError, match=r"eval\.judge failed: .*did not return a chat completion"):
        run_eval(recipe, run)
    results = json.loads((run.eval_dir / "results.json").read_text())
    assert "exact_match" in results["tuned"] and "judge" not in results
    assert "did not return a chat completion" in results["add_on_errors"]["judge"]["error"]


def test_the_report_shows_each_examples_grade_beside_the_judges_reply(judge):
    """report.html: the score (or both verdicts) of each sampled example with the reply that gave it, coloured where
    the judge favoured one side; a reply without a score is shown as such, not as 0."""
    from tunesmith.eval.html_report import judge_rows_table

    samples = [{"prompt": p} for p in PROMPTS[:3]]  # the report samples fewer examples than the judge graded
    judge.behaviour = "half"
    scored = judge_outputs(settings(judge), DEFAULT_RUBRIC, PROMPTS, REFERENCES, OUTPUTS)
    table = judge_rows_table({"judge": scored, "samples": samples})
    assert "(3 of 4)" in table and table.count("<tr class='better'>") == 2  # examples 1 and 3: 2 -> 9
    assert "score: unread (the reply gives none)" in table and "I am not sure" in table
    assert "Opposite of hot?" not in table
    judge.behaviour = "fair"
    pairwise = judge_outputs(settings(judge, mode="pairwise"), "r", PROMPTS, REFERENCES, OUTPUTS)
    table = judge_rows_table({"judge": pairwise, "samples": samples})
    assert "verdict: B\nVerdict: B" in table and table.count("<tr class='better'>") == 2
    assert judge_rows_table({"samples": samples}) == ""
