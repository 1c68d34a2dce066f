"""Translate a model's Jinja chat template into the Go template that Ollama renders prompts with.

Ollama does not run Jinja: a Modelfile's TEMPLATE is Go `text/template` over `.Messages` (each with
`.Role` and `.Content`). We recognise the common template families by their marker tokens and write each
family's Go template by hand. Each family also has a Python mirror of its Go template, and before
anything is exported the mirror must render a few probe conversations exactly as the model's own Jinja
template does, so a variant we do not know (another default system prompt, other spacing) is refused
instead of silently mistranslated. tests/test_ollama_export.py proves every Go template against Go's own
`text/template` and transformers' `apply_chat_template`.

Tools: where the run's own prompts render tools the ChatML way (Qwen 2.5's template natively, any ChatML
template through `data.tool_format: hermes`), the Go template offers Ollama's `.Tools` and renders calls and
results as training did (ollama_tools.py); other families' tool renderings are not translated (the export says so).

Known gaps, all checked by the probes rather than assumed: Go templates have no `trim`, so templates that
trim message content (Llama 3, Gemma, Mistral) agree for content without leading or trailing whitespace only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from tunesmith.errors import TunesmithError
from tunesmith.export.ollama_tools import (
    ToolRenderer,
    chatml_tools_go,
    check_tools_translation,
    learn_tools_intro,
)

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
    turn_end: str = "<|im_end|>"  # closes a ChatML turn: <|im_end|>, or the eos_token (model.chat_template: chatml)


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
    tools_note: str = ""  # why it does not, where the run's prompts were asked to render tools
    mirror: Callable[[Messages], str] | None = None  # the prompt Ollama renders for messages without tools, BOS
    # included as the model's own template writes it (the family's Python mirror); None for raw text


def go_literal(text: str) -> str:
    """`text` as it must appear in Go template source: verbatim unless it holds action delimiters."""
    return text if "{{" not in text and "}}" not in text else "{{ " + json.dumps(text) + " }}"


def chatml_go(ctx: TemplateContext) -> str:
    default = ""
    if ctx.default_system:
        default = ('{{ if and (eq $i 0) (ne $m.Role "system") }}<|im_start|>system\n'
                   f"{go_literal(ctx.default_system)}<|im_end|>\n{{{{ end }}}}")
    return ("{{- range $i, $m := .Messages }}" + default
            + f"<|im_start|>{{{{ $m.Role }}}}\n{{{{ $m.Content }}}}{go_literal(ctx.turn_end)}\n{{{{ end }}}}"
            + "<|im_start|>assistant\n")


def chatml_render(messages: Messages, ctx: TemplateContext) -> str:
    text = ""
    if ctx.default_system and messages[0]["role"] != "system":
        text += f"<|im_start|>system\n{ctx.default_system}<|im_end|>\n"
    text += "".join(f"<|im_start|>{m['role']}\n{m['content']}{ctx.turn_end}\n" for m in messages)
    return text + "<|im_start|>assistant\n"


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


RAW_GO_TEMPLATE = "{{ .Prompt }}"  # Ollama's template for a model without one (docs/template.md)


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


def translate_chat_template(tokenizer: Any, adds_bos: bool, render_tools: ToolRenderer | None = None) -> Translation:
    """The Go template for the tokenizer's chat template, checked against it on the probe conversations.

    `adds_bos` says whether the GGUF's tokenizer prepends BOS itself (`tokenizer.ggml.add_bos_token`):
    then a BOS that the Jinja template writes is left to it, otherwise the Go template writes it.
    `render_tools`: the run's prompt for a conversation offered tools (its template, with its data fallbacks);
    when its tool rendering translates (`translate_tools`), the Go template offers tools, and is the same as
    without them for a conversation that has none.
    """
    jinja = tokenizer.chat_template
    if not jinja:  # a base model (raw-text training): Ollama sends the prompt as it is, its default for such models
        return Translation("raw text (the model has no chat template)", RAW_GO_TEMPLATE, (), "")
    family = detect_family(jinja)
    eos = tokenizer.eos_token or ""
    turn_end = "<|im_end|>" if "<|im_end|>" in jinja or not eos else eos  # ChatML closed by EOS: tunesmith's chatml
    context = TemplateContext(eos_token=eos, default_system=chatml_default_system(tokenizer, family),
                              turn_end=turn_end)
    bos = tokenizer.bos_token if "bos_token" in jinja and tokenizer.bos_token else ""
    check_against_jinja(tokenizer, family, context, bos)
    prefix = "" if adds_bos else go_literal(bos)
    stops = tuple(dict.fromkeys([*(turn_end if stop == "<|im_end|>" else stop for stop in family.stops),
                                 *([eos] if family.name == "mistral" and eos else [])]))
    go_template, tools_note = family.go_template(context), ""
    if render_tools is not None:
        go_tools, tools_note = translate_tools(family, context, render_tools, bos)
        go_template = go_tools or go_template
    return Translation(family.name, prefix + go_template, stops, context.default_system,
                       offers_tools=not tools_note and render_tools is not None, tools_note=tools_note,
                       mirror=partial(mirror_prompt, family, context, bos))


def mirror_prompt(family: TemplateFamily, context: TemplateContext, bos: str, messages: Messages) -> str:
    """What Ollama's Go template renders for `messages` (no tools), with the BOS the model's Jinja template writes:
    the text to compare with that template's (`check_against_jinja`, `export --check`)."""
    return bos + family.render(messages, context)


def translate_tools(family: TemplateFamily, context: TemplateContext, render_tools: ToolRenderer,
                    bos: str) -> tuple[str | None, str]:
    """(the Go template with tools, "") when the run's tool rendering translates; (None, why) when it does not."""
    from jinja2.exceptions import TemplateError

    if family.name != "chatml":
        return None, f"tunesmith translates tool rendering for ChatML templates only (this one is {family.name})"
    try:
        intro = learn_tools_intro(render_tools, bos)
        problem = None if intro is None else check_tools_translation(render_tools, context.default_system, intro, bos)
    except TemplateError as error:  # the template's raise_exception on tools
        return None, f"the chat template refuses a conversation with tools ({error})"
    if intro is None:
        return None, ("the run's prompts do not write tool schemas into a ChatML system turn (set "
                      "data.tool_format: hermes to train tools in a form Ollama can be given)")
    if problem:
        return None, f"the run's tool rendering is not one tunesmith translates: {problem}"
    return chatml_tools_go(context.default_system, intro, go_literal), ""


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
        got = mirror_prompt(family, context, bos, messages)
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
