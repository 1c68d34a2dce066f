"""`tunesmith chat`: talk to a base model, a run's result or a base with an adapter, in the terminal.

The chat template is applied to the whole history each turn, and the reply streams as it is generated.
The loop reads lines from a function it is given (not from stdin directly), so it can be tested.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunesmith.data.constraint import Constraint
from tunesmith.data.template import request_tool_names, require_chat_template, split_tool_calls
from tunesmith.errors import TunesmithError, shell_arg
from tunesmith.eval.constrained import processor_factory
from tunesmith.scoring import final_answer

COMMANDS_HELP = ('Commands: /reset starts over, /exit (or end of input) quits; a message of several lines goes '
                 'between """ and """.')
MULTILINE_QUOTE = '"""'  # Ollama's `ollama run` marks a message of several lines the same way
TOOLS_HELP = "/tool RESULT gives the model the result of its last tool call (JSON or text)."
Row = dict[str, Any]


@dataclass
class ChatSession:
    """A model, its tokenizer and the conversation so far (the system turn survives /reset)."""

    model: Any
    tokenizer: Any
    system: str | None = None
    max_new_tokens: int = 256
    messages: list[dict[str, str]] = field(default_factory=list)
    constraint: Constraint | None = None  # --json-schema / --choices: every reply is held to it
    # a run's data fallbacks (data.system_fallback, data.tool_format): the row ({"messages", "tools"}) as training
    # rendered it
    render: Callable[[Row], Row] | None = None
    tools: list[dict[str, Any]] | None = None  # --tools: the function schemas offered with every turn

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def reply(self, text: str, write: Callable[[str], None]) -> str:
        """Answer `text` given the history, streaming the answer to `write`; both turns join the history.

        Raises TunesmithError where the model's chat template refuses the conversation (a system turn on a template
        without a system role), naming the fix."""
        return self.answer({"role": "user", "content": text}, write)

    def tool_result(self, text: str, write: Callable[[str], None]) -> str:
        """Give the model `text` as the result of its last tool call (a `tool` turn), and stream its answer.

        Raises TunesmithError when the last turn is not a tool call or another tool result."""
        if not self.awaits_tool_result():
            raise TunesmithError("No tool call to answer: the model's last turn called no tool.",
                                 "Use /tool RESULT right after an answer that calls one of the --tools.")
        calls = self.messages[-1].get("tool_calls") or []
        turn = {"role": "tool", "content": text, **({"tool_call_id": calls[0]["id"]} if calls else {})}
        return self.answer(turn, write)

    def awaits_tool_result(self) -> bool:
        """Whether the last turn is a tool call (or a result, after which parallel calls' next result may come)."""
        last = self.messages[-1] if self.messages else {}
        return last.get("role") == "tool" or bool(last.get("tool_calls"))

    def answer(self, turn: dict[str, Any], write: Callable[[str], None]) -> str:
        """Add `turn`, generate the assistant's answer and add it (its calls to the --tools as `tool_calls`)."""
        self.messages.append(turn)
        processor = None
        if self.constraint is not None:
            processor = processor_factory(self.constraint, self.tokenizer, self.model)()
        try:
            answer = generate_streamed(self.model, self.tokenizer, self.prompt_row(), self.max_new_tokens, write,
                                       processor)
        except Exception as exc:
            if type(exc).__name__ != "TemplateError":  # jinja2's, raised by the template itself
                raise
            self.messages.pop()
            hint = ("A template without a system role: drop --system, or chat with a run trained with "
                    "data.system_fallback: merge (its system prompt joins the first user turn)." if "system" in
                    str(exc).lower() else "Check the model's chat template (`tunesmith doctor --model MODEL`).")
            raise TunesmithError(f"The model's chat template refuses this conversation: {exc}.", hint) from None
        self.messages.append(assistant_turn(answer, self.tools))
        write(tool_call_note(self.messages[-1]))
        return answer

    def prompt_row(self) -> Row:
        """The conversation (with the --tools) as the model sees it: through the run's fallbacks when it has any."""
        row: Row = {"messages": self.messages, **({"tools": self.tools} if self.tools else {})}
        return self.render(row) if self.render is not None else row


def assistant_turn(answer: str, tools: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The answer as an assistant turn; its calls to the offered tools as OpenAI `tool_calls`, as `serve` returns
    them (`data.template.split_tool_calls`), so the next prompt renders them as the template renders calls. A
    reasoning model's thinking is shown as it streams but left out of the history (`scoring.final_answer`), as
    DeepSeek's API asks and reasoning templates do with earlier answers."""
    answer = final_answer(answer)
    if not tools:
        return {"role": "assistant", "content": answer}
    content, calls = split_tool_calls(answer, request_tool_names(tools))
    return {"role": "assistant", "content": content or "", **({"tool_calls": calls} if calls else {})}


def tool_call_note(turn: dict[str, Any]) -> str:
    """A line per call the turn made, and how to answer it ('' for a turn that called nothing)."""
    calls = turn.get("tool_calls") or []
    lines = [f"(calls {call['function']['name']}({call['function']['arguments']}))" for call in calls]
    return "".join(f"{line}\n" for line in lines) + (f"{TOOLS_HELP}\n" if calls else "")


def load_tools_file(path: Path) -> list[dict[str, Any]]:
    """The function schemas in a JSON file (a list, OpenAI's `{"type": "function", "function": {...}}` or bare
    `{"name", "description", "parameters"}` as LLaMA-Factory writes them), in OpenAI's form.

    Raises TunesmithError naming the file when it is missing, is not JSON or holds something else."""
    import json

    from tunesmith.data.turns import tool_schemas
    from tunesmith.errors import DataError

    hint = ('--tools takes a JSON file holding a list of function schemas, e.g. [{"type": "function", "function": '
            '{"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}].')
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
        schemas = tool_schemas([value] if isinstance(value, dict) else value)  # one schema alone is a list of one
    except OSError as exc:
        raise TunesmithError(f"Cannot read --tools {path}: {exc.strerror or exc}.", hint) from None
    except json.JSONDecodeError as exc:
        raise TunesmithError(f"--tools {path} is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).",
                             hint) from None
    except DataError as exc:
        raise TunesmithError(f"--tools {path}: {exc.message}", hint) from None
    except UnicodeDecodeError as exc:
        raise TunesmithError(f"--tools {path} is not UTF-8 text (byte {exc.start}).", "Save it as UTF-8.") from None
    if not request_tool_names(schemas):
        raise TunesmithError(f"--tools {path} names no function.", hint)
    return schemas


def check_tools_reach_prompt(tokenizer: Any, tools: list[dict[str, Any]], render: Callable[[Row], Row] | None,
                             model: str) -> None:
    """Refuse --tools that the prompt would not show: a chat template without tool support drops them silently.

    Raises TunesmithError naming the fix (a run trained with `data.tool_format: hermes` writes them itself)."""
    row: Row = {"messages": [{"role": "user", "content": "hi"}], "tools": tools}
    row = render(row) if render is not None else row
    text = tokenizer.apply_chat_template(row["messages"], tools=row.get("tools"), tokenize=False,
                                         add_generation_prompt=True)
    missing = sorted(name for name in request_tool_names(tools) if name not in text)
    if missing:
        raise TunesmithError(f"The chat template of {model} does not show tools to the model: {missing} do not reach "
                             "the prompt.", "Chat with a run trained with data.tool_format: hermes (it writes the "
                                            "tools into the system turn), or with a model whose template takes tools.")


def run_rendering(run_path: Path) -> tuple[str | None, Callable[[Row], Row]]:
    """What a run's training put around each conversation: its recipe's data.system_prompt (None without one) and
    its data fallbacks (`data/fallbacks.py` `apply_fallbacks`: a merged system turn, hermes tool turns), so that chat
    prompts the tuned model as training and `serve` do."""
    from tunesmith.data.fallbacks import apply_fallbacks
    from tunesmith.runs import Run

    data = Run(run_path).load_recipe().data
    return data.system_prompt, lambda row: apply_fallbacks(row, data)


@dataclass
class RemoteChatSession(ChatSession):
    """The same conversation, answered by a running OpenAI-compatible server (`tunesmith serve`, vLLM, Ollama):
    `model` is the served model's name, `url` the API's base (…/v1), `api_key` sent as a Bearer token."""

    url: str = "http://127.0.0.1:8000/v1"
    api_key: str | None = None
    response_format: dict[str, Any] | None = None  # --json-schema: OpenAI's json_schema response format

    def awaits_tool_result(self) -> bool:
        """Whether the last turn is a tool call (or a result, after which parallel calls' next result may come)."""
        last = self.messages[-1] if self.messages else {}
        return last.get("role") == "tool" or bool(last.get("tool_calls"))

    def answer(self, turn: dict[str, Any], write: Callable[[str], None]) -> str:
        """Add `turn`; the server's answer (and the calls it returns as `tool_calls`) joins the history."""
        self.messages.append(turn)
        answer, calls = stream_remote_reply(self.url, self.api_key, self.model, self.messages, self.max_new_tokens,
                                            write, self.tools, self.response_format)
        self.messages.append({"role": "assistant", "content": answer or None, "tool_calls": calls} if calls else
                             {"role": "assistant", "content": answer})
        write(tool_call_note(self.messages[-1]))
        return answer


def stream_remote_reply(url: str, api_key: str | None, model: str, messages: list[dict[str, Any]],
                        max_tokens: int, write: Callable[[str], None], tools: list[dict[str, Any]] | None = None,
                        response_format: dict[str, Any] | None = None) -> tuple[str, list[dict[str, Any]]]:
    """POST /chat/completions with `stream` (greedy; `tools` and `response_format` sent when given), writing each
    piece of the server-sent events as it comes (a reasoning model's `reasoning_content` inside a <think> block);
    returns the answer's text (the history keeps the answer, not the reasoning, as DeepSeek's API asks) and its
    `tool_calls` (OpenAI's streamed fragments joined by index). An HTTP error becomes a TunesmithError with the
    server's message."""
    import contextlib
    import json
    import urllib.error
    import urllib.request

    from tunesmith.errors import TunesmithError

    body = json.dumps({"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True, **({"tools": tools} if tools else {}),
                       **({"response_format": response_format} if response_format else {})}).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    request = urllib.request.Request(url.rstrip("/") + "/chat/completions", body, headers, method="POST")
    pieces: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    thinking = False  # a reasoning model's `reasoning_content` is shown in a <think> block before the answer
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            for raw in response:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                for choice in json.loads(line[6:]).get("choices", []):
                    delta = choice.get("delta") or {}
                    reasoning, piece = delta.get("reasoning_content") or "", delta.get("content") or ""
                    if reasoning:
                        write(("" if thinking else "<think>\n") + reasoning)
                        thinking = True
                    if piece and thinking:
                        write("\n</think>\n\n")
                        thinking = False
                    pieces.append(piece)
                    write(piece)
                    for fragment in delta.get("tool_calls") or []:
                        join_call_fragment(calls, fragment)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        with contextlib.suppress(ValueError, KeyError, TypeError):  # OpenAI's error shape, when it is one
            detail = json.loads(detail)["error"]["message"]
        if exc.code == 404 and "model" not in detail.lower():  # the path is not served: the base URL lacks /v1
            raise no_api_at(url, "chat/completions") from None
        raise TunesmithError(f"{url} answered {exc.code}: {detail}", "Check the model name (the first argument; GET "
                             f"{url.rstrip('/')}/models lists those served) and the API key (--api-key-env).") from None
    except urllib.error.URLError as exc:
        raise TunesmithError(f"Cannot reach {url}: {exc.reason}.", "Start the server: tunesmith serve RUN") from None
    write("\n</think>\n" if thinking else "\n")
    return "".join(pieces).strip(), [calls[index] for index in sorted(calls)]


def no_api_at(url: str, path: str) -> Any:
    """The error for a 404 on an OpenAI path: the address serves no such API, most often for want of /v1."""
    from tunesmith.errors import TunesmithError

    return TunesmithError(f"{url} answered 404 for {url.rstrip('/')}/{path}: no OpenAI-compatible API at that address.",
                          "An OpenAI-compatible base URL usually ends in /v1, as `tunesmith serve` prints it "
                          f"(--url {url.rstrip('/')}/v1).")


def check_served_model(url: str, api_key: str | None, model: str) -> None:
    """Before the first prompt: the server at `url` answers GET /models (with the key) and serves `model`; a
    TunesmithError naming what is wrong (unreachable, no /v1, a refused key, a model of another name) otherwise."""
    import difflib
    import json
    import urllib.error
    import urllib.request

    from tunesmith.errors import TunesmithError

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    request = urllib.request.Request(url.rstrip("/") + "/models", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            served = [entry.get("id") for entry in json.loads(response.read()).get("data", [])]
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise no_api_at(url, "models") from None
        if exc.code == 401:
            raise TunesmithError(f"{url} refused the API key (401).", "Pass the variable holding the key the server "
                                 "was started with: --api-key-env VAR.") from None
        return  # another answer to /models: the chat request will say what the server thinks
    except (urllib.error.URLError, OSError) as exc:
        raise TunesmithError(f"Cannot reach {url}: {getattr(exc, 'reason', exc)}.",
                             "Start the server (tunesmith serve RUN), or check the address.") from None
    except ValueError:
        return  # not OpenAI's listing: leave it to the chat request
    if served and model not in served:
        close = difflib.get_close_matches(model, [name for name in served if isinstance(name, str)], n=1)
        raise TunesmithError(f"{url} does not serve {model!r}; it serves {', '.join(map(str, served))}.",
                             f"Did you mean {close[0]!r}?" if close else "Name one of those.")


def join_call_fragment(calls: dict[int, dict[str, Any]], fragment: dict[str, Any]) -> None:
    """Add one streamed `tool_calls` fragment to `calls` (by its index): the first brings the id and name, later
    ones more characters of the arguments (OpenAI's streaming format)."""
    call = calls.setdefault(fragment.get("index", len(calls)),
                            {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
    call["id"] = fragment.get("id") or call["id"]
    function = fragment.get("function") or {}
    call["function"]["name"] += function.get("name") or ""
    call["function"]["arguments"] += function.get("arguments") or ""


def generate_streamed(model: Any, tokenizer: Any, row: Row, max_new_tokens: int,
                      write: Callable[[str], None], processor: Any = None) -> str:
    """Greedy answer to the conversation `row` ({"messages", optional "tools"}); text goes to `write` as whole words
    are decoded (`processor`: a constrained-decoding logits processor)."""
    from transformers import LogitsProcessorList

    from tunesmith.models.loading import stop_token_ids

    extra_template = {"tools": row["tools"]} if row.get("tools") else {}
    enc = tokenizer.apply_chat_template(row["messages"], add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True, **extra_template).to(model.device)
    extra = {"logits_processor": LogitsProcessorList([processor])} if processor is not None else {}
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             streamer=writer_streamer(tokenizer, write), pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=stop_token_ids(tokenizer, model.generation_config.eos_token_id), **extra)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def writer_streamer(tokenizer: Any, write: Callable[[str], None]) -> Any:
    """transformers' TextStreamer, writing to `write` instead of print (the prompt is not echoed)."""
    from transformers import TextStreamer

    class _Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            write(text + ("\n" if stream_end else ""))

    return _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def chat_loop(session: ChatSession, read_line: Callable[[str], str], write: Callable[[str], None],
              say: Callable[[str], None] | None = None) -> int:
    """Read a line, answer it, until /exit or end of input; returns how many replies were given. The replies go to
    `write`; the labels and notes around them (`assistant> `, "(history cleared)") to `say` (default: `write`; the
    CLI sends them to stderr when its input is piped, so that stdout holds the replies alone)."""
    say = say or write
    replies = 0
    while True:
        try:
            line = read_message(read_line)
        except EOFError:
            say("\n")
            return replies
        if line == "/exit":
            return replies
        if line == "/reset":
            session.reset()
            say("(history cleared)\n")
        elif line == "/tool" or line.startswith("/tool "):
            replies += tool_reply(session, line.removeprefix("/tool").strip(), write, say)
        elif line.startswith("/"):
            say(f"Unknown command {line}. {COMMANDS_HELP}\n")
        elif line:
            say("assistant> ")
            session.reply(line, write)
            replies += 1


def read_message(read_line: Callable[[str], str]) -> str:
    """One message: a line, or the lines between a line that starts with \"\"\" and one that ends with it (joined
    by newlines, the quotes dropped), as `ollama run` reads them. Raises EOFError at end of input, also inside a
    message of several lines (an unfinished message is not sent)."""
    line = read_line("you> ").strip()
    if not line.startswith(MULTILINE_QUOTE):
        return line
    lines = [line.removeprefix(MULTILINE_QUOTE)]
    while not lines[-1].endswith(MULTILINE_QUOTE):
        lines.append(read_line("... ").rstrip())
    lines[-1] = lines[-1].removesuffix(MULTILINE_QUOTE)
    return "\n".join(lines).strip()


def tool_reply(session: ChatSession, result: str, write: Callable[[str], None],
               say: Callable[[str], None]) -> int:
    """Answer a /tool line: 1 reply, or 0 and the reason when there is no call to answer (the chat goes on)."""
    if not session.awaits_tool_result():
        say("(no tool call to answer: /tool RESULT follows an answer that calls one of the --tools)\n")
        return 0
    say("assistant> ")
    session.tool_result(result, write)
    return 1


def adapter_folder(path: Path) -> Path:
    """`--adapter PATH`: a PEFT adapter folder, or a run directory (its adapter/). Raises TunesmithError naming what
    PATH is instead, before any weights load."""
    from tunesmith.runs import Run, require_weights

    if not (path / "adapter_config.json").is_file() and Run(path).recipe_file.is_file():
        path = Run(path).trained_artifact()
        if not (path / "adapter_config.json").is_file():
            raise TunesmithError(f"{path.parent} trained the whole model (model/), not an adapter.",
                                 f"Chat with the run itself: tunesmith chat {shell_arg(path.parent)}")
    if not (path / "adapter_config.json").is_file():
        raise TunesmithError(f"--adapter {path}: {'no such folder' if not path.exists() else 'no adapter_config.json'}"
                             " (it is not a PEFT adapter folder).",
                             "Pass an adapter folder (a run's adapter/), or chat with the run directory itself.")
    require_weights(path, "adapter_config.json")
    return path


def load_chat_model(model_or_run: str, adapter: Path | None = None, device: str = "auto") -> tuple[Any, Any]:
    """(model, tokenizer) for a model source, for a run directory (its adapter on its base, or its model/), or for a
    PEFT adapter folder that is no run (`tunesmith merge`'s combined adapter, one trained elsewhere) on the base its
    adapter_config.json names."""
    from tunesmith.models import load_model, load_tokenizer, pick_device, resolve_model_source
    from tunesmith.models.templates import saved_chat_template
    from tunesmith.models.tuned import adapter_base, is_adapter, require_language_model, run_base_model
    from tunesmith.runs import Run

    device = pick_device(device)
    run = Run(Path(model_or_run).expanduser())
    if run.recipe_file.is_file():
        require_language_model(run, "chat with")
        artifact = run.trained_artifact()
        base_dir = run_base_model(run) if is_adapter(artifact) else artifact
        adapter = adapter or (artifact if is_adapter(artifact) else None)
    elif (run.path / "adapter_config.json").is_file():
        if adapter is not None:
            raise TunesmithError(f"{model_or_run} is an adapter folder itself; --adapter applies one to a model.",
                                 f"Chat with it alone (tunesmith chat {shell_arg(model_or_run)}), or pass its base "
                                 f"model with --adapter {shell_arg(model_or_run)}.")
        base_dir, adapter = adapter_base(run.path), run.path
    else:
        base_dir = resolve_model_source(model_or_run)
    if adapter is not None:
        adapter = adapter_folder(Path(adapter).expanduser())
    # the template the adapter was trained with (saved beside it: the recipe's model.chat_template, or the base's own)
    tokenizer = load_tokenizer(base_dir, chat_template=saved_chat_template(adapter) if adapter is not None else None)
    require_chat_template(tokenizer)  # before the weights load
    model = load_model(base_dir, torch.float32, device)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model.eval(), tokenizer
