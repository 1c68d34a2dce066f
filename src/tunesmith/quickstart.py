"""The quickstart: train, evaluate and export the embedded default model on the bundled data."""

from __future__ import annotations

import sys
from pathlib import Path

from tunesmith.card import write_model_card
from tunesmith.config import Recipe, load_recipe
from tunesmith.errors import TunesmithError
from tunesmith.eval import run_eval
from tunesmith.export.stage import export_formats
from tunesmith.runs import Run, create_run, removed_if_unstarted
from tunesmith.train import run_training


def bundled_path(relative: str) -> Path:
    """A file shipped with tunesmith: from the source checkout, else from the installed package."""
    package = Path(__file__).resolve().parent
    for root in (package.parents[1], package / "_bundled"):
        if (root / relative).exists():
            return root / relative
    raise TunesmithError(f"Bundled file {relative} is missing from this installation.",
                         "Reinstall tunesmith (pip install -e . from the source checkout).")


def quickstart_recipe(overrides: list[str] | None = None) -> Recipe:
    return load_recipe(bundled_path("recipes/quickstart.yaml"), overrides)


def run_pipeline(recipe: Recipe, runs_dir: Path | None = None, run: Run | None = None) -> Run:
    """train → eval → export → model card, all in one new run directory (or in `run`, being resumed)."""
    if run is None:
        with removed_if_unstarted(create_run(recipe, runs_dir)) as run:
            run_training(recipe, run)
    else:
        run_training(recipe, run)
    return evaluate_and_export(recipe, run)


def evaluate_and_export(recipe: Recipe, run: Run) -> Run:
    """eval → export → model card on a run that finished training; a run with no held-out rows (training warned of
    it) is exported and described without an eval, which says why."""
    from tunesmith.eval.rows import NoHeldOutRowsError

    try:
        run_eval(recipe, run)
    except NoHeldOutRowsError as exc:
        print(f"warning: eval skipped: {exc.message} {exc.hint}", file=sys.stderr, flush=True)
    outcome = export_formats(recipe, run)
    write_model_card(run)
    if outcome.ollama is not None and outcome.ollama.created is False:  # files written; the trained run stands
        print(f"warning: `{outcome.ollama.create_command}` failed, so Ollama does not have the model: "
              f"{outcome.ollama.create_output.strip()[-400:]} (the exported files are in {run.exports_dir / 'ollama'}; "
              "run the command again once Ollama can load them)", file=sys.stderr, flush=True)
    return run
