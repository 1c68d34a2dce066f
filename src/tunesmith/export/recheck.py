"""`tunesmith export RUN --check`: a run's exports as they are now, checked again without writing anything.

A GGUF or Modelfile can change after export (copied over, converted again by another tool, its template edited by
hand), and each program users run the export with renders the chat template its own way. Three sections of
doctor checks (`tunesmith.doctor.report`), each with a fix:
- exported files: every export exports/manifest.json records is there, each GGUF is the file export wrote and
  checked (its size and `gguf_signature`), the Modelfile's TEMPLATE is the one written (its sha256), and the merged
  checkpoint is still the merge of the run's adapter;
- llama.cpp agreement: each whole-model GGUF is held to its type's threshold again (`verify_gguf`), and each GGUF
  LoRA on the base GGUF recorded beside it;
- chat template: the run's own held-out conversations, prompted as eval, chat and serve prompt them (the template
  training saved, `eval.decoding.prompt_texts`), against (1) each GGUF's embedded template as llama-cpp-python
  renders it (its `Jinja2ChatFormatter`, over the GGUF's own BOS and EOS; llama.cpp's server with --jinja and
  LM Studio read the same template with engines of their own), (2) llama.cpp's tokenization of the prompt against
  the ids training fed the model, and (3) the Ollama Modelfile's TEMPLATE, through its family's Python mirror
  (proven against Go's text/template in tests/test_ollama_export.py). The probes export checks the translation on
  are four short conversations; the run's own rows are where a difference would cost the task (whitespace a Go
  template cannot trim, a system prompt, several turns). A file changed since export fails; a renderer that renders
  the run's template otherwise warns, naming what to do instead (exporting again would write the same file).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.config import Recipe
from tunesmith.doctor.report import Check, DoctorReport, Status
from tunesmith.errors import TunesmithError, shell_arg
from tunesmith.export import gguf_entries, gguf_signature
from tunesmith.manifest import inside_run, weights_signature
from tunesmith.runs import Run

FILES = "exported files"
AGREEMENT = "llama.cpp agreement"
TEMPLATE = "chat template on the run's own conversations"
CHECKED_CONVERSATIONS = 64  # of the held-out rows: rendering and tokenizing one takes milliseconds
SHOWN_CHARACTERS = 60  # of each side, from the first character that differs


@dataclass(frozen=True)
class Prompt:
    """One held-out conversation as eval, chat and serve prompt the model: its turns before the answer, the tools
    it offers, the text the saved template renders and the ids training's tokenizer makes of it."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    text: str
    ids: list[int]


def check_exports(run: Run, recipe: Recipe, verify: bool = True) -> DoctorReport:
    """Every check above for the exports the run's exports/manifest.json records; `verify` runs the llama.cpp
    agreement (seconds per GGUF for a small model, minutes for a large one). Raises TunesmithError for a run with
    nothing exported."""
    manifest = exports_manifest(run)
    if not manifest:
        raise TunesmithError(f"{run.path} has nothing exported to check (no exports/manifest.json).",
                             f"tunesmith export {shell_arg(run.path)} writes the recipe's formats.")
    checks = adapter_checks(run, manifest) + merged_checks(run, manifest) + gguf_file_checks(run, manifest)
    checks += ollama_file_checks(run, manifest)
    if verify:
        checks += agreement_checks(run) + lora_agreement_checks(run, manifest)
    checks += template_checks(run, recipe, manifest)
    return DoctorReport(checks=checks)


def exports_manifest(run: Run) -> dict[str, Any]:
    """exports/manifest.json, {} when there is none."""
    path = run.exports_dir / "manifest.json"
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TunesmithError(f"{path} is not valid JSON ({exc}).",
                             f"Export again: tunesmith export {shell_arg(run.path)}") from exc
    if not isinstance(manifest, dict):
        raise TunesmithError(f"{path} is not an export manifest (a JSON object of formats).",
                             f"Export again: tunesmith export {shell_arg(run.path)}")
    return manifest


def run_file(run: Run, recorded: Any) -> Path | None:
    """The path a manifest entry records, inside the run; None for a path leading outside it (or no path)."""
    try:
        return run.path / inside_run(str(recorded)) if recorded else None
    except ValueError:
        return None


def export_again(run: Run, fmt: str, quant: str | None = None, extra: str = "") -> str:
    return (f"tunesmith export {shell_arg(run.path)} --format {fmt}" + (f" --quant {quant}" if quant else "")
            + (f" {extra}" if extra else ""))


def ollama_again(run: Run, modelfile: Path) -> str:
    """The export that writes `modelfile` again as it is: its quant (from the GGUF it loads) and its layout (one
    merged GGUF, or the base GGUF with the LoRA as ADAPTER)."""
    text = modelfile.read_text(encoding="utf-8") if modelfile.is_file() else ""
    loaded = modelfile_loads(text)
    quant = next((name.rsplit("-", 1)[-1].removesuffix(".gguf") for name in loaded[:1]), None)
    adapter = "--ollama-adapter" if len(loaded) > 1 else ""
    return export_again(run, "ollama", quant, adapter)


def modelfile_loads(text: str) -> list[str]:
    """The files a Modelfile's FROM and ADAPTER lines load, in that order."""
    lines = [line.split(maxsplit=1) for line in text.splitlines()]
    return [parts[1].strip().removeprefix("./") for parts in lines if len(parts) == 2 and parts[0] in ("FROM",
                                                                                                     "ADAPTER")]


def adapter_checks(run: Run, manifest: dict[str, Any]) -> list[Check]:
    """exports/adapter: there, and the run's adapter as it is now."""
    path = run_file(run, manifest.get("adapter")) if isinstance(manifest.get("adapter"), str) else None
    if path is None:
        return []
    if not (path / "adapter_config.json").is_file():
        return [Check(name="adapter", section=FILES, status="fail", detail=f"{path} is gone or incomplete",
                      fix=export_again(run, "adapter"))]
    same = weights_signature(path) == weights_signature(run.adapter_dir)
    return [Check(name="adapter", section=FILES, status="pass" if same else "warn",
                  detail=f"{run.relative(path)}: " + ("the run's adapter" if same else
                                                      "differs from the run's adapter/ (trained or rolled back since)"),
                  fix=None if same else export_again(run, "adapter"))]


def merged_checks(run: Run, manifest: dict[str, Any]) -> list[Check]:
    """exports/merged: there, with the weights the merge wrote, merged from the run's adapter as it is now."""
    entry = manifest.get("merged")
    path = run_file(run, entry.get("path")) if isinstance(entry, dict) else None
    if path is None:
        return []
    name, fix = "merged checkpoint", export_again(run, "merged")
    if not (path / "config.json").is_file():
        return [Check(name=name, section=FILES, status="fail", detail=f"{path} is gone or incomplete", fix=fix)]
    if "weights" not in entry:
        return [Check(name=name, section=FILES, status="warn", detail=f"{run.relative(path)}: exported by a "
                      "tunesmith that recorded no weights signature, so it cannot be checked", fix=fix)]
    if weights_signature(path) != entry["weights"]:
        return [Check(name=name, section=FILES, status="fail", detail=f"{run.relative(path)}: its weights changed "
                      "since the merge wrote them (files copied over it)", fix=fix)]
    if (run.adapter_dir / "adapter_config.json").is_file() and weights_signature(run.adapter_dir) != entry.get(
            "adapter"):
        return [Check(name=name, section=FILES, status="warn", detail=f"{run.relative(path)}: merged from an "
                      "earlier adapter than the run's adapter/ now", fix=fix)]
    return [Check(name=name, section=FILES, status="pass", detail=f"{run.relative(path)}: as the merge wrote it")]


def gguf_file_checks(run: Run, manifest: dict[str, Any]) -> list[Check]:
    """Each GGUF (whole model and LoRA): there, the file export wrote, and not recorded as failing its check."""
    checks = []
    groups = [("gguf", quant, entry, export_again(run, "gguf", quant)) for quant, entry in gguf_entries(run).items()]
    groups += [("gguf-lora", quant, entry, export_again(run, "gguf-lora", quant))
               for quant, entry in group_entries(manifest, "gguf_lora").items()]
    groups += [("gguf base", quant, entry, export_again(run, "ollama", quant, "--ollama-adapter"))
               for quant, entry in group_entries(manifest, "gguf_base").items()]
    for fmt, quant, entry, fix in groups:
        path = run_file(run, entry.get("path"))
        if path is None:
            continue
        name = f"{fmt} {quant}"
        verify = entry.get("verify") if isinstance(entry.get("verify"), dict) else {}
        if not path.is_file():
            checks.append(Check(name=name, section=FILES, status="fail", detail=f"{path} is gone", fix=fix))
        elif "signature" not in entry:
            checks.append(Check(name=name, section=FILES, status="warn", detail=f"{run.relative(path)}: exported by "
                                "a tunesmith that recorded no signature, so a change since cannot be seen", fix=fix))
        elif entry.get("bytes") not in (None, path.stat().st_size) or gguf_signature(path) != entry["signature"]:
            readable = gguf_signature(path) is not None
            checks.append(Check(name=name, section=FILES, status="fail", detail=f"{run.relative(path)} is not the "
                                "file export wrote: " + ("its header or tensors changed since" if readable else
                                                         "it is no longer a readable GGUF (cut short, or another "
                                                         "file copied over it)"), fix=fix))
        elif verify.get("passed") is False:
            checks.append(Check(name=name, section=FILES, status="fail", detail=f"{run.relative(path)} failed its "
                                "llama.cpp check at export (verify.passed: false in exports/manifest.json)",
                                fix=f"{fix} (F16 first, to tell quantization loss from a conversion problem)"))
        else:
            checks.append(Check(name=name, section=FILES, status="pass",
                                detail=f"{run.relative(path)}: the file export wrote"))
    return checks


def group_entries(manifest: dict[str, Any], group: str) -> dict[str, dict[str, Any]]:
    """A manifest group's entries by quant type (gguf_lora, gguf_base), those that are mappings."""
    entries = manifest.get(group)
    return {quant: entry for quant, entry in entries.items() if isinstance(entry, dict)} \
        if isinstance(entries, dict) else {}


def ollama_file_checks(run: Run, manifest: dict[str, Any]) -> list[Check]:
    """exports/ollama: the Modelfile, and each GGUF it loads as export wrote it."""
    entry = manifest.get("ollama")
    folder = run_file(run, entry.get("path")) if isinstance(entry, dict) else None
    if folder is None:
        return []
    modelfile = folder / "Modelfile"
    fix = ollama_again(run, modelfile)
    if not modelfile.is_file():
        return [Check(name="ollama", section=FILES, status="fail", detail=f"{modelfile} is gone", fix=fix)]
    missing = [name for name in modelfile_loads(modelfile.read_text(encoding="utf-8"))
               if not (folder / name).is_file()]
    if missing:
        return [Check(name="ollama", section=FILES, status="fail",
                      detail=f"the Modelfile loads {', '.join(missing)}, which is not in {folder}", fix=fix)]
    recorded = entry.get("files") if isinstance(entry.get("files"), dict) else None
    if recorded is None:
        return [Check(name="ollama", section=FILES, status="warn", detail=f"{run.relative(folder)}: exported by a "
                      "tunesmith that recorded no signatures, so a change since cannot be seen", fix=fix)]
    changed = [name for name, signature in recorded.items()
               if not (folder / name).is_file() or gguf_signature(folder / name) != signature]
    if changed:
        return [Check(name="ollama", section=FILES, status="fail",
                      detail=f"{', '.join(changed)} in {run.relative(folder)} changed or went since export", fix=fix)]
    return [Check(name="ollama", section=FILES, status="pass",
                  detail=f"{run.relative(folder)}: the Modelfile and {len(recorded)} GGUF file(s) export wrote")]


def agreement_checks(run: Run) -> list[Check]:
    """verify_gguf again for each whole-model GGUF, against the merged checkpoint (or the run's own model/)."""
    from tunesmith.export.gguf import run_conversations
    from tunesmith.export.merged import merge_matches_record
    from tunesmith.export.verify import llama_cpp_available, verify_gguf
    from tunesmith.models.tuned import is_adapter

    entries = {quant: run_file(run, entry.get("path")) for quant, entry in gguf_entries(run).items()}
    entries = {quant: path for quant, path in entries.items() if path is not None and path.is_file()}
    if not entries:
        return []
    if not llama_cpp_available():
        return [Check(name="llama.cpp", section=AGREEMENT, status="warn", detail="llama-cpp-python is not "
                      "installed, so no GGUF was run", fix="pip install 'tunesmith[gguf]'")]
    artifact = run.trained_artifact()
    reference = artifact if not is_adapter(artifact) else run.exports_dir / "merged"
    if is_adapter(artifact) and not merge_matches_record(run, reference, artifact):
        return [Check(name=f"gguf {quant}: next tokens", section=AGREEMENT, status="warn",
                      detail="no merged checkpoint of the run's adapter as it is now to compare with",
                      fix=export_again(run, "merged"))
                for quant in entries]
    checks = []
    for quant, path in entries.items():
        try:
            verification = verify_gguf(path, reference, quant, run_conversations(run))
        except ValueError as exc:  # llama.cpp cannot load the file (cut short, not a GGUF)
            checks.append(Check(name=f"gguf {quant}: next tokens", section=AGREEMENT, status="fail",
                                detail=f"llama.cpp cannot load {run.relative(path)} ({exc})",
                                fix=export_again(run, "gguf", quant)))
            continue
        status = "pass" if verification.passed else "fail"
        checks.append(Check(name=f"gguf {quant}: next tokens", section=AGREEMENT, status=status,
                            detail=verification.summary(),
                            fix=None if verification.passed else export_again(run, "gguf", quant)))
    return checks


PRECISION_ORDER = ("F32", "F16", "BF16", "Q8_0")  # the base a LoRA is checked on: the most precise recorded


def precision_rank(quant: str) -> int:
    return PRECISION_ORDER.index(quant) if quant in PRECISION_ORDER else len(PRECISION_ORDER)


def lora_agreement_checks(run: Run, manifest: dict[str, Any]) -> list[Check]:
    """Each GGUF LoRA applied by llama.cpp to a GGUF of the base that export wrote beside it (`--ollama-adapter`),
    held to the base type's threshold against the merged checkpoint: what Ollama's ADAPTER and `llama-cli --lora`
    run. A LoRA with no base GGUF in the exports is said, not checked."""
    from tunesmith.export.gguf import run_conversations
    from tunesmith.export.merged import merge_matches_record
    from tunesmith.export.verify import llama_cpp_available, verify_gguf

    loras = {quant: run_file(run, entry.get("path")) for quant, entry in group_entries(manifest, "gguf_lora").items()}
    loras = {quant: path for quant, path in loras.items() if path is not None and path.is_file()}
    if not loras or not llama_cpp_available():
        return []
    recorded = {quant: run_file(run, entry.get("path"))
                for quant, entry in group_entries(manifest, "gguf_base").items()}
    bases = [path for _, path in sorted(recorded.items(), key=lambda item: precision_rank(item[0]))
             if path is not None and path.is_file()]
    merged = run.exports_dir / "merged"
    checks = []
    for quant, lora in loras.items():
        name = f"gguf-lora {quant}: next tokens"
        if not bases:
            checks.append(Check(name=name, section=AGREEMENT, status="warn", detail="no GGUF of the base in the "
                                "exports to apply it to, so it was not run", fix=f"{export_again(run, 'ollama')} "
                                "--ollama-adapter (writes exports/gguf/base.QUANT.gguf)"))
        elif not merge_matches_record(run, merged, run.adapter_dir):
            checks.append(Check(name=name, section=AGREEMENT, status="warn", detail="no merged checkpoint of the "
                                "run's adapter as it is now to compare with", fix=export_again(run, "merged")))
        else:
            base_quant = next(quant for quant, path in recorded.items() if path == bases[0])
            try:
                verification = verify_gguf(bases[0], merged, base_quant, run_conversations(run), lora_path=lora)
            except ValueError as exc:  # llama.cpp cannot load the pair
                checks.append(Check(name=name, section=AGREEMENT, status="fail", detail=f"llama.cpp cannot load "
                                    f"{bases[0].name} with {lora.name} ({exc})", fix=export_again(run, "gguf-lora")))
                continue
            checks.append(Check(name=name, section=AGREEMENT, status="pass" if verification.passed else "fail",
                                detail=f"on {bases[0].name}: {verification.summary()}",
                                fix=None if verification.passed else export_again(run, "gguf-lora", quant)))
    return checks


def template_checks(run: Run, recipe: Recipe, manifest: dict[str, Any]) -> list[Check]:
    """The held-out conversations as each consumer of the exports prompts them, against eval's prompt."""
    from tunesmith.models.tuned import run_tokenizer

    tokenizer = run_tokenizer(run)
    if not tokenizer.chat_template:
        return [Check(name="chat template", section=TEMPLATE, status="pass", detail="the model has no chat "
                      "template: every consumer is sent the text as it is")]
    try:
        prompts = held_out_prompts(run, tokenizer)
    except TunesmithError as exc:
        return [Check(name="held-out conversations", section=TEMPLATE, status="warn", detail=exc.message,
                      fix=exc.hint)]
    if not prompts:
        return [Check(name="held-out conversations", section=TEMPLATE, status="warn", detail="the run saved no "
                      "held-out conversation to render", fix="Train with held-out rows (data.eval, or "
                      "data.eval_fraction above 0) to have them compared.")]
    ggufs = {f"gguf {quant}": path for quant, entry in gguf_entries(run).items()
             if (path := run_file(run, entry.get("path"))) is not None and path.is_file()}
    checks = []
    for label, path in ggufs.items():
        checks += gguf_template_checks(label, path, prompts, run, tokenizer.chat_template)
    entry = manifest.get("ollama")
    folder = run_file(run, entry.get("path")) if isinstance(entry, dict) else None
    if folder is not None and (folder / "Modelfile").is_file():
        checks += ollama_template_checks(run, recipe, folder / "Modelfile", prompts, entry.get("template_sha256"))
    return checks


def held_out_prompts(run: Run, tokenizer: Any) -> list[Prompt]:
    """Up to CHECKED_CONVERSATIONS of the run's saved held-out conversations, as eval prompts them."""
    from tunesmith.data.template import prompt_turns
    from tunesmith.eval.decoding import prompt_texts

    rows = [row for row in run.eval_rows() or [] if "messages" in row or "prompt" in row][:CHECKED_CONVERSATIONS]
    texts = prompt_texts(tokenizer, rows)
    return [Prompt(prompt_turns(row), row.get("tools"), text, tokenizer(text, add_special_tokens=False)["input_ids"])
            for row, text in zip(rows, texts, strict=True)]


TRAINED_OTHERWISE = "The model would be prompted otherwise than it was trained."
SERVE_AS_TRAINED = "`tunesmith serve RUN` renders prompts as training did and runs the GGUF"


def gguf_template_checks(label: str, path: Path, prompts: list[Prompt], run: Run, trained: str) -> list[Check]:
    """The GGUF's embedded template through llama-cpp-python's Jinja renderer, and llama.cpp's tokenization of
    eval's prompt, on every held-out conversation. A file that carries another template than `trained` (the run's)
    fails, re-exported; a renderer that renders the same template otherwise, or a tokenizer that splits the text
    otherwise, is warned of with what to do instead (exporting again would write the same file)."""
    from tunesmith.export.verify import llama_cpp_available

    if not llama_cpp_available():
        return [Check(name=f"{label}: template", section=TEMPLATE, status="warn", detail="llama-cpp-python is not "
                      "installed, so the GGUF's template was not rendered", fix="pip install 'tunesmith[gguf]'")]
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    try:
        with native_stderr_silenced():  # a vocabulary-only context warns it exceeds the (unread) training context
            llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    except ValueError as exc:  # llama.cpp cannot read the file: "Failed to load model from file"
        return [Check(name=f"{label}: template", section=TEMPLATE, status="fail", detail=f"llama.cpp cannot load "
                      f"{run.relative(path)} ({exc})", fix=export_again(run, "gguf", label.split()[-1]))]
    try:
        template = llm.metadata.get("tokenizer.chat_template")
        specials = {token: llm._model.token_get_text(token_id) if token_id >= 0 else ""
                    for token, token_id in (("bos", llm.token_bos()), ("eos", llm.token_eos()))}
        tokenized = [llm.tokenize(prompt.text.encode("utf-8"), add_bos=False, special=True) for prompt in prompts]
    finally:
        llm.close()
    fix = export_again(run, "gguf", label.split()[-1])
    name = f"{label}: template"
    if not template:
        template_check = Check(name=name, section=TEMPLATE, status="fail", detail="the GGUF carries no "
                               "tokenizer.chat_template: llama.cpp and LM Studio fall back to a template of their "
                               "own", fix=f"{TRAINED_OTHERWISE} {fix}")
    else:
        formatter = Jinja2ChatFormatter(template, eos_token=specials["eos"], bos_token=specials["bos"])
        rendered = [render_or_none(formatter, prompt) for prompt in prompts]
        consumer = ("its embedded template as llama-cpp-python renders it (llama.cpp's server with --jinja and LM "
                    "Studio read the same template with engines of their own)")
        if template != trained:
            template_check = agreement_check(name, consumer + ", another template than the run trained with",
                                             prompts, rendered, f"{TRAINED_OTHERWISE} {fix}")
            template_check = template_check.model_copy(update={"status": "fail"})
        else:
            template_check = agreement_check(name, consumer, prompts, rendered,
                                             f"{TRAINED_OTHERWISE} llama-cpp-python's Jinja renders the run's "
                                             f"template otherwise; {SERVE_AS_TRAINED}.", differs="warn")
    tokens_check = agreement_check(f"{label}: tokens", "llama.cpp's tokenization of eval's prompt", prompts,
                                   tokenized, "The model would read other tokens than it trained on: the GGUF's "
                                   "vocabulary splits this text otherwise (its tokenizer's conversion). Serve the "
                                   "merged checkpoint instead (`tunesmith serve RUN --engine vllm`, or transformers).",
                                   as_ids=True, differs="warn")
    return [template_check, tokens_check]


@contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 pointed at os.devnull for a block: what llama.cpp's C code prints there despite
    verbose=False."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def render_or_none(formatter: Any, prompt: Prompt) -> str | None:
    """The formatter's prompt for the conversation, None where the template raises on it."""
    try:
        return formatter(messages=prompt.messages, tools=prompt.tools).prompt
    except Exception:  # a Jinja error or the template's raise_exception: reported as a difference
        return None


def ollama_template_checks(run: Run, recipe: Recipe, modelfile: Path, prompts: list[Prompt],
                           recorded: str | None = None) -> list[Check]:
    """The Modelfile's TEMPLATE is the one export wrote (`recorded`: its sha256 in the manifest), and renders each
    held-out conversation without tools as eval prompts it: a TEMPLATE edited since fails (exported again); a
    conversation Ollama's Go template renders otherwise is warned of with what to do (exporting again would write
    the same TEMPLATE)."""
    from tunesmith.export.ollama import modelfile_value, translate_run_template

    fix = ollama_again(run, modelfile)
    written = modelfile_value(modelfile.read_text(encoding="utf-8"), "TEMPLATE") or ""
    translation = translate_run_template(run, recipe.data)
    edited = (hashlib.sha256(written.encode("utf-8")).hexdigest() != recorded if recorded
              else written != translation.go_template)
    if edited:
        return [Check(name="ollama: template", section=TEMPLATE, status="fail",
                      detail=f"the TEMPLATE in {run.relative(modelfile)} is not the one export wrote (edited since)",
                      fix=fix)]
    if written != translation.go_template:
        return [Check(name="ollama: template", section=TEMPLATE, status="warn", detail="the TEMPLATE was "
                      "translated by another tunesmith version than this one, so its rendering was not compared",
                      fix=fix)]
    if translation.mirror is None:
        return [Check(name="ollama: template", section=TEMPLATE, status="pass", detail="the model has no chat "
                      "template: Ollama sends the prompt as it is")]
    plain = [p for p in prompts if not p.tools and all(set(m) <= {"role", "content"} and isinstance(m["content"], str)
                                                         for m in p.messages)]
    rendered = [translation.mirror(p.messages) for p in plain]
    check = agreement_check("ollama: template", f"the Modelfile's {translation.family} TEMPLATE", plain, rendered,
                            f"{TRAINED_OTHERWISE} A Go template cannot render these as the model's template does (it "
                            "cannot trim the whitespace Llama 3's, Gemma's and Mistral's templates trim): strip "
                            "leading and trailing whitespace from the rows' messages and train again, or serve with "
                            f"{SERVE_AS_TRAINED}.", differs="warn")
    left_out = len(prompts) - len(plain)
    if left_out:
        check = check.model_copy(update={"detail": check.detail + f"; {left_out} conversation(s) with tools, tool "
                                         "calls or other message fields not compared"})
    return [check]


def agreement_check(name: str, consumer: str, prompts: list[Prompt], got: list[Any], fix: str,
                    as_ids: bool = False, differs: Status = "fail") -> Check:
    """pass when `got` is eval's prompt (its text, or `as_ids` its token ids) for every conversation; else `differs`
    naming the first one that differs, from where it differs, with `fix`."""
    if not prompts:
        return Check(name=name, section=TEMPLATE, status="pass", detail="no conversation of this kind to compare")
    expected = [p.ids if as_ids else p.text for p in prompts]
    differing = [i for i, (want, have) in enumerate(zip(expected, got, strict=True)) if want != have]
    reference = "the ids transformers' tokenizer makes of it" if as_ids else "eval's prompt"
    if not differing:
        return Check(name=name, section=TEMPLATE, status="pass",
                     detail=f"{consumer}: identical to {reference} on {len(prompts)}/{len(prompts)} conversations")
    first = differing[0]
    return Check(name=name, section=TEMPLATE, status=differs,
                 detail=f"{consumer} differs from {reference} on {len(differing)}/{len(prompts)} conversations; "
                        f"held-out conversation {first + 1}: " + first_difference(expected[first], got[first], as_ids),
                 fix=fix)


def first_difference(expected: Any, got: Any, as_ids: bool) -> str:
    """Where `got` first differs from `expected`, with a few characters (or ids) of each from there."""
    if got is None:
        return "the template raised an error on it"
    at = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), min(len(expected), len(got)))
    width = 8 if as_ids else SHOWN_CHARACTERS
    unit = "token" if as_ids else "character"
    return (f"from {unit} {at}, training gives {expected[at:at + width]!r}, "
            f"this gives {got[at:at + width]!r}")


def warn_of_template_differences(run: Run, recipe: Recipe) -> None:
    """After a GGUF or Ollama export: say on stderr where a consumer prompts the run's own held-out conversations
    otherwise than eval did (`template_checks`); export checked its translation on short probes only."""
    try:
        checks = template_checks(run, recipe, exports_manifest(run))
    except Exception as exc:  # the export is written and checked: this comparison only informs, it never fails it
        print(f"note: the chat template was not compared on the run's own conversations ({exc})", file=sys.stderr,
              flush=True)
        return
    for check in checks:
        if check.status != "pass" and check.name != "held-out conversations":
            print(f"warning: {check.name}: {check.detail}. {check.fix or ''}".rstrip(), file=sys.stderr, flush=True)
