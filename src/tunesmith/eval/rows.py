"""What eval scores and on top of what, read from the run (DESIGN.md §1: the run manifest is the contract).

The held-out rows are the ones the data stage saved in the run, so editing or moving the source files after
training changes nothing in the scores (a changed source is reported on stderr, never used silently). Other rows
are scored only when asked for, with `tunesmith eval RUN --data FILE`. Runs written before run.json existed
rebuild their split from the recipe's files, as eval always did.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tunesmith.config import Recipe
from tunesmith.data import load_splits
from tunesmith.data.fallbacks import apply_fallbacks
from tunesmith.data.formats import (
    SFT_SHAPES,
    Row,
    as_chat_preference,
    as_conversation,
    load_rows,
    with_system_prompt,
)
from tunesmith.errors import DataError, shell_arg
from tunesmith.eval.html_report import write_html_report
from tunesmith.eval.report import plot_base_vs_tuned
from tunesmith.results import RESULTS_VERSION, validate_results
from tunesmith.runs import Run, atomic_write_json, manifest_lock, record_eval_results


class NoHeldOutRowsError(DataError):
    """The run holds no held-out rows (its eval split was empty): nothing to score base and tuned on."""


@dataclass(frozen=True)
class HeldOutRows:
    """The rows to score and where they came from."""

    rows: list[Row]
    origin: str  # "run" (saved by the data stage), "recipe" (a run older than run.json), or "file"
    file: Path | None = None  # --data FILE

    @property
    def rows_from(self) -> str:
        """results.json's `rows_from`: `run`, `recipe`, or `file:<path>`."""
        return f"file:{self.file}" if self.file is not None else self.origin


def held_out_rows(recipe: Recipe, run: Run, accept: tuple[str, ...] = SFT_SHAPES, purpose: str = "evaluation",
                  data_file: Path | None = None) -> HeldOutRows:
    """The run's saved eval rows; `data_file`'s rows when given; the recipe's files for a run without run.json."""
    if data_file is not None:
        path = data_file.expanduser().resolve()
        rows = rows_from_file(recipe, path, accept, purpose)
        report_training_rows(run, rows, path)
        return HeldOutRows(rows, "file", path)
    saved = run.eval_rows()
    held_out = HeldOutRows(load_splits(recipe, accept=accept, purpose=purpose).eval, "recipe") if saved is None \
        else HeldOutRows(saved, "run")
    if not held_out.rows:  # scored on nothing, every loss would read 0 and every comparison pass
        raise NoHeldOutRowsError(
            f"{run.path} holds no held-out rows: its eval split was empty (training warned of it), so there is "
            "nothing to score base and tuned on.",
            f"Score rows it did not train on: tunesmith eval {shell_arg(run.path)} --data HELD_OUT.jsonl, or train "
            "again holding rows out (data.eval, or a larger data.eval_fraction).")
    if saved is not None:
        report_changed_source(run)
    return held_out


def rows_from_file(recipe: Recipe, path: Path, accept: tuple[str, ...], purpose: str) -> list[Row]:
    """`path`'s rows in the shape the data stage gives them: the recipe's loader settings, then (conversational
    rows) the system prompt, then the recipe's fallbacks. Not cleaned or de-duplicated: the user chose these rows."""
    data = recipe.data
    loaded = load_rows(path, accept, purpose, data.format, data.columns, data.skip_invalid, data.file_format)
    shape, rows = loaded.shape, loaded.rows
    if not rows:
        raise DataError(f"--data {path} holds no rows to score.", "Pass a file with at least one row.")
    if shape in (*SFT_SHAPES, "prompt"):  # conversations, and prompts without answers as the turns answered
        rows = [as_conversation(row) for row in rows]
    elif shape in ("preference", "unpaired_preference"):  # plain-text pairs are scored as they train: chat format
        rows = [as_chat_preference(row) for row in rows]
    return [apply_fallbacks(with_system_prompt(row, data.system_prompt), data) for row in rows]


def report_training_rows(run: Run, rows: list[Row], path: Path) -> int:
    """Say on stderr how many of `rows` (from --data `path`) the run trained on (the same text, as the data stage's
    exact de-duplication compares rows: `data/dedup.py`): their scores measure recall, not what the model learnt to
    do on rows it never saw. The count (0 where none, or for a run that saved no training rows)."""
    from tunesmith.data.dedup import dedup_key, dedup_text

    trained = {dedup_key(dedup_text(row)) for row in run.train_rows() or []}
    seen = sum(dedup_key(dedup_text(row)) in trained for row in rows)
    if seen:
        print(f"warning: {seen} of the {len(rows)} rows in {path} are rows this run trained on: their scores measure "
              f"recall, not how it does on new rows. Score held-out rows (the run's own eval split: `tunesmith eval "
              f"{run.path}` without --data).", file=sys.stderr, flush=True)
    return seen


def report_changed_source(run: Run) -> None:
    """One line on stderr when the file the eval rows came from changed (or went) since training."""
    source = run.changed_eval_source()
    if source is None:
        return
    what = "changed" if Path(source.resolved).exists() else "is gone"
    print(f"note: {source.path} {what} since training; scoring the rows saved in the run "
          "(use `tunesmith eval RUN --data FILE` to score other rows).", file=sys.stderr, flush=True)


def results_dir(folder: Path, rows: HeldOutRows) -> Path:
    """Where results go: `folder` (eval/, or eval/against-<run>/) for the run's own rows, and a `data-<stem>/`
    folder inside it for --data FILE, so the held-out results, the model card and sweep keep describing them."""
    return folder / f"data-{rows.file.stem}" if rows.file is not None else folder


def keep_earlier_results(path: Path, leave_in_place: bool = False) -> Path | None:
    """Move an earlier eval's results.json into history/ beside it (named by when it was written), so that an eval
    run again with other settings (probes off, other rows) does not silently replace what the first one found;
    returns where it went. `leave_in_place`: a hard link (or copy) goes to history/ and the file stays, for a writer
    about to replace it atomically (a failed write then leaves the file run.json names where it was)."""
    if not path.is_file():
        return None
    written = datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y%m%d-%H%M%S")
    target = path.parent / "history" / f"{path.stem}-{written}.json"
    target.parent.mkdir(exist_ok=True)
    if not leave_in_place:
        path.replace(target)
    else:
        target.unlink(missing_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
    from tunesmith.eval.decoding import progress

    progress(f"the earlier {path.name} is kept as {target}")
    return target


def write_eval_outputs(run: Run, folder: Path, results: dict[str, Any], chart: Path | None = None) -> Path:
    """results.json (returned), report.html and, where `chart` is given, the base-vs-tuned chart there, written
    together under the run's manifest lock: two evals of one run finishing at once leave one eval's files, never
    one's results beside the other's report."""
    with manifest_lock(run):
        drawn = plot_base_vs_tuned(results, chart) if chart is not None else None
        path = save_results(run, folder / "results.json", results)
        write_html_report(results, folder / "report.html", drawn)
    return path


def save_results(run: Run, path: Path, results: dict[str, Any]) -> Path:
    """Validate `results` against the results.json contract (tunesmith.results.EvalResults), write it, and record
    it in run.json's eval section."""
    results = {"version": RESULTS_VERSION, **results}
    validate_results(results, path)
    keep_earlier_results(path, leave_in_place=True)
    atomic_write_json(path, results)
    record_eval_results(run, path)
    return path
