"""What a server offers: each run (and each base under them) as a named model, with the files an engine loads.

Everything comes from the run manifest (`models.tuned`): the base each run trained on, its artifact, its recipe's
system prompt. What is missing is exported first: the base as GGUF once per base (cached under
$TUNESMITH_HOME/serve, keyed by the base's files), each LoRA run as a GGUF LoRA beside it, and runs that are not
a plain LoRA (whole models, DoRA, IA3, ...) as their own merged GGUF.

A PEFT LoRA folder that is not a run (trained elsewhere, or `tunesmith merge`'s combined adapter) is served on the
base its adapter_config.json names, its GGUF LoRA cached beside the bases; a model (an alias, a folder such as a
merge output, a Hub id already downloaded) is served as a base of its own.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from tunesmith.config import GGUF_LORA_KINDS, DataSection, Recipe
from tunesmith.errors import TunesmithError, shell_arg
from tunesmith.export import gguf_entries
from tunesmith.models.home import model_fingerprint, tunesmith_home
from tunesmith.models.tuned import is_adapter, run_base_model
from tunesmith.runs import Run, open_run, read_adapter_config

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
DEFAULT_QUANT = "F16"  # the GGUF type written for a base or a merged run when none is asked for


@dataclass(frozen=True)
class ServedModel:
    """One name requests can ask for (`model`), and what serves it."""

    name: str
    gguf: Path  # the model file llama.cpp loads; adapters of one base share it (loaded once)
    lora: Path | None  # a GGUF LoRA applied per request, or None (the base itself, or a merged run)
    tokenizer_dir: Path  # renders the chat template the model was trained with (as `data preview` shows it)
    system_prompt: str | None  # the recipe's data.system_prompt, used when a request has no system turn
    run: Path | None  # the run directory (or adapter folder) it comes from; None for a base model
    peft_dir: Path | None  # the PEFT adapter folder (vLLM's --lora-modules take it), None for whole models
    lora_rank: int | None
    data: DataSection | None = None  # the recipe's data section: its fallbacks (hermes tools, merged system) apply


def parse_run_arguments(arguments: list[str]) -> list[tuple[str | None, str]]:
    """`RUN` or `NAME=RUN` arguments (RUN also an adapter folder or a model) as (name or None, what was named)."""
    parsed = []
    for argument in arguments:
        named = "=" in argument and not Path(argument).exists()
        name, _, path = argument.partition("=") if named else ("", "", argument)
        if name and not NAME.match(name):
            raise TunesmithError(f"{name!r} is not a usable model name.",
                                 "Use letters, digits, '.', '_', ':' and '-' (e.g. orders-v2=runs/quickstart-...).")
        parsed.append((name or None, path))
    return parsed


def trained_artifact(run: Run) -> Path:
    """The run's trained artifact (adapter or model folder); refuses runs that did not finish and reward models."""
    manifest = run.manifest()
    if manifest is None or manifest.train is None:
        if any(run.checkpoints_dir.glob("checkpoint-*")):
            from tunesmith.train.resume import resume_hint  # tunesmith.train loads TRL: only on this error

            hint = f"Finish it first. {resume_hint(run)}"
        else:  # nothing saved to resume from (a run that stopped early, or a folder --print-launch wrote)
            hint = ("It holds no checkpoint to resume from either; train it: tunesmith train "
                    f"{shell_arg(run.recipe_file)} (with --nproc N as before, for a distributed recipe)")
        raise TunesmithError(f"{run.path} has not finished training, so there is nothing to serve.", hint)
    if manifest.train.method == "reward":
        raise TunesmithError(f"{run.path} is a reward model: it scores text and cannot generate, so it is not served.",
                             "Serve the policy you trained with it instead.")
    return run.path / manifest.train.path


def build_catalog(arguments: list[str], quant: str | None = None, export: bool = True) -> list[ServedModel]:
    """The models `tunesmith serve RUN...` offers: each base once (named after its model.source), then each run
    (named after its directory, or NAME=RUN). `export=False` only plans (vLLM and Ollama need no GGUF)."""
    served: dict[str, ServedModel] = {}
    wanted, quant = quant, quant or DEFAULT_QUANT
    for name, target in parse_run_arguments(arguments):
        folder = Path(target).expanduser()
        if not (folder / "recipe.yaml").is_file() and (is_adapter(folder) or not folder.exists()
                                                         or (folder / "config.json").is_file()):
            model = folder_model(name, target, quant, export, served)
            add_served(served, model)
            continue
        run = open_run(target)
        artifact = trained_artifact(run)
        recipe = run.load_recipe()
        base_dir = run_base_model(run)
        base_name = source_name(recipe.model.source, base_dir)
        system_prompt = recipe.data.system_prompt
        lora = lora_gguf(recipe, run, export) if is_adapter(artifact) and recipe.adapter.kind in GGUF_LORA_KINDS \
            else None
        if lora is not None:
            base_gguf = cached_base_gguf(base_dir, quant, export)
            served.setdefault(base_name, ServedModel(base_name, base_gguf, None, base_dir, None, None, None, None))
            model = ServedModel(name or run.path.name, base_gguf, lora, artifact, system_prompt, run.path, artifact,
                                lora_rank(artifact), recipe.data)
        else:  # a whole model, or an adapter llama.cpp cannot apply: its own merged GGUF
            model = ServedModel(name or run.path.name, merged_gguf(recipe, run, wanted, export), None,
                                artifact if (artifact / "tokenizer_config.json").is_file() else base_dir, system_prompt,
                                run.path,
                                artifact if is_adapter(artifact) else None, None, recipe.data)
        add_served(served, model)
    return list(served.values())


def add_served(served: dict[str, ServedModel], model: ServedModel) -> None:
    """Add `model` under its name; a base named again (on its own and under a run) is served once."""
    earlier = served.get(model.name)
    if earlier is not None and earlier.run is None and model.run is None and earlier.gguf == model.gguf:
        return
    if earlier is not None:
        raise TunesmithError(f"Two models would be served as {model.name!r}.",
                             "Name them: tunesmith serve first=runs/A second=runs/B")
    served[model.name] = model


def folder_model(name: str | None, target: str, quant: str, export: bool,
                 served: dict[str, ServedModel]) -> ServedModel:
    """A LoRA folder that is not a run (its base added to `served` once), or a model served as a base of its own.

    Raises TunesmithError for an adapter kind llama.cpp cannot apply (merge it first) and for a model that cannot
    be found (`served_model_source`)."""
    from tunesmith.models.tuned import adapter_base

    folder = Path(target).expanduser()
    if not is_adapter(folder):
        model_dir = folder if (folder / "config.json").is_file() else served_model_source(target)
        model_name = name or source_name(target, model_dir)
        return ServedModel(model_name, cached_base_gguf(model_dir, quant, export), None, model_dir, None, None, None,
                           None)
    check_gguf_lora_folder(folder, target)
    base_dir = adapter_base(folder)
    base_gguf = cached_base_gguf(base_dir, quant, export)
    base_name = source_name(str(base_dir), base_dir)
    served.setdefault(base_name, ServedModel(base_name, base_gguf, None, base_dir, None, None, None, None))
    lora = tunesmith_home() / "serve" / f"{folder.resolve().name}-{model_fingerprint(folder.resolve())}-lora-F16.gguf"
    if export and not lora.is_file():
        from tunesmith.export.gguf_lora import NotAGgufLora, write_gguf_lora

        print(f"writing the adapter {target} as a GGUF LoRA once: {lora}", file=sys.stderr, flush=True)
        try:
            write_gguf_lora(folder, base_dir, lora, "F16", name=folder.resolve().name)
        except NotAGgufLora as exc:
            raise TunesmithError(f"{target}: {exc.message}", merge_first(target)) from None
    tokenizer_dir = folder if (folder / "tokenizer_config.json").is_file() else base_dir  # its trained template
    return ServedModel(name or source_name(target, folder.resolve()), base_gguf, lora, tokenizer_dir, None, folder,
                       folder, lora_rank(folder))


def served_model_source(target: str) -> Path:
    """The model `target` names, when it is no folder here: an alias or a downloaded Hub id. A mistyped run path
    lands here too, so the error says what else the argument could have been."""
    from tunesmith.errors import ModelSourceError
    from tunesmith.models import resolve_model_source

    try:
        return resolve_model_source(target)
    except ModelSourceError as exc:
        raise TunesmithError(f"{target} is not a run directory, an adapter or model folder, nor a model this machine "
                             f"has ({exc.message})", "Pass a run directory that `tunesmith train` printed (`tunesmith "
                             "runs list runs` lists them), a PEFT adapter folder, or a model alias or folder "
                             "(`tunesmith models list`).") from None


def check_gguf_lora_folder(folder: Path, target: str) -> None:
    """Refuse, before the base is written, an adapter folder a GGUF LoRA cannot hold (the export's own check,
    `gguf_lora.lora_settings`: DoRA, IA3, modules_to_save, ...), with the merge that serves it instead."""
    from tunesmith.export.gguf_lora import lora_settings

    try:
        lora_settings(folder)
    except TunesmithError as exc:
        raise TunesmithError(f"{target}: {exc.message}", merge_first(target)) from None


def merge_first(target: str) -> str:
    """How an adapter folder llama.cpp cannot apply as a LoRA is served: merged into its base, as a model."""
    merged = shell_arg(f"{target}-model")
    return (f"Merge it into its base first (tunesmith merge {shell_arg(target)} --out {merged}), then serve the merged "
            f"model: tunesmith serve {merged}")


def source_name(source: str, base_dir: Path) -> str:
    """A base's model name: its alias or Hub id as the recipe wrote it, or its folder's name for a path."""
    candidate = source if NAME.match(source) and "/" not in source else base_dir.name
    if "/" in source and not Path(source).exists():  # a Hub id: org/name reads as name
        candidate = source.split("/")[-1]
    return candidate if NAME.match(candidate) else "base"


def lora_rank(adapter_dir: Path) -> int | None:
    config = read_adapter_config(adapter_dir)
    ranks = [config.get("r"), *(config.get("rank_pattern") or {}).values()]
    ranks = [r for r in ranks if isinstance(r, int)]
    return max(ranks) if ranks else None


def cached_base_gguf(base_dir: Path, quant: str, export: bool) -> Path:
    """The base written once as GGUF under $TUNESMITH_HOME/serve, keyed by its weight files' names, sizes and
    modification times (every run on this base shares the file)."""
    from tunesmith.export.gguf import write_gguf

    target = tunesmith_home() / "serve" / f"{base_dir.name}-{model_fingerprint(base_dir)}.{quant}.gguf"
    if export and not target.is_file():
        print(f"writing the base {base_dir.name} as GGUF once: {target}", file=sys.stderr, flush=True)
        write_gguf(base_dir, target, quant, name=base_dir.name)
    return target


def lora_gguf(recipe: Recipe, run: Run, export: bool) -> Path | None:
    """The run's adapter as a GGUF LoRA (exported when missing), or None where llama.cpp's LoRA format cannot hold it
    (biases, new tokens, DoRA: `gguf_lora.NotAGgufLora`), said: the run is then served from its merged GGUF."""
    from tunesmith.export.gguf_lora import NotAGgufLora, run_gguf_lora_export

    target = run.exports_dir / "gguf" / f"{recipe.name}-lora-F16.gguf"
    if export and not target.is_file():
        try:
            target = run_gguf_lora_export(recipe, run, "F16")
        except NotAGgufLora as exc:
            print(f"{run.path.name}: {exc.message} It is served from its merged GGUF instead (its own copy of the "
                  "base, loaded beside the others).", file=sys.stderr, flush=True)
            return None
    return target


def merged_gguf(recipe: Recipe, run: Run, quant: str | None, export: bool) -> Path:
    """The run's merged GGUF of type `quant`, exported when missing; with no type asked for, one the run already
    exported (and llama.cpp's check passed, where it ran), else F16."""
    from tunesmith.export.gguf import run_gguf_export

    existing = None if quant is not None else exported_gguf(run)
    if existing is not None:
        print(f"serving {run.path.name} from its exported {existing.name} (--quant TYPE writes another)",
              file=sys.stderr, flush=True)
        return existing
    quant = quant or DEFAULT_QUANT
    target = run.exports_dir / "gguf" / f"{recipe.name}.{quant}.gguf"
    if export and not target.is_file():
        target = run_gguf_export(recipe, run, quant)
    refuse_failed_check(run, quant, target)
    return target


def refuse_failed_check(run: Run, quant: str, target: Path) -> None:
    """A GGUF whose llama.cpp check failed when it was exported (exports/manifest.json verify.passed: false) picks
    other tokens than the trained model: it is not served. Raises TunesmithError naming the agreement and the fix."""
    entry = gguf_entries(run).get(quant) or {}
    check = entry.get("verify") or {}
    if target.is_file() and entry.get("path") == run.relative(target) and check.get("passed") is False:
        raise TunesmithError(f"{target} failed llama.cpp's check when it was exported: it agrees with the merged model "
                             f"on {check.get('agreement', 0):.1%} of next tokens (exports/manifest.json).",
                             "Serve another type (--quant F16 or Q8_0), or export this one again "
                             f"(tunesmith export {shell_arg(run.path)} --format gguf --quant {quant}).")


def exported_gguf(run: Run) -> Path | None:
    """A whole-model GGUF exports/manifest.json records for the run, whose file is there and whose llama.cpp check
    did not fail: F16 first, then the other types as recorded."""
    entries = gguf_entries(run)
    for quant in sorted(entries, key=lambda name: name != DEFAULT_QUANT):
        entry = entries[quant]
        path = run.path / entry.get("path", "")
        if entry.get("path") and path.is_file() and (entry.get("verify") or {}).get("passed") is not False:
            return path
    return None
