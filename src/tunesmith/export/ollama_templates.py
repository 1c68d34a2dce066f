"""Translate a model's Jinja chat template into the Go template that Ollama renders prompts with.

Ollama does not run Jinja: a Modelfile's TEMPLATE is Go `text/template` over `.Messages` (each with
`.Role` and `.Content`). We recognise the common template families by their marker tokens and write each
family's Go template by hand. Each family also has a Python mirror of its Go template, and before
anything is exported the mirror must render a few probe conversations exactly as the model's own Jinja
template does, so a variant we do not know (another default system prompt, other spacing) is refused
instead of silently mistranslated. tests/test_ollama_export.py proves every Go template against Go's own
`text/template` and transformers' `apply_chat_template`.

Tools: a run trained with `data.tool_format: hermes` on a ChatML template gets a Go template that offers
Ollama's `.Tools` and renders `.ToolCalls` and `tool` turns as that fallback trained them (schemas in the
system turn, `<tool_call>` blocks, `<tool_response>` user turns), so Ollama accepts `tools` in a request and
reads the model's `<tool_call>` back as calls. Ollama writes the schemas with its own JSON encoder (compact,
its key order) where training wrote `json.dumps` of the row's schema: the same content, other spacing.
Other families' tool renderings are not translated (the export says so).

Known gaps, all checked by the probes rather than assumed: Go templates have no `trim`, so templates that
trim message content (Llama 3, Gemma, Mistral) agree for content without leading or trailing whitespace only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunesmith.data.fallbacks import HERMES_TOOLS_INTRO
from tunesmith.errors import TunesmithError

Messages = list[dict[str, str]]
PROBES: list[Messages] = [
    [{"role": "user", "content": "Ping one"}],
    [{"role": "system", "content": "Probe system"}, {"role": "user", "content": "Ping two"}],
    [{"role": "user", "content": "Ping three"}, {"role": "assistant", "content": "Pong three"},
     {"role": "user", "content": "Ping four\nsecond line"}],
    [{"role": "system", "content": "Probe system"}, {"role": "user", "content": "Ping five"},
     {"role": "assistant", "content": "Pong five"}, {"role": "user", "content": "Ping six"}],
]


@dataclass(frozen=True)
class TemplateContext:
    """What a family's Go template needs from the tokenizer besides its fixed markers."""

    eos_token: str = ""
    default_system: str = ""  # the system turn a ChatML template adds when the conversation has none


@dataclass(frozen=True)
class TemplateFamily:
    name: str
    markers: tuple[str, ...]  # all appear in the Jinja template text of this family
    stops: tuple[str, ...]  # the end-of-turn token and the next turn's header
    go_template: Callable[[TemplateContext], str]
    render: Callable[[Messages, TemplateContext], str]  # the Go template's output, computed in Python


@dataclass(frozen=True)
class Translation:
    family: str
    go_template: str
    stops: tuple[str, ...]
    default_system: str
    offers_tools: bool = False  # the Go template renders .Tools, .ToolCalls and tool turns


def go_literal(text: str) -> str:
    """`text` as it must appear in Go template source: verbatim unless it holds action delimiters."""
    return text if "{{" not in text and "}}" not in text else "{{ " + json.dumps(text) + " }}"


def chatml_go(ctx: TemplateContext) -> str:
    default = ""
    if ctx.default_system:
        default = ('{{ if and (eq $i 0) (ne $m.Role "system") }}<|im_start|>system\n'
                   f"{go_literal(ctx.default_system)}<|im_end|>\n{{{{ end }}}}")
    return ("{{- range $i, $m := .Messages }}" + default
            + "<|im_start|>{{ $m.Role }}\n{{ $m.Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n")


def chatml_render(messages: Messages, ctx: TemplateContext) -> str:
    text = ""
    if ctx.default_system and messages[0]["role"] != "system":
        text += f"<|im_start|>system\n{ctx.default_system}<|im_end|>\n"
    text += "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + "<|im_start|>assistant\n"


def hermes_tools_intro_go() -> str:
    """data.fallbacks' tools intro in Go: each of Ollama's `.Tools` as JSON on its own line inside `<tools>`."""
    marker = "\0schemas\0"
    head, tail = HERMES_TOOLS_INTRO.format(schemas=marker).split(marker)
    return (go_literal(head) + "{{ range $j, $t := $.Tools }}{{ if $j }}\n{{ end }}{{ json $t }}{{ end }}"
            + go_literal(tail))


def hermes_chatml_go(ctx: TemplateContext) -> str:
    """ChatML with the `data.tool_format: hermes` fallback (data/fallbacks.py) written in Go over Ollama's
    `.Tools`, `.ToolCalls` and `tool` messages: the tools intro in the first system turn (its own turn when the
    conversation has none, in place of the template's default system prompt), each call as a `<tool_call>` block
    after the turn's text, and each run of tool results as one user turn of `<tool_response>` blocks. A call's
    arguments are written `{"key": value, ...}` in Ollama's (sorted) key order, as `json.dumps` spaces them.

    Ollama finds the tag it reads calls back by as the first text inside the `{{ if .ToolCalls }}` branch
    (`tools/template.go` parseTag), so that branch starts with `<tool_call>`; the turn's text is written by a branch
    on `$m.ToolCalls`, which parseTag does not look at."""
    intro = hermes_tools_intro_go()
    default = (f"{{{{ else }}}}<|im_start|>system\n{go_literal(ctx.default_system)}<|im_end|>\n"
               if ctx.default_system else "")
    first = ('{{ if and (eq $i 0) (ne $m.Role "system") }}{{ if $.Tools }}<|im_start|>system\n' + intro
             + "<|im_end|>\n" + default + "{{ end }}{{ end }}")
    call = ('<tool_call>\n{"name": {{ json $c.Function.Name }}, "arguments": {{ "{" }}{{ $sep := "" }}'
            '{{ range $k, $v := $c.Function.Arguments }}{{ $sep }}{{ json $k }}: {{ json $v }}{{ $sep = ", " }}'
            '{{ end }}{{ "}}" }}\n</tool_call>')
    assistant = ("<|im_start|>assistant\n{{ if and $m.ToolCalls $m.Content }}{{ $m.Content }}\n{{ end }}"
                 "{{ if .ToolCalls }}{{ range $j, $c := .ToolCalls }}" + call
                 + "{{ if gt (len (slice $m.ToolCalls $j)) 1 }}\n{{ end }}{{ end }}{{ else }}{{ $m.Content }}"
                 "{{ end }}<|im_end|>\n")
    tool = ('{{ if eq $prev "tool" }}\n{{ else }}<|im_start|>user\n{{ end }}'
            "<tool_response>\n{{ $m.Content }}\n</tool_response>")
    system = ("<|im_start|>system\n{{ $m.Content }}{{ if and (eq $i 0) $.Tools }}\n\n" + intro
              + "{{ end }}<|im_end|>\n")
    return ('{{- $prev := "" }}{{- range $i, $m := .Messages }}'
            '{{ if and (eq $prev "tool") (ne $m.Role "tool") }}<|im_end|>\n{{ end }}' + first
            + '{{ if eq $m.Role "tool" }}' + tool + '{{ else if eq $m.Role "system" }}' + system
            + '{{ else if eq $m.Role "assistant" }}' + assistant
            + "{{ else }}<|im_start|>{{ $m.Role }}\n{{ $m.Content }}<|im_end|>\n{{ end }}{{ $prev = $m.Role }}"
            '{{ end }}{{ if eq $prev "tool" }}<|im_end|>\n{{ end }}<|im_start|>assistant\n')


def llama3_go(ctx: TemplateContext) -> str:
    return ("{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>\n"
            "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n")


def llama3_render(messages: Messages, ctx: TemplateContext) -> str:
    turns = "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>" for m in messages)
    return turns + "<|start_header_id|>assistant<|end_header_id|>\n\n"


def mistral_go(ctx: TemplateContext) -> str:
    """The system prompt goes in front of the last user message, as Mistral's v0.3 template puts it."""
    return ('{{- range $i, $m := .Messages }}\n{{- if eq $m.Role "user" }}[INST] '
            '{{ if and (eq (index $.Messages 0).Role "system") (eq (len (slice $.Messages $i)) 1) }}'
            "{{ (index $.Messages 0).Content }}\n\n{{ end }}{{ $m.Content }}[/INST]\n"
            '{{- else if eq $m.Role "assistant" }} {{ $m.Content }}' + go_literal(ctx.eos_token)
            + "\n{{- end }}\n{{- end }}")


def mistral_render(messages: Messages, ctx: TemplateContext) -> str:
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    text = ""
    for index, message in enumerate(messages):
        if message["role"] == "user":
            prefix = f"{system}\n\n" if system is not None and index == len(messages) - 1 else ""
            text += f"[INST] {prefix}{message['content']}[/INST]"
        elif message["role"] == "assistant":
            text += f" {message['content']}{ctx.eos_token}"
    return text


def gemma_go(ctx: TemplateContext) -> str:
    """Gemma has no system turn: a leading system message goes in front of the first user message."""
    return ('{{- range $i, $m := .Messages }}\n{{- if not (and (eq $i 0) (eq $m.Role "system")) }}<start_of_turn>'
            '{{ if eq $m.Role "assistant" }}model{{ else }}{{ $m.Role }}{{ end }}\n'
            '{{ if and (eq $i 1) (eq (index $.Messages 0).Role "system") }}{{ (index $.Messages 0).Content }}\n\n'
            "{{ end }}{{ $m.Content }}<end_of_turn>\n{{ end }}\n{{- end }}<start_of_turn>model\n")


def gemma_render(messages: Messages, ctx: TemplateContext) -> str:
    has_system = messages[0]["role"] == "system"
    text = ""
    for index, message in enumerate(messages):
        if index == 0 and has_system:
            continue
        role = "model" if message["role"] == "assistant" else message["role"]
        prefix = messages[0]["content"] + "\n\n" if has_system and index == 1 else ""
        text += f"<start_of_turn>{role}\n{prefix}{message['content']}<end_of_turn>\n"
    return text + "<start_of_turn>model\n"


def phi3_go(ctx: TemplateContext) -> str:
    return ('{{- range .Messages }}\n{{- if or (eq .Role "user") (eq .Role "assistant") '
            '(and (eq .Role "system") .Content) }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}\n'
            "{{- end }}<|assistant|>\n")


def phi3_render(messages: Messages, ctx: TemplateContext) -> str:
    kept = [m for m in messages if m["role"] in ("user", "assistant") or (m["role"] == "system" and m["content"])]
    return "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in kept) + "<|assistant|>\n"


FAMILIES = (
    TemplateFamily("chatml", ("<|im_start|>",), ("<|im_start|>", "<|im_end|>"), chatml_go, chatml_render),
    TemplateFamily("llama3", ("<|start_header_id|>",), ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
                   llama3_go, llama3_render),
    TemplateFamily("gemma", ("<start_of_turn>",), ("<start_of_turn>", "<end_of_turn>"), gemma_go, gemma_render),
    TemplateFamily("phi3", ("<|user|>", "<|end|>"), ("<|end|>", "<|user|>", "<|assistant|>"), phi3_go, phi3_render),
    TemplateFamily("mistral", ("[INST]",), ("[INST]", "[/INST]"), mistral_go, mistral_render),
)


def detect_family(jinja_template: str) -> TemplateFamily:
    """The first family whose markers all appear in the template text; a refusal naming the fix otherwise."""
    for family in FAMILIES:
        if all(marker in jinja_template for marker in family.markers):
            return family
    raise TunesmithError(
        "The model's chat template is not one tunesmith can translate for Ollama "
        f"(it knows {', '.join(f.name for f in FAMILIES)}).",
        "Export --format gguf and write the Modelfile yourself: FROM ./<file>.gguf, and a TEMPLATE in Go "
        "template syntax over .Messages (.Role, .Content) ending with the assistant header; see "
        "https://github.com/ollama/ollama/blob/main/docs/template.md.",
    )


def translate_chat_template(tokenizer: Any, adds_bos: bool, tool_format: str = "template") -> Translation:
    """The Go template for the tokenizer's chat template, checked against it on the probe conversations.

    `adds_bos` says whether the GGUF's tokenizer prepends BOS itself (`tokenizer.ggml.add_bos_token`):
    then a BOS that the Jinja template writes is left to it, otherwise the Go template writes it.
    `tool_format` is the run's `data.tool_format`: "hermes" on a ChatML template gives the template that offers
    tools (`hermes_chatml_go`, the same prompt as ChatML's for a conversation without tools).
    """
    jinja = tokenizer.chat_template
    family = detect_family(jinja)
    eos = tokenizer.eos_token or ""
    context = TemplateContext(eos_token=eos, default_system=chatml_default_system(tokenizer, family))
    bos = tokenizer.bos_token if "bos_token" in jinja and tokenizer.bos_token else ""
    check_against_jinja(tokenizer, family, context, bos)
    prefix = "" if adds_bos else go_literal(bos)
    stops = tuple(dict.fromkeys([*family.stops, *([eos] if family.name == "mistral" and eos else [])]))
    if tool_format == "hermes" and family.name == "chatml":
        return Translation(family.name, prefix + hermes_chatml_go(context), stops, context.default_system, True)
    return Translation(family.name, prefix + family.go_template(context), stops, context.default_system)


def render_jinja(tokenizer: Any, messages: Messages) -> str | None:
    """The Jinja template's prompt for a conversation, or None when the template refuses it."""
    from jinja2.exceptions import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except TemplateError:  # the template's raise_exception: e.g. Gemma 2 refuses a system turn
        return None


def chatml_default_system(tokenizer: Any, family: TemplateFamily) -> str:
    """The system prompt a ChatML template writes when the conversation has none ("" if it writes none)."""
    if family.name != "chatml":
        return ""
    rendered = render_jinja(tokenizer, PROBES[0]) or ""
    head, found, _ = rendered.partition("<|im_start|>user\n")
    start, end = "<|im_start|>system\n", "<|im_end|>\n"
    if found and head.startswith(start) and head.endswith(end):
        return head[len(start):-len(end)]
    return ""


def check_against_jinja(tokenizer: Any, family: TemplateFamily, context: TemplateContext, bos: str) -> None:
    """Refuse when the family's prompt differs from the model's own template on any probe it accepts."""
    compared = 0
    for messages in PROBES:
        expected = render_jinja(tokenizer, messages)
        if expected is None:
            continue
        got = bos + family.render(messages, context)
        if got != expected:
            at = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
                      min(len(got), len(expected)))
            raise TunesmithError(
                f"The chat template looks like {family.name} but renders differently from tunesmith's {family.name} "
                f"Ollama template (from character {at}: the model's template gives {expected[at:at + 60]!r}, "
                f"the translation {got[at:at + 60]!r}).",
                "Export --format gguf and write the Modelfile's TEMPLATE by hand, or use a stock chat template.",
            )
        compared += 1
    if compared == 0:
        raise TunesmithError("The chat template refused every probe conversation, so it cannot be translated.",
                             "Check that the template renders a plain user message with add_generation_prompt.")
