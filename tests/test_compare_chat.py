"""`tunesmith compare` (many adapters switched on one base) and `tunesmith chat` on tiny llama models."""

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from tests.conftest import build_tiny_llama, make_tiny_project
from tunesmith.chat import ChatSession, chat_loop
from tunesmith.config import load_recipe
from tunesmith.errors import TunesmithError
from tunesmith.eval.compare import generate_for, load_prompts, render_compare_html, run_compare
from tunesmith.runs import create_run
from tunesmith.train import run_training

MAX_NEW, BATCH = 10, 4


def random_lora(model_dir: Path, target: Path, seed: int) -> Path:
    """A LoRA adapter with random (non-zero) weights, so it changes the outputs without training."""
    from peft import LoraConfig, get_peft_model

    from tunesmith.models import load_model

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(load_model(model_dir), config).save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir):
    """A trained run (adapter A), a random adapter folder (B), a prompts file with references and one without."""
    root = tmp_path_factory.mktemp("compare-chat")
    recipe = load_recipe(make_tiny_project(root, tiny_model_dir, eval_rows=6), ["training.max_steps=8"])
    run = create_run(recipe, root / "runs")
    run_training(recipe, run)
    adapter_b = random_lora(tiny_model_dir, root / "style-b", seed=1)
    prompts = root / "data" / "eval.jsonl"
    prompt_only = root / "questions.jsonl"
    prompt_only.write_text('{"prompt": "Say hello in one short sentence."}\n{"prompt": "two pizzas please"}\n')
    return {"run": run.path, "adapter_b": adapter_b, "prompts": prompts, "prompt_only": prompt_only, "root": root}


@pytest.fixture(scope="module")
def compared(project):
    return run_compare([project["run"], project["adapter_b"]], project["prompts"], include_base=True,
                       metrics=["exact_match", "chrf"], max_new_tokens=MAX_NEW, batch_size=BATCH)


def test_one_column_per_variant_with_scores(compared, project):
    run_name = Path(project["run"]).name
    assert compared["variants"] == ["base", run_name, "style-b"]
    assert compared["examples"] == compared["scored"] == 6
    for row in compared["rows"]:
        assert set(row["outputs"]) == set(compared["variants"]) and row["reference"]
        assert set(row["scores"]["style-b"]) == {"exact_match", "chrf"}
    assert {"exact_match", "chrf", "seconds"} <= set(compared["summary"]["base"])
    assert [r["outputs"]["base"] for r in compared["rows"]] != [r["outputs"]["style-b"] for r in compared["rows"]]


def test_adapters_of_several_peft_kinds_are_answered_a_kind_at_a_time(compared, project, tiny_model_dir):
    """PEFT cannot hold a LoRA and an IA3 adapter on one model ("Cannot combine adapters with different peft types"):
    each kind gets a base of its own, in turn; the LoRA columns answer as they did beside LoRA alone."""
    from peft import IA3Config, get_peft_model

    from tunesmith.models import load_model

    model = get_peft_model(load_model(tiny_model_dir), IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                                                                 feedforward_modules=["down_proj"]))
    with torch.no_grad():  # (IA)3 starts as ones: scale them so the adapter changes the answers
        for name, weight in model.named_parameters():
            if "ia3_l" in name:
                weight.mul_(torch.linspace(0.2, 3.0, weight.numel()).reshape(weight.shape))
    model.save_pretrained(project["root"] / "scaled-ia3")
    mixed = run_compare([project["adapter_b"], project["root"] / "scaled-ia3", project["run"]], project["prompts"],
                        include_base=True, metrics=["exact_match", "chrf"], max_new_tokens=MAX_NEW, batch_size=BATCH)
    run_name = Path(project["run"]).name
    assert mixed["variants"] == ["base", "style-b", "scaled-ia3", run_name]
    for name in ("base", "style-b", run_name):
        assert [r["outputs"][name] for r in mixed["rows"]] == [r["outputs"][name] for r in compared["rows"]]
    assert [r["outputs"]["scaled-ia3"] for r in mixed["rows"]] != [r["outputs"]["base"] for r in mixed["rows"]]


def test_each_variant_is_compared_with_the_base_paired_over_the_same_prompts(compared):
    """As eval compares tuned with base: the difference of means, its paired bootstrap interval and the tally, each
    recomputed here from the per-prompt scores."""
    assert set(compared["paired"]) == set(compared["variants"][1:])
    for variant, metrics in compared["paired"].items():
        assert set(metrics) == {"exact_match", "chrf"}
        for metric, entry in metrics.items():
            base = [row["scores"]["base"][metric] for row in compared["rows"]]
            mine = [row["scores"][variant][metric] for row in compared["rows"]]
            assert entry["delta"] == pytest.approx(sum(mine) / len(mine) - sum(base) / len(base), abs=1e-4)
            assert entry["wins"] == sum(m > b for m, b in zip(mine, base, strict=True))
            assert entry["losses"] == sum(m < b for m, b in zip(mine, base, strict=True))
            assert entry["ci95"] is None or entry["ci95"][0] <= entry["delta"] <= entry["ci95"][1]


def test_switched_adapter_answers_as_when_loaded_alone(compared, project, tiny_model_dir):
    """Proves switching: each adapter's column equals what a fresh base + that adapter alone produces."""
    from peft import PeftModel

    from tunesmith.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    prompts = load_prompts(project["prompts"])
    for column, adapter_dir in ((Path(project["run"]).name, Path(project["run"]) / "adapter"),
                                ("style-b", project["adapter_b"])):
        alone = PeftModel.from_pretrained(load_model(tiny_model_dir), adapter_dir).eval()
        expected = generate_for(alone, tokenizer, prompts, MAX_NEW, BATCH)
        assert [r["outputs"][column] for r in compared["rows"]] == expected, column
    plain = generate_for(load_model(tiny_model_dir).eval(), tokenizer, prompts, MAX_NEW, BATCH)
    assert [r["outputs"]["base"] for r in compared["rows"]] == plain


class PageText(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.urls: list[str] = []
        self.cells: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]
        self.cells += [value for name, value in attrs if name == "class" and tag == "td" and value]

    def handle_data(self, data):
        self.text.append(data)


def test_html_is_self_contained_with_outputs_scores_and_marks(compared):
    document = render_compare_html(compared)
    parser = PageText()
    parser.feed(document)
    parser.close()
    text = "".join(parser.text)
    for row in compared["rows"]:
        assert row["prompt"] in text and row["reference"] in text
        assert all(output in text for output in row["outputs"].values())
    assert f"{compared['summary']['style-b']['chrf']:.4f}" in text
    assert f"wall time, all prompts (s){compared['summary']['base']['seconds']:.1f}" in text  # a cost, said so
    assert "Each against base" in text and f"{compared['paired']['style-b']['chrf']['delta']:+.4f}" in text
    assert "differs" in parser.cells and "<mark>" in document
    assert not parser.urls and "http://" not in document and "https://" not in document


def test_prompt_only_rows_are_answered_without_scores(project, tmp_path):
    results = run_compare([project["adapter_b"]], project["prompt_only"], max_new_tokens=4, batch_size=BATCH)
    assert results["variants"] == ["style-b"] and results["scored"] == 0
    assert [r["reference"] for r in results["rows"]] == [None, None] and "scores" not in results["rows"][0]
    assert "–" in render_compare_html(results)
    from rich.console import Console

    from tunesmith.eval.compare import print_compare

    console = Console(record=True, width=200)
    print_compare(results, console)  # says how to score them: a metric of answers alone, or a column as reference
    said = " ".join(console.export_text().split())
    assert "No prompt has a reference answer" in said and "--reference-key chosen --metric chrf" in said
    (tmp_path / "alone.py").write_text("def size(completion, reference):\n    return float(len(completion))\n")
    # metrics that judge an answer alone score every row
    judged = run_compare([project["adapter_b"]], project["prompt_only"],
                         metrics=["json_valid", f"{tmp_path}/alone.py:size"], max_new_tokens=4, batch_size=BATCH)
    assert judged["scored"] == 2 and all(set(row["scores"]["style-b"]) == {"json_valid", "size"}
                                         for row in judged["rows"])
    assert judged["summary"]["style-b"]["size"] == sum(
        len(row["outputs"]["style-b"]) for row in judged["rows"]) / 2


def test_answer_length_defaults_to_the_references_as_evals_auto(project, tiny_model_dir, capsys):
    from tunesmith.eval.decoding import auto_max_new_tokens
    from tunesmith.models import load_tokenizer

    results = run_compare([project["adapter_b"]], project["prompts"], batch_size=BATCH)
    tokenizer = load_tokenizer(tiny_model_dir)
    limit, _ = auto_max_new_tokens(tokenizer, [row["reference"] for row in results["rows"]])
    assert f"max_new_tokens: {limit} (auto: the longest of" in capsys.readouterr().err
    assert results["max_new_tokens"] == limit < 128
    unsized = run_compare([project["adapter_b"]], project["prompt_only"], batch_size=BATCH)
    assert "max_new_tokens: 128 (no reference answers to size it by" in capsys.readouterr().err
    assert unsized["max_new_tokens"] == 128


def test_adapters_of_different_bases_are_refused(project, tokenizer_dir, tmp_path):
    other_base = build_tiny_llama(tokenizer_dir, tmp_path / "other-base", seed=3)
    foreign = random_lora(other_base, tmp_path / "foreign", seed=2)
    with pytest.raises(TunesmithError, match="different base models"):
        run_compare([project["adapter_b"], foreign], project["prompts"], max_new_tokens=2)


def test_compare_cli_writes_html_and_json(project):
    page = project["root"] / "cmp.html"
    result = subprocess.run([sys.executable, "-m", "tunesmith", "compare", "--prompts", str(project["prompts"]),
                             str(project["run"]), str(project["adapter_b"]), "--base", "--metric", "chrf",
                             "--html", str(page), "--json", "--max-new-tokens", "4"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["variants"][0] == "base" and page.is_file()
    assert "mean scores" in result.stderr


def test_chat_session_keeps_history_until_reset(tiny_model_dir):
    from tunesmith.models import load_model, load_tokenizer

    session = ChatSession(load_model(tiny_model_dir).eval(), load_tokenizer(tiny_model_dir), "Be brief.", 6)
    written: list[str] = []
    assert chat_loop(session, lines_then_eof(["hello", "again"]), written.append) == 2
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert session.messages[-1]["content"] == session.messages[-1]["content"].strip()
    assert "".join(written).count("assistant> ") == 2
    assert chat_loop(session, lines_then_eof(["/reset", "/exit", "never read"]), written.append) == 0
    assert session.messages == [{"role": "system", "content": "Be brief."}]


def lines_then_eof(lines: list[str]):
    pending = iter(lines)

    def read_line(prompt: str) -> str:
        try:
            return next(pending)
        except StopIteration:
            raise EOFError from None

    return read_line


def test_chat_cli_answers_resets_and_exits(tiny_model_dir):
    result = subprocess.run([sys.executable, "-m", "tunesmith", "chat", str(tiny_model_dir), "--max-new-tokens", "6"],
                            input="hello\n/reset\nhi\n/exit\n", capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # piped: stdout holds the two replies alone, the labels and notes go to stderr
    assert result.stderr.count("assistant> ") == 2 and "(history cleared)" in result.stderr
    assert "assistant> " not in result.stdout and "you> " not in result.stdout and "cleared" not in result.stdout
    assert result.stdout.strip(), result.stdout
    assert "Traceback" not in result.stderr


def test_chat_exits_cleanly_at_end_of_input(tiny_model_dir):
    result = subprocess.run([sys.executable, "-m", "tunesmith", "chat", str(tiny_model_dir), "--max-new-tokens", "4"],
                            input="hello\n", capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("assistant> ") == 1 and "assistant> " not in result.stdout


def test_constrained_chat_and_compare_answer_only_the_choices(project, tiny_model_dir):
    """--choices holds every answer of the (untrained, otherwise noisy) tiny model to the labels."""
    from tunesmith.data.constraint import choices_constraint

    labels = ["small", "large"]
    compared = run_compare([project["adapter_b"]], project["prompts"], include_base=True, max_new_tokens=8,
                           batch_size=BATCH, constraint=choices_constraint(labels, "--choices"))
    assert all(output in labels for row in compared["rows"] for output in row["outputs"].values())
    result = subprocess.run([sys.executable, "-m", "tunesmith", "chat", str(tiny_model_dir), "--max-new-tokens", "8",
                             "--choices", "small,large"], input="hello\nwhat size?\n", capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    replies = [line.strip() for line in result.stdout.splitlines() if line.strip()]  # piped: the replies alone
    assert len(replies) == 2 and set(replies) <= set(labels), result.stdout
    both = subprocess.run([sys.executable, "-m", "tunesmith", "chat", str(tiny_model_dir), "--choices", "a",
                           "--json-schema", "s.json"], input="", capture_output=True, text=True, timeout=300)
    assert both.returncode == 2 and "both" in both.stderr


def test_chat_with_a_run_prompts_it_as_training_did_and_a_refused_system_turn_is_a_usage_error(tmp_path,
                                                                                              tiny_model_dir):
    from tunesmith.chat import run_rendering
    from tunesmith.models import load_model, load_tokenizer

    recipe = load_recipe(make_tiny_project(tmp_path, tiny_model_dir, eval_rows=4),
                         ["data.system_prompt=Reply yes or no.", "data.system_fallback=merge"])
    system, render = run_rendering(create_run(recipe, tmp_path / "runs").path)
    assert system == "Reply yes or no."  # the recipe's, where --system is not given
    shown = render({"messages": [{"role": "system", "content": system},
                                 {"role": "user", "content": "Is 7 even?"}]})["messages"]
    assert [m["role"] for m in shown] == ["user"] and shown[0]["content"].startswith("Reply yes or no.")

    tokenizer = load_tokenizer(tiny_model_dir)  # a template without a system role, as Gemma's
    tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                               "{{ raise_exception('System role not supported') }}{% endif %}"
                               "{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
                               "{% if add_generation_prompt %}assistant: {% endif %}")
    model = load_model(tiny_model_dir).eval()
    with pytest.raises(TunesmithError, match="refuses this conversation: System role not supported") as refused:
        ChatSession(model, tokenizer, "Be brief.", 4).reply("hello", lambda text: None)
    assert "data.system_fallback: merge" in refused.value.hint
    merged = ChatSession(model, tokenizer, system, 4, render=render)  # rendered as the run trained: it answers
    assert isinstance(merged.reply("Is 7 even?", lambda text: None), str)
    assert [m["role"] for m in merged.messages] == ["system", "user", "assistant"]


WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}


def test_chat_offers_tools_shows_a_call_and_answers_its_result(tmp_path, tiny_model_dir):
    """--tools on a run trained with data.tool_format: hermes: the prompt carries the schemas as training wrote them,
    a call in an answer becomes a tool_calls turn, and /tool gives its result back (as a <tool_response> turn)."""
    from tunesmith.chat import assistant_turn, check_tools_reach_prompt, run_rendering
    from tunesmith.models import load_model, load_tokenizer

    tokenizer, model = load_tokenizer(tiny_model_dir), load_model(tiny_model_dir).eval()
    with pytest.raises(TunesmithError, match=r"does not show tools to the model: \['get_weather'\]") as refused:
        check_tools_reach_prompt(tokenizer, [WEATHER_TOOL], None, "tiny")  # plain ChatML drops `tools`
    assert "data.tool_format: hermes" in refused.value.hint
    recipe = load_recipe(make_tiny_project(tmp_path, tiny_model_dir, eval_rows=4), ["data.tool_format=hermes"])
    _, render = run_rendering(create_run(recipe, tmp_path / "runs").path)
    check_tools_reach_prompt(tokenizer, [WEATHER_TOOL], render, "run")  # the fallback writes them: no error

    answer = 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    turn = assistant_turn(answer, [WEATHER_TOOL])
    assert turn["content"] == "Let me look." and [c["function"] for c in turn["tool_calls"]] == [
        {"name": "get_weather", "arguments": '{"city": "Oslo"}'}]
    assert assistant_turn(answer, None) == {"role": "assistant", "content": answer}  # no tools offered: text

    session = ChatSession(model, tokenizer, None, 4, render=render, tools=[WEATHER_TOOL])
    written: list[str] = []
    assert chat_loop(session, lines_then_eof(['/tool {"temp_c": 4}']), written.append) == 0  # nothing to answer
    assert "no tool call to answer" in "".join(written) and session.messages == []
    session.messages = [{"role": "user", "content": "Weather in Oslo?"}, turn]
    assert chat_loop(session, lines_then_eof(['/tool {"temp_c": 4}']), written.append) == 1
    assert [m["role"] for m in session.messages] == ["user", "assistant", "tool", "assistant"]
    assert session.messages[2] == {"role": "tool", "content": '{"temp_c": 4}',
                                   "tool_call_id": turn["tool_calls"][0]["id"]}
    shown = session.prompt_row()["messages"]  # what the model was prompted with, as training renders tool rows
    assert "get_weather" in shown[0]["content"] and shown[0]["role"] == "system"
    assert shown[3] == {"role": "user", "content": '<tool_response>\n{"temp_c": 4}\n</tool_response>'}
    assert shown[2]["content"] == answer  # the call written back as the trained text


def test_chat_tools_file_errors_name_the_file_before_the_model_loads(tmp_path, tiny_model_dir):
    from tunesmith.chat import load_tools_file

    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(WEATHER_TOOL["function"]))  # LLaMA-Factory's bare schema, alone
    assert load_tools_file(bare) == [WEATHER_TOOL]
    broken = tmp_path / "broken.json"
    broken.write_text('[{"name": "get_weather",')
    for path, expected in ((tmp_path / "missing.json", "Cannot read --tools"), (broken, "is not JSON")):
        result = subprocess.run([sys.executable, "-m", "tunesmith", "chat", str(tiny_model_dir), "--tools", str(path)],
                                input="", capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and expected in result.stderr and str(path.name) in result.stderr
        assert "Traceback" not in result.stderr


def test_remote_chat_offers_tools_and_joins_streamed_call_fragments(tmp_path):
    """Against a server that streams a call in OpenAI's fragments: the call is joined, shown, and the next request
    carries the tools, the assistant's tool_calls and the tool's result."""
    import http.server
    import threading

    from tunesmith.chat import RemoteChatSession

    bodies: list[dict] = []
    chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant"}}]},
              {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                                  "function": {"name": "get_weather",
                                                                               "arguments": '{"city": '}}]}}]},
              {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0,
                                                                  "function": {"arguments": '"Oslo"}'}}]}}]},
              {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            sent = chunks if len(bodies) == 1 else [{"choices": [{"index": 0, "delta": {"content": "4 degrees."}}]}]
            for chunk in sent:
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        session = RemoteChatSession("run", None, None, 32, url=f"http://127.0.0.1:{server.server_port}/v1",
                                    tools=[WEATHER_TOOL])
        written: list[str] = []
        assert chat_loop(session, lines_then_eof(["Weather in Oslo?", '/tool {"temp_c": 4}']), written.append) == 2
    finally:
        server.shutdown()
    assert bodies[0]["tools"] == [WEATHER_TOOL]
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    assert bodies[1]["messages"][1:] == [{"role": "assistant", "content": None, "tool_calls": [call]},
                                         {"role": "tool", "content": '{"temp_c": 4}', "tool_call_id": "call_1"}]
    assert '(calls get_weather({"city": "Oslo"}))' in "".join(written)
    assert session.messages[-1] == {"role": "assistant", "content": "4 degrees."}


def test_chat_takes_an_adapter_folder_on_the_base_it_names(tiny_model_dir, tmp_path):
    """A merge output or an adapter trained elsewhere: `tunesmith chat FOLDER` loads it on the base its
    adapter_config.json names, as `--adapter FOLDER` on that base does."""
    from tunesmith.chat import load_chat_model

    folder = random_lora(tiny_model_dir, tmp_path / "combined", seed=3)
    ids = torch.tensor([[1, 5, 9, 12]])
    alone, tokenizer = load_chat_model(str(folder), device="cpu")
    applied, _ = load_chat_model(str(tiny_model_dir), adapter=folder, device="cpu")
    base, _ = load_chat_model(str(tiny_model_dir), device="cpu")
    with torch.no_grad():
        logits = [model(ids).logits for model in (alone, applied, base)]
    torch.testing.assert_close(logits[0], logits[1])
    assert not torch.allclose(logits[0], logits[2])  # the adapter changes the answers: it was applied
    assert tokenizer is not None
    with pytest.raises(TunesmithError, match="is an adapter folder itself"):
        load_chat_model(str(folder), adapter=folder, device="cpu")


def test_a_prompts_file_may_mix_rows_with_and_without_answers(tmp_path):
    """compare's help says answers are optional, but one prompt-only row among answered rows refused the file."""
    from tunesmith.eval.compare import load_prompts

    rows = [{"messages": [{"role": "user", "content": "When? 3 June 2006."},
                          {"role": "assistant", "content": "2006-06-03"}]},
            {"prompt": "When? 12 Feb 2027."},
            {"prompt": "When? 4 May 1993.", "completion": "1993-05-04"},
            {"messages": [{"role": "user", "content": "When? 1 Jan 2000."}]}]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    loaded = load_prompts(path)
    assert [row.reference for row in loaded] == ["2006-06-03", None, "1993-05-04", None]
    assert [row.messages[-1]["content"] for row in loaded] == ["When? 3 June 2006.", "When? 12 Feb 2027.",
                                                               "When? 4 May 1993.", "When? 1 Jan 2000."]
    path.write_text(json.dumps(rows[1]) + "\n" + json.dumps({"question": "?"}) + "\n", encoding="utf-8")
    with pytest.raises(TunesmithError, match=r"mixed\.jsonl, line 2: cannot tell its shape"):
        load_prompts(path)


def test_a_message_of_several_lines_goes_between_triple_quotes_and_an_unfinished_one_is_not_sent():
    from tunesmith.chat import read_message

    assert read_message(lines_then_eof(['"""Fix:', "  def f(:", '    pass"""'])) == "Fix:\n  def f(:\n    pass"
    assert read_message(lines_then_eof(['"""', "two", "lines", '"""'])) == "two\nlines"
    assert read_message(lines_then_eof(['"""one line"""', "never read"])) == "one line"
    assert read_message(lines_then_eof(["plain", "never read"])) == "plain"
    with pytest.raises(EOFError):
        read_message(lines_then_eof(['"""cut off', "mid message"]))


def test_compare_scores_prompt_only_rows_with_the_regex_and_schema_it_is_given(project, tmp_path):
    """--metric regex scored every answer 0 (an empty pattern) and --metric json_schema stopped for a recipe key
    compare has no recipe for: --regex and --json-schema now reach the scorer (the schema also holds decoding)."""
    outputs = run_compare([project["adapter_b"]], project["prompt_only"], metrics=["regex"], max_new_tokens=4,
                          batch_size=BATCH, regex=r"(?s).+")
    assert outputs["scored"] == 2 and outputs["summary"]["style-b"]["regex"] == 1.0
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"size": {"enum": ["small", "large"]}},
                                  "required": ["size"], "additionalProperties": False}))
    from tunesmith.data.constraint import option_constraint

    held = run_compare([project["adapter_b"]], project["prompt_only"], metrics=["json_schema"], max_new_tokens=16,
                       batch_size=BATCH, constraint=option_constraint(schema, None), schema_file=schema)
    assert held["scored"] == 2 and held["summary"]["style-b"]["json_schema"] == 1.0
    for flags, said in ((["--metric", "regex"], "--regex PATTERN"), (["--metric", "regex", "--regex", "("],
                                                                       "not a valid regular expression"),
                        (["--metric", "json_schema"], "--json-schema FILE")):
        result = subprocess.run([sys.executable, "-m", "tunesmith", "compare", "--prompts", str(project["prompt_only"]),
                                 str(project["adapter_b"]), *flags], capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and said in result.stderr, result.stderr


def test_a_metric_only_some_rows_score_is_left_out_of_the_pairing_not_a_crash():
    from tunesmith.eval.compare import paired_against_first

    rows = [{"scores": {"base": {"a": 1.0, "b": 0.0}, "x": {"a": 0.0, "b": 1.0}}},
            {"scores": {"base": {"a": 1.0}, "x": {"a": 1.0, "b": 1.0}}}, {"outputs": {}}]
    paired = paired_against_first(rows, ["base", "x"])
    assert set(paired["x"]) == {"a"} and paired["x"]["a"]["losses"] == 1
