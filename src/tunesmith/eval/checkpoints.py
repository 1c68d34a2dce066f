"""Score every saved checkpoint of an adapter run: the task metric on the held-out rows and the forgetting probes,
step by step, and name the checkpoint to keep.

A run that learns its task and then goes on to forget shows it here: the task score levels off while the probes
fall. The checkpoint to keep is the one with the best task score among those whose probe accuracy stays within
`eval.probe_margin` of the base's: early stopping chosen after the fact on held-out data (Prechelt 1998, "Early
Stopping - But When?"), subject to the forgetting measure eval already uses. `rollback` makes that checkpoint the
run's adapter (the final one is kept in `adapter-final/`, and run.json's train record says which step it is).

Writes eval/checkpoints.json and plots/checkpoints.png. How many checkpoints there are to choose from is set when
training: `training.save_steps` and `training.keep_checkpoints`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from tunesmith.config import Recipe
from tunesmith.data.shapes import is_prompt_only
from tunesmith.data.template import answer_text, expected_output
from tunesmith.errors import TunesmithError
from tunesmith.eval.decoding import generate_from_prompts, progress, prompt_texts, resolve_max_new_tokens
from tunesmith.eval.evaluate import choose_metrics
from tunesmith.eval.forgetting import ask, probe_passed, recipe_probes
from tunesmith.eval.rows import held_out_rows, keep_earlier_results
from tunesmith.figures import pyplot, save_figure
from tunesmith.models import pick_device
from tunesmith.models.loading import load_model
from tunesmith.models.tuned import adapter_active, is_adapter, run_base_model, run_tokenizer
from tunesmith.results import headline_of
from tunesmith.runs import (
    Run,
    atomic_write_json,
    record_checkpoint_scores,
    record_stage,
    run_being_trained,
    training_lock,
    training_process,
)
from tunesmith.scoring import Scorer, aggregate, recipe_scorer, score_answers
from tunesmith.train.survival import checkpoint_step, complete_checkpoints

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
FINAL_ADAPTER = "adapter-final"


def adapter_checkpoints(run: Run) -> list[tuple[int, Path]]:
    """(step, folder) of each complete checkpoint holding an adapter, oldest first; a run stopped before its end
    (no adapter/ yet) has its checkpoints to score too.

    Raises TunesmithError for a whole-model run (its checkpoints are whole models), for a run with no complete
    checkpoint, and for a run another process is training.
    """
    if training_process(run) is not None:  # the trainer deletes older checkpoints as it saves new ones
        raise run_being_trained(run, waiting="Score its checkpoints when it has finished: while it trains, it "
                                             "deletes older checkpoints as it saves new ones "
                                             "(training.keep_checkpoints), under the eval that reads them.")
    complete = complete_checkpoints(run.checkpoints_dir)  # a run stopped before its end has these alone
    finished = (run.adapter_dir / "adapter_config.json").is_file() or (run.path / "model" / "config.json").is_file()
    whole = (not is_adapter(run.trained_artifact()) if finished
             else any((folder / "config.json").is_file() for folder in complete))
    if whole:
        raise TunesmithError(f"{run.path} trained a whole model; --checkpoints compares adapter checkpoints.",
                             "A whole-model run's checkpoints are whole copies of the model: score the final one "
                             "with `tunesmith eval RUN`, and compare runs' scores with `tunesmith runs list FOLDER` "
                             "or `tunesmith runs diff RUN OTHER_RUN`.")
    found = [(checkpoint_step(folder) or 0, folder) for folder in complete
             if all((folder / name).is_file() for name in ADAPTER_FILES)]
    if not found:
        raise TunesmithError(f"{run.checkpoints_dir} holds no complete checkpoint with an adapter to compare.",
                             "Train with checkpoints to choose from, e.g. --set training.save_steps=10 "
                             "--set training.keep_checkpoints=10")
    return found


def score_checkpoints(recipe: Recipe, run: Run, rollback: bool = False) -> Path:
    """Score the base and each checkpoint on the held-out rows (the task's headline metric) and on the probes;
    write eval/checkpoints.json (returned) and plots/checkpoints.png; with `rollback`, make the chosen checkpoint
    the run's adapter. Raises TunesmithError when there is nothing to compare (see adapter_checkpoints)."""
    from peft import PeftModel

    checkpoints = adapter_checkpoints(run)
    model_dir = run_base_model(run)
    tokenizer = run_tokenizer(run)
    rows = held_out_rows(recipe, run).rows[: recipe.eval.max_examples]
    if any(is_prompt_only(row) for row in rows):
        raise TunesmithError("Checkpoints are scored by the task metric against the held-out rows' reference answers, "
                             "and this run's held-out rows are prompts without answers.",
                             "`tunesmith eval RUN` scores the final adapter by the run's GRPO rewards; to compare "
                             "checkpoints, hold out rows with answers (data.eval: a file of prompt-completion rows).")
    _, choice = choose_metrics(recipe, run, rows)
    scorer = recipe_scorer(recipe, choice["metrics"])
    references = [answer_text(row["messages"][-1]) for row in rows]
    resolve_max_new_tokens(recipe.eval, tokenizer, [expected_output(row) for row in rows])
    probes = recipe_probes(recipe) if recipe.eval.probes else []  # eval.probes: false: the task score alone
    device = pick_device(recipe.training.device)
    first_step, first = checkpoints[0]
    model = PeftModel.from_pretrained(load_model(model_dir, torch.float32, device), first,
                                      adapter_name=adapter_name(first_step)).eval()
    for step, folder in checkpoints[1:]:
        model.load_adapter(folder, adapter_name=adapter_name(step))
    ask_one = TaskAndProbes(tokenizer, rows, references, scorer, choice["metrics"], probes, recipe)
    points = [{"step": 0, "checkpoint": None, **ask_one(model, model.disable_adapter, "base")}]
    for step, folder in checkpoints:
        name = adapter_name(step)
        points.append({"step": step, "checkpoint": folder.relative_to(run.path).as_posix(),
                       **ask_one(model, lambda name=name: adapter_active(model, name), name)})
    chosen = choose_checkpoint(points, recipe.eval.probe_margin)
    report = {"metric": ask_one.metric, "examples": len(rows), "probes": len(probes),
              "probe_margin": recipe.eval.probe_margin, "points": points, **chosen}
    plot_checkpoints(report, run.plots_dir / "checkpoints.png", run.path.name)
    report["rolled_back_to"] = None
    if rollback and needs_rollback(run, chosen["chosen_step"], checkpoints[-1][0]):
        report["rolled_back_to"] = roll_back(run, dict(checkpoints)[chosen["chosen_step"]], chosen["chosen_step"])
    path = run.eval_dir / "checkpoints.json"
    atomic_write_json(path, report)
    record_checkpoint_scores(run, path)
    return path


def needs_rollback(run: Run, chosen_step: int | None, final_step: int) -> bool:
    """Whether the adapter must change: a checkpoint was chosen and it is not the adapter the run holds now."""
    if chosen_step is None:
        return False
    manifest = run.manifest()
    current = manifest.train.checkpoint_step if manifest and manifest.train else None
    return chosen_step != (final_step if current is None else current)


def adapter_name(step: int) -> str:
    return f"step-{step}"


class TaskAndProbes:
    """Scores one variant: the task's headline metric on the held-out rows, and probe accuracy."""

    def __init__(self, tokenizer: Any, rows: list[dict], references: list[str], scorer: Scorer,
                 metrics: list[str], probes: list[dict[str, Any]], recipe: Recipe) -> None:
        self.tokenizer, self.rows, self.references, self.scorer = tokenizer, rows, references, scorer
        self.metrics, self.probes, self.settings = metrics, probes, recipe.eval
        self.metric: str | None = None

    def __call__(self, model: Any, context: Callable[[], AbstractContextManager], name: str) -> dict[str, Any]:
        started = time.monotonic()
        with context(), torch.no_grad():
            answers = generate_from_prompts(model, self.tokenizer, prompt_texts(self.tokenizer, self.rows),
                                            self.settings.max_new_tokens, self.settings.batch_size).answers
            probe_answers = ask(model, self.tokenizer, self.probes, self.settings.probe_max_new_tokens,
                                self.settings.batch_size).answers if self.probes else []
        scores = aggregate(score_answers(self.scorer, answers, self.references))
        self.metric = self.metric or headline_of(self.metrics, scores)
        passed = [probe_passed(probe, answer) for probe, answer in zip(self.probes, probe_answers, strict=True)]
        point = {"task": scores.get(self.metric) if self.metric else None,
                 "probe_accuracy": round(sum(passed) / len(passed), 4) if passed else None,
                 "probes_failed": [p["id"] for p, ok in zip(self.probes, passed, strict=True) if not ok],
                 "seconds": round(time.monotonic() - started, 1)}
        probes = "" if point["probe_accuracy"] is None else f", probes {point['probe_accuracy']}"  # eval.probes off
        progress(f"{name}: {self.metric} {point['task']}{probes} ({point['seconds']} s)")
        return point


def choose_checkpoint(points: list[dict[str, Any]], margin: float) -> dict[str, Any]:
    """The checkpoint with the best task score among those whose probe accuracy is within `margin` of the base's
    (points[0]); the earlier one on a tie (it drifted less). None, and why, when none keeps the probes."""
    base, checkpoints = points[0], points[1:]
    if base["probe_accuracy"] is None:  # probes off: the task score alone
        scored = [p for p in checkpoints if p["task"] is not None]
        if not scored:
            return {"chosen_step": None, "why": "no task metric to choose by, and the probes are off"}
        best = max(scored, key=lambda p: (p["task"], -p["step"]))
        if below_base(best, base):
            return none_beats_base(best, base)
        return {"chosen_step": best["step"], "why": f"the best task score ({best['task']:g}); eval.probes is off, "
                                                    "so forgetting was not measured"}
    floor = base["probe_accuracy"] - margin - 1e-9
    keeping = [p for p in checkpoints if p["probe_accuracy"] >= floor and p["task"] is not None]
    if not keeping:
        closest = max(checkpoints, key=lambda p: (p["probe_accuracy"], p["task"] or 0.0))
        return {"chosen_step": None,
                "why": f"no checkpoint keeps the probes within {margin:g} of the base's {base['probe_accuracy']:.3f}; "
                       f"the closest is step {closest['step']} ({closest['probe_accuracy']:.3f})"}
    best = max(keeping, key=lambda p: (p["task"], -p["step"]))
    if below_base(best, base):
        return none_beats_base(best, base)
    final = checkpoints[-1]
    note = "the final one" if best is final else f"the final step {final['step']} scores {final['task']:g} with " \
                                                  f"probes {final['probe_accuracy']:.3f}"
    return {"chosen_step": best["step"],
            "why": f"the best task score ({best['task']:g}) of the {len(keeping)} of {len(checkpoints)} checkpoints "
                   f"whose probes stay within {margin:g} of the base's {base['probe_accuracy']:.3f}; {note}"}


def below_base(best: dict[str, Any], base: dict[str, Any]) -> bool:
    """The best checkpoint's task score under the untuned base's (task metrics are higher-is-better)."""
    return base["task"] is not None and best["task"] < base["task"]


def none_beats_base(best: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    return {"chosen_step": None,
            "why": f"no checkpoint scores above the base's {base['task']:g} (the best is step {best['step']}, "
                   f"{best['task']:g}): tuning did not help the task, so none is worth keeping; look at the loss "
                   "curve (plots/loss.png) and the learning rate"}


def roll_back(run: Run, checkpoint: Path, step: int) -> int:
    """Make `checkpoint`'s adapter the run's: the trained one moves to adapter-final/ (once), the checkpoint's
    adapter files are copied into adapter/, and run.json's train record names the step. What described the adapter
    it replaces goes too, so nothing serves, ships or reports a stale model: its exports move aside
    (exports-final/ or exports-step-N/) and its eval results into eval/history/, both leaving run.json.

    Each step leaves the run whole if the next one fails or is interrupted: the new adapter is built beside the old
    one first, run.json stops naming a file before the file moves, and the adapter is swapped by renames. Returns
    the step."""
    manifest = run.manifest()
    if manifest is None or manifest.train is None:
        raise TunesmithError(f"{run.path} has no finished training to roll back.")
    with training_lock(run):  # no `train --resume` writes into the run while its adapter is swapped
        swap_in_checkpoint(run, manifest, checkpoint)
        record_stage(run, "train", manifest.train.model_copy(update={"checkpoint_step": step}))
    progress(f"rolled back: {run.adapter_dir} is now checkpoint step {step} (the final adapter is in "
             f"{run.path / FINAL_ADAPTER}); evaluate and export again to use it")
    return step


def swap_in_checkpoint(run: Run, manifest: Any, checkpoint: Path) -> None:
    """The rollback itself (`roll_back`), each step leaving the run whole if the next one fails."""
    staging = run.path / f".{run.adapter_dir.name}-rollback"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(run.adapter_dir, staging)
    for name in ADAPTER_FILES:
        shutil.copy2(checkpoint / name, staging / name)
    set_aside_exports(run, manifest)
    set_aside_results(run, manifest)
    final = run.path / FINAL_ADAPTER
    replaced = run.path / f".{run.adapter_dir.name}-replaced"
    shutil.rmtree(replaced, ignore_errors=True)
    run.adapter_dir.rename(replaced if final.exists() else final)
    staging.rename(run.adapter_dir)
    shutil.rmtree(replaced, ignore_errors=True)


def set_aside_exports(run: Run, manifest: Any) -> None:
    """The exports of the adapter being replaced: out of run.json first, then moved to exports-final/ (or
    exports-step-N/ when the run had rolled back before)."""
    if not (run.exports_dir.is_dir() and any(run.exports_dir.iterdir())):
        return
    if manifest.exports:
        record_stage(run, "exports", {})
    current = manifest.train.checkpoint_step
    aside = run.path / ("exports-final" if current is None else f"exports-step-{current}")
    shutil.rmtree(aside, ignore_errors=True)
    run.exports_dir.rename(aside)
    progress(f"the exports of the adapter being replaced moved to {aside}")


def set_aside_results(run: Run, manifest: Any) -> None:
    """The eval results of the adapter being replaced (held-out, --against, --data): out of run.json first, then
    each results.json into history/ beside it, its report.html and chart deleted (they are drawn from it)."""
    if manifest.eval is None or not manifest.eval.results:
        return
    record_stage(run, "eval", manifest.eval.model_copy(update={"results": {}}))
    for relative in manifest.eval.results.values():
        path = run.path / relative
        keep_earlier_results(path)
        for drawn in (path.parent / "report.html", path.parent / "base_vs_tuned.png"):
            drawn.unlink(missing_ok=True)
    (run.plots_dir / "base_vs_tuned.png").unlink(missing_ok=True)


def plot_checkpoints(report: dict[str, Any], path: Path, title: str) -> Path:
    """The task score and probe accuracy by step (the base at step 0), the probes' floor (base − margin) as a line in
    the probes' colour, and the chosen step (or "no checkpoint chosen" in the title)."""
    plt = pyplot()
    points = report["points"]
    steps = [p["step"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if report["metric"]:
        ax.plot(steps, [p["task"] for p in points], marker="o", label=report["metric"])
    base = points[0]["probe_accuracy"]
    if base is not None:
        line, = ax.plot(steps, [p["probe_accuracy"] for p in points], marker="s", label="probe accuracy")
        floor = base - report["probe_margin"]  # below this line the probes count as regressed
        ax.axhline(floor, color=line.get_color(), linestyle=":", linewidth=1,
                   label=f"probe floor: base {base:.3f} − margin {report['probe_margin']:g}")
    chosen = report.get("chosen_step")
    if chosen is not None:
        ax.axvline(chosen, color="crimson", linestyle="--", label=f"chosen: step {chosen}")
    else:  # none kept the probes: no line, and the title says so
        title = f"{title}: no checkpoint chosen"
    ax.set(xlabel="optimizer step (0: the base)", ylabel="score (0 to 1, higher is better)", ylim=(0, 1.05),
           title=f"{title}: checkpoints" if chosen is not None else title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # beside the axes: it hides no point
    return save_figure(fig, path)
