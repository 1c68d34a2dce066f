"""Tools in an Ollama template: learned from the run's own prompt rendering, written in Go, checked before use.

Ollama offers a model tools when its Go template uses `.Tools` (server/images.go), renders earlier calls from
each message's `.ToolCalls` and results from `tool` messages, and reads a generated call back by the first text
of the template's `{{ if .ToolCalls }}` branch (tools/template.go parseTag). The ChatML tool convention that
Qwen 2.5's template renders natively and tunesmith's `data.tool_format: hermes` fallback writes (data/fallbacks.py)
is one shape: the schemas as JSON lines in the system turn between fixed texts, each call as a `<tool_call>` block
after the turn's text, each run of results as one user turn of `<tool_response>` blocks. Only the texts around the
schemas differ from template to template, so they are read off the run's own rendering of two probe conversations
(`learn_tools_intro`), and the whole translation must then render every probe conversation exactly as training
did (`check_tools_translation`), or the export goes without tools and says why.

Ollama writes the schemas with its own JSON encoder (compact, its key order) where training wrote the row's
schema through `json.dumps`/`tojson`: the same content, other spacing. Earlier calls' arguments are written
with spaces as `tojson` writes them, in Ollama's (sorted) key order.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Messages = list[dict[str, Any]]
Tools = list[dict[str, Any]]
ToolRenderer = Callable[[Messages, Tools], str]  # the prompt training renders for a conversation offered tools

SYSTEM_PROBE = "Probe system"
PROBE_TOOLS: Tools = [
    {"type": "function", "function": {"name": "probe_weather", "description": "Probe weather in a city.",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "probe_convert", "description": "Probe a conversion.",
                                      "parameters": {"type": "object",
                                                     "properties": {"amount": {"type": "number"},
                                                                    "unit": {"type": "string"}},
                                                     "required": ["amount", "unit"]}}},
]


def probe_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


TOOL_PROBES: list[Messages] = [  # arguments with their keys in sorted order, as Ollama hands them to a template
    [{"role": "user", "content": "Ping one"}],
    [{"role": "system", "content": SYSTEM_PROBE}, {"role": "user", "content": "Ping two"}],
    [{"role": "user", "content": "Ping three"},
     {"role": "assistant", "content": "", "tool_calls": [probe_call("probe_weather", {"city": "Oslo"})]},
     {"role": "tool", "content": "Pong three"}],
    [{"role": "system", "content": SYSTEM_PROBE}, {"role": "user", "content": "Ping four"},
     {"role": "assistant", "content": "Two calls.", "tool_calls": [
         probe_call("probe_weather", {"city": "Oslo"}), probe_call("probe_convert", {"amount": 5, "unit": "EUR"})]},
     {"role": "tool", "content": "Pong four"}, {"role": "tool", "content": "4.6"},
     {"role": "assistant", "content": "Done four."}, {"role": "user", "content": "Ping five"}],
]


@dataclass(frozen=True)
class ToolsIntro:
    """The system turn's texts around the schemas, as the run's rendering writes them."""

    after_system: str  # after the conversation's own system text, up to the first schema
    alone: str  # the system turn's text up to the first schema when the conversation has no system turn
    between: str  # between two schemas
    tail: str  # after the last schema, to the end of the system turn


def apart_from_schemas(prompt: str) -> tuple[str, list[Any]]:
    """A prompt with its `<tools>` block's lines taken out, and those lines read as JSON: what an Ollama prompt and
    the training prompt it translates share exactly (Ollama writes the schemas with its own JSON spacing)."""
    if "<tools>\n" not in prompt:
        return prompt, []
    head, rest = prompt.split("<tools>\n", 1)
    schemas, tail = rest.split("\n</tools>", 1)
    return head + "<tools>\n</tools>" + tail, [json.loads(line) for line in schemas.split("\n")]


def jinja_schema(tool: dict[str, Any]) -> str:
    """A schema as `tojson` (transformers' chat templates) and data.fallbacks write it."""
    return json.dumps(tool, ensure_ascii=False)


def system_turn_text(prompt: str) -> str | None:
    """The text of a ChatML prompt's first turn when that turn is the system's."""
    start, end = "<|im_start|>system\n", "<|im_end|>\n"
    if not prompt.startswith(start) or end not in prompt:
        return None
    return prompt[len(start):prompt.index(end)]


def split_at_schemas(text: str) -> tuple[str, str, str] | None:
    """(before the first probe schema, between the two, after the second), or None when they are not there."""
    first, second = (jinja_schema(tool) for tool in PROBE_TOOLS)
    start = text.find(first)
    middle = text.find(second, start + len(first)) if start >= 0 else -1
    if middle < 0:
        return None
    return text[:start], text[start + len(first):middle], text[middle + len(second):]


def learn_tools_intro(render_tools: ToolRenderer, bos: str = "") -> ToolsIntro | None:
    """The texts around the schemas in the run's rendering of TOOL_PROBES[1] (with a system turn) and [0]
    (without), after the template's `bos`; None when a rendering has no ChatML system turn holding both probe
    schemas in order."""
    with_system = system_turn_text(render_tools(TOOL_PROBES[1], PROBE_TOOLS).removeprefix(bos))
    without = system_turn_text(render_tools(TOOL_PROBES[0], PROBE_TOOLS).removeprefix(bos))
    if with_system is None or without is None or not with_system.startswith(SYSTEM_PROBE):
        return None
    parts, alone_parts = split_at_schemas(with_system[len(SYSTEM_PROBE):]), split_at_schemas(without)
    if parts is None or alone_parts is None or parts[1:] != alone_parts[1:]:
        return None
    return ToolsIntro(after_system=parts[0], alone=alone_parts[0], between=parts[1], tail=parts[2])


def call_block(call: dict[str, Any]) -> str:
    """One call as the Go template writes it: `<tool_call>` and `{"name": ..., "arguments": {...}}`, the arguments'
    keys sorted (Ollama's map) and spaced as `tojson` spaces them, nested values compact (Go's `json`)."""
    function = call["function"]
    arguments = function.get("arguments") or {}
    if isinstance(arguments, str):
        arguments = json.loads(arguments)
    pairs = ", ".join(f"{json.dumps(key, ensure_ascii=False)}: "
                      f"{json.dumps(arguments[key], ensure_ascii=False, separators=(',', ':'))}"
                      for key in sorted(arguments))
    name = json.dumps(function["name"], ensure_ascii=False)
    return f'<tool_call>\n{{"name": {name}, "arguments": {{{pairs}}}}}\n</tool_call>'


def chatml_tools_render(messages: Messages, tools: Tools, default_system: str, intro: ToolsIntro,
                        schema: Callable[[dict[str, Any]], str] = jinja_schema) -> str:
    """What `chatml_tools_go` renders, computed in Python (with `schema` writing each tool's JSON)."""
    schemas = intro.between.join(schema(tool) for tool in tools)
    text, previous = "", None
    for index, message in enumerate(messages):
        role, content = message["role"], message.get("content") or ""
        if previous == "tool" and role != "tool":
            text += "<|im_end|>\n"
        if index == 0 and role != "system":
            if tools:
                text += f"<|im_start|>system\n{intro.alone}{schemas}{intro.tail}<|im_end|>\n"
            elif default_system:
                text += f"<|im_start|>system\n{default_system}<|im_end|>\n"
        if role == "tool":
            opening = "\n" if previous == "tool" else "<|im_start|>user\n"
            text += f"{opening}<tool_response>\n{content}\n</tool_response>"
        elif role == "system":
            block = f"{intro.after_system}{schemas}{intro.tail}" if index == 0 and tools else ""
            text += f"<|im_start|>system\n{content}{block}<|im_end|>\n"
        elif role == "assistant" and message.get("tool_calls"):
            body = "\n".join([*([content] if content else []), *(call_block(c) for c in message["tool_calls"])])
            text += f"<|im_start|>assistant\n{body}<|im_end|>\n"
        else:
            text += f"<|im_start|>{role}\n{content}<|im_end|>\n"
        previous = role
    return text + ("<|im_end|>\n" if previous == "tool" else "") + "<|im_start|>assistant\n"


def check_tools_translation(render_tools: ToolRenderer, default_system: str, intro: ToolsIntro,
                            bos: str = "") -> str | None:
    """None when the translation renders every probe conversation exactly as training did; else where it differs."""
    for index, messages in enumerate(TOOL_PROBES):
        expected = render_tools(messages, PROBE_TOOLS)
        got = bos + chatml_tools_render(messages, PROBE_TOOLS, default_system, intro)
        if got != expected:
            at = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
                      min(len(got), len(expected)))
            return (f"on tool probe {index} from character {at} the run's rendering gives {expected[at:at + 60]!r}, "
                    f"the translation {got[at:at + 60]!r}")
    return None


def chatml_tools_go(default_system: str, intro: ToolsIntro, go_literal: Callable[[str], str]) -> str:
    """ChatML with tools in Go over Ollama's `.Tools`, `.ToolCalls` and `tool` messages (chatml_tools_render is
    its mirror). The `{{ if .ToolCalls }}` branch starts with `<tool_call>`, the tag Ollama reads calls back by;
    the turn's text before the calls is written by a branch on `$m.ToolCalls`, which parseTag does not look at."""
    schemas = ("{{ range $j, $t := $.Tools }}{{ if $j }}" + go_literal(intro.between)
               + "{{ end }}{{ json $t }}{{ end }}" + go_literal(intro.tail))
    default = (f"{{{{ else }}}}<|im_start|>system\n{go_literal(default_system)}<|im_end|>\n"
               if default_system else "")
    first = ('{{ if and (eq $i 0) (ne $m.Role "system") }}{{ if $.Tools }}<|im_start|>system\n'
             + go_literal(intro.alone) + schemas + "<|im_end|>\n" + default + "{{ end }}{{ end }}")
    call = ('<tool_call>\n{"name": {{ json $c.Function.Name }}, "arguments": {{ "{" }}{{ $sep := "" }}'
            '{{ range $k, $v := $c.Function.Arguments }}{{ $sep }}{{ json $k }}: {{ json $v }}{{ $sep = ", " }}'
            '{{ end }}{{ "}}" }}\n</tool_call>')
    assistant = ("<|im_start|>assistant\n{{ if and $m.ToolCalls $m.Content }}{{ $m.Content }}\n{{ end }}"
                 "{{ if .ToolCalls }}{{ range $j, $c := .ToolCalls }}" + call
                 + "{{ if gt (len (slice $m.ToolCalls $j)) 1 }}\n{{ end }}{{ end }}{{ else }}{{ $m.Content }}"
                 "{{ end }}<|im_end|>\n")
    tool = ('{{ if eq $prev "tool" }}\n{{ else }}<|im_start|>user\n{{ end }}'
            "<tool_response>\n{{ $m.Content }}\n</tool_response>")
    system = ("<|im_start|>system\n{{ $m.Content }}{{ if and (eq $i 0) $.Tools }}" + go_literal(intro.after_system)
              + schemas + "{{ end }}<|im_end|>\n")
    return ('{{- $prev := "" }}{{- range $i, $m := .Messages }}'
            '{{ if and (eq $prev "tool") (ne $m.Role "tool") }}<|im_end|>\n{{ end }}' + first
            + '{{ if eq $m.Role "tool" }}' + tool + '{{ else if eq $m.Role "system" }}' + system
            + '{{ else if eq $m.Role "assistant" }}' + assistant
            + "{{ else }}<|im_start|>{{ $m.Role }}\n{{ $m.Content }}<|im_end|>\n{{ end }}{{ $prev = $m.Role }}"
            '{{ end }}{{ if eq $prev "tool" }}<|im_end|>\n{{ end }}<|im_start|>assistant\n')
