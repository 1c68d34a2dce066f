"""tunesmith from Python (a notebook, a script): each stage of the CLI as one call that returns what it made.

    from tunesmith import api

    run = api.train("my-recipe.yaml", ["training.lr=1e-4"])  # a Run: run.path, run.manifest()
    results = api.evaluate(run)                               # EvalResults: results.tuned["exact_match"]
    files = api.export(run, ["gguf"])                         # {"gguf": Path(".../NAME.F16.gguf"), "merged": ...}
    tokenizer, model = api.load_tuned(run)                    # the adapter on its base, ready to generate

Each call makes the checks its command makes (`tunesmith train` fits the recipe to this machine's memory first,
refuses known-broken package versions, holds the run's training lock) and raises `TunesmithError` (its `message`
says what is wrong, its `hint` what to do) where the command prints them and exits 2. Progress and notes go to
stderr, as in the CLI. Training with several processes is launched by `tunesmith train RECIPE --nproc N` only.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tunesmith.card import write_model_card
from tunesmith.config import Recipe, load_recipe
from tunesmith.doctor import refuse_known_bad_versions
from tunesmith.errors import RecipeError, TunesmithError
from tunesmith.eval import run_eval
from tunesmith.export.stage import export_formats
from tunesmith.models import pick_device
from tunesmith.models.tuned import load_tuned as load_run_model
from tunesmith.plan.fit import fit_recipe
from tunesmith.quickstart import evaluate_and_export
from tunesmith.results import EvalResults, read_results
from tunesmith.runs import Run, create_run, open_run, removed_if_unstarted, training_lock
from tunesmith.train import run_training
from tunesmith.train.resume import resumed_run

__all__ = ["evaluate", "export", "load_tuned", "train"]


def say(note: str) -> None:
    print(note, file=sys.stderr, flush=True)


def train(recipe: Recipe | str | Path, overrides: list[str] | None = None, *, resume: str | Path | None = None,
          runs_dir: str | Path | None = None, fit: bool = True, evaluate: bool = False,
          report: Callable[[str], None] = say) -> Run:
    """Train what `recipe` (a Recipe, or a recipe file with `overrides` as `--set` takes them) describes, in a new run
    directory under `runs_dir` (default: the recipe's runs_dir), or, with `resume` (a run directory or "latest"),
    on from the run's newest complete checkpoint; returns the Run.

    `fit` (the CLI's default; `--force` turns it off): where the plan shows the recipe would not fit this machine's
    memory, micro-batches or activation checkpointing left open by the recipe are chosen, and `report` says so; without
    it the recipe trains as written (a CPU's faster micro-batches aside, which change no step's rows).
    `evaluate`: eval and the recipe's exports after training (`train --evaluate`). The model card is written either
    way. Raises TunesmithError for what the recipe, the data or the machine already show is wrong, before training.
    """
    overrides = checked_overrides(overrides)
    if isinstance(recipe, Recipe) and overrides:
        raise TypeError("overrides apply to a recipe file; pass the file's path, or a Recipe with the changes in it")
    loaded = recipe if isinstance(recipe, Recipe) else load_recipe(Path(recipe), overrides)
    refuse_known_bad_versions()
    strategy = loaded.training.distributed.strategy
    if strategy != "none":
        raise RecipeError(f"training.distributed is {strategy}, which trains with several processes; a Python call "
                          "is one process.", "Launch it from a shell: tunesmith train RECIPE --nproc N (or set "
                                             "training.distributed: none).")
    loaded, note = fit_recipe(loaded, force=not fit)
    if note:
        report(note)
    run = resumed_run(loaded, str(resume), Path(runs_dir) if runs_dir else None) if resume is not None else None
    if run is None:
        with removed_if_unstarted(create_run(loaded, Path(runs_dir) if runs_dir else None)) as run, \
                training_lock(run):
            run_training(loaded, run)
    else:
        with training_lock(run):
            run_training(loaded, run)
    if evaluate:
        evaluate_and_export(run.load_recipe(), run)
    else:
        write_model_card(run)
    return as_run(run)


def evaluate(run: Run | str | Path, overrides: list[str] | None = None, *, against: Run | str | Path | None = None,
             data: str | Path | None = None, baselines: list[str] | None = None) -> EvalResults:
    """Score the run's tuned model against its base (or `against` another run of the same base) on the held-out rows
    the run saved (`data`: that file's rows instead), as `tunesmith eval` does; returns the results it wrote
    (eval/results.json, validated: `.tuned`, `.base`, `.comparison`, `.probes`, ...). Raises TunesmithError for a
    run that did not finish training."""
    run = as_run(run)
    run.trained_artifact()
    other = as_run(against).path if against is not None else None
    path = run_eval(run.load_recipe(checked_overrides(overrides)), run, other, Path(data) if data else None, baselines)
    if other is None and data is None:  # the card describes the run's own held-out rows
        write_model_card(run)
    return read_results(path)


def export(run: Run | str | Path, formats: list[str] | None = None, *, quant: str | None = None,
           verify: bool | None = None) -> dict[str, Path]:
    """Write `formats` (adapter, merged, gguf, gguf-lora, ollama; default: the recipe's export.formats) under the
    run's exports/, as `tunesmith export` does; returns where each landed, with `merged` too where a GGUF of an
    adapter run made the merged checkpoint on the way. `verify` (default: when llama-cpp-python is installed)
    checks a GGUF in llama.cpp against the merged model."""
    run = as_run(run)
    return export_formats(run.load_recipe(), run, formats, quant, verify).written


def load_tuned(run: Run | str | Path, device: str = "cpu") -> tuple[Any, Any]:
    """(tokenizer, model in eval mode) of what the run trained: its adapter on its base (a PEFT model), or its whole
    model; the tokenizer carries the chat template the run trained with (`tokenizer.apply_chat_template`).
    `device`: "cpu", "cuda" (a GPU torch can use) or "auto" (the GPU where there is one)."""
    device = pick_device(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TunesmithError(f"device {device!r}: torch sees no CUDA GPU on this machine.",
                             "Use device='cpu' (or 'auto').")
    return load_run_model(as_run(run), device)


def as_run(run: Run | str | Path) -> Run:
    """`run` as a Run whose path is absolute: a notebook that changes folder keeps its paths."""
    return Run(run.path.resolve()) if isinstance(run, Run) else Run(open_run(Path(run)).path.resolve())


def checked_overrides(overrides: list[str] | None) -> list[str] | None:
    """`overrides` as `--set` takes them, a list of "key=value" strings; a bare string (one override, easily passed
    for a list) raises TypeError instead of being read one character at a time."""
    if isinstance(overrides, str):
        raise TypeError(f"overrides must be a list of 'key=value' strings, e.g. [{overrides!r}]")
    return overrides
