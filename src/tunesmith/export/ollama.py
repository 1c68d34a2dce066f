"""Export a run for Ollama: the merged model as GGUF next to a Modelfile, in exports/ollama/.

The Modelfile points at the GGUF by a relative path (Ollama resolves it against the Modelfile's folder),
carries the chat template translated to Go template syntax (ollama_templates.py), the stop strings of
that template, and the recipe's system prompt. Sampling parameters are left to Ollama's defaults: a
recipe says nothing about them. The folder is built under a temporary name and renamed, so a failed
export leaves no half-written folder; when the `ollama` binary is installed the model is created too.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.errors import TunesmithError
from tunesmith.export import gguf_signature, update_export_manifest
from tunesmith.export.ollama_templates import RAW_GO_TEMPLATE, Translation, translate_chat_template
from tunesmith.export.ollama_tools import ToolRenderer
from tunesmith.runs import atomic_directory, atomic_write_text

if TYPE_CHECKING:
    from tunesmith.config import DataSection, Recipe
    from tunesmith.runs import Run


@dataclass(frozen=True)
class OllamaExport:
    folder: Path
    modelfile: Path
    model_name: str
    family: str
    create_command: str
    created: bool | None  # None: no `ollama` binary here, so the command was not run
    create_output: str = ""
    offers_tools: bool = False  # the Modelfile's template takes a request's `tools` (translation.offers_tools)
    notes: tuple[str, ...] = ()  # what a user of the Ollama model should know (tools it will not be offered)


def run_ollama_export(recipe: Recipe, run: Run, quant: str = "F16", verify: bool | None = None,
                      adapter: bool | None = None, gguf: Path | None = None) -> OllamaExport:
    """Write exports/ollama/ (GGUF + Modelfile), then `ollama create` it if Ollama is installed.

    `verify` is passed on to run_gguf_export (None: check the GGUF in llama.cpp when it is installed).
    `adapter` (None: the recipe's export.ollama_adapter) writes the base GGUF and the LoRA as a GGUF
    adapter (`FROM` + `ADAPTER`) instead of one merged GGUF. `gguf`: the merged GGUF of this `quant` that the same
    export has just written (and checked), linked instead of being written and checked again.
    """
    from tunesmith.export.gguf import parse_quant, run_gguf_export
    from tunesmith.export.gguf_lora import lora_type_for, run_base_and_lora_export

    parse_quant(quant)  # a bad type fails before the slow steps
    translation = translate_run_template(run, recipe.data)  # an untranslatable template fails before the GGUF
    folder = run.exports_dir / "ollama"
    adapter_name = None
    if recipe.export.ollama_adapter if adapter is None else adapter:
        gguf_path, adapter_path = run_base_and_lora_export(recipe, run, quant)
        gguf_name, adapter_name = f"base-{quant.upper()}.gguf", f"adapter-{lora_type_for(quant)}.gguf"
    else:
        gguf_path = gguf if gguf is not None else run_gguf_export(recipe, run, quant, verify=verify)
        gguf_name = f"model-{quant.upper()}.gguf"
    with atomic_directory(folder) as tmp:
        link_or_copy(gguf_path, tmp / gguf_name)
        if adapter_name:
            link_or_copy(adapter_path, tmp / adapter_name)
        atomic_write_text(tmp / "Modelfile",
                          modelfile_text(gguf_name, translation, recipe.data.system_prompt, adapter_name))
    name = recipe.name.lower()
    result = replace(create_with_ollama(name, folder / "Modelfile", translation.family),
                     offers_tools=translation.offers_tools)
    if trained_with_tools(recipe, run) and not translation.offers_tools:
        result = replace(result, notes=(
            f"The run trained tool calls, but the Ollama template does not offer tools: {translation.tools_note}. "
            "Ollama will answer a request with `tools` with \"does not support tools\"; `tunesmith serve RUN` "
            "offers them as training rendered them.",))
    record_in_manifest(run, result)
    return result


def translate_run_template(run: Run, data: DataSection) -> Translation:
    """The base model's chat template in Go syntax (merging never changes the tokenizer), offering tools where the
    run's prompts render them in a form that translates (its template and `data`'s fallbacks)."""
    from tunesmith.export.gguf_vocab import added_special_tokens
    from tunesmith.models.tuned import run_tokenizer

    tokenizer = run_tokenizer(run)
    return translate_chat_template(tokenizer, adds_bos=added_special_tokens(tokenizer)["bos"],
                                   render_tools=training_tools_renderer(tokenizer, data))


def training_tools_renderer(tokenizer: Any, data: DataSection) -> ToolRenderer:
    """The prompt training renders for a conversation offered `tools`: the recipe's data fallbacks, then the template
    (generation prompt on)."""
    from tunesmith.data.fallbacks import apply_fallbacks
    from tunesmith.data.template import render

    def render_tools(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
        row = apply_fallbacks({"messages": messages, "tools": tools}, data)
        return render(tokenizer, row["messages"], generation_prompt=True, tools=row.get("tools"))

    return render_tools


def trained_with_tools(recipe: Recipe, run: Run) -> bool:
    """Whether the run's training rows offered tools: the Hermes fallback, or a saved row with `tools`."""
    if recipe.data.tool_format == "hermes":
        return True
    manifest = run.manifest()
    if manifest is None or manifest.data is None:
        return False
    return any(row.get("tools") for row in run.read_rows(manifest.data.train))


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link when the filesystem allows it (a GGUF can be gigabytes), a copy otherwise."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def modelfile_text(gguf_name: str, translation: Translation, system_prompt: str | None,
                   adapter_name: str | None = None) -> str:
    """The Modelfile: FROM (and ADAPTER for a GGUF LoRA on the base), TEMPLATE, one PARAMETER stop per stop
    string, and SYSTEM when the recipe has one."""
    tools = (" With tools, as the run's prompts render them (Ollama writes the schemas as compact JSON)."
             if translation.offers_tools else "")
    origin = (": the prompt is sent as it is" if translation.go_template == RAW_GO_TEMPLATE
              else ", translated from the model's Jinja template and checked against it")
    lines = [f"# Written by tunesmith. Chat template: {translation.family}{origin}.{tools}",
             f"FROM ./{gguf_name}",
             *([f"ADAPTER ./{adapter_name}"] if adapter_name else []),
             f'TEMPLATE {triple_quoted(translation.go_template, "TEMPLATE")}']
    lines += [f'PARAMETER stop "{stop}"' for stop in translation.stops]
    if system_prompt:
        lines.append(f'SYSTEM {triple_quoted(system_prompt, "data.system_prompt")}')
    return "\n".join(lines) + "\n"


def triple_quoted(value: str, what: str) -> str:
    """A Modelfile multi-line value; Ollama's parser ends it at the first `\"\"\"`, so that cannot occur inside."""
    if '"""' in value:
        raise TunesmithError(f'The {what} contains """, which cannot be written inside a Modelfile value.',
                             'Remove the triple quote from it and export again.')
    return f'"""{value}"""'


def create_with_ollama(name: str, modelfile: Path, family: str) -> OllamaExport:
    """Run `ollama create` when the binary is on PATH; otherwise hand back the command to run."""
    command = ["ollama", "create", name, "-f", str(modelfile)]
    shown = shlex.join(command)
    base = dict(folder=modelfile.parent, modelfile=modelfile, model_name=name, family=family, create_command=shown)
    if shutil.which("ollama") is None:
        return OllamaExport(**base, created=None)
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=modelfile.parent)
    return OllamaExport(**base, created=done.returncode == 0, create_output=(done.stdout + done.stderr).strip())


def record_in_manifest(run: Run, result: OllamaExport) -> None:
    """Add the Ollama folder to exports/manifest.json next to whatever other exports it already lists, with the
    signatures of its GGUF files and the sha256 of its TEMPLATE (what `export --check` compares)."""
    template = modelfile_value(result.modelfile.read_text(encoding="utf-8"), "TEMPLATE") or ""
    update_export_manifest(run, {"ollama": {
        "path": run.relative(result.folder), "modelfile": run.relative(result.modelfile), "name": result.model_name,
        "template_family": result.family, "created": result.created, "offers_tools": result.offers_tools,
        "template_sha256": hashlib.sha256(template.encode("utf-8")).hexdigest(),
        "files": {file.name: gguf_signature(file) for file in sorted(result.folder.glob("*.gguf"))}}})


def modelfile_value(text: str, keyword: str) -> str | None:
    """A Modelfile's triple-quoted value of `keyword` (as `modelfile_text` writes it), None without one."""
    _, found, rest = text.partition(f'\n{keyword} """')
    return rest.partition('"""')[0] if found else None
