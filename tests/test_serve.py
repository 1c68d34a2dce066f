"""`tunesmith serve` (issue 17), driven with the official `openai` client against a real server on loopback.

Two LoRA runs of one tiny llama are trained to answer differently ("pizza" / "cola" to any order), then served
by one llama.cpp engine: the base is loaded once and each request picks its adapter by `model`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ORDERS
from tunesmith.config import validate_recipe
from tunesmith.runs import create_run

pytest.importorskip("llama_cpp")
pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

ANSWERS = {"pizza-run": "pizza", "cola-run": "cola"}  # each run's replies begin with its word
KEY = "sk-test-key"


def train_constant_answer(root: Path, model_dir: Path, answer: str) -> Path:
    """A LoRA run whose every answer is `answer`, to the orders prompts."""
    from tunesmith.train import run_training

    rows = [json.loads(line) for line in (ORDERS / "train.jsonl").read_text(encoding="utf-8").splitlines()[:16]]
    data = root / answer / "train.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text("".join(json.dumps({"messages": [*row["messages"][:-1], {"role": "assistant", "content": answer}]})
                            + "\n" for row in rows), encoding="utf-8")
    recipe = validate_recipe({
        "name": answer, "model": {"source": str(model_dir)},
        "data": {"train": str(data), "eval_fraction": 0.25, "max_length": 128},
        "adapter": {"kind": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        "training": {"max_steps": 30, "lr": 1e-2, "batch_size": 4, "warmup_ratio": 0.0, "logging_steps": 10},
        "eval": {"probes": False}, "base_dir": str(root)})
    run = create_run(recipe, root / "runs")
    run_training(recipe, run)
    return run.path


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    return {name: train_constant_answer(root, tiny_model_dir, answer) for name, answer in ANSWERS.items()}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """The API on a free loopback port in a background thread; `stop()` shuts it down like SIGTERM does."""

    def __init__(self, engine: Any, **limits: Any) -> None:
        import uvicorn

        from tunesmith.serve.api import Limits, create_app

        self.port = free_port()
        self.app = create_app(engine, Limits(**limits), api_key=KEY)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)

    def client(self, key: str = KEY) -> Any:
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=key, max_retries=0)

    def raw(self, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        connection.request(method, path, body=body, headers={"Authorization": f"Bearer {KEY}",
                                                             "Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        payload = response.read()
        connection.close()
        try:
            return response.status, json.loads(payload)
        except ValueError:
            return response.status, payload.decode("utf-8", "replace")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def models(runs: dict[str, Path]) -> list[Any]:
    from tunesmith.serve.catalog import build_catalog

    return build_catalog([f"{name}={path}" for name, path in runs.items()], quant="F32")


@pytest.fixture(scope="module")
def engine(models: list[Any]) -> Iterator[Any]:
    from tunesmith.serve.llama_engine import LlamaEngine

    loaded = LlamaEngine(models, n_ctx=512, threads=1)
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def server(engine: Any) -> Iterator[Server]:
    running = Server(engine, max_tokens=64, max_n=3, max_queue=8, max_body_bytes=20_000)
    yield running
    running.stop()


ORDER = [{"role": "user", "content": "2 large pizzas and a cola to 12 Main St, please."}]


def ask(client: Any, model: str, **options: Any) -> Any:
    return client.chat.completions.create(model=model, messages=ORDER, temperature=0, max_tokens=8, **options)


def word(reply: Any) -> str:
    """Which run's word a reply begins with ("" for neither); the tiny runs learn the word, not always the end."""
    text = reply.choices[0].message.content
    return next((w for w in ANSWERS.values() if text.startswith(w)), "")


def test_models_lists_the_base_once_and_each_run_with_its_parent(server, models):
    listed = {m.id: m for m in server.client().models.list().data}
    base = next(m.name for m in models if m.run is None)
    assert set(listed) == {base, *ANSWERS}
    assert all(listed[name].model_extra["parent"] == base for name in ANSWERS)
    assert {m.gguf for m in models} == {models[0].gguf}  # one GGUF for the base and both adapters


def test_each_adapter_answers_its_own_way_even_interleaved_under_concurrency(server, engine):
    client = server.client()
    assert {name: word(ask(client, name)) for name in ANSWERS} == ANSWERS
    switches_before = sum(base.switches for base in engine.bases.values())
    names = [*ANSWERS] * 8
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda name: word(ask(client, name)), names))
    assert replies == [ANSWERS[name] for name in names]
    assert len(engine.bases) == 1  # the base was never loaded twice
    assert sum(base.switches for base in engine.bases.values()) > switches_before
    assert word(ask(client, next(iter(set(engine.models) - set(ANSWERS))))) == ""  # the base has no adapter


def test_streaming_gives_the_same_text_in_chunks_and_usage_at_the_end(server):
    client = server.client()
    whole = ask(client, "pizza-run")
    chunks = list(ask(client, "pizza-run", stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens > 0
    assert whole.usage.prompt_tokens > 10 and whole.choices[0].finish_reason in ("stop", "length")


def test_stop_seed_and_n(server):
    client = server.client()
    stopped = client.completions.create(model="cola-run", prompt="pizza pizza", max_tokens=12, temperature=0,
                                        stop=["a"])
    assert "a" not in stopped.choices[0].text
    sampled = [client.chat.completions.create(model="cola-run", messages=ORDER, temperature=1.5, max_tokens=12,
                                              seed=7, n=2) for _ in range(2)]
    assert [c.message.content for c in sampled[0].choices] == [c.message.content for c in sampled[1].choices]
    first, second = (choice.message.content for choice in sampled[0].choices)
    assert first != second  # n samples, not one sample n times
    other_seed = client.chat.completions.create(model="cola-run", messages=ORDER, temperature=1.5, max_tokens=12,
                                                seed=8, n=2)  # the request's seed is used, not one of the server's
    assert [c.message.content for c in other_seed.choices] != [c.message.content for c in sampled[0].choices]


def test_json_schema_output_parses_and_validates(server):
    import jsonschema

    schema = {"type": "object", "properties": {"item": {"type": "string", "maxLength": 12},
                                               "count": {"type": "integer", "minimum": 0, "maximum": 99}},
              "required": ["item", "count"], "additionalProperties": False}
    reply = server.client().chat.completions.create(
        model="pizza-run", messages=ORDER, temperature=0, max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "order", "schema": schema}})
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)


def test_bounded_integers_reach_the_grammar_as_enums():
    """llama-cpp-python's converter writes any integer as up to 16 digits: a tiny model once answered count
    8222262 to a 0-99 schema. Bounded ranges become enums, which its grammar enforces; wide ones are left."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    from tunesmith.serve.llama_engine import integer_ranges_as_enums

    schema = {"type": "object", "properties": {
        "count": {"type": "integer", "minimum": 0, "maximum": 99, "description": "how many"},
        "even": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10, "multipleOf": 2},
        "wide": {"type": "integer", "minimum": 0, "maximum": 10**6},
        "items": {"type": "array", "items": {"type": "integer", "minimum": -1, "maximum": 1}}}}
    rewritten = integer_ranges_as_enums(schema)["properties"]
    assert rewritten["count"] == {"description": "how many", "enum": list(range(100))}
    assert rewritten["even"] == {"enum": [2, 4, 6, 8]}
    assert rewritten["wide"] == schema["properties"]["wide"]
    assert rewritten["items"]["items"] == {"enum": [-1, 0, 1]}
    grammar = json_schema_to_gbnf(json.dumps(integer_ranges_as_enums(schema)))
    assert '"99"' in grammar and '"100"' not in grammar


def test_the_served_prompt_is_the_prefix_training_saw(engine, runs):
    from tunesmith.data.template import encode_sequence
    from tunesmith.runs import Run

    served = engine.chat_prompt("pizza-run", ORDER, None)
    trained = encode_sequence(engine.tokenizer("pizza-run"), [*ORDER, {"role": "assistant", "content": "pizza"}], 128)
    assert trained.input_ids[: len(served)] == served
    assert trained.labels[len(served) - 1] == -100 and trained.labels[len(served)] != -100  # the answer starts here
    assert Run(runs["pizza-run"]).manifest().train is not None


def test_auth_is_required_except_for_health(server):
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong").models.list()
    status, body = server.raw("GET", "/health", headers={"Authorization": ""})
    assert status == 200 and body["status"] == "ok"


def test_each_limit_is_a_4xx_with_an_openai_error_body(server):
    client = server.client()
    with pytest.raises(openai.BadRequestError, match="max_tokens=65 is over"):
        client.chat.completions.create(model="pizza-run", messages=ORDER, max_tokens=65)
    with pytest.raises(openai.BadRequestError, match="n=4 is over"):
        client.chat.completions.create(model="pizza-run", messages=ORDER, n=4, max_tokens=2)
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="nope", messages=ORDER)
    status, body = server.raw("POST", "/v1/chat/completions", json.dumps(
        {"model": "pizza-run", "messages": [{"role": "user", "content": "x" * 30_000}]}).encode())
    assert status == 413 and body["error"]["code"] == "request_too_large"
    status, body = server.raw("POST", "/v1/chat/completions", json.dumps(
        {"model": "pizza-run", "messages": [{"role": "user", "content": "pizza " * 1500}]}).encode())
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"


def chunked_post(port: int, body: bytes, declared: int | None) -> tuple[int, dict[str, Any]]:
    """POST `body` in 1,000-byte chunks (Transfer-Encoding: chunked), with a Content-Length of `declared` beside it
    where given: what the size limit once trusted."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {KEY}\r\n"
                "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                + (f"Content-Length: {declared}\r\n" if declared is not None else "") + "Connection: close\r\n\r\n")
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 1000]), body[i:i + 1000])
                          for i in range(0, len(body), 1000))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # answered and closed before the rest came
            sock.sendall(head.encode() + chunks + b"0\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    payload = answer.split(b"\r\n\r\n", 1)[1]
    return status, json.loads(payload[payload.index(b"{"):payload.rindex(b"}") + 1])


@pytest.mark.parametrize("declared", [None, 10])
def test_a_chunked_body_over_the_limit_is_413_whatever_length_it_declares(server, declared):
    """A chunked body was read whole before it was measured, and one declaring Content-Length: 10 beside its
    chunks was not measured at all."""
    body = json.dumps({"model": "pizza-run", "messages": [{"role": "user", "content": "x" * 30_000}]}).encode()
    status, answer = chunked_post(server.port, body, declared)
    assert status == 413 and answer["error"]["code"] == "request_too_large"
    small = json.dumps({"model": "pizza-run", "messages": ORDER, "max_tokens": 2, "temperature": 0}).encode()
    status, answer = chunked_post(server.port, small, None)  # a chunked body within the limit reaches the route
    assert status == 200 and answer["choices"][0]["message"]["content"]


def test_without_a_key_a_loopback_server_answers_only_requests_addressed_to_this_machine(engine):
    """DNS rebinding: a web page whose name points at 127.0.0.1 reached a key-less server. Such a server now answers
    only the loopback names; with a key, or listening elsewhere, any Host is answered."""
    import uvicorn

    from tunesmith.serve.api import create_app, loopback_hosts

    assert loopback_hosts("127.0.0.1", None) and loopback_hosts("127.0.0.1", "k") is None
    assert loopback_hosts("0.0.0.0", None) is None and loopback_hosts("192.168.1.5", None) is None
    assert "127.0.0.2" in loopback_hosts("127.0.0.2", None) and loopback_hosts("LOCALHOST", None)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(engine, trusted_hosts=loopback_hosts("127.0.0.1", None)),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        for host, expected in (("evil.example:8000", 403), (f"127.0.0.1:{port}", 200), ("LocalHost", 200),
                               ("[::1]:8000", 200), ("127.0.0.1.evil.example", 403)):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request("GET", "/v1/models", headers={"Host": host})
            response = connection.getresponse()
            answer = json.loads(response.read())
            assert response.status == expected, (host, answer)
            if expected == 403:
                assert answer["error"]["code"] == "untrusted_host" and "--api-key-env" in answer["error"]["message"]
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:  # HTTP/1.0: no Host header at all
            sock.sendall(b"GET /v1/models HTTP/1.0\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.split(b" ", 2)[1] == b"200", answer[:200]
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_a_full_queue_is_429_and_a_client_leaving_mid_stream_frees_its_slot(engine):
    server = Server(engine, max_tokens=64, max_queue=1)
    context = next(iter(engine.bases.values())).lock  # held here, the stream cannot end (an early end-of-text
    try:  # freed the slot before the second request came, on a busy machine)
        with context:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            connection.request("POST", "/v1/completions", body=json.dumps(
                {"model": "pizza-run", "prompt": "pizza", "max_tokens": 64, "stream": True, "temperature": 1.0}),
                headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
            stream = connection.getresponse()
            assert stream.readline().startswith(b"data: ")  # the first event: the request holds the only slot
            with pytest.raises(openai.RateLimitError):
                ask(server.client(), "cola-run")
            connection.close()  # the client goes away mid-stream
        deadline = time.time() + 20
        while server.raw("GET", "/health")[1]["in_flight"] and time.time() < deadline:
            time.sleep(0.1)
        assert word(ask(server.client(), "cola-run")) == "cola"
    finally:
        server.stop()


HOSTILE: list[tuple[str, bytes]] = [
    ("/v1/chat/completions", b"{not json"),
    ("/v1/chat/completions", b""),
    ("/v1/chat/completions", b"[]"),
    ("/v1/chat/completions", b"null"),
    ("/v1/chat/completions", b'"a string"'),
    ("/v1/completions", b"{\"model\": \"pizza-run\", \"prompt\": 5}"),
    ("/v1/completions", b"{\"model\": \"pizza-run\"}"),
    ("/v1/completions", b"{\"model\": \"pizza-run\", \"prompt\": \"\\ud800\"}"),
    ("/v1/models/../../etc/passwd", b"{}"),
    ("/v1/unknown", b"{}"),
    ("/v1/chat/completions", b"\xff\xfe\x00garbage"),
]
for bad in ({"model": 5, "messages": ORDER}, {"model": "pizza-run"}, {"model": "pizza-run", "messages": []},
            {"model": "pizza-run", "messages": "hi"}, {"model": "pizza-run", "messages": [{"role": "wizard"}]},
            {"model": "pizza-run", "messages": [{"content": "no role"}]},
            {"model": "pizza-run", "messages": [{"role": "user", "content": 5}]},
            {"model": "../../../etc/passwd", "messages": ORDER}, {"model": "/etc/passwd", "messages": ORDER},
            {"model": "C:\\Windows\\system32", "messages": ORDER}, {"model": "", "messages": ORDER},
            {"model": "x" * 5000, "messages": ORDER}, {"model": None, "messages": ORDER},
            {"model": "pizza-run", "messages": ORDER, "max_tokens": -1},
            {"model": "pizza-run", "messages": ORDER, "max_tokens": 0},
            {"model": "pizza-run", "messages": ORDER, "max_tokens": 10**12},
            {"model": "pizza-run", "messages": ORDER, "max_tokens": "ten"},
            {"model": "pizza-run", "messages": ORDER, "max_tokens": 1.5},
            {"model": "pizza-run", "messages": ORDER, "temperature": -1},
            {"model": "pizza-run", "messages": ORDER, "temperature": 99},
            {"model": "pizza-run", "messages": ORDER, "temperature": "hot"},
            {"model": "pizza-run", "messages": ORDER, "top_p": 0},
            {"model": "pizza-run", "messages": ORDER, "top_p": 2},
            {"model": "pizza-run", "messages": ORDER, "n": 0},
            {"model": "pizza-run", "messages": ORDER, "n": 1000},
            {"model": "pizza-run", "messages": ORDER, "n": -3},
            {"model": "pizza-run", "messages": ORDER, "stop": 5},
            {"model": "pizza-run", "messages": ORDER, "stop": [1, 2]},
            {"model": "pizza-run", "messages": ORDER, "seed": "abc"},
            {"model": "pizza-run", "messages": ORDER, "stream": "yes please"},
            {"model": "pizza-run", "messages": ORDER, "response_format": {"type": "xml"}},
            {"model": "pizza-run", "messages": ORDER, "response_format": {"type": "json_schema"}},
            {"model": "pizza-run", "messages": ORDER, "response_format": "json"},
            {"model": "pizza-run", "messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]},
            {"model": "pizza-run", "messages": ORDER, "tools": "all of them"},
            # tool schemas OpenAI refuses: no function name, a name it cannot call, parameters not an object
            {"model": "pizza-run", "messages": ORDER, "tools": [{"type": "function", "name": "x"}]},
            {"model": "pizza-run", "messages": ORDER, "tools": [{"type": "function", "function": {"name": "a b"}}]},
            {"model": "pizza-run", "messages": ORDER, "tools": [{"type": "function", "function": {
                "name": "x", "parameters": "nope"}}]},
            {"model": "pizza-run", "messages": ORDER, "tools": [{"type": "code_interpreter"}]},
            {"model": "pizza-run", "messages": ORDER, "max_completion_tokens": -5},
            {"model": "pizza-run", "messages": ORDER, "stream_options": 7},
            {"model": "pizza-run", "messages": [{"role": "user", "content": "hi"}] * 3, "logit_bias": "x", "n": 9},
            {"model": "pizza-run", "messages": [{"role": "user", "content": "x" * 50_000}]},
            # asked for and otherwise ignored without a word, or not readable by a text model
            {"model": "pizza-run", "messages": ORDER, "logprobs": True, "top_logprobs": 2},
            {"model": "pizza-run", "messages": ORDER, "stop": ["a", "b", "c", "d", "e"]},
            {"model": "pizza-run", "messages": [{"role": "user", "content": None}]},
            {"model": "pizza-run", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]}]},
            {"model": "pizza-run", "messages": ORDER, "tools": [{"type": "function", "function": {
                "name": "order", "parameters": {"type": "object"}}}]},  # the tiny model's ChatML has no tools
            {"model": "pizza-run", "messages": ORDER, "temperature": float("nan")},
            # schemas llama-cpp-python's converter cannot read, streamed or not
            *({"model": "pizza-run", "messages": ORDER, "stream": stream, "response_format": {
                "type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}
              for stream in (False, True) for schema in ({"type": "bogus"}, {"$ref": "#/defs/none"}))):
    HOSTILE.append(("/v1/chat/completions", json.dumps(bad).encode()))
HOSTILE.append(("/v1/completions", json.dumps({"model": "pizza-run", "prompt": "pizza", "echo": True}).encode()))
# settings this server would otherwise drop without a word, and schemas its grammar would not hold answers to
for bad in ({"prompt": "pizza", "suffix": "cola"}, {"prompt": "pizza", "best_of": 2},
            {"prompt": "pizza", "temprature": 0.5}, {"prompt": "pizza", "stop": [""]},
            {"prompt": "pizza", "logit_bias": {"pizza": -100}}, {"prompt": "pizza", "logit_bias": {"99999999": 5}},
            {"prompt": "pizza", "logit_bias": {"5": -500}}, {"prompt": "pizza", "grammar": "root ::= \"a\""},
            {"prompt": "pizza", "logit_bias": {"\u00b2": 5}}, {"prompt": "pizza", "logit_bias": {"9" * 5000: 5}}):
    HOSTILE.append(("/v1/completions", json.dumps({"model": "pizza-run", **bad}).encode()))
for schema in ({"type": "object", "properties": {"p": {"type": "number", "minimum": 0.5, "maximum": 0.7}}},
               {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 3}, "uniqueItems": True},
               {"type": "object", "properties": {"s": {"type": "integer", "minimum": 100}}},
               # lengths and counts the grammar spells out one rule each: 100,000 nested rules crash llama.cpp
               {"type": "string", "maxLength": 100_000}, {"type": "array", "items": {"type": "string"},
                                                          "minItems": 1_000_000_000},
               {"type": "string", "pattern": "^a{20000000}$"}, {"type": "string", "pattern": "^a{0,28000}$"}):
    HOSTILE.append(("/v1/chat/completions", json.dumps({"model": "pizza-run", "messages": ORDER, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}).encode()))


def test_sampling_settings_are_used_and_the_rest_refused_by_name(server, engine):
    """logit_bias, the penalties and llama.cpp's own settings reach the sampler (the answer changes); a setting the
    server does not read is a 400 naming it, not dropped; bookkeeping fields (user, metadata) pass."""
    client = server.client()
    plain = client.completions.create(model="pizza-run", prompt="pizza", max_tokens=6, temperature=0, user="me")
    first = engine.tokenizer("pizza-run")(plain.choices[0].text, add_special_tokens=False)["input_ids"][0]
    banned = client.completions.create(model="pizza-run", prompt="pizza", max_tokens=6, temperature=0,
                                       logit_bias={str(first): -100})
    assert engine.tokenizer("pizza-run")(banned.choices[0].text, add_special_tokens=False)["input_ids"][0] != first
    forced = client.completions.create(model="pizza-run", prompt="pizza", max_tokens=1, temperature=0,
                                       logit_bias={"42": 100})
    assert engine.tokenizer("pizza-run")(forced.choices[0].text, add_special_tokens=False)["input_ids"] == [42]
    repeated = client.completions.create(model="pizza-run", prompt="pizza", max_tokens=12, temperature=0,
                                         frequency_penalty=2.0, presence_penalty=2.0)
    assert repeated.choices[0].text != client.completions.create(
        model="pizza-run", prompt="pizza", max_tokens=12, temperature=0).choices[0].text
    with pytest.raises(openai.BadRequestError, match=r"'suffix': not a setting this server .* reads"):
        client.completions.create(model="pizza-run", prompt="pizza", max_tokens=4, suffix="cola")
    with pytest.raises(openai.BadRequestError, match="stop holds 5 sequence"):
        client.completions.create(model="pizza-run", prompt="pizza", max_tokens=4, stop=list("abcde"))
    with pytest.raises(openai.BadRequestError, match=r"would not hold answers to schema\.properties\.p\.minimum"):
        client.chat.completions.create(model="pizza-run", messages=ORDER, max_tokens=4, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {
                "type": "object", "properties": {"p": {"type": "number", "minimum": 0}}}}})


def names_a_served_model(body: bytes) -> bool:
    """Whether a request body is a JSON object naming a model the server serves."""
    try:
        request = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return isinstance(request, dict) and request.get("model") in ("pizza-run", "cola-run")


def test_fifty_hostile_requests_are_each_a_4xx_with_an_error_body_and_the_server_still_answers(server):
    assert len(HOSTILE) >= 50
    for path, body in HOSTILE:
        status, answer = server.raw("POST", path, body)
        assert 400 <= status < 500, (path, body[:80], status, answer)
        assert isinstance(answer, dict) and answer["error"]["message"], (path, body[:80], answer)
        if names_a_served_model(body):  # a bad field of a good request: refused for that field, not a lookup's 404
            assert status in (400, 413), (path, body[:80], status, answer)
    assert word(ask(server.client(), "pizza-run")) == "pizza"


@pytest.mark.parametrize(("tool", "param"), [
    ({"type": "function", "name": "x"}, "tools[0]"),
    ({"type": "function", "function": {"description": "no name"}}, "tools[0].function.name"),
    ({"type": "function", "function": {"name": "a b"}}, "tools[0].function.name"),
    ({"type": "function", "function": {"name": "x", "parameters": "nope"}}, "tools[0].function.parameters"),
    ({"type": "code_interpreter"}, "tools[0]")])
def test_a_tool_schema_openai_refuses_is_a_400_naming_its_field(server, tool, param):
    """Answered 200 before, with the model calling a tool it was never shown by name (a newcomer's trial)."""
    status, body = server.raw("POST", "/v1/chat/completions",
                              json.dumps({"model": "pizza-run", "messages": ORDER, "tools": [tool]}).encode())
    assert status == 400 and body["error"]["param"] == param, body


def test_a_union_parameter_error_names_the_parameter_alone(server):
    status, body = server.raw("POST", "/v1/chat/completions", json.dumps(
        {"model": "pizza-run", "messages": ORDER, "tool_choice": 5}).encode())
    assert status == 400 and body["error"]["param"] == "tool_choice", body  # not tool_choice.literal['auto',...]


def test_a_body_that_is_not_json_says_where_its_parsing_stopped(server):
    status, body = server.raw("POST", "/v1/chat/completions", b'{"model": "pizza-run", oops}')
    assert status == 400 and body["error"]["code"] == "invalid_json" and body["error"]["param"] is None
    assert body["error"]["message"].startswith("The request body is not valid JSON at character 23: Expecting "
                                               "property name")


def test_models_can_be_retrieved_one_by_one(server):
    client = server.client()
    assert client.models.retrieve("pizza-run").id == "pizza-run"
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.models.retrieve("nope")


def test_metrics_count_requests_tokens_and_adapter_switches_per_model(server):
    ask(server.client(), "cola-run")
    with pytest.raises(openai.NotFoundError):
        ask(server.client(), "nope")
    with pytest.raises(openai.NotFoundError):
        server.client().models.retrieve("nope")
    with pytest.raises(openai.BadRequestError):
        ask(server.client(), "cola-run", logprobs=True)  # refused for a served model: counted under its name
    status, text = server.raw("GET", "/metrics")
    assert status == 200
    assert 'tunesmith_requests_total{endpoint="models",model="",status="404"}' in text  # /v1/models/{id}
    assert 'tunesmith_requests_total{endpoint="chat",model="",status="404"}' in text  # refusals are counted too
    assert 'tunesmith_requests_total{endpoint="chat",model="cola-run",status="200"}' in text
    assert 'tunesmith_requests_total{endpoint="chat",model="cola-run",status="400"}' in text
    assert 'tunesmith_completion_tokens_total{model="cola-run"}' in text
    assert "tunesmith_adapter_switches{" in text and "tunesmith_time_to_first_token_seconds" in text


def test_vllm_command_serves_the_adapters_on_their_base_and_ollama_prints_its_commands(runs, models):
    from tunesmith.serve.commands import vllm_launch

    launch = vllm_launch(models, "127.0.0.1", 8001, "MY_KEY")
    argv = launch.argv
    base = next(m for m in models if m.run is None)
    assert argv[:3] == ["vllm", "serve", str(base.tokenizer_dir)]
    assert argv[argv.index("--max-lora-rank") + 1] == "8"  # both adapters have r=8
    modules = argv[argv.index("--lora-modules") + 1:][:2]
    assert modules == [f"pizza-run={runs['pizza-run'] / 'adapter'}", f"cola-run={runs['cola-run'] / 'adapter'}"]
    assert "--enable-lora" in argv and "-e VLLM_API_KEY=\"$MY_KEY\"" in launch.docker
    assert "0.0.0.0" in launch.docker and "-p 127.0.0.1:8001:8001" in launch.docker
    assert argv[argv.index("--chat-template") + 1] == str(runs["pizza-run"] / "adapter" / "chat_template.jinja")


def test_vllms_own_parser_takes_the_command(models):
    """Where vLLM is installed (a GPU machine; not an extra here), its own `vllm serve` parser reads every argument
    tunesmith writes; elsewhere the test is reported skipped (`-ra`), not passed."""
    pytest.importorskip("vllm", reason="vLLM is not installed: its parser checks the command where it is")
    from vllm.entrypoints.openai.cli_args import make_arg_parser
    from vllm.utils import FlexibleArgumentParser

    from tunesmith.serve.commands import vllm_launch

    argv = vllm_launch(models, "127.0.0.1", 8001, "MY_KEY").argv
    parsed = make_arg_parser(FlexibleArgumentParser()).parse_args(argv[2:])
    assert parsed.enable_lora and parsed.max_lora_rank == 8 and parsed.port == 8001


def test_vllm_refuses_adapters_trained_with_different_chat_templates(runs, models, tmp_path):
    import dataclasses
    import shutil

    from tunesmith.errors import TunesmithError
    from tunesmith.serve.commands import vllm_launch

    other = Path(shutil.copytree(runs["cola-run"] / "adapter", tmp_path / "adapter"))
    (other / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    changed = [dataclasses.replace(m, peft_dir=other) if m.name == "cola-run" else m for m in models]
    with pytest.raises(TunesmithError, match="different chat templates") as refused:
        vllm_launch(changed, "127.0.0.1", 8001, None)
    assert "llama.cpp engine" in refused.value.hint
    (other / "chat_template.jinja").unlink()  # an adapter folder without one renders with the base's, the same here
    argv = vllm_launch(changed, "127.0.0.1", 8001, None).argv
    assert argv[argv.index("--chat-template") + 1] == str(runs["pizza-run"] / "adapter" / "chat_template.jinja")


def test_chat_talks_to_a_running_server(server):
    from tunesmith.chat import RemoteChatSession, chat_loop
    from tunesmith.errors import TunesmithError

    written: list[str] = []
    session = RemoteChatSession("cola-run", None, None, 8, url=f"http://127.0.0.1:{server.port}/v1", api_key=KEY)
    lines = iter(["2 large pizzas and a cola to 12 Main St, please.", "/exit"])
    assert chat_loop(session, lambda prompt: next(lines), written.append) == 1
    assert "".join(written).split("assistant> ")[1].startswith("cola")
    assert [m["role"] for m in session.messages] == ["user", "assistant"]
    wrong = RemoteChatSession("nope", None, None, 8, url=f"http://127.0.0.1:{server.port}/v1", api_key=KEY)
    with pytest.raises(TunesmithError, match=r"404.*not served here"):
        wrong.reply("hi", written.append)
    typo = RemoteChatSession("cola-rn", None, None, 8, url=f"http://127.0.0.1:{server.port}/v1", api_key=KEY)
    with pytest.raises(TunesmithError, match=r"did you mean 'cola-run'\?"):
        typo.reply("hi", written.append)
    from tunesmith.chat import check_served_model

    base = f"http://127.0.0.1:{server.port}"
    check_served_model(f"{base}/v1", KEY, "cola-run")  # before the first prompt: what would go wrong is said now
    for url, key, model, said in ((f"{base}/v1", KEY, "cola-rn", "Did you mean 'cola-run'?"),
                                  (base, KEY, "cola-run", f"--url {base}/v1"),
                                  (f"{base}/v1", "wrong", "cola-run", "--api-key-env"),
                                  (f"http://127.0.0.1:{free_port()}/v1", KEY, "cola-run", "tunesmith serve")):
        with pytest.raises(TunesmithError) as caught:
            check_served_model(url, key, model)
        assert said in caught.value.hint, caught.value
    schema = {"type": "object", "properties": {"item": {"type": "string", "maxLength": 8}}, "required": ["item"],
              "additionalProperties": False}
    shaped = RemoteChatSession("cola-run", None, None, 40, url=f"{base}/v1", api_key=KEY, response_format={
        "type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
    import jsonschema

    jsonschema.validate(json.loads(shaped.reply("2 pizzas please", written.append)), schema)  # --json-schema --url
    no_v1 = RemoteChatSession("cola-run", None, None, 8, url=f"http://127.0.0.1:{server.port}", api_key=KEY)
    with pytest.raises(TunesmithError) as caught:
        no_v1.reply("hi", written.append)
    assert "no OpenAI-compatible API at that address" in caught.value.message
    assert f"--url http://127.0.0.1:{server.port}/v1" in caught.value.hint


def test_the_cli_serves_and_sigterm_lets_the_request_in_flight_finish(runs):
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "SERVE_KEY": KEY}
    process = subprocess.Popen([sys.executable, "-m", "tunesmith", "serve", f"pizza-run={runs['pizza-run']}",
                                "--port", str(port), "--api-key-env", "SERVE_KEY", "--quant", "F32", "--n-ctx", "512"],
                               cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, process.stderr.read()
                time.sleep(0.3)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("POST", "/v1/completions", body=json.dumps(
            {"model": "pizza-run", "prompt": "pizza", "max_tokens": 40, "stream": True, "temperature": 1.0,
             "seed": 1}), headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        stream = connection.getresponse()
        assert stream.readline().startswith(b"data: ")
        process.send_signal(signal.SIGTERM)  # mid-stream
        rest = stream.read().decode()
        assert rest.rstrip().endswith("data: [DONE]")  # the request in flight finished
        assert process.wait(timeout=60) == -signal.SIGTERM  # then it ends as a SIGTERM'd process does (uvicorn)
    finally:
        process.kill()


def test_vllm_print_command_from_the_cli(runs):
    from typer.testing import CliRunner

    from tunesmith.cli.app import app

    result = CliRunner().invoke(app, ["serve", f"pizza-run={runs['pizza-run']}", "--engine", "vllm",
                                      "--print-command", "--port", "8123"])
    assert result.exit_code == 0, result.output
    assert "vllm serve" in result.stdout and "--lora-modules" in result.stdout and "docker run" in result.stdout


def test_vllm_paths_are_absolute_for_a_run_named_relative_to_the_current_folder(runs, monkeypatch):
    """Docker bind mounts need absolute paths on both sides; a run typed as runs/NAME gave `-v runs/...`."""
    import shlex

    from typer.testing import CliRunner

    from tunesmith.cli.app import app

    monkeypatch.chdir(runs["pizza-run"].parent)
    result = CliRunner().invoke(app, ["serve", f"pizza-run={runs['pizza-run'].name}", "--engine", "vllm",
                                      "--print-command", "--n-ctx", "2048"])
    assert result.exit_code == 0, result.output
    shell, docker = (line for line in result.stdout.splitlines() if line.startswith(("vllm", "docker")))
    argv = shlex.split(shell)
    assert Path(argv[2]).is_absolute() and argv[argv.index("--max-model-len") + 1] == "2048"
    assert Path(argv[argv.index("--lora-modules") + 1].split("=", 1)[1]) == runs["pizza-run"] / "adapter"
    mounts = [word for word in shlex.split(docker) if word.endswith(":ro")]
    assert mounts and all(Path(mount.split(":")[0]).is_absolute() for mount in mounts)


def test_a_port_that_cannot_be_listened_on_is_a_usage_error_before_anything_loads(runs):
    from typer.testing import CliRunner

    from tunesmith.cli.app import app

    run = f"pizza-run={runs['pizza-run']}"
    for port in ("99999", "0"):
        result = CliRunner().invoke(app, ["serve", run, "--port", port])
        assert result.exit_code == 2 and "--port" in result.output, result.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        started = time.perf_counter()
        result = CliRunner().invoke(app, ["serve", run, "--port", str(taken.getsockname()[1]), "--quant", "F32"])
    assert usage_error(result).startswith("Cannot listen on 127.0.0.1")
    assert time.perf_counter() - started < 5  # refused before the model was loaded
    result = CliRunner().invoke(app, ["serve", run, "--host", "999.1.1.1"])
    assert usage_error(result).startswith("--host 999.1.1.1")
    result = CliRunner().invoke(app, ["serve", run, "--host", "192.0.2.1"])  # TEST-NET-1: an address, not this one
    assert usage_error(result).startswith("--host 192.0.2.1: not an address of this machine")


def usage_error(result: Any) -> str:
    """The message of the TunesmithError a CLI call raised (`tunesmith` exits 2 with it), or a failed assert."""
    from tunesmith.errors import TunesmithError

    assert isinstance(result.exception, TunesmithError) and result.exception.exit_code == 2, result.output
    return str(result.exception)


def test_a_stream_whose_client_left_before_the_first_event_frees_its_slot(engine):
    """The slot is taken before the response starts (so a full queue can answer 429); a client that is gone before
    the first byte must not keep it: the event generator never starts, so its own cleanup never runs."""
    import asyncio

    from tunesmith.serve.api import Limits, create_app

    app = create_app(engine, Limits(max_tokens=8, max_queue=1), api_key=KEY)
    body = json.dumps({"model": "pizza-run", "prompt": "pizza", "max_tokens": 8, "stream": True}).encode()

    def scope(method: str, path: str, length: int) -> dict[str, Any]:
        return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
                "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
                "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
                "headers": [(b"authorization", f"Bearer {KEY}".encode()), (b"content-type", b"application/json"),
                            (b"content-length", str(length).encode())]}

    async def leave_before_first_byte() -> None:
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            raise OSError("the client closed the connection")

        with contextlib.suppress(Exception):  # how the framework reports the vanished client is not the point
            await app(scope("POST", "/v1/completions", len(body)), receive, send)

    async def in_flight() -> int:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope("GET", "/health", 0), receive, send)
        return json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))["in_flight"]

    async def scenario() -> list[int]:
        counts = []
        for _ in range(3):
            await leave_before_first_byte()
            await asyncio.sleep(0.2)
            counts.append(await in_flight())
        return counts

    assert asyncio.run(scenario()) == [0, 0, 0]


def test_ollama_commands_name_the_address_and_the_export_is_recorded_in_the_run(runs, tmp_path, monkeypatch):
    """Without ollama on PATH the commands are printed: the server on --host/--port (OLLAMA_HOST), `ollama create`
    only once it answers, the Modelfile by its absolute path; the export goes through the one export entry point,
    so run.json lists it and exports/manifest.json names it relative to the run."""
    import shlex

    from typer.testing import CliRunner

    from tunesmith.cli.app import app
    from tunesmith.runs import Run

    monkeypatch.setenv("PATH", str(tmp_path))  # no ollama here
    run = runs["pizza-run"]
    result = CliRunner().invoke(app, ["serve", str(run), "--engine", "ollama", "--print-command", "--port", "11500"])
    assert result.exit_code == 0, result.output
    serve_line, wait_line, create_line, _ = result.stdout.strip().splitlines()[-4:]
    assert serve_line == "OLLAMA_HOST=127.0.0.1:11500 ollama serve &"
    assert wait_line.startswith("until OLLAMA_HOST=127.0.0.1:11500 ollama list")
    modelfile = Path(shlex.split(create_line)[-1])
    assert modelfile.is_absolute() and modelfile == run / "exports" / "ollama" / "Modelfile"
    assert Run(run).manifest().exports["ollama"].path == "exports/ollama"
    manifest = json.loads((run / "exports" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["ollama"]["modelfile"] == "exports/ollama/Modelfile"
    refused = CliRunner().invoke(app, ["serve", str(run), "--engine", "ollama", "--api-key-env", "HOME"])
    assert "Ollama has no API keys" in usage_error(refused)


def test_an_option_the_engine_would_ignore_is_refused_and_nothing_served_is_not_success(runs, tmp_path, monkeypatch):
    """`serve RUN --print-command` started a live server; vLLM dropped --max-n and the other limits, Ollama --n-ctx:
    each refused by name. Where vLLM or Ollama is missing, the commands are printed and the exit is 1 (a supervisor
    read 0 as served) unless --print-command asked for the commands alone."""
    from typer.testing import CliRunner

    from tunesmith.cli.app import app
    from tunesmith.errors import TunesmithError

    run = str(runs["pizza-run"])
    cases = [(["--print-command"], "--engine llama would ignore --print-command"),
             (["--engine", "vllm", "--max-n", "2", "--quant", "Q8_0"], "--engine vllm would ignore --quant, --max-n"),
             (["--engine", "ollama", "--n-ctx", "2048"], "--engine ollama would ignore --n-ctx")]
    for options, message in cases:
        assert message in usage_error(CliRunner().invoke(app, ["serve", run, *options]))
    monkeypatch.setenv("PATH", str(tmp_path))  # neither vllm nor ollama here
    for engine, printed in (("vllm", "vllm serve"), ("ollama", "ollama create")):
        result = CliRunner().invoke(app, ["serve", run, "--engine", engine])
        assert isinstance(result.exception, TunesmithError) and result.exception.exit_code == 1, result.output
        assert "nothing is served" in str(result.exception) and printed in result.stdout


@pytest.mark.slow
def test_a_seeded_request_on_smollm2_gives_the_same_text_every_time(tmp_path):
    """On SmolLM2 the first sampled answer to a prompt differed from the next ones, which reused the cached prompt
    and evaluated its last token alone (the tiny model's logits happen to agree to the bit). Three prompts, each
    asked three times with one seed, through the engine the server runs."""
    from tunesmith.export.gguf import write_gguf
    from tunesmith.models import resolve_model_source
    from tunesmith.serve.catalog import ServedModel
    from tunesmith.serve.llama_engine import LlamaEngine, Sampling

    model_dir = resolve_model_source("smollm2-135m-instruct")
    gguf_file = write_gguf(model_dir, tmp_path / "smollm2-F16.gguf", "F16")
    engine = LlamaEngine([ServedModel("smol", gguf_file, None, model_dir, None, None, None, None)], n_ctx=512,
                         threads=2)
    try:
        for prompt in ("Write a poem about rain.", "Tell me a story about a dog named Rex.",
                       "What is the capital of France?"):
            ids = engine.chat_prompt("smol", [{"role": "user", "content": prompt}], None)
            texts = ["".join(piece.text for piece in engine.generate(
                "smol", ids, Sampling(max_tokens=24, temperature=0.9, seed=123), threading.Event()))
                for _ in range(3)]
            assert texts[0] == texts[1] == texts[2], texts
    finally:
        engine.close()


def test_an_unfinished_run_is_refused_with_the_step_that_leads_somewhere(tiny_model_dir, tmp_path):
    """--resume only where a checkpoint exists; a run with none (as --print-launch leaves one) is trained anew."""
    from tunesmith.errors import TunesmithError
    from tunesmith.serve.catalog import build_catalog

    recipe = validate_recipe({"name": "unfinished", "model": {"source": str(tiny_model_dir)},
                              "data": {"train": str(ORDERS / "train.jsonl")}, "base_dir": str(tmp_path)})
    run = create_run(recipe, tmp_path / "runs")
    with pytest.raises(TunesmithError, match="not finished training") as refused:
        build_catalog([str(run.path)], export=False)
    assert "no checkpoint" in refused.value.hint and "--resume" not in refused.value.hint
    (run.checkpoints_dir / "checkpoint-2").mkdir(parents=True)
    with pytest.raises(TunesmithError) as refused:
        build_catalog([str(run.path)], export=False)
    assert f"--resume {run.path}" in refused.value.hint


def test_ollama_is_created_once_its_server_answers_and_a_running_one_is_reused(runs, tmp_path, monkeypatch):
    """With `ollama` on PATH (a stand-in script that logs its calls): `ollama serve` on OLLAMA_HOST, `create` only
    after `ollama list` answers; where a server already answers there, no second one is started."""
    from typer.testing import CliRunner

    from tunesmith.cli.app import app

    log, up = tmp_path / "calls.log", tmp_path / "up"
    fake = tmp_path / "bin" / "ollama"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$OLLAMA_HOST $1" >> {log}\ncase "$1" in\n  list) [ -f {up} ] ;;\n'
                    f'  serve) sleep 0.5; touch {up}; sleep 1 ;;\n'
                    "  create) printf 'gathering model components \\342\\240\\213 done\\n' ;;\nesac\n",
                    encoding="utf-8")  # \342\240\213: a braille spinner character, three bytes in UTF-8
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/bin:/usr/bin")
    result = CliRunner().invoke(app, ["serve", str(runs["pizza-run"]), "--engine", "ollama", "--port", "11501"])
    assert result.exit_code == 0, result.output
    assert "gathering model components \u280b done" in result.output  # Ollama's own progress, shown as it runs
    calls = [call for call in log.read_text(encoding="utf-8").split("\n") if call.startswith("127.0.0.1:11501")]
    assert calls[0] == "127.0.0.1:11501 list" and "127.0.0.1:11501 serve" in calls  # none ran there: start one
    assert calls.index("127.0.0.1:11501 create") > calls.index("127.0.0.1:11501 serve")
    assert calls[calls.index("127.0.0.1:11501 create") - 1] == "127.0.0.1:11501 list"  # created once it answered
    log.unlink()
    result = CliRunner().invoke(app, ["serve", str(runs["pizza-run"]), "--engine", "ollama", "--port", "11501"])
    assert result.exit_code == 0 and "already running" in result.output, result.output
    assert log.read_text(encoding="utf-8").split() == ["127.0.0.1:11501", "list", "127.0.0.1:11501", "create"]


# --- tool calls: a run trained with data.tool_format: hermes is served with the same prompt, its calls parsed -----

WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                                 "parameters": {"type": "object",
                                                                "properties": {"city": {"type": "string"}}}}}
CALL_SCHEMA = {"type": "object", "properties": {"name": {"enum": ["get_weather"]}, "arguments": {
    "type": "object", "properties": {"city": {"enum": ["Oslo", "Lima"]}}, "required": ["city"]}},
    "required": ["name", "arguments"]}


def test_calls_to_the_requests_tools_become_tool_calls_and_the_rest_stays_text():
    from tunesmith.data.template import split_tool_calls

    names = frozenset({"get_weather", "get_time"})
    content, calls = split_tool_calls('Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}'
                                      '\n</tool_call>', names)
    assert content == "Checking." and [c["function"]["name"] for c in calls] == ["get_weather"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo"} and calls[0]["type"] == "function"
    content, calls = split_tool_calls('[TOOL_CALLS] [{"name": "get_time", "arguments": {}}, '
                                      '{"name": "get_weather", "arguments": "{\\"city\\": \\"Lima\\"}"}]', names)
    assert content is None and [c["function"]["name"] for c in calls] == ["get_time", "get_weather"]
    assert json.loads(calls[1]["function"]["arguments"]) == {"city": "Lima"}
    text = '{"name": "send_money", "arguments": {"to": "me"}}'  # not a tool of this request: text, as written
    assert split_tool_calls(text, names) == (text, [])
    assert split_tool_calls("Sunny.", names) == ("Sunny.", [])


REASONED = "<think>\nThree mugs at 7 euros: 21.\n</think>\n\n21 euros."


@pytest.mark.parametrize(("text", "opened", "reasoning", "content"), [
    (REASONED, False, "Three mugs at 7 euros: 21.", "21 euros."),  # opens its own block (Qwen3)
    ("Three mugs at 7 euros: 21.\n</think>\n\n21 euros.", True, "Three mugs at 7 euros: 21.", "21 euros."),  # R1
    ("21 euros.", False, None, "21 euros."),  # no reasoning: all content
    ("<think>\nThree mugs, so 3 x", False, "Three mugs, so 3 x", ""),  # cut off by max_tokens mid-thought
    ("<b>21</b> euros", False, None, "<b>21</b> euros"),  # a tag that is not <think>
])
def test_a_reasoning_models_answer_comes_back_as_reasoning_content_and_content_whole_and_streamed(
        text, opened, reasoning, content):
    """A tuned DeepSeek-R1 or Qwen3 answered `content` with its thinking and tags in it; clients (the openai SDK,
    Open WebUI) read the reasoning from `reasoning_content`, as DeepSeek's API and vLLM answer. The stream gives the
    same split whatever pieces the text arrives in, a tag cut between two pieces included."""
    from tunesmith.serve.api import ChatShape, ReasoningSplitter

    message, reason = ChatShape(opened_reasoning=opened).message(text, "stop")
    assert (message.get("reasoning_content"), message["content"], reason) == (reasoning, content, "stop")
    pieces_ways = [[text], list(text)] + [[text[:cut], text[cut:]] for cut in range(1, len(text))]
    for pieces in pieces_ways:
        splitter, fields = ReasoningSplitter(opened), {}
        for piece in pieces:
            for key, part in splitter.feed(piece):
                fields[key] = fields.get(key, "") + part
        for key, part in splitter.finish():
            fields[key] = fields.get(key, "") + part
        assert (fields.get("reasoning_content"), fields.get("content", "")) == (reasoning, content), pieces
    chunks = ChatShape(opened_reasoning=opened).streamed("id", "m", 0, text, "stop", ReasoningSplitter(opened))
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}


@pytest.fixture
def hermes_model(engine: Any) -> Iterator[str]:
    """pizza-run served as if its recipe had data.tool_format: hermes (the same base and adapter)."""
    import dataclasses

    from tunesmith.config import DataSection

    served = engine.models["pizza-run"]
    engine.models["pizza-tools"] = dataclasses.replace(served, name="pizza-tools",
                                                       data=DataSection(train="x", tool_format="hermes"))
    engine.adapters["pizza-tools"] = engine.adapters["pizza-run"]
    yield "pizza-tools"
    del engine.models["pizza-tools"], engine.adapters["pizza-tools"]


def test_a_hermes_run_gets_the_tools_as_training_wrote_them(engine, hermes_model):
    from tunesmith.config import DataSection
    from tunesmith.data.fallbacks import apply_fallbacks
    from tunesmith.data.template import encode_sequence

    served = engine.chat_prompt(hermes_model, ORDER, [WEATHER_TOOL])
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    row = apply_fallbacks({"messages": [*ORDER, {"role": "assistant", "content": "", "tool_calls": [call]}],
                           "tools": [WEATHER_TOOL]}, DataSection(train="x", tool_format="hermes"))
    trained = encode_sequence(engine.tokenizer(hermes_model), row["messages"], 512)
    assert trained.input_ids[: len(served)] == served
    assert "<tools>" in engine.tokenizer(hermes_model).decode(served)
    assert served != engine.chat_prompt("pizza-run", ORDER, None)


def test_a_served_tool_call_reaches_the_openai_client_as_tool_calls_whole_and_streamed(server, hermes_model):
    """The tiny model is held to a call-shaped answer by the json_schema grammar; the server returns it as the
    request's tool call, in a whole response and in a stream the openai client assembles."""
    client = server.client()
    options = {"model": hermes_model, "messages": ORDER, "tools": [WEATHER_TOOL], "temperature": 0, "max_tokens": 64,
               "response_format": {"type": "json_schema", "json_schema": {"name": "call", "schema": CALL_SCHEMA}}}
    whole = client.chat.completions.create(**options)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] in ("Oslo", "Lima")
    chunks = list(client.chat.completions.create(**options, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    streamed = [t for d in deltas for t in d.tool_calls or []]
    assert [(t.function.name, t.function.arguments) for t in streamed] == [("get_weather", call.function.arguments)]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    plain = client.chat.completions.create(model=hermes_model, messages=ORDER, tools=[WEATHER_TOOL], temperature=0,
                                           max_tokens=8)
    assert plain.choices[0].message.tool_calls is None and plain.choices[0].finish_reason in ("stop", "length")
    # tool_choice: "none" answers in words (the tools are not offered, nothing is read as a call); one that forces
    # a call is refused, naming the parameter, since the engine cannot force one
    unoffered = client.chat.completions.create(**options, tool_choice="none")
    assert unoffered.choices[0].message.tool_calls is None and '"get_weather"' in unoffered.choices[0].message.content
    for forced in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(**options, tool_choice=forced)
        assert refused.value.body["param"] == "tool_choice"


def test_a_history_whose_tool_turns_do_not_pair_with_calls_is_a_400(server, hermes_model):
    """OpenAI refuses a tool result with no call before it, a result answering no call's id, and arguments that are
    not a JSON object; the server rendered all three for the model before."""
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    asked = {"role": "assistant", "content": None, "tool_calls": [call]}
    result = {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
    histories = {
        "messages[1]": [ORDER[0], result],
        "messages[2].tool_call_id": [ORDER[0], asked, {**result, "tool_call_id": "zz9"}],
        "messages[1].tool_calls": [ORDER[0], {**asked, "tool_calls": [
            {**call, "function": {**call["function"], "arguments": "{city: Oslo"}}]}, result],
    }
    for param, messages in histories.items():
        status, body = server.raw("POST", "/v1/chat/completions", json.dumps(
            {"model": hermes_model, "messages": messages, "tools": [WEATHER_TOOL], "max_tokens": 4}).encode())
        assert status == 400 and body["error"]["param"] == param, (param, body)
    answered = server.client().chat.completions.create(model=hermes_model, messages=[ORDER[0], asked, result],
                                                       tools=[WEATHER_TOOL], max_tokens=4)
    assert answered.choices[0].message is not None  # the well-formed history is answered


def test_an_adapter_folder_and_a_model_are_served_beside_runs(runs, tiny_model_dir, tmp_path):
    """A LoRA folder that is no run (copied out of one, as from another tool) is served on the base its
    adapter_config.json names and answers as the run does; the base named on its own is served once; a DoRA folder
    is refused with the merge that serves it; vLLM gets the folder as a --lora-modules entry."""
    import shutil

    from tunesmith.errors import TunesmithError
    from tunesmith.serve.catalog import build_catalog
    from tunesmith.serve.commands import vllm_launch
    from tunesmith.serve.llama_engine import LlamaEngine, Sampling

    run_name, run_path = next(iter(runs.items()))
    folder = Path(shutil.copytree(run_path / "adapter", tmp_path / "bare-adapter"))
    models = build_catalog([f"bare={folder}", f"{run_name}={run_path}", str(tiny_model_dir)], quant="F32")
    by_name = {m.name: m for m in models}
    bases = [m for m in models if m.run is None]
    assert len(bases) == 1 and set(by_name) == {bases[0].name, "bare", run_name}
    assert by_name["bare"].gguf == by_name[run_name].gguf == bases[0].gguf and by_name["bare"].lora.is_file()
    engine = LlamaEngine(models, n_ctx=512, threads=1)
    try:
        answers = {}
        for name in ("bare", run_name):
            ids = engine.chat_prompt(name, ORDER, None)
            answers[name] = "".join(piece.text for piece in engine.generate(
                name, ids, Sampling(max_tokens=8, temperature=0.0), threading.Event()))
        assert answers["bare"] == answers[run_name] and answers["bare"].startswith(ANSWERS[run_name])
    finally:
        engine.close()
    launch = vllm_launch(build_catalog([f"bare={folder}"], export=False), "127.0.0.1", 8000, None)
    assert f"bare={folder.resolve()}" in launch.argv and str(bases[0].tokenizer_dir.resolve()) in launch.argv

    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(TunesmithError, match="DoRA's magnitude vectors") as refused:
        build_catalog([str(folder)], export=False)
    assert f"tunesmith merge {folder} --out {folder}-model" in refused.value.hint


def test_a_whole_model_run_is_served_from_the_gguf_it_exported_and_says_its_base_is_not_loaded(
        tiny_model_dir, tmp_path, capsys):
    """A partial-kind run that exported Q8_0 is served from that file when no --quant is asked for (not written
    again as F16); asked for F16, F16 is written; the announcement says the base is not served beside it."""
    import yaml

    from tests.conftest import make_tiny_project
    from tunesmith.config import load_recipe
    from tunesmith.errors import TunesmithError
    from tunesmith.export.stage import export_formats
    from tunesmith.serve.catalog import build_catalog
    from tunesmith.serve.server import default_announce
    from tunesmith.train import run_training

    path = make_tiny_project(tmp_path, tiny_model_dir, eval_rows=4)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    path.write_text(yaml.safe_dump({**raw, "adapter": {"kind": "partial", "last_blocks": 1}}), encoding="utf-8")
    recipe = load_recipe(path, ["training.max_steps=2"])
    run = create_run(recipe, tmp_path / "runs")
    run_training(recipe, run)
    q8 = export_formats(recipe, run, ["gguf"], quant="Q8_0", verify=False).written["gguf"]  # a random tiny model
    [served] = build_catalog([f"whole={run.path}"])
    assert served.gguf == q8 and served.lora is None
    assert not (run.exports_dir / "gguf" / f"{recipe.name}.F16.gguf").exists()
    [f16] = build_catalog([f"whole={run.path}"], quant="F16")
    assert f16.gguf.name.endswith(".F16.gguf") and f16.gguf.is_file()
    default_announce([served], "127.0.0.1", 8000)
    assert "whole: served as whole models, so their base is not loaded" in capsys.readouterr().err
    export_formats(recipe, run, ["merged"])  # rewrote exports/manifest.json whole: the GGUFs' records went with it
    manifest_file = run.exports_dir / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    assert set(manifest["gguf"]) == {"Q8_0", "F16"} and "merged" in manifest
    manifest["gguf"]["Q8_0"]["verify"] = {"passed": False, "agreement": 0.42}  # as a failed llama.cpp check records it
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(TunesmithError, match=r"Q8_0\.gguf failed llama\.cpp's check .* on 42\.0% of next tokens"):
        build_catalog([f"whole={run.path}"], quant="Q8_0")
    [fallback] = build_catalog([f"whole={run.path}"])  # without --quant: the file that did not fail
    assert fallback.gguf == f16.gguf


def test_ordinary_patterns_pass_the_repetition_cap_and_spelled_out_ones_do_not():
    """Counts in sequence add up (a UUID is 36 units; multiplying them, 6,144, refused it); a count on a group
    multiplies what the group holds."""
    from tunesmith.serve.llama_engine import oversized_repetitions

    uuid = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
    email = r"^[a-z]{1,64}@[a-z]{1,255}\.[a-z]{2,63}$"
    assert oversized_repetitions({"type": "object", "properties": {"id": {"type": "string", "pattern": uuid},
                                                                   "mail": {"type": "string", "pattern": email}}}) == []
    for hostile in ("^a{20000000}$", "^a{0,28000}$", "((ab){10}){300}"):
        assert oversized_repetitions({"type": "string", "pattern": hostile}), hostile
