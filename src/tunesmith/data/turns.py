"""Check and normalise the turns of one conversation: roles, content, tool calls and turn order.

Chat templates (and TRL's trainers) expect `system? user assistant user assistant …`, with tool
results only right after an assistant turn that called a tool. A conversation that breaks this renders
wrongly or not at all, so it is refused here, while the loader still knows the file and line.
Both OpenAI turns (`role`/`content`) and ShareGPT turns (`from`/`value`) are accepted, the latter with
LLaMA-Factory's tool speakers: `function_call` (an assistant turn whose value is the call as JSON,
`{"name": ..., "arguments": {...}}`, or a list of them) and `observation` (the tool's result).
An assistant turn's reasoning (the thinking before its answer) is kept as `reasoning_content`, whichever way the file
holds it: `reasoning_content` (DeepSeek's API, Qwen3's template), `reasoning` (vLLM, OpenRouter), `thinking`
(gpt-oss's Harmony datasets) or a leading `<think>...</think>` block in the content (DeepSeek-R1's and Open-R1's
datasets); `data.template.render` gives it back to each chat template the way that template reads it.
"""

from __future__ import annotations

import json
from typing import Any

from tunesmith.errors import RowProblem
from tunesmith.scoring import THINK_CLOSE, THINK_OPEN

Message = dict[str, Any]
ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "tool": "tool", "function_call": "assistant", "observation": "tool"}
ORDER_HINT = "Turns alternate user/assistant after an optional first system turn; tool turns follow an " \
             "assistant turn that has tool_calls."
SHAREGPT_ORDER_HINT = " ShareGPT speakers count as: human/user → 'user', gpt/assistant → 'assistant', " \
                      "function_call → 'assistant' (with a tool call), observation/tool → 'tool'."


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def short_repr(value: Any, limit: int = 60) -> str:
    """A repr that stays readable in an error message, however big the offending value is."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_list(value: Any, key: str) -> list:
    """A list, also when a CSV or Parquet cell (or LLaMA-Factory's `tools`) holds it as JSON text; JSON text that
    does not parse is said as such."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowProblem("wrong_type", f"'{key}' is JSON text that does not parse: {exc.msg} at character "
                                           f"{exc.pos} of {len(value)} ({short_repr(value[max(0, exc.pos - 20):])}).",
                             f"Write '{key}' as a JSON list (or a string holding one that parses).") from None
        except RecursionError:
            pass
    if not isinstance(value, list):
        raise RowProblem("wrong_type", f"'{key}' must be a list, got {type_name(value)}.")
    return value


def normalise_turns(value: Any, key: str) -> tuple[list[Message], list[str]]:
    """The turns of `value` as canonical messages, with the label that names each in a message (`key[i]`, plus the
    file's speaker for a ShareGPT turn, whose role name the file does not use); types and roles checked, order not
    yet."""
    turns = json_list(value, key)
    if not turns:
        raise RowProblem("empty", f"'{key}' must be a non-empty list.")
    labels = [f"{key}[{index}]" for index in range(len(turns))]
    messages = [normalise_turn(turn, label) for turn, label in zip(turns, labels, strict=True)]
    return messages, [label + speaker_note(turn) for turn, label in zip(turns, labels, strict=True)]


def speaker_note(turn: dict) -> str:
    """` (from 'gpt')` for a ShareGPT turn, so that an order error speaks of the file's speakers."""
    return f" (from {turn['from']!r})" if "role" not in turn else ""


def normalise_turn(turn: Any, label: str) -> Message:
    if not isinstance(turn, dict):
        raise RowProblem("wrong_type", f"{label} must be an object with role and content, "
                                       f"got {type_name(turn)}.")
    sharegpt = "role" not in turn and "from" in turn
    role = sharegpt_role(turn, label) if sharegpt else openai_role(turn, label)
    if sharegpt and turn["from"] == "function_call":
        return {"role": "assistant", "content": "", "tool_calls": sharegpt_tool_calls(turn.get("value"), label)}
    content = turn_content(turn.get("value" if sharegpt else "content"), label)
    message: Message = {"role": role, "content": content}
    if role == "assistant":
        message.update(reasoning_of(turn, content, label))
    elif any(turn.get(key) not in (None, "") for key in REASONING_KEYS):
        key = next(key for key in REASONING_KEYS if turn.get(key) not in (None, ""))
        raise RowProblem("wrong_type", f"{label} is a {role} turn with {key}: only an assistant's answer has "
                                       "reasoning, and a template would drop it without a word.",
                         "Move it to the assistant turn it belongs to (the columns may be shifted), or remove it.")
    if role == "assistant" and turn.get("tool_calls") is not None:
        message["tool_calls"] = tool_calls(turn["tool_calls"], label)
    if role == "assistant" and turn.get("weight") is not None and turn_weight(turn["weight"], label) == 0:
        message["weight"] = 0  # OpenAI's fine-tuning format: context, not an answer to learn
    for key in ("tool_call_id", "name"):
        if role == "tool" and turn.get(key) is not None:
            message[key] = text_field(turn[key], f"{label}.{key}")
    return message


REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")  # what datasets and APIs call an answer's reasoning
# Every key of a turn that normalise_turn reads (OpenAI messages and ShareGPT): any other (a "rationale", Axolotl's
# per-turn "train") is left out of the rows, and `data inspect` says so (shapes.unused_keys).
TURN_KEYS = frozenset({"role", "content", "from", "value", *REASONING_KEYS, "tool_calls", "weight", "tool_call_id",
                       "name"})


def reasoning_of(turn: dict, content: str, label: str) -> Message:
    """`{"reasoning_content": ..., "content": the answer after it}` for an assistant turn with reasoning (in one of
    REASONING_KEYS, or a leading <think> block of its content), else nothing to add; reasoning given twice, a
    <think> block never closed (a row cut off mid-thought), or think markup left in the answer (a second block, one
    not at its start, a stray </think>) is a row problem."""
    given = {key: text_field(turn[key], f"{label}.{key}") for key in REASONING_KEYS if turn.get(key) is not None}
    if len(set(given.values())) > 1:
        raise RowProblem("wrong_type", f"{label} has different reasoning in {' and '.join(given)}.",
                         "Keep the reasoning in one of them.")
    inline = content.lstrip().startswith(THINK_OPEN)
    if inline and THINK_CLOSE not in content:
        raise RowProblem("wrong_type", f"{label}.content opens a {THINK_OPEN} block it never closes with "
                                       f"{THINK_CLOSE}: its answer is missing (a row cut off mid-thought?).",
                         f"Close the reasoning with {THINK_CLOSE} before the answer, or leave the row out.")
    if inline and given:
        raise RowProblem("wrong_type", f"{label} has reasoning both in {next(iter(given))} and in a {THINK_OPEN} "
                                       "block of its content.", "Keep the reasoning in one of them.")
    thought, answer = content.lstrip()[len(THINK_OPEN):].split(THINK_CLOSE, 1) if inline else ("", content)
    stray = next((tag for tag in (THINK_OPEN, THINK_CLOSE) if tag in answer), None)
    if stray is not None:
        raise RowProblem("wrong_type", f"{label}.content holds {stray} outside one leading reasoning block (a second "
                                       f"block, one that does not open the answer, or a {THINK_CLOSE} never opened): "
                                       "it would train as answer text.",
                         f"Give the answer one reasoning block, at its start ({THINK_OPEN}...{THINK_CLOSE} then the "
                         "answer), or the reasoning in reasoning_content.")
    if inline:
        return {"reasoning_content": thought.strip(), "content": answer.lstrip()}
    reasoning = next(iter(given.values()), "").strip()
    return {"reasoning_content": reasoning} if reasoning else {}


def turn_weight(weight: Any, label: str) -> int:
    """An assistant turn's `weight` as OpenAI's fine-tuning format has it: 1 trains the turn (the default), 0 keeps
    it as context only."""
    if isinstance(weight, bool) or weight not in (0, 1):
        raise RowProblem("wrong_type", f"{label}.weight must be 0 or 1, got {short_repr(weight)}.",
                         "0 keeps an assistant turn as context without training on it; 1 (the default) trains it.")
    return int(weight)


def openai_role(turn: dict, label: str) -> str:
    role = turn.get("role")
    if role is None:
        raise RowProblem("missing_key", f"{label} has no 'role'.", f"Use one of {list(ROLES)}.")
    if role not in ROLES:
        raise RowProblem("unknown_role", f"{label} has unknown role {short_repr(role)}.",
                         f"Use one of {list(ROLES)}.")
    return role


def sharegpt_role(turn: dict, label: str) -> str:
    speaker = turn["from"]
    if not isinstance(speaker, str) or speaker not in SHAREGPT_ROLES:
        raise RowProblem("unknown_role", f"{label} has unknown speaker {short_repr(speaker)}.",
                         f"ShareGPT turns use 'from' with one of {list(SHAREGPT_ROLES)}.")
    return SHAREGPT_ROLES[speaker]


def sharegpt_tool_calls(value: Any, label: str) -> list[dict]:
    """A LLaMA-Factory `function_call` turn's value (`{"name": ..., "arguments": {...}}` as JSON text, or a list of
    them for parallel calls) as OpenAI tool calls, the form chat templates take."""
    hint = 'A function_call turn\'s value is the call as JSON text: {"name": "get_weather", "arguments": ' \
           '{"city": "Oslo"}}, or a JSON list of such calls.'
    try:
        calls = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        raise RowProblem("wrong_type", f"{label}.value is not JSON: {short_repr(value)}.", hint) from None
    calls = calls if isinstance(calls, list) else [calls]
    if not calls or not all(isinstance(call, dict) and "name" in call for call in calls):
        raise RowProblem("wrong_type", f"{label}.value must name the function it calls, got {short_repr(value)}.",
                         hint)
    return tool_calls([{"type": "function", "function": {"name": call["name"], "arguments": call_arguments(call)}}
                       for call in calls], label)


def call_arguments(call: dict) -> Any:
    """A call's arguments: `arguments`, or `parameters` where the call writes them so (Llama 3.1's calls, some
    LLaMA-Factory exports); {} when it has neither (a call without arguments). Both at once is ambiguous: refused."""
    if "arguments" in call and "parameters" in call:
        raise RowProblem("wrong_type", f"the call to {short_repr(call.get('name'))} gives both 'arguments' and "
                                       "'parameters'.", "Keep one of them: the call's arguments.")
    return call.get("arguments", call.get("parameters", {}))


def turn_content(content: Any, label: str) -> str:
    """Text content; OpenAI's list of text parts is joined, a missing content (tool calls) is ''."""
    if content is None:
        return ""
    if isinstance(content, list) and all(is_text_part(part) for part in content):
        return "".join(part["text"] for part in content)
    return text_field(content, f"{label}.content")


def is_text_part(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)


def text_field(value: Any, label: str) -> str:
    if not isinstance(value, str):
        raise RowProblem("wrong_type", f"{label} must be a string, got {short_repr(value)}.")
    return value


def tool_calls(value: Any, label: str) -> list[dict]:
    """Tool calls as given, after checking each names a function and carries its arguments."""
    calls = json_list(value, f"{label}.tool_calls")
    for index, call in enumerate(calls):
        where = f"{label}.tool_calls[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        named = isinstance(function, dict) and isinstance(function.get("name"), str) and function["name"]
        if not named:
            raise RowProblem("wrong_type", f"{where} must be an object with a 'function' that has a 'name'.")
        if not isinstance(function.get("arguments"), str | dict):
            raise RowProblem("wrong_type", f"{where}.function.arguments must be a JSON string or an object.")
        check_arguments_object(function["arguments"], f"{where}.function.arguments")
    return calls


def check_arguments_object(arguments: str | dict, where: str) -> None:
    """A call's arguments must be a JSON object, or a string holding one (OpenAI's form): a string that is not JSON
    would train as a quoted string (`"arguments": "{temperature: 20"`), a number or a string holding JSON text again
    (double-encoded) as that value, and no template or tool reads either as arguments."""
    fault = arguments_fault(arguments)
    if fault:
        raise RowProblem("wrong_type", f"{where} {fault}.",
                         'Write the arguments as a JSON object, or as a string holding one: "{\"city\": \"Oslo\"}".')


def arguments_fault(arguments: Any) -> str | None:
    """What is wrong with a tool call's arguments, as a phrase ("is not JSON: ...", "must be a JSON object, got
    ..."), or None for a JSON object or a string holding one (an empty string: no arguments). Data checks and
    `serve` judge a call's arguments by this one rule."""
    if isinstance(arguments, dict):
        return None
    if not isinstance(arguments, str):
        return f"must be a JSON object, got {short_repr(arguments)}"
    try:
        parsed = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return f"is not JSON: {short_repr(arguments)}"
    if isinstance(parsed, dict):
        return None
    encoded = " (it holds JSON text again: encoded twice)" if isinstance(parsed, str) else ""
    return f"must be a JSON object, got {short_repr(arguments)}{encoded}"


def tool_schemas(value: Any) -> list[dict]:
    """A row's tool schemas in OpenAI's form (`{"type": "function", "function": {...}}`, what transformers'
    `get_json_schema` writes); a bare function schema (`{"name", "description", "parameters"}`, LLaMA-Factory's
    `tools`) is wrapped in it, so every template and the Hermes fallback see one form."""
    schemas = json_list(value, "tools")
    if not all(isinstance(schema, dict) for schema in schemas):
        raise RowProblem("wrong_type", "'tools' must be a list of objects (function schemas).")
    wrapped = [{"type": "function", "function": schema} if is_bare_function(schema) else schema for schema in schemas]
    for index, schema in enumerate(wrapped):
        function = schema.get("function")
        if not (isinstance(function, dict) and isinstance(function.get("name"), str) and function["name"].strip()):
            raise RowProblem("wrong_type", f"tools[{index}] names no function: {short_repr(schema)}.",
                             'A tool schema is {"type": "function", "function": {"name": "get_weather", '
                             '"description": "...", "parameters": {...}}} (or the inner object alone).')
    return wrapped


def is_bare_function(schema: dict) -> bool:
    return isinstance(schema.get("name"), str) and "function" not in schema and "type" not in schema


def check_turn_order(messages: list[Message], labels: list[str]) -> None:
    """Refuse conversations whose turns do not alternate as chat templates require."""
    previous: Message | None = None
    call_ids: list[str] = []  # the ids of the latest assistant turn's calls
    for index, (message, label) in enumerate(zip(messages, labels, strict=True)):
        role = message["role"]
        if role == "system" and index == 0:
            continue
        allowed = roles_after(previous)
        if role not in allowed:
            place = f"follow {previous['role']!r}" if previous else "come first"
            hint = ORDER_HINT + (SHAREGPT_ORDER_HINT if "(from " in label else "")
            raise RowProblem("alternation", f"{label}: {role!r} cannot {place} "
                                            f"(expected {' or '.join(map(repr, allowed))}).", hint)
        if role == "assistant" and message.get("tool_calls"):
            call_ids = [call.get("id") for call in message["tool_calls"] if call.get("id")]
        elif role == "tool":
            check_result_answers_a_call(message, label, call_ids)
        previous = message


def check_result_answers_a_call(message: Message, label: str, call_ids: list[str]) -> None:
    """A tool result's `tool_call_id`, where both it and the calls before it have ids, must be one of those calls':
    a result paired with the wrong call teaches the model to read the wrong answer (OpenAI's API refuses it too). A
    result without an id, or calls without ids, are left as they are: many datasets write neither."""
    result_id = message.get("tool_call_id")
    if result_id and call_ids and result_id not in call_ids:
        raise RowProblem("unknown_call_id", f"{label}: tool_call_id {result_id!r} answers none of the calls before "
                                            f"it (their ids: {call_ids}).",
                         "Give each tool result the id of the call it answers.")


def roles_after(previous: Message | None) -> tuple[str, ...]:
    if previous is None:
        return ("user",)
    if previous["role"] == "user":
        return ("assistant",)
    if previous["role"] == "assistant":
        return ("tool",) if previous.get("tool_calls") else ("user",)
    return ("tool", "assistant")


def check_answers(messages: list[Message], labels: list[str]) -> None:
    """Every turn says something (`check_turn_contents`) and the last turn is an assistant's."""
    check_turn_contents(messages, labels)
    if messages[-1]["role"] != "assistant":
        raise RowProblem("missing_assistant", "the last message must be a non-empty assistant turn.",
                         "Every training row needs an answer for the model to learn (GRPO's prompts without "
                         "answers are rows of their own shape: {\"prompt\": [turns ending with the user's]}; "
                         "`--set data.columns.messages=prompt` reads these rows so).")


def check_turn_contents(messages: list[Message], labels: list[str]) -> None:
    """Every user turn must say something (a null or blank one would train an answer to nothing), and every
    assistant turn must say something or call a tool."""
    for message, label in zip(messages, labels, strict=True):
        if message["role"] == "user" and not message["content"].strip():
            raise RowProblem("empty_user", f"{label} is an empty user turn (its content is null, blank or missing).",
                             "Give the turn its text, or remove the row (data.skip_invalid: true leaves such rows "
                             "out and counts them).")
        if message["role"] == "assistant" and not answers(message):
            raise RowProblem("empty_assistant", f"{label} is an empty assistant turn.",
                             "Every assistant turn needs text (or tool_calls) for the model to learn.")


def answers(message: Message) -> bool:
    return bool(message["content"].strip() or message.get("tool_calls"))


def conversation(value: Any, key: str = "messages") -> list[Message]:
    """A whole training conversation: turns normalised, order checked, ending in an answer."""
    messages, labels = normalise_turns(value, key)
    check_turn_order(messages, labels)
    check_answers(messages, labels)
    return messages


def open_prompt(value: Any) -> list[Message]:
    """The turns of a prompt-only row: normalised, in order, each user turn saying something, and ending where the
    model answers (after a user turn, or a tool's result)."""
    messages, labels = normalise_turns(value, "prompt")
    check_turn_order(messages, labels)
    check_turn_contents(messages, labels)
    if messages[-1]["role"] not in ("user", "tool"):
        raise RowProblem("alternation", f"{labels[-1]}: a prompt ends with the turn the model answers (a user turn "
                                        f"or a tool result), not {messages[-1]['role']!r}.",
                         "Give the answer as 'completion' (a prompt-completion row), or end the prompt at the "
                         "question.")
    return messages


def prompt_and_reply(prompt: Any, reply: Any, reply_key: str) -> tuple[list[Message], list[Message]]:
    """A conversational prompt and the assistant turns that answer it, checked as one conversation."""
    (prompt_turns, prompt_labels), (reply_turns, reply_labels) = (normalise_turns(prompt, "prompt"),
                                                                  normalise_turns(reply, reply_key))
    if reply_turns[0]["role"] != "assistant":
        raise RowProblem("alternation", f"{reply_labels[0]} must be an assistant turn, "
                                        f"got {reply_turns[0]['role']}.", ORDER_HINT)
    labels = prompt_labels + reply_labels
    check_turn_order(prompt_turns + reply_turns, labels)
    check_answers(prompt_turns + reply_turns, labels)
    return prompt_turns, reply_turns
