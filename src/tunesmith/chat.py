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
from tunesmith.errors import TunesmithError
from tunesmith.eval.constrained import processor_factory

COMMANDS_HELP = "Commands: /reset starts over, /exit (or end of input) quits."


@dataclass
class ChatSession:
    """A model, its tokenizer and the conversation so far (the system turn survives /reset)."""

    model: Any
    tokenizer: Any
    system: str | None = None
    max_new_tokens: int = 256
    messages: list[dict[str, str]] = field(default_factory=list)
    constraint: Constraint | None = None  # --json-schema / --choices: every reply is held to it
    # a run's data fallbacks (data.system_fallback, data.tool_format): the conversation rendered as training did
    render: Callable[[list[dict[str, str]]], list[dict[str, str]]] | None = None

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def reply(self, text: str, write: Callable[[str], None]) -> str:
        """Answer `text` given the history, streaming the answer to `write`; both turns join the history.

        Raises TunesmithError where the model's chat template refuses the conversation (a system turn on a template
        without a system role), naming the fix."""
        self.messages.append({"role": "user", "content": text})
        processor = None
        if self.constraint is not None:
            processor = processor_factory(self.constraint, self.tokenizer, self.model)()
        shown = self.render(self.messages) if self.render is not None else self.messages
        try:
            answer = generate_streamed(self.model, self.tokenizer, shown, self.max_new_tokens, write, processor)
        except Exception as exc:
            if type(exc).__name__ != "TemplateError":  # jinja2's, raised by the template itself
                raise
            self.messages.pop()
            hint = ("A template without a system role: drop --system, or chat with a run trained with "
                    "data.system_fallback: merge (its system prompt joins the first user turn)." if "system" in
                    str(exc).lower() else "Check the model's chat template (`tunesmith doctor --model MODEL`).")
            raise TunesmithError(f"The model's chat template refuses this conversation: {exc}.", hint) from None
        self.messages.append({"role": "assistant", "content": answer})
        return answer


def run_rendering(run_path: Path) -> tuple[str | None, Callable[[list[dict[str, str]]], list[dict[str, str]]]]:
    """What a run's training put around each conversation: its recipe's data.system_prompt (None without one) and
    its data fallbacks (`data/fallbacks.py` `apply_fallbacks`: a merged system turn, hermes tool turns), so that chat
    prompts the tuned model as training and `serve` do."""
    from tunesmith.data.fallbacks import apply_fallbacks
    from tunesmith.runs import Run

    data = Run(run_path).load_recipe().data
    return data.system_prompt, lambda messages: apply_fallbacks({"messages": messages}, data)["messages"]


@dataclass
class RemoteChatSession(ChatSession):
    """The same conversation, answered by a running OpenAI-compatible server (`tunesmith serve`, vLLM, Ollama):
    `model` is the served model's name, `url` the API's base (…/v1), `api_key` sent as a Bearer token."""

    url: str = "http://127.0.0.1:8000/v1"
    api_key: str | None = None

    def reply(self, text: str, write: Callable[[str], None]) -> str:
        self.messages.append({"role": "user", "content": text})
        answer = stream_remote_reply(self.url, self.api_key, self.model, self.messages, self.max_new_tokens, write)
        self.messages.append({"role": "assistant", "content": answer})
        return answer


def stream_remote_reply(url: str, api_key: str | None, model: str, messages: list[dict[str, str]],
                        max_tokens: int, write: Callable[[str], None]) -> str:
    """POST /chat/completions with `stream` (greedy), writing each piece of the server-sent events as it comes;
    an HTTP error becomes a TunesmithError with the server's message."""
    import contextlib
    import json
    import urllib.error
    import urllib.request

    from tunesmith.errors import TunesmithError

    body = json.dumps({"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True}).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    request = urllib.request.Request(url.rstrip("/") + "/chat/completions", body, headers, method="POST")
    pieces = []
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            for raw in response:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                for choice in json.loads(line[6:]).get("choices", []):
                    piece = (choice.get("delta") or {}).get("content") or ""
                    pieces.append(piece)
                    write(piece)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        with contextlib.suppress(ValueError, KeyError, TypeError):  # OpenAI's error shape, when it is one
            detail = json.loads(detail)["error"]["message"]
        raise TunesmithError(f"{url} answered {exc.code}: {detail}", "Check the model name (the first argument; GET "
                             f"{url.rstrip('/')}/models lists those served) and the API key (--api-key-env).") from None
    except urllib.error.URLError as exc:
        raise TunesmithError(f"Cannot reach {url}: {exc.reason}.", "Start the server: tunesmith serve RUN") from None
    write("\n")
    return "".join(pieces).strip()


def generate_streamed(model: Any, tokenizer: Any, messages: list[dict[str, str]], max_new_tokens: int,
                      write: Callable[[str], None], processor: Any = None) -> str:
    """Greedy answer to the conversation; text goes to `write` as whole words are decoded (`processor`: a
    constrained-decoding logits processor)."""
    from transformers import LogitsProcessorList

    from tunesmith.models.loading import stop_token_ids

    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True).to(model.device)
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


def chat_loop(session: ChatSession, read_line: Callable[[str], str], write: Callable[[str], None]) -> int:
    """Read a line, answer it, until /exit or end of input; returns how many replies were given."""
    replies = 0
    while True:
        try:
            line = read_line("you> ").strip()
        except EOFError:
            write("\n")
            return replies
        if line == "/exit":
            return replies
        if line == "/reset":
            session.reset()
            write("(history cleared)\n")
        elif line.startswith("/"):
            write(f"Unknown command {line}. {COMMANDS_HELP}\n")
        elif line:
            write("assistant> ")
            session.reply(line, write)
            replies += 1


def load_chat_model(model_or_run: str, adapter: Path | None = None, device: str = "auto") -> tuple[Any, Any]:
    """(model, tokenizer) for a model source, or for a run directory (its adapter on its base, or its model/)."""
    from tunesmith.models import load_model, load_tokenizer, pick_device, resolve_model_source
    from tunesmith.models.tuned import is_adapter, require_language_model, run_base_model
    from tunesmith.runs import Run

    device = pick_device(device)
    run = Run(Path(model_or_run).expanduser())
    if run.recipe_file.is_file():
        require_language_model(run, "chat with")
        artifact = run.trained_artifact()
        base_dir = run_base_model(run) if is_adapter(artifact) else artifact
        adapter = adapter or (artifact if is_adapter(artifact) else None)
    else:
        base_dir = resolve_model_source(model_or_run)
    model = load_model(base_dir, torch.float32, device)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model.eval(), load_tokenizer(base_dir)
