"""The one export entry point: every format of the recipe schema, dispatched through one table.

`tunesmith export`, the quickstart, `train --evaluate` and every sweep run call `export_formats`, so a
format the recipe names is written (and recorded in exports/manifest.json) whoever asks for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config import EXPORT_FORMATS, Recipe
from tunesmith.errors import TunesmithError
from tunesmith.export import gguf_entries
from tunesmith.manifest import RunManifest
from tunesmith.runs import Run, record_exports

PLAIN_FORMATS = ("adapter", "merged")  # written together by `run_export` (one manifest)


@dataclass(frozen=True)
class ExportOptions:
    """Settings of the GGUF-based formats; None means the recipe's value (verify: on when llama.cpp is here)."""

    quant: str
    verify: bool | None = None
    ollama_adapter: bool | None = None


@dataclass
class ExportOutcome:
    """Where each format landed, and the Ollama result (whether `ollama create` ran) when it was asked for."""

    written: dict[str, Path] = field(default_factory=dict)
    ollama: Any = None


def export_gguf(recipe: Recipe, run: Run, options: ExportOptions, outcome: ExportOutcome) -> Path:
    from tunesmith.export.gguf import run_gguf_export

    return run_gguf_export(recipe, run, options.quant, verify=options.verify)


def export_gguf_lora(recipe: Recipe, run: Run, options: ExportOptions, outcome: ExportOutcome) -> Path:
    from tunesmith.export.gguf_lora import lora_type_for, run_gguf_lora_export

    return run_gguf_lora_export(recipe, run, lora_type_for(options.quant))


def export_ollama(recipe: Recipe, run: Run, options: ExportOptions, outcome: ExportOutcome) -> Path:
    from tunesmith.export.ollama import run_ollama_export

    outcome.ollama = run_ollama_export(recipe, run, options.quant, verify=options.verify,
                                       adapter=options.ollama_adapter, gguf=outcome.written.get("gguf"))
    return outcome.ollama.folder


Exporter = Callable[[Recipe, Run, ExportOptions, ExportOutcome], Path]
EXPORTERS: dict[str, Exporter] = {"gguf": export_gguf, "gguf-lora": export_gguf_lora, "ollama": export_ollama}


def export_formats(recipe: Recipe, run: Run, formats: list[str] | None = None, quant: str | None = None,
                   verify: bool | None = None, ollama_adapter: bool | None = None) -> ExportOutcome:
    """Write `formats` (default: the recipe's export.formats) under the run's exports/, in the order given.

    Raises TunesmithError for a format name that does not exist, before anything is written.
    """
    from tunesmith.export.merged import run_export

    formats = list(formats or recipe.export.formats)
    unknown = sorted(set(formats) - set(EXPORT_FORMATS))
    if unknown:
        raise TunesmithError(f"Unknown export format(s): {', '.join(unknown)}.", f"Use {', '.join(EXPORT_FORMATS)}.")
    refuse_language_model_formats(recipe, run, formats)
    options = ExportOptions(quant or recipe.export.quant, verify, ollama_adapter)
    outcome = ExportOutcome()
    plain = [name for name in PLAIN_FORMATS if name in formats]
    run.trained_artifact()  # a run without a trained model fails here, before anything is written
    if plain:
        exports = run_export(recipe, run, plain)
        outcome.written.update({name: exports / name for name in plain if (exports / name).exists()})
    for name in formats:
        if name in EXPORTERS:
            outcome.written[name] = EXPORTERS[name](recipe, run, options, outcome)
    made_on_the_way = run.exports_dir / "merged"  # what a GGUF was converted from (export.gguf.record_merged)
    if "merged" not in outcome.written and (made_on_the_way / "config.json").is_file() \
            and "merged" not in ((run.manifest() or RunManifest()).exports or {}):
        outcome.written["merged"] = made_on_the_way
    grammars = answer_grammars(recipe, run, outcome.written)
    record_exports(run, outcome.written, gguf_verification(run, outcome.written), grammars)
    if {"gguf", "ollama"} & set(outcome.written):
        from tunesmith.export.recheck import warn_of_template_differences

        warn_of_template_differences(run, recipe)
    return outcome


def refuse_language_model_formats(recipe: Recipe, run: Run, formats: list[str]) -> None:
    """A reward run's artifact is a one-score classifier: merging its adapter into the base (and every GGUF and
    Ollama format) would write a causal LM without its score head. Its adapter exports it (and `merged`, for a
    whole-model reward run: a copy of model/, head included); the recipe validator refuses the GGUF and Ollama
    formats in export.formats, this refuses the unfit ones asked for on the command line."""
    from tunesmith.models.tuned import is_adapter

    fit = ("adapter", "merged") if not is_adapter(run.trained_artifact()) else ("adapter",)
    unfit = [name for name in formats if name not in fit]
    if recipe.method.kind == "reward" and unfit:
        raise TunesmithError(f"{run.path} is a reward model (method.kind: reward): it scores answers with a one-score "
                             f"head, and {', '.join(unfit)} would write a language model without that head.",
                             "Export its adapter (--format adapter) and load it with "
                             "AutoPeftModelForSequenceClassification (num_labels=1), or use the run as a GRPO reward "
                             "(rewards: [{name: reward_model, path: RUN}]).")


def answer_grammars(recipe: Recipe, run: Run, written: dict[str, Path]) -> dict[str, Path]:
    """answers.gbnf beside the GGUF and Ollama exports of a closed task (export/grammar.py)."""
    from tunesmith.export.grammar import write_answer_grammar

    grammars = {}
    for name in ("gguf", "ollama"):
        if name in written:
            folder = written[name] if written[name].is_dir() else written[name].parent
            grammar = write_answer_grammar(recipe, run, folder)
            if grammar is not None:
                grammars[name] = grammar
    return grammars


def gguf_verification(run: Run, written: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """The llama.cpp check run_gguf_export recorded for the GGUF just written (exports/manifest.json)."""
    if "gguf" not in written:
        return {}
    entries = gguf_entries(run).values()
    written_path = run.relative(written["gguf"])
    checks = [entry["verify"] for entry in entries if entry.get("path") == written_path and "verify" in entry]
    return {"gguf": checks[0]} if checks else {}
