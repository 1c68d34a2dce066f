"""Render conversations through the tokenizer's chat template and mark which tokens carry loss.

Labels are built from character spans of the assistant turns, never by comparing token ids with
the pad token: with `pad == eos` (SmolLM2), id-based masking would also hide the end-of-turn token.

`encode_sequence` is the one place a row becomes training tokens: the SFT trainer, eval's loss and
`tunesmith data preview` all call it, so what preview shows and what training counts cannot differ.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import DataError, TunesmithError
from tunesmith.scoring import THINK_CLOSE, THINK_OPEN, tool_call_spans

IGNORE_INDEX = -100
Messages = list[dict[str, Any]]

# Why a row carried no loss and was left out of training (data.json `trained.dropped`).
NO_ANSWER_INSIDE_MAX_LENGTH = "answer_past_max_length"


def template_messages(messages: Messages) -> Messages:
    """Messages as chat templates expect them: tool-call `arguments` as objects, not JSON strings.

    transformers' chat-template guide: "arguments should be a dict" (templates apply `tojson` to it).
    """
    converted = []
    for message in messages:
        if message.get("tool_calls"):
            message = {**message, "tool_calls": [call_with_object_arguments(call) for call in message["tool_calls"]]}
        converted.append(message)
    return converted


def call_with_object_arguments(call: dict[str, Any]) -> dict[str, Any]:
    function = dict(call["function"])
    function["arguments"] = arguments_object(function.get("arguments"))
    return {**call, "function": function}


def arguments_object(arguments: Any) -> Any:
    """A tool call's arguments as an object; a string that is not JSON stays as written."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def tool_call_block(call: dict[str, Any]) -> str:
    """One tool call as Hermes function-calling text: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`."""
    function = call["function"]
    payload = {"name": function["name"], "arguments": arguments_object(function.get("arguments"))}
    return f"<tool_call>\n{json.dumps(payload, ensure_ascii=False)}\n</tool_call>"


def answer_text(message: dict[str, Any]) -> str:
    """What an assistant turn answers, as text: its content, then each of its tool calls as a `<tool_call>` block.

    The reference eval scores a generated answer against (`scoring.tool_call_match` reads the calls back), and the
    text the Hermes fallback trains, so a tool-calling turn is never scored as an empty answer."""
    blocks = [tool_call_block(call) for call in message.get("tool_calls") or []]
    content = message.get("content") or ""
    return "\n".join([content, *blocks] if content.strip() else blocks) if blocks else content


def prompt_turns(row: dict[str, Any]) -> Messages:
    """The turns a held-out row's answer follows: a conversation's all but the last, a prompt-only row's prompt."""
    return row["messages"][:-1] if "messages" in row else row["prompt"]


def reference_answer(row: dict[str, Any]) -> str | None:
    """The answer a held-out row expects (its last turn, as `answer_text` writes it); None for a prompt without one
    (GRPO's prompt-only rows)."""
    return answer_text(row["messages"][-1]) if "messages" in row else None


def context_text(messages: Messages) -> str:
    """The turns an answer follows, as a person (or an LLM judge) reads them: the user's text alone when the answer
    follows one user turn (a system turn aside), else every turn on its own line as `role: text`, an assistant
    turn's tool calls written as `answer_text` writes them. Without it a report showed a tool-calling row's "prompt"
    as the tool's result."""
    turns = [message for message in messages if message["role"] != "system"]
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n".join(f"{message['role']}: {turn_text(message)}"
                     for message in turns)


def turn_text(message: dict[str, Any]) -> str:
    return answer_text(message) if message["role"] == "assistant" else message["content"]


# What models write around a tool call's JSON: Hermes/Qwen tags, Mistral's marker, Llama 3.1's python tag.
TOOL_CALL_MARKERS = re.compile(r"</?tool_call>|\[TOOL_CALLS\]|<\|python_tag\|>")


def request_tool_names(tools: list[dict[str, Any]] | None) -> frozenset[str]:
    """The function names a request's `tools` offer (OpenAI's `{"type": "function", "function": {...}}`, or bare)."""
    names = set()
    for tool in tools or []:
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.add(function["name"])
    return frozenset(names)


def split_tool_calls(text: str, names: frozenset[str]) -> tuple[str | None, list[dict[str, Any]]]:
    """A generated answer as OpenAI's assistant message parts: the text around the calls (None when nothing but
    the calls' wrapping is left) and `tool_calls` (each call to one of the request's tools, `names`, its arguments as
    a JSON string). Calls are read as eval reads them (`scoring.tool_call_spans`: `<tool_call>` tags, Mistral's
    `[TOOL_CALLS]` list, Llama 3.1's `parameters`, bare JSON)."""
    spans = [(call, start, end) for call, start, end in tool_call_spans(text) if call[0] in names]
    if not spans:
        return text, []
    kept, last = [], 0
    for _, start, end in spans:
        kept.append(text[last:start])
        last = end
    rest = TOOL_CALL_MARKERS.sub("", "".join([*kept, text[last:]]))
    calls = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
              "function": {"name": name, "arguments": arguments if isinstance(arguments, str)
                           else json.dumps(arguments, ensure_ascii=False)}}
             for (name, arguments), _, _ in spans]
    return (rest.strip() if rest.strip(" \n[],") else None), calls


def render(tokenizer: Any, messages: Messages, generation_prompt: bool = False,
           tools: list[dict[str, Any]] | None = None) -> str:
    """The chat template's text for `messages` (and the row's tool schemas, when it has any): the model's own
    template, or the training variant of it that `training_template` names."""
    return render_with(tokenizer, training_template(tokenizer), messages, generation_prompt, tools)


def render_with(tokenizer: Any, template: str | None, messages: Messages, generation_prompt: bool = False,
                tools: list[dict[str, Any]] | None = None) -> str:
    """`messages` through `template` (None: the tokenizer's own chat template), each answer's reasoning given to the
    template as it reads it (`reasoning_rendering`). Raises TunesmithError when there is no template at all
    (`require_chat_template`)."""
    if template is None:
        require_chat_template(tokenizer)
    turns = with_reasoning(messages, reasoning_rendering(tokenizer, template))
    return apply_template(tokenizer, template, turns, generation_prompt, tools)


def apply_template(tokenizer: Any, template: str | None, messages: Messages, generation_prompt: bool = False,
                   tools: list[dict[str, Any]] | None = None) -> str:
    """`messages` through the template as they are (no reasoning given over): what `render_with` and the probes of
    `reasoning_rendering` call."""
    extra: dict[str, Any] = {"tools": tools} if tools else {}
    if template is not None:
        extra["chat_template"] = template
    return tokenizer.apply_chat_template(template_messages(messages), tokenize=False,
                                         add_generation_prompt=generation_prompt, **extra)


# How the templates read an answer's reasoning: a message field (Qwen3 and GLM `reasoning_content`, gpt-oss
# `thinking`, LFM2.5 any of the three), or not at all (Llama, Gemma, DeepSeek-R1's training variant), where it is
# written into the answer's text as a <think> block, the form DeepSeek-R1 and Open-R1's data use.
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
REASONING_PROBE = "tunesmith reasoning probe"
EMPTY_REASONING = f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n"  # what DeepSeek-R1 and Qwen3 render for no reasoning


@dataclass(frozen=True)
class ReasoningRendering:
    """How a template is given an answer's reasoning (`style`: "fields", through `field`, the first of
    REASONING_FIELDS it renders; "inline"; or "dropped", where neither way reaches the rendered text), and whether an
    answer without reasoning gets an empty <think> block: where the template's generation prompt opens one
    (DeepSeek-R1's `<think>` and a line break) that its answers do not start with, the model is trained to close it,
    as it will be prompted at inference."""

    style: str
    empty_block: bool = False
    field: str | None = None


_REASONING_RENDERINGS: dict[tuple[str, str], ReasoningRendering] = {}


def reasoning_rendering(tokenizer: Any, template: str | None) -> ReasoningRendering:
    """How `template` (None: the tokenizer's own) renders reasoning, probed once per template."""
    key = (str(template if template is not None else tokenizer.chat_template), str(tokenizer.eos_token))
    if key not in _REASONING_RENDERINGS:
        _REASONING_RENDERINGS[key] = probe_reasoning(tokenizer, template)
    return _REASONING_RENDERINGS[key]


def probe_reasoning(tokenizer: Any, template: str | None) -> ReasoningRendering:
    question = [{"role": "user", "content": USER_PROBE}]

    def answered(**message: Any) -> str:
        return apply_template(tokenizer, template, [*question, {"role": "assistant", **message}])

    try:
        field = next((name for name in REASONING_FIELDS  # one field: a template reading two would render it twice
                      if REASONING_PROBE in answered(content=ANSWER_PROBE, **{name: REASONING_PROBE})), None)
        if field is not None:
            style = "fields"
        elif REASONING_PROBE in answered(content=inline_reasoning(REASONING_PROBE, ANSWER_PROBE)):
            style = "inline"
        else:
            style = "dropped"
        prompt = apply_template(tokenizer, template, question, generation_prompt=True)
        empty_block = (not answered(content=ANSWER_PROBE).startswith(prompt)
                       and answered(content=EMPTY_REASONING + ANSWER_PROBE).startswith(prompt))
    except Exception:  # a template that raises on a plain exchange: the template contract reports it
        return ReasoningRendering("dropped")
    return ReasoningRendering(style, empty_block, field)


def inline_reasoning(reasoning: str, answer: str) -> str:
    """An answer with its reasoning before it in a <think> block, as DeepSeek-R1 writes it."""
    return f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n{answer}"


def with_reasoning(messages: Messages, rendering: ReasoningRendering) -> Messages:
    """`messages` with each answer's `reasoning_content` where `rendering` says the template reads it: in its
    fields, or in its text; and an empty <think> block before an answer without reasoning where the template
    prompts one."""
    if not rendering.empty_block and not any(message.get("reasoning_content") for message in messages):
        return messages
    turns = []
    for message in messages:
        reasoning = message.get("reasoning_content")
        if message["role"] == "assistant" and reasoning and rendering.field is not None:
            message = {**{k: v for k, v in message.items() if k != "reasoning_content"}, rendering.field: reasoning}
        elif message["role"] == "assistant" and reasoning:
            message = {**{k: v for k, v in message.items() if k != "reasoning_content"},
                       "content": inline_reasoning(reasoning, message.get("content") or "")}
        elif message["role"] == "assistant" and rendering.empty_block:
            message = {**message, "content": EMPTY_REASONING + (message.get("content") or "")}
        turns.append(message)
    return turns


def template_input(tokenizer: Any, row: dict[str, Any]) -> dict[str, Any]:
    """A preference row as TRL's trainers render it themselves: each side's reasoning given as the template reads
    it (`with_reasoning`), tool-call arguments as objects, and, where conversations train through a variant of the
    model's template (`training_template`), that variant named in the row's `chat_template_kwargs`, which every TRL
    trainer passes on to `apply_chat_template` (so DeepSeek-R1's pairs keep their reasoning and start after the
    `<think>` their prompt opens, as its conversations do)."""
    template = training_template(tokenizer)
    rendering = reasoning_rendering(tokenizer, template)
    rendered = {key: template_messages(with_reasoning(value, rendering))
                if key in (*PREFERENCE_SIDES, "prompt") and isinstance(value, list) else value
                for key, value in row.items()}
    if template is not None and isinstance(row.get("prompt"), list):
        rendered["chat_template_kwargs"] = {"chat_template": template}
    return rendered


def expected_output(row: dict[str, Any]) -> str:
    """What a model generates for a held-out row's answer: its reasoning block (if it has one) and the answer text
    (`reference_answer`; '' for a prompt without one): what eval's answer-length budget is sized by."""
    answer = reference_answer(row) or ""
    reasoning = row["messages"][-1].get("reasoning_content") if "messages" in row else None
    return inline_reasoning(reasoning, answer) if reasoning else answer


def require_chat_template(tokenizer: Any) -> None:
    """Refuse to render a conversation through a tokenizer without a chat template (a base model, or one tuned on
    raw text): transformers' own error reads as a bug in the caller."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or "the model"
        raise TunesmithError(f"{name} has no chat template (a base model), so it cannot be given conversations: it "
                             "continues text.", "Train it with model.chat_template: chatml (its runs then render "
                             "with that), score it on raw text (`tunesmith eval` of a method.kind: cpt run reports "
                             "perplexity; `tunesmith serve` answers /v1/completions), or use a chat model.")


# Probe conversations: two exchanges, and a tool call with its result and the answer after it.
USER_PROBE = "tunesmith user probe"
ANSWER_PROBE = "tunesmith answer probe"
TOOL_NAME = "tunesmith_probe_tool"
TOOL_VALUE = "probe-value-5519"
PROBE_TOOLS = [{"type": "function", "function": {
    "name": TOOL_NAME, "description": "A probe.",
    "parameters": {"type": "object", "properties": {"probe_arg": {"type": "string"}}}}}]
PROBE_TOOL_TURNS = [
    {"role": "user", "content": USER_PROBE},
    {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {
        "name": TOOL_NAME, "arguments": {"probe_arg": TOOL_VALUE}}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "{\"ok\": true}"},
    {"role": "assistant", "content": ANSWER_PROBE},
]
PROBE_TWO_EXCHANGES = [{"role": "user", "content": USER_PROBE}, {"role": "assistant", "content": ANSWER_PROBE},
                       {"role": "user", "content": USER_PROBE + " again"},
                       {"role": "assistant", "content": ANSWER_PROBE + " 2"}]

_TRAINING_VARIANTS: dict[str, tuple[str, str] | None] = {}  # the model's template -> (variant, its name) or None


def training_template(tokenizer: Any) -> str | None:
    """The template rows are rendered with in place of the model's own, or None (the model's own).

    A template that renders an earlier answer one way while it is the last turn and another once more turns follow
    (Qwen3's drops the `<think>` block from answers before the last question; gpt-oss, Qwen3.5 alike) is not
    prefix-stable, so the loss mask cannot find the earlier answers of a conversation or of a tool exchange. For the
    templates TRL ships a training variant of (`trl.chat_template_utils.get_training_chat_template`: every answer
    rendered as the last one is, the generation prompt unchanged), that variant renders the rows; for any other, the
    model's own stays and the template contract refuses the rows it cannot mask. A template that drops an answer's
    reasoning (DeepSeek-R1's cuts everything up to `</think>`) is replaced by TRL's variant alike, where that one
    keeps it. The variant is used only where it is prefix-stable and prompts an answer exactly as the model's own
    template does (what the model is served with).
    """
    found = training_variant(tokenizer)
    return found[0] if found else None


def training_variant(tokenizer: Any) -> tuple[str, str] | None:
    """(template, file name) of the variant `training_template` uses, or None; computed once per template."""
    own = getattr(tokenizer, "chat_template", None)
    if not isinstance(own, str):  # no template, or named variants (a dict): rendered as the tokenizer does
        return None
    if own not in _TRAINING_VARIANTS:
        fit = keeps_earlier_turns(tokenizer, None) and reasoning_rendering(tokenizer, None).style != "dropped"
        _TRAINING_VARIANTS[own] = None if fit else trl_training_variant(tokenizer)
    return _TRAINING_VARIANTS[own]


def keeps_earlier_turns(tokenizer: Any, template: str | None) -> bool:
    """Rendering the first exchange is a prefix of rendering the whole, for two exchanges and for a tool exchange
    (a template that fails on tools is judged on the exchanges alone: whether it expresses tools is the contract's
    question)."""
    def stable(turns: Messages, tools: list[dict[str, Any]] | None) -> bool:
        whole = render_with(tokenizer, template, turns, tools=tools)
        return whole.startswith(render_with(tokenizer, template, turns[:2], tools=tools))

    try:
        if not stable(PROBE_TWO_EXCHANGES, None):
            return False
    except Exception:  # a template raises anything (jinja's raise_exception) on what it does not take
        return True  # nothing a variant could mend: the contract reports the template's failure
    try:
        return stable(PROBE_TOOL_TURNS, PROBE_TOOLS)
    except Exception:  # tools refused: the contract says so, with data.tool_format's fallback
        return True


def trl_training_variant(tokenizer: Any) -> tuple[str, str] | None:
    """TRL's training variant of the tokenizer's template, where TRL ships one that is prefix-stable and whose
    generation prompt is the model's own template's; None otherwise."""
    try:
        from trl.chat_template_utils import get_training_chat_template

        variant = get_training_chat_template(tokenizer)
    except Exception:  # ValueError: TRL has no variant of this template; anything a template raises while probed
        return None
    if variant is None or not keeps_earlier_turns(tokenizer, variant):
        return None
    if reasoning_rendering(tokenizer, None).style != "dropped" and reasoning_rendering(tokenizer, variant).style \
            == "dropped":
        return None  # the variant would lose the reasoning the model's own template trains
    question = PROBE_TWO_EXCHANGES[:1]
    try:
        same_prompt = (render_with(tokenizer, None, question, generation_prompt=True)
                       == render_with(tokenizer, variant, question, generation_prompt=True))
    except Exception:  # the variant fails where the original did not: not a variant to train with
        return None
    return (variant, trl_template_name(variant)) if same_prompt else None


def trl_template_name(variant: str) -> str:
    """The file in TRL's chat_templates folder that holds `variant` (what the contract and data.json name)."""
    import trl

    folder = Path(trl.__file__).parent / "chat_templates"
    names = [path.name for path in sorted(folder.glob("*_training.jinja"))
             if path.read_text(encoding="utf-8") == variant]
    return f"trl/chat_templates/{names[0]}" if names else "TRL's training variant"


def is_open(messages: Messages) -> bool:
    """Whether the turns end where the model answers (a prompt-only row: GRPO samples the answer)."""
    return messages[-1]["role"] != "assistant"


def render_sequence(tokenizer: Any, messages: Messages, tools: list[dict[str, Any]] | None = None) -> str:
    """A row's turns as training renders them: a whole conversation, or a prompt without its answer with the
    generation prompt after it (where the sampled answers start)."""
    return render(tokenizer, messages, generation_prompt=is_open(messages), tools=tools)


def assistant_spans(tokenizer: Any, messages: Messages,
                    tools: list[dict[str, Any]] | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of each assistant turn (with its end tokens).

    Relies on the template being prefix-stable: rendering the first k turns must be a prefix of
    rendering all of them, but for what a template writes only where a conversation ends (`closed_length`: Phi-3's
    eos_token, gpt-oss's `<|return|>`), which an earlier answer's span leaves out. Templates that rewrite earlier
    turns are reported, not guessed at.
    """
    full = render(tokenizer, messages, tools=tools)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:index], generation_prompt=True, tools=tools) if index else ""
        through = render(tokenizer, messages[: index + 1], tools=tools)
        end = len(through) if full.startswith(through) else closed_length(tokenizer, through, full, len(before))
        if end is None or not through.startswith(before):
            raise unlocatable_answer(tokenizer, messages[:index], through, full.startswith(through), tools)
        spans.append((len(before), end))
    return full, spans


MAX_CLOSING_CHARS = 40  # the longest text a template writes only after a conversation's last turn


def closed_length(tokenizer: Any, through: str, full: str, answer_start: int) -> int | None:
    """Where an earlier answer ends in `full`, when `through` (the conversation rendered up to it) differs from `full`
    only in a closing the template writes after the last turn alone (Phi-3's eos_token, gpt-oss's `<|return|>` where
    earlier answers end `<|end|>`): `through` less its shortest suffix that `full` also ends with and whose removal
    leaves a prefix of `full` past the answer's start, moved back to the start of the token it would split (`<|` is
    shared by `<|return|>` and `<|end|>`). None when no such closing explains the difference."""
    for cut in range(1, min(MAX_CLOSING_CHARS, len(through) - answer_start - 1) + 1):
        if full.endswith(through[-cut:]) and full.startswith(through[:-cut]):
            end = len(through) - cut
            offsets = tokenizer(through, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            return next((start for start, stop in offsets if start < end < stop and start > answer_start), end)
    return None


class AnswerNotLocatable(DataError):
    """The template's renderings do not let an assistant turn's characters be found (the template contract
    reports the same finding once for the whole file)."""


def unlocatable_answer(tokenizer: Any, earlier: Messages, through: str, through_is_prefix: bool,
                       tools: list[dict[str, Any]] | None) -> AnswerNotLocatable:
    """Why an answer cannot be located: the generation prompt (every rendering is a prefix of the next, but the
    turns before the answer with add_generation_prompt are not), or the template itself (earlier turns render
    differently once later ones come; `through_is_prefix` False)."""
    if through_is_prefix and through.startswith(render(tokenizer, earlier, tools=tools) if earlier else ""):
        return AnswerNotLocatable(
            "The chat template renders a generation prompt that is not the start of the assistant turn it trains, so "
            "the answer's tokens cannot be told from the prompt's.", "Fix the template's add_generation_prompt branch.")
    return AnswerNotLocatable(
        "The chat template is not prefix-stable: rendering a conversation's first turns does not give a prefix of "
        "the whole, so assistant tokens cannot be located.",
        "Use a template that renders turns independently (ChatML, Llama-3 and most others do).")


@dataclass
class EncodedSequence:
    """One sequence as training sees it: ids and labels cut at max_length, and what the cut removed."""

    input_ids: list[int]
    labels: list[int]
    total_tokens: int  # before the cut
    answer_tokens_cut: int  # loss-carrying tokens past max_length, never trained
    prompt_only: bool = False  # a prompt without its answer: no token carries loss, the answers are sampled

    @property
    def loss_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)

    @property
    def drop_reason(self) -> str | None:
        """Why training leaves this sequence out (None: it trains)."""
        return None if self.loss_tokens or self.prompt_only else NO_ANSWER_INSIDE_MAX_LENGTH


def encode_sequence(tokenizer: Any, sequence: Messages | str, max_length: int,
                    tools: list[dict[str, Any]] | None = None) -> EncodedSequence:
    """Token ids and labels of a conversation (assistant tokens keep their id, the rest IGNORE_INDEX; an assistant
    turn with `weight` 0, OpenAI's context-only turn, is context too) or of raw text (every token carries loss), cut
    at `max_length` tokens. A prompt without its answer (`is_open`) is its rendering with the generation prompt, no
    token carrying loss."""
    if isinstance(sequence, str):
        ids = tokenizer(sequence, add_special_tokens=False)["input_ids"]
        labels = list(ids)
    elif is_open(sequence):
        with template_errors_named(sequence):
            rendered = render_sequence(tokenizer, sequence, tools)
        ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        return EncodedSequence(ids[:max_length], [IGNORE_INDEX] * min(len(ids), max_length), len(ids), 0, True)
    else:
        with template_errors_named(sequence):
            text, spans = assistant_spans(tokenizer, sequence, tools)
        check_tool_calls_rendered(text, spans, sequence)
        assistants = [message for message in sequence if message["role"] == "assistant"]
        trained = [span for span, message in zip(spans, assistants, strict=True) if message.get("weight", 1) != 0]
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        labels = [token if any(start <= begin < end for start, end in trained) else IGNORE_INDEX
                  for token, (begin, _) in zip(ids, offsets, strict=True)]
    cut = sum(label != IGNORE_INDEX for label in labels[max_length:])
    return EncodedSequence(ids[:max_length], labels[:max_length], len(ids), cut)


@contextlib.contextmanager
def template_errors_named(messages: Messages) -> Iterator[None]:
    """A chat template's own failure on a row (jinja's raise_exception, a tool without the `description` the template
    writes out, a role it rejects) as a DataError that shows the row: the template contract's probes pass on
    well-formed turns, so a row can still lack what a template reads."""
    try:
        yield
    except DataError:
        raise
    except Exception as exc:  # a template raises anything
        first = next((m.get("content") for m in messages if m.get("role") == "user"), None) or messages[0]
        raise DataError(f"The chat template fails on the row whose first question is {str(first)[:80]!r}: "
                        f"{type(exc).__name__}: {exc}",
                        "The template reads something this row lacks (each tool's description and parameters, a "
                        "tool call's id or arguments) or rejects a role in it: complete the row, or see how rows "
                        "render with `tunesmith data preview RECIPE`.") from None


def render_with_loss_mask(tokenizer: Any, messages: Messages, max_length: int,
                          tools: list[dict[str, Any]] | None = None) -> dict:
    """Token ids and labels: assistant tokens keep their id, everything else is IGNORE_INDEX."""
    encoded = encode_sequence(tokenizer, messages, max_length, tools)
    return {"input_ids": encoded.input_ids, "labels": encoded.labels,
            "truncated": encoded.total_tokens > max_length}


def check_tool_calls_rendered(text: str, spans: list[tuple[int, int]], messages: Messages) -> None:
    """Every tool call's function name and argument values must be inside its assistant turn's trained text.

    A template that ignores `tool_calls` renders such a turn as an empty answer: the model would be taught
    to answer nothing where it should call a tool.
    """
    assistants = [message for message in messages if message["role"] == "assistant"]
    for message, (start, end) in zip(assistants, spans, strict=True):
        answer = text[start:end]
        for call in message.get("tool_calls") or []:
            missing = [part for part in tool_call_parts(call) if part not in answer]
            if missing:
                raise DataError(
                    f"The chat template drops tool call {call['function']['name']!r}: {missing[0]!r} is not in "
                    "the rendered assistant turn, so the model would learn an empty or partial answer.",
                    "Set data.tool_format: hermes to write tool calls as <tool_call> JSON in the answer text, "
                    "or use a model whose chat template renders tool_calls.")


def tool_call_parts(call: dict[str, Any]) -> list[str]:
    """The texts a rendering of `call` must contain: its name and each argument's key and scalar value."""
    function = call["function"]
    parts = [function["name"]]
    arguments = arguments_object(function.get("arguments"))
    if isinstance(arguments, dict):
        for key, value in arguments.items():
            parts.append(str(key))
            if isinstance(value, str):
                parts.append(value)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                parts.append(json.dumps(value))
    elif isinstance(arguments, str):
        parts.append(arguments)
    return parts


def encode_completion(tokenizer: Any, prompt: str | Messages, completion: str | Messages, max_length: int,
                      tools: list[dict[str, Any]] | None = None) -> EncodedSequence:
    """Prompt + one preference answer with labels on the answer only, as TRL 1.16's DPO and KTO trainers
    tokenize it (`_prepare_dataset`): plain strings are tokenized as text with EOS appended, conversations
    through the chat template; the answer starts where the prompt's ids and the full ids diverge; the
    sequence keeps its start (`truncation_mode="keep_start"`), so a prompt that fills max_length leaves no
    answer token and the row is dropped (TRL filters it out)."""
    if isinstance(prompt, str):
        answer = completion if isinstance(completion, str) else completion[-1]["content"]
        eos = tokenizer.eos_token or ""
        prompt_ids = tokenizer(prompt)["input_ids"]
        full_ids = tokenizer(prompt + answer + ("" if answer.endswith(eos) else eos))["input_ids"]
    else:
        turns = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
        # as TRL renders `template_input`'s rows (prompt, then prompt + answer: no prefix stability needed)
        prompt_ids = tokenizer(render(tokenizer, prompt, generation_prompt=True, tools=tools),
                               add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(render(tokenizer, prompt + turns, tools=tools), add_special_tokens=False)["input_ids"]
    start = common_prefix_length(prompt_ids, full_ids)
    labels = [IGNORE_INDEX] * start + full_ids[start:]
    cut = sum(label != IGNORE_INDEX for label in labels[max_length:])
    return EncodedSequence(full_ids[:max_length], labels[:max_length], len(full_ids), cut)


def common_prefix_length(a: list[int], b: list[int]) -> int:
    length = 0
    while length < min(len(a), len(b)) and a[length] == b[length]:
        length += 1
    return length


@dataclass
class EncodedSplit:
    """A split encoded for training, with the counts data.json reports: what actually carried loss."""

    examples: list[EncodedSequence]  # only the sequences that train (both sides of a preference pair)
    rows: int  # rows given
    dropped: Counter[str] = field(default_factory=Counter)  # rows left out, by reason
    answer_tokens_cut: int = 0  # loss tokens lost to max_length in rows that still train
    source_rows: list[int] = field(default_factory=list)  # per example: its row's index in the rows given
    dropped_rows: list[int] = field(default_factory=list)  # the indexes of the rows left out, in order

    def counts(self) -> dict[str, Any]:
        return {"rows": self.rows, "trained_rows": self.rows - sum(self.dropped.values()),
                "tokens": sum(len(e.input_ids) for e in self.examples),
                "loss_tokens": sum(e.loss_tokens for e in self.examples),
                "dropped": dict(self.dropped), "answer_tokens_cut": self.answer_tokens_cut}


def encode_split(tokenizer: Any, rows: list[dict[str, Any]], max_length: int) -> EncodedSplit:
    """Encode `messages` rows (with their `tools`) as training does; rows with no loss token left are dropped
    and counted by reason."""
    result = EncodedSplit([], len(rows))
    for index, row in enumerate(rows):
        encoded = encode_sequence(tokenizer, row["messages"], max_length, row.get("tools"))
        if encoded.drop_reason:
            result.dropped[encoded.drop_reason] += 1
            result.dropped_rows.append(index)
            continue
        result.answer_tokens_cut += encoded.answer_tokens_cut
        result.examples.append(encoded)
        result.source_rows.append(index)
    return result


PREFERENCE_SIDES = ("chosen", "rejected", "completion")


def encode_preference_split(tokenizer: Any, rows: list[dict[str, Any]], max_length: int) -> EncodedSplit:
    """Preference rows (pairs, or KTO's prompt/completion/label) encoded as TRL's DPO/KTO trainers do, to count
    what carries loss: a row whose prompt fills max_length is dropped, as TRL drops it."""
    result = EncodedSplit([], len(rows))
    for index, row in enumerate(rows):
        sides = [encode_completion(tokenizer, row["prompt"], row[key], max_length, row.get("tools"))
                 for key in PREFERENCE_SIDES if key in row]
        reason = next((side.drop_reason for side in sides if side.drop_reason), None)
        if reason:
            result.dropped[reason] += 1
            result.dropped_rows.append(index)
            continue
        result.answer_tokens_cut += sum(side.answer_tokens_cut for side in sides)
        result.examples += sides
    return result
