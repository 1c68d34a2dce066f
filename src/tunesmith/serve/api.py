"""The OpenAI-compatible HTTP layer over the llama.cpp engine (FastAPI): only what the engine lacks.

Routes: GET /v1/models, POST /v1/chat/completions, POST /v1/completions, GET /health, GET /metrics (Prometheus
text). Request and response shapes follow OpenAI's API reference (https://platform.openai.com/docs/api-reference
/chat); errors are OpenAI's `{"error": {"message", "type", "param", "code"}}` with a 4xx status for anything the
client sent wrong (malformed JSON, wrong types, unknown model, a limit exceeded) and 429 when the queue is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import hmac
import json
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunesmith.data.template import request_tool_names, split_tool_calls
from tunesmith.data.turns import arguments_fault
from tunesmith.scoring import THINK_CLOSE, THINK_OPEN
from tunesmith.serve.llama_engine import LlamaEngine, Piece, Sampling, json_schema_grammar


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and how many may wait (defaults suit one CPU box; raise them on a GPU)."""

    max_body_bytes: int = 1_000_000
    max_tokens: int = 2048  # per completion; a request without max_tokens gets min(this, the room left)
    max_n: int = 4
    max_queue: int = 64  # requests in flight or waiting; one more gets 429


# Request fields that change nothing an answer holds (bookkeeping for the client's own records): accepted and not read.
# Any other field this server does not read is refused, so that no setting is ignored without a word.
BOOKKEEPING_FIELDS = ("user", "metadata", "store", "service_tier", "parallel_tool_calls", "prompt_cache_key",
                      "safety_identifier")
MAX_STOP_SEQUENCES = 4  # OpenAI's limit


class Request(BaseModel):
    model_config = ConfigDict(extra="allow")  # read by `unsupported`: bookkeeping passes, anything else is refused

    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None  # OpenAI: up to 4 sequences, none empty (`unsupported` says so)
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    frequency_penalty: float = Field(0.0, ge=-2, le=2, allow_inf_nan=False)
    presence_penalty: float = Field(0.0, ge=-2, le=2, allow_inf_nan=False)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100, allow_inf_nan=False)]] | None = None  # id -> bias
    # llama.cpp's own sampling settings (its server's names), for clients that send them through extra_body
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0, le=1, allow_inf_nan=False)
    repeat_penalty: float = Field(1.0, gt=0, le=10, allow_inf_nan=False)
    logprobs: bool | int | None = None  # refused where asked for (`unsupported`): the engine's stream has none
    top_logprobs: int | None = None

    def unsupported(self) -> None:
        """Refuse what this server would otherwise ignore without a word (ApiError 400): logprobs, fields it does not
        read (a misspelt one too), more than MAX_STOP_SEQUENCES stop sequences or an empty one, a logit_bias key
        that is no token id."""
        if self.logprobs or self.top_logprobs:
            raise ApiError(400, "logprobs are not available from this server (tunesmith serve, llama.cpp engine).",
                           "logprobs", "unsupported_parameter")
        unread = sorted(set(self.model_extra or {}) - set(BOOKKEEPING_FIELDS))
        if unread:
            raise ApiError(400, f"{', '.join(map(repr, unread))}: not a setting this server (tunesmith serve, "
                                "llama.cpp engine) reads, so it would change nothing; remove it. Read: "
                                f"{', '.join(sorted(type(self).model_fields))}.", unread[0], "unsupported_parameter")
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        if len(stops) > MAX_STOP_SEQUENCES or "" in stops:
            raise ApiError(400, f"stop holds {len(stops)} sequence(s){', one of them empty' if '' in stops else ''}; "
                                f"up to {MAX_STOP_SEQUENCES} non-empty sequences are allowed.", "stop",
                           "invalid_value")
        bad = [key for key in self.logit_bias or {} if not (key.strip().isdecimal() and key.strip().isascii()
                                                            and len(key.strip()) <= 9)]
        if bad:
            raise ApiError(400, f"logit_bias keys are token ids (\"1234\"), got {bad[0]!r}.", "logit_bias",
                           "invalid_value")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")  # image_url and the like: not read (text models)

    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")  # tool_calls, tool_call_id, name

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart] | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatRequest(Request):
    messages: list[Message] = Field(min_length=1)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["auto", "none", "required"] | dict[str, Any] | None = None

    def unsupported(self) -> None:
        """Besides the base's: a tool schema without a function name or with parameters that are not an object (the
        model would be shown a tool it cannot call by name), and a tool_choice that forces a call, which this engine
        cannot do."""
        super().unsupported()
        for index, tool in enumerate(self.tools or []):
            check_tool_schema(tool, f"tools[{index}]")
        if self.tool_choice is not None and self.tool_choice not in ("auto", "none"):
            raise ApiError(400, f"tool_choice {self.tool_choice!r} forces a tool call, which this server (tunesmith "
                                "serve, llama.cpp engine) cannot do: the model decides whether to call. Leave "
                                "tool_choice out (auto), or send 'none' for an answer without calls.",
                           "tool_choice", "unsupported_parameter")

    def offered_tools(self) -> list[dict[str, Any]] | None:
        """The tools the model is shown: none under tool_choice 'none' (OpenAI: the model answers in words)."""
        return None if self.tool_choice == "none" else self.tools


class CompletionRequest(Request):
    prompt: str
    echo: bool = False

    def unsupported(self) -> None:
        super().unsupported()
        if self.echo:
            raise ApiError(400, "echo is not available from this server (tunesmith serve, llama.cpp engine).",
                           "echo", "unsupported_parameter")


TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for a function's name


def check_tool_schema(tool: dict[str, Any], where: str) -> None:
    """One entry of a request's `tools` as OpenAI's API takes it: `{"type": "function", "function": {"name": ...,
    "parameters": {...}}}`; a 400 naming the field otherwise (OpenAI refuses the same)."""
    example = ('{"type": "function", "function": {"name": "get_weather", "description": "...", "parameters": '
               '{"type": "object", "properties": {...}}}}')
    if tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
        raise ApiError(400, f"{where} must be a function tool, {example}; got type {tool.get('type')!r}.", where,
                       "invalid_value")
    name = tool["function"].get("name")
    if not isinstance(name, str) or not TOOL_NAME.match(name):
        raise ApiError(400, f"{where}.function.name must be 1-64 letters, digits, _ or -; got {name!r}.",
                       f"{where}.function.name", "invalid_value")
    parameters = tool["function"].get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise ApiError(400, f"{where}.function.parameters must be a JSON Schema object; got {parameters!r}.",
                       f"{where}.function.parameters", "invalid_value")


def check_tool_turns(messages: list[dict[str, Any]]) -> None:
    """The tool turns of a request's history as OpenAI's API takes them: a `tool` message answers a call of the
    assistant message before it (by `tool_call_id` where both have ids), and a call's arguments are a JSON object
    (a string holding one): a 400 naming the message otherwise, where the template would render a result of no call
    or arguments the model never learnt to read."""
    call_ids: list[str] | None = None  # the calls the latest assistant message made; None: no call to answer
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            calls = message.get("tool_calls") or []
            for number, call in enumerate(calls):
                arguments = (call.get("function") or {}).get("arguments") if isinstance(call, dict) else None
                fault = arguments_fault(arguments)
                if fault:
                    raise ApiError(400, f"messages[{index}].tool_calls[{number}].function.arguments {fault}.",
                                   f"messages[{index}].tool_calls", "invalid_value")
            ids = [call.get("id") for call in calls if isinstance(call, dict) and call.get("id")]
            call_ids = ids if calls else None
        elif message["role"] == "tool":
            if call_ids is None:
                raise ApiError(400, f"messages[{index}] is a tool result, but no assistant message with tool_calls "
                                    "comes before it.", f"messages[{index}]", "invalid_value")
            answered = message.get("tool_call_id")
            if answered and call_ids and answered not in call_ids:
                raise ApiError(400, f"messages[{index}].tool_call_id {answered!r} answers none of the calls before it "
                                    f"(their ids: {call_ids}).", f"messages[{index}].tool_call_id", "invalid_value")
        elif message["role"] == "user":
            call_ids = None


class ApiError(Exception):
    """An OpenAI-style error: HTTP status, message, type, the parameter at fault and a code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.model = ""  # the served model the refused request named (`counted_for`), "" before one is known

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or name to listen on) is this machine only: localhost, 127.0.0.0/8, ::1."""
    import ipaddress

    host = host.strip().lower().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback_hosts(host: str, api_key: str | None) -> tuple[str, ...] | None:
    """The Host header names a server listening on `host` answers: LOOPBACK_NAMES and `host` itself where it listens
    on this machine only and has no API key (the key guards the rest), else None (any). "" (a request without a Host
    header, HTTP/1.0) is answered: a browser always sends one."""
    if api_key is not None or not is_loopback(host):
        return None
    return tuple(dict.fromkeys((*LOOPBACK_NAMES, host.strip().lower().strip("[]"), "")))


def host_name(header: str) -> str:
    """The name in a Host header, without its port: "127.0.0.1:8000" -> "127.0.0.1", "[::1]:8000" -> "::1"."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


async def read_body_within(request: Any, max_bytes: int) -> bool:
    """Read the request's body as it arrives, stopping once it passes `max_bytes` (False); True with the body kept
    for the route. A Content-Length header alone cannot be trusted: a chunked body has none, or a wrong one."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            return False
        chunks.append(chunk)
    request._body = b"".join(chunks)  # what Starlette's middleware replays to the route (starlette.middleware.base)
    return True


def token_biases(body: Request, vocab_size: int) -> dict[int, float] | None:
    """logit_bias as the engine takes it (token id -> bias added to its logit; -100 bans a token, 100 all but forces
    it, as OpenAI's); ApiError 400 for an id outside the model's vocabulary."""
    if not body.logit_bias:
        return None
    biases = {int(key): value for key, value in body.logit_bias.items()}
    outside = [token for token in biases if token >= vocab_size]
    if outside:
        raise ApiError(400, f"logit_bias names token {outside[0]}, and this model's vocabulary has {vocab_size} "
                            f"tokens (0-{vocab_size - 1}).", "logit_bias", "invalid_value")
    return biases


def message_text(message: Message, index: int) -> str:
    """The text of `message` (the index-th): a string, or the text parts of a content list. Raises ApiError 400
    for a part these text models cannot read (an image, audio, a file) and for a turn with no content that is not
    an assistant's tool call."""
    content = message.content
    if content is None:
        if message.role == "assistant" and (message.model_extra or {}).get("tool_calls"):
            return ""
        raise ApiError(400, f"messages[{index}].content is missing; a {message.role} turn needs its text.",
                       f"messages[{index}].content", "invalid_value")
    if isinstance(content, str):
        return content
    for position, part in enumerate(content):
        if part.type != "text":
            raise ApiError(400, f"messages[{index}].content[{position}] is {part.type!r}: the models served here "
                                "read text only.", f"messages[{index}].content", "invalid_value")
    return "".join(part.text or "" for part in content)


@contextlib.contextmanager
def counted_for(name: str) -> Iterator[None]:
    """Refusals raised inside are counted under the served model `name` in /metrics."""
    try:
        yield
    except ApiError as error:
        error.model = name
        raise


class Metrics:
    """Prometheus counters per model: requests by endpoint and status, tokens, latency, time to first token."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("tunesmith_requests", "Requests answered", ["model", "endpoint", "status"],
                                registry=self.registry)
        self.prompt_tokens = Counter("tunesmith_prompt_tokens", "Prompt tokens processed", ["model"],
                                     registry=self.registry)
        self.completion_tokens = Counter("tunesmith_completion_tokens", "Tokens generated", ["model"],
                                         registry=self.registry)
        self.latency = Histogram("tunesmith_request_seconds", "Request latency", ["model"], registry=self.registry)
        self.first_token = Histogram("tunesmith_time_to_first_token_seconds", "Time to the first token", ["model"],
                                     registry=self.registry)
        self.in_flight = Gauge("tunesmith_requests_in_flight", "Requests in flight or waiting", registry=self.registry)
        self.switches = Gauge("tunesmith_adapter_switches", "LoRA adapter switches on a loaded base", ["base"],
                              registry=self.registry)

    def text(self, engine: LlamaEngine) -> bytes:
        from prometheus_client import generate_latest

        for path, base in engine.bases.items():
            self.switches.labels(path.name).set(base.switches)
        return generate_latest(self.registry)


def create_app(engine: LlamaEngine, limits: Limits | None = None, api_key: str | None = None,
               trusted_hosts: tuple[str, ...] | None = None) -> Any:
    """The FastAPI application serving `engine` under `limits`; `api_key`: required as a Bearer token on every
    route but /health; `trusted_hosts` (`loopback_hosts`): the Host header names answered (403 otherwise), against
    DNS rebinding, where a web page reaches a server on 127.0.0.1 through a name of its own."""
    from fastapi import FastAPI
    from fastapi import Request as HttpRequest
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
    from starlette.exceptions import HTTPException

    limits = limits or Limits()
    metrics = Metrics()
    app = FastAPI(title="tunesmith serve", docs_url=None, redoc_url=None, openapi_url=None)
    admitted = {"count": 0}
    created = int(time.time())
    turns: dict[Any, asyncio.Lock] = {}

    def turn(name: str) -> asyncio.Lock:
        """One generation at a time per loaded base, waited for in the event loop (a waiting request holds no
        worker thread, so a full queue cannot starve the one generating)."""
        return turns.setdefault(engine.models[name].gguf, asyncio.Lock())

    def error_response(request: HttpRequest, error: ApiError) -> JSONResponse:
        """The error's JSON, counted in the metrics by model, endpoint and status (model "" until the request named
        a served model: an unknown name is whatever the client sent, and would make a label of it)."""
        metrics.requests.labels(error.model, endpoint_name(request.url.path), str(error.status)).inc()
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(ApiError)
    async def api_error(request: HttpRequest, exc: ApiError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: HttpRequest, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, validation_error(exc.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request: HttpRequest, exc: HTTPException) -> JSONResponse:
        return error_response(request, ApiError(exc.status_code, str(exc.detail), code="not_found"
                                                if exc.status_code == 404 else None))

    @app.middleware("http")
    async def guard(request: HttpRequest, call_next: Any) -> Any:
        if trusted_hosts is not None and host_name(request.headers.get("host", "")) not in trusted_hosts:
            return error_response(request, ApiError(
                403, f"Host {request.headers.get('host', '')!r} is not this machine: without an API key the server "
                     f"answers requests to {', '.join(name for name in trusted_hosts if name)} only (a web page "
                     "cannot reach it through a name that points here). Send the request to http://127.0.0.1:PORT "
                     "(a reverse proxy: pass Host 127.0.0.1), or start the server with --api-key-env VAR.",
                code="untrusted_host", kind="permission_error"))
        if api_key is not None and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return error_response(request, ApiError(
                    401, "Missing or wrong API key (send Authorization: Bearer KEY).", code="invalid_api_key"))
        declared = request.headers.get("content-length")
        if ((declared is not None and (not declared.isdigit() or int(declared) > limits.max_body_bytes))
                or (request.method == "POST" and not await read_body_within(request, limits.max_body_bytes))):
            return error_response(request, ApiError(413, f"The request body is over {limits.max_body_bytes:,} bytes.",
                                                    code="request_too_large"))
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(engine.models), "in_flight": admitted["count"]}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.text(engine), media_type="text/plain; version=0.0.4")

    def model_object(model: Any) -> dict[str, Any]:
        parent = next((m.name for m in engine.models.values() if m.gguf == model.gguf and m.lora is None
                       and m.run is None), None) if model.lora else None
        return {"id": model.name, "object": "model", "created": created, "owned_by": "tunesmith", "parent": parent,
                "root": parent or model.name}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_object(model) for model in engine.models.values()]}

    @app.get("/v1/models/{name}")
    async def retrieve_model(name: str) -> dict[str, Any]:
        return model_object(engine.models[known(name)])

    def known(name: str) -> str:
        if name not in engine.models:
            close = difflib.get_close_matches(name, list(engine.models), n=1)
            guess = f"; did you mean {close[0]!r}?" if close else "."
            raise ApiError(404, f"The model {name!r} is not served here{guess} Served: "
                                f"{', '.join(sorted(engine.models))} (GET /v1/models).",
                           "model", "model_not_found")
        return name

    def sampling(name: str, body: Request, prompt_tokens: int, json_schema: dict[str, Any] | None = None,
                 json_object: bool = False) -> Sampling:
        if body.n > limits.max_n:
            raise ApiError(400, f"n={body.n} is over this server's limit of {limits.max_n}.", "n", "invalid_value")
        room = engine.n_ctx - prompt_tokens
        if room < 1:
            raise ApiError(400, f"The prompt is {prompt_tokens} tokens; the context holds {engine.n_ctx}. Send a "
                                "shorter conversation, or start the server with a larger --n-ctx (up to the "
                                "model's context length).", "messages", "context_length_exceeded")
        asked = body.max_completion_tokens or body.max_tokens
        most = min(limits.max_tokens, room)
        if asked is not None and asked > most:
            raise ApiError(400, f"max_tokens={asked} is over what this request may generate: {most} (server limit "
                           f"{limits.max_tokens}, context room {room}).", "max_tokens", "invalid_value")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        return Sampling(max_tokens=asked or min(limits.max_tokens, room), temperature=body.temperature,
                        top_p=body.top_p, stop=stop, seed=body.seed, json_schema=json_schema, json_object=json_object,
                        frequency_penalty=body.frequency_penalty, presence_penalty=body.presence_penalty,
                        logit_bias=token_biases(body, engine.vocab_size(name)), top_k=body.top_k, min_p=body.min_p,
                        repeat_penalty=body.repeat_penalty)

    def admit() -> Callable[[], None]:
        """Take a slot in the queue; returns its release, which frees the slot once however often it is called
        (a stream frees it both when its events end and when its response ends, whichever comes first)."""
        if admitted["count"] >= limits.max_queue:
            raise ApiError(429, f"The server is busy ({limits.max_queue} requests in flight or waiting); retry "
                                "shortly.", code="rate_limit_exceeded", kind="rate_limit_error")
        admitted["count"] += 1
        metrics.in_flight.set(admitted["count"])
        held = [True]

        def release() -> None:
            if held:
                held.clear()
                admitted["count"] -= 1
                metrics.in_flight.set(admitted["count"])
        return release

    def record(name: str, endpoint: str, started: float, prompt: int, completion: int) -> None:
        metrics.requests.labels(name, endpoint, "200").inc()
        metrics.prompt_tokens.labels(name).inc(prompt)
        metrics.completion_tokens.labels(name).inc(completion)
        metrics.latency.labels(name).observe(time.perf_counter() - started)

    def response_schema(body: ChatRequest) -> tuple[dict[str, Any] | None, bool]:
        form = body.response_format
        if form is None or form.type == "text":
            return None, False
        if form.type == "json_object":
            return None, True
        schema = (form.json_schema or {}).get("schema")
        if not isinstance(schema, dict):
            raise ApiError(400, "response_format.json_schema.schema must be a JSON schema object.",
                           "response_format", "invalid_value")
        try:
            json_schema_grammar(schema)
        except ValueError as exc:
            raise ApiError(400, f"response_format.json_schema.schema cannot be turned into a grammar for "
                                f"constrained decoding: {exc}", "response_format", "invalid_value") from None
        return schema, False

    async def complete(name: str, endpoint: str, prompt_ids: list[int], settings: Sampling, body: Request,
                       shape: Any) -> Any:
        started = time.perf_counter()
        release = admit()
        if body.stream:
            events = stream_events(name, endpoint, prompt_ids, settings, body, shape, started, release)
            return ReleasingStream(events, release, media_type="text/event-stream")
        try:
            texts, reasons = [], []
            async with turn(name):
                for index in range(body.n):
                    pieces = await run_in_threadpool(collect, name, prompt_ids, with_seed(settings, index))
                    texts.append("".join(p.text for p in pieces))
                    reasons.append(next((p.finish_reason for p in reversed(pieces) if p.finish_reason), "stop"))
        finally:
            release()
        completion = sum(engine.count_tokens(name, text) for text in texts)
        record(name, endpoint, started, len(prompt_ids), completion)
        usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": completion,
                 "total_tokens": len(prompt_ids) + completion}
        return shape.whole(name, texts, reasons, usage)

    def collect(name: str, prompt_ids: list[int], settings: Sampling) -> list[Piece]:
        return list(engine.generate(name, prompt_ids, settings, threading.Event()))

    async def stream_events(name: str, endpoint: str, prompt_ids: list[int], settings: Sampling, body: Request,
                            shape: Any, started: float, release: Callable[[], None]) -> AsyncIterator[str]:
        cancelled = threading.Event()
        ident, completion, first = shape.ident(), 0, True
        pieces: Iterator[Piece] | None = None
        try:
            await turn(name).acquire()
        except BaseException:
            release()
            raise
        try:
            for index in range(body.n):
                yield sse(shape.opening(ident, name, index))
                pieces = engine.generate(name, prompt_ids, with_seed(settings, index), cancelled)
                text, reason, splitter = "", "stop", shape.splitter()
                async for piece in iterate_in_threadpool(pieces):
                    if first:
                        metrics.first_token.labels(name).observe(time.perf_counter() - started)
                        first = False
                    text += piece.text
                    reason = piece.finish_reason or reason
                    if not shape.tool_names:
                        for event in shape.streamed(ident, name, index, piece.text, piece.finish_reason, splitter):
                            yield sse(event)
                if shape.tool_names:
                    for event in shape.buffered(ident, name, index, text, reason):
                        yield sse(event)
                completion += engine.count_tokens(name, text)
            if (body.stream_options or {}).get("include_usage"):
                yield sse(shape.usage_chunk(ident, name, {"prompt_tokens": len(prompt_ids),
                                                          "completion_tokens": completion,
                                                          "total_tokens": len(prompt_ids) + completion}))
            yield "data: [DONE]\n\n"
            record(name, endpoint, started, len(prompt_ids), completion)
        finally:
            cancelled.set()
            if pieces is not None:  # a client that left mid-stream: stop its generation and free the context
                pieces.close()  # no worker is inside it: anyio lets a thread call finish before cancelling
            turn(name).release()
            release()

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest) -> Any:
        name = known(body.model)
        with counted_for(name):
            return await chat_completion(name, body)

    async def chat_completion(name: str, body: ChatRequest) -> Any:
        body.unsupported()
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": message_text(m, index),
                     **{k: v for k, v in (m.model_extra or {}).items() if k in ("tool_calls", "tool_call_id", "name")}}
                    for index, m in enumerate(body.messages)]
        check_tool_turns(messages)
        schema, json_object = await run_in_threadpool(response_schema, body)  # a big schema's grammar takes time
        try:
            prompt_ids = engine.chat_prompt(name, messages, body.offered_tools())
            ignored_tools = bool(body.offered_tools()) and prompt_ids == engine.chat_prompt(name, messages, None)
        except Exception as exc:  # a template that rejects these messages (roles out of order, tools unsupported)
            raise ApiError(400, f"The model's chat template cannot render these messages: {exc}", "messages",
                           "invalid_value") from None
        if ignored_tools:
            raise ApiError(400, f"The chat template of {name!r} has no place for tools: it renders the same prompt "
                                "with them as without, so the model would never see them. Describe the tools in a "
                                "system message, or serve a model whose template renders `tools`.", "tools",
                           "unsupported_parameter")
        settings = sampling(name, body, len(prompt_ids), schema, json_object)
        # DeepSeek-R1's prompt opens the reasoning; a grammar (response_format) makes the whole answer its JSON
        opened = schema is None and not json_object and \
            engine.tokenizer(name).decode(prompt_ids[-4:]).rstrip().endswith(THINK_OPEN)
        return await complete(name, "chat", prompt_ids, settings, body,
                              ChatShape(request_tool_names(body.offered_tools()), opened))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Any:
        name = known(body.model)
        with counted_for(name):
            return await text_completion(name, body)

    async def text_completion(name: str, body: CompletionRequest) -> Any:
        body.unsupported()
        try:
            prompt_ids = engine.text_prompt(name, body.prompt)
        except Exception as exc:  # text the tokenizer cannot encode (a lone surrogate, ...)
            raise ApiError(400, f"The prompt cannot be tokenized: {exc}", "prompt", "invalid_value") from None
        settings = sampling(name, body, len(prompt_ids))
        return await complete(name, "completions", prompt_ids, settings, body, CompletionShape())

    class ReleasingStream(StreamingResponse):
        """Server-sent events that free their queue slot when the response ends, even when the client left
        before the first event (then the event generator never started, and its own `finally` never runs)."""

        def __init__(self, events: AsyncIterator[str], release: Callable[[], None], **options: Any) -> None:
            super().__init__(events, **options)
            self.events, self.release = events, release

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                try:
                    await self.events.aclose()  # type: ignore[attr-defined]  # its cleanup, if it began
                finally:
                    self.release()

    return app


ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/models": "models"}


def endpoint_name(path: str) -> str:
    """The /metrics `endpoint` label of a request path: `models` for /v1/models and /v1/models/{id} too, `other`
    for a path the API does not serve."""
    return ENDPOINTS.get(path) or ("models" if path.startswith("/v1/models/") else "other")


UNION_MEMBER = re.compile(r"^(literal\[|function-|dict\[|list\[|str$|int$|float$|bool$)")


def validation_error(errors: list[Any]) -> ApiError:
    """The first of pydantic's/FastAPI's validation errors as a 400: the parameter at fault, or for a body that is
    not JSON, where its parsing stopped."""
    first = errors[0] if errors else {}
    # pydantic names the union member it tried (`tool_choice.literal['auto','none','required']`): the field is enough
    location = [str(part) for part in first.get("loc", ()) if part != "body" and not UNION_MEMBER.match(str(part))]
    if first.get("type") == "json_invalid":
        at = f" at character {location[0]}" if location else ""
        reason = (first.get("ctx") or {}).get("error", "")
        return ApiError(400, f"The request body is not valid JSON{at}" + (f": {reason}." if reason else "."), None,
                        "invalid_json")
    where = ".".join(location)
    return ApiError(400, f"{where or 'body'}: {first.get('msg', 'invalid request')}", where or None, "invalid_value")


def with_seed(settings: Sampling, index: int) -> Sampling:
    """The index-th of n choices: the same settings, the seed moved on so choices differ but stay reproducible."""
    if settings.seed is None or index == 0:
        return settings
    return Sampling(**{**settings.__dict__, "seed": settings.seed + index})


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


@dataclass(frozen=True)
class ChatShape:
    """Chat completion objects (`chat.completion`, `chat.completion.chunk`). With `tool_names` (the request offered
    tools), calls to them in an answer come back as `tool_calls` with finish_reason `tool_calls`; a stream then
    sends each answer whole once it is written, since a call can only be told from text at its end."""

    tool_names: frozenset[str] = frozenset()
    opened_reasoning: bool = False  # the prompt ends with an open <think>: the answer starts inside the reasoning

    def ident(self) -> str:
        return f"chatcmpl-{uuid.uuid4().hex[:24]}"

    def splitter(self) -> ReasoningSplitter | None:
        return ReasoningSplitter(self.opened_reasoning)

    def streamed(self, ident: str, name: str, index: int, text: str, reason: str | None,
                 splitter: ReasoningSplitter | None) -> list[dict[str, Any]]:
        """The chunks of one generated piece: its reasoning and content deltas (`ReasoningSplitter`), then, on the
        last piece, the finish reason."""
        assert splitter is not None
        deltas = splitter.feed(text) + (splitter.finish() if reason else [])
        chunks = [self.envelope(ident, name, [{"index": index, "delta": {key: part}, "finish_reason": None}])
                  for key, part in deltas]
        if reason:
            chunks.append(self.envelope(ident, name, [{"index": index, "delta": {}, "finish_reason": reason}]))
        return chunks

    def whole(self, name: str, texts: list[str], reasons: list[str], usage: dict[str, int]) -> dict[str, Any]:
        choices = []
        for index, (text, reason) in enumerate(zip(texts, reasons, strict=True)):
            message, reason = self.message(text, reason)
            choices.append({"index": index, "message": {"role": "assistant", **message}, "finish_reason": reason,
                            "logprobs": None})
        return {"id": self.ident(), "object": "chat.completion", "created": int(time.time()), "model": name,
                "choices": choices, "usage": usage}

    def message(self, text: str, reason: str) -> tuple[dict[str, Any], str]:
        """The assistant message's content (and tool_calls, and a reasoning model's `reasoning_content`) for `text`,
        and its finish reason."""
        splitter = ReasoningSplitter(self.opened_reasoning)
        parts: dict[str, str] = {}
        for key, part in splitter.feed(text) + splitter.finish():
            parts[key] = parts.get(key, "") + part
        answer, thought = parts.get("content", ""), parts.get("reasoning_content")
        reasoning = {"reasoning_content": thought} if thought is not None else {}
        content, calls = split_tool_calls(answer, self.tool_names) if self.tool_names else (answer, [])
        if calls:
            return {"content": content, **reasoning, "tool_calls": calls}, "tool_calls"
        return {"content": answer, **reasoning}, reason

    def buffered(self, ident: str, name: str, index: int, text: str, reason: str) -> list[dict[str, Any]]:
        """A whole answer as the chunks a stream of it ends with: its text, its tool calls, its finish reason."""
        message, reason = self.message(text, reason)
        deltas: list[dict[str, Any]] = ([{"reasoning_content": message["reasoning_content"]}]
                                        if message.get("reasoning_content") else [])
        deltas += [{"content": message["content"]}] if message["content"] else []
        deltas += [{"tool_calls": [{"index": position, **call}]} for position, call in
                   enumerate(message.get("tool_calls", []))]
        chunks = [self.envelope(ident, name, [{"index": index, "delta": delta, "finish_reason": None}])
                  for delta in deltas]
        return [*chunks, self.envelope(ident, name, [{"index": index, "delta": {}, "finish_reason": reason}])]

    def opening(self, ident: str, name: str, index: int) -> dict[str, Any]:
        return self.envelope(ident, name, [{"index": index, "delta": {"role": "assistant", "content": ""},
                                            "finish_reason": None}])

    def usage_chunk(self, ident: str, name: str, usage: dict[str, int]) -> dict[str, Any]:
        return {**self.envelope(ident, name, []), "usage": usage}

    def envelope(self, ident: str, name: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": ident, "object": "chat.completion.chunk", "created": int(time.time()), "model": name,
                "choices": choices}


class ReasoningSplitter:
    """A reasoning model's answer as it streams in, split into `reasoning_content` (the text inside its <think>
    block: from the start where the prompt opened the block, DeepSeek-R1's, else from a <think> the answer opens) and
    `content` (the answer after </think>, leading blank lines left out): the fields DeepSeek's API, vLLM's reasoning
    parsers and llama.cpp's server (`--reasoning-format deepseek`) answer with. Text that may still be the start of
    a tag is held back until the next piece shows what it is; an answer without a <think> block is all content."""

    def __init__(self, opened: bool) -> None:
        self.state = "reasoning" if opened else "start"
        self.held = ""

    def feed(self, text: str) -> list[tuple[str, str]]:
        """The (field, text) deltas `text` completes, in order."""
        self.held += text
        out: list[tuple[str, str]] = []
        while self.held:
            if self.state == "start":  # before the answer's first characters: is it a <think> block?
                stripped = self.held.lstrip()
                if stripped.startswith(THINK_OPEN):
                    self.held, self.state = stripped[len(THINK_OPEN):], "opened"
                elif not stripped or THINK_OPEN.startswith(stripped):
                    break  # blank, or the start of a tag: wait for more
                else:
                    self.state = "content"
            elif self.state == "opened":  # the line break after <think>
                self.held = self.held.lstrip("\n")
                self.state = "reasoning" if self.held else "opened"
            elif self.state == "reasoning":
                at = self.held.find(THINK_CLOSE)
                if at >= 0:
                    out.append(("reasoning_content", self.held[:at].rstrip("\n")))
                    self.held, self.state = self.held[at + len(THINK_CLOSE):], "after"
                    continue
                tag = next((size for size in range(len(THINK_CLOSE) - 1, 0, -1)
                            if self.held.endswith(THINK_CLOSE[:size])), 0)
                ready = self.held[:len(self.held) - tag].rstrip("\n")  # line breaks before </think> are not sent
                out.append(("reasoning_content", ready))
                self.held = self.held[len(ready):]
                break
            elif self.state == "after":  # the blank lines between </think> and the answer
                self.held = self.held.lstrip()
                self.state = "content" if self.held else "after"
            else:
                out.append(("content", self.held))
                self.held = ""
        return [(key, part) for key, part in out if part]

    def finish(self) -> list[tuple[str, str]]:
        """What is still held when the answer ends: reasoning cut off by the token limit stays reasoning."""
        held, self.held = self.held, ""
        key = "reasoning_content" if self.state in ("opened", "reasoning") else "content"
        held = held.rstrip("\n") if key == "reasoning_content" else held
        return [(key, held)] if held and self.state != "after" else []


@dataclass(frozen=True)
class CompletionShape(ChatShape):
    """Legacy completion objects (`text_completion`): the text as generated, reasoning and all."""

    def ident(self) -> str:
        return f"cmpl-{uuid.uuid4().hex[:24]}"

    def splitter(self) -> ReasoningSplitter | None:
        return None

    def streamed(self, ident: str, name: str, index: int, text: str, reason: str | None,
                 splitter: ReasoningSplitter | None) -> list[dict[str, Any]]:
        return [self.chunk(ident, name, index, text, reason)]

    def whole(self, name: str, texts: list[str], reasons: list[str], usage: dict[str, int]) -> dict[str, Any]:
        return {"id": self.ident(), "object": "text_completion", "created": int(time.time()), "model": name,
                "choices": [{"index": i, "text": text, "finish_reason": reason, "logprobs": None}
                            for i, (text, reason) in enumerate(zip(texts, reasons, strict=True))], "usage": usage}

    def opening(self, ident: str, name: str, index: int) -> dict[str, Any]:
        return self.envelope(ident, name, [{"index": index, "text": "", "finish_reason": None, "logprobs": None}])

    def chunk(self, ident: str, name: str, index: int, text: str, reason: str | None) -> dict[str, Any]:
        return self.envelope(ident, name, [{"index": index, "text": text, "finish_reason": reason, "logprobs": None}])

    def envelope(self, ident: str, name: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": ident, "object": "text_completion", "created": int(time.time()), "model": name,
                "choices": choices}
