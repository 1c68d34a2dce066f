"""The experiment matrix: run every combination of a few recipe settings, then compare them in one table.

Each combination runs as `python -m tunesmith train ...` in its own subprocess, so a crash or an
out-of-memory in one cannot take the others down, and each run's peak memory is its own (RSS peaks are
process-wide and never go down). Every combination's recipe is validated before the first run starts.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tunesmith.config import Recipe, load_recipe, recipe_to_yaml
from tunesmith.errors import RecipeError, TunesmithError, shell_arg
from tunesmith.plan.devices import own_peak_rss_bytes
from tunesmith.plan.workload import check_targets_exist, names_layers_or_blocks
from tunesmith.results import read_results
from tunesmith.runs import (
    Run,
    atomic_write_json,
    atomic_write_text,
    final_reward,
    fit_loss,
    read_json,
    run_being_trained,
    runs_root,
    training_process,
)

GRID_HINT = "Write --grid section.key=value1,value2 (values as in --set; lists in brackets: [q_proj,v_proj])."
STATUS_FILE = "sweep_status.json"


class SweepFailedError(TunesmithError):
    """Some combinations failed; the others ran and the table records both."""

    exit_code = 1


class ChildStatus(BaseModel):
    """What a combination's subprocess reports (sweep_status.json): its exit code, the error it ended on, and
    its peak memory; written by `tunesmith.sweep_child` whether the run succeeded or not."""

    exit_code: int
    error: str | None = None
    hint: str | None = None
    peak_rss_mb: float | None = None
    peak_cuda_mb: float | None = None


@dataclass(frozen=True)
class GridAxis:
    """One --grid flag: a recipe key and the values (as written, so --set parses them the same way) to try."""

    key: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Combination:
    """One cell of the matrix: its name (also its run directory's name) and the --set overrides that make it."""

    name: str
    overrides: tuple[str, ...]


def parse_grid(text: str) -> GridAxis:
    """`adapter.targets=qv,qkvo` -> GridAxis; commas inside brackets or quotes belong to one value."""
    key, sep, rest = text.partition("=")
    if not sep or not key.strip() or " " in key.strip():
        raise RecipeError(f"Bad --grid {text!r}: expected section.key=value1,value2.", GRID_HINT)
    values = tuple(v.strip() for v in split_top_level(rest, text))
    if any(not v for v in values):
        raise RecipeError(f"Bad --grid {text!r}: an empty value (check for a stray comma).", GRID_HINT)
    for value in values:
        try:
            yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise RecipeError(f"Bad --grid {text!r}: {value!r} is not a valid value: {exc}", GRID_HINT) from None
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise RecipeError(f"Bad --grid {text!r}: {', '.join(repeated)} given twice.", GRID_HINT)
    return GridAxis(key.strip(), values)


def split_top_level(text: str, flag: str) -> list[str]:
    """Split on commas that are outside brackets, braces and quotes."""
    parts, current, depth, quote = [], "", 0, ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        if char == "," and depth == 0 and not quote:
            parts.append(current)
            current = ""
            continue
        current += char
        if depth < 0:
            break
    if depth != 0 or quote:
        raise RecipeError(f"Bad --grid {flag!r}: unbalanced brackets or quotes.", GRID_HINT)
    return [*parts, current]


def combinations(axes: list[GridAxis]) -> list[Combination]:
    """The cartesian product of the axes, in the order given (the last axis varies fastest)."""
    keys = [axis.key for axis in axes]
    if len(set(keys)) != len(keys):
        twice = sorted({key for key in keys if keys.count(key) > 1})
        raise RecipeError(f"--grid names the same key twice: {', '.join(twice)}.",
                          "Give each key one --grid with all its values.")
    short = short_keys(keys)
    return [Combination(folder_name(",".join(f"{s}={value_label(v)}" for s, v in zip(short, values, strict=True))),
                        tuple(f"{k}={v}" for k, v in zip(keys, values, strict=True)))
            for values in itertools.product(*(axis.values for axis in axes))]


MAX_COMBINATION_NAME = 100  # characters of a combination's folder name; file systems allow 255 bytes


def folder_name(name: str) -> str:
    """`name` as a folder name: cut to MAX_COMBINATION_NAME characters where longer (a --grid of system prompts),
    ending in a hash of the whole name so that two long names stay apart."""
    if len(name) <= MAX_COMBINATION_NAME:
        return name
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return f"{name[:MAX_COMBINATION_NAME - 9]}~{digest}"


def short_keys(keys: list[str]) -> list[str]:
    """`adapter.targets` -> `targets`, unless two keys end alike (then the full key keeps them apart)."""
    leaves = [key.rsplit(".", 1)[-1] for key in keys]
    return [leaf if leaves.count(leaf) == 1 else key for leaf, key in zip(leaves, keys, strict=True)]


def value_label(value: str) -> str:
    """A value as it reads in a directory name: lists joined with +, anything odd in a path replaced by _."""
    parsed = yaml.safe_load(value)
    text = "+".join(map(str, parsed)) if isinstance(parsed, list) else value
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def refuse_set_under_a_grid(axes: list[GridAxis], sets: list[str]) -> None:
    """A --set of a key a --grid varies would be overridden by each combination's value without a word."""
    varied = {axis.key for axis in axes}
    for item in sets:
        key = item.partition("=")[0].strip()
        if key in varied:
            raise RecipeError(f"--set {item} names {key}, which --grid varies: each combination's value would replace "
                              "it.", f"Drop the --set, or put its value among the --grid {key}=... values.")


def validate_combinations(recipe_path: Path, sets: list[str], combos: list[Combination]) -> Recipe:
    """Load every combination's recipe before anything runs, so a bad value fails in a second (an adapter.targets
    name the model lacks too, from its config); returns the base."""
    base = load_recipe(recipe_path, sets)
    architectures: dict[str, Any] = {}
    seen: dict[str, Combination] = {}
    for combo in combos:
        try:
            recipe = load_recipe(recipe_path, [*sets, *combo.overrides])
            if names_layers_or_blocks(recipe.adapter):
                check_targets_exist(recipe.adapter, model_architecture(recipe, architectures), recipe.model.source)
        except RecipeError as exc:
            raise RecipeError(f"Combination {combo.name}: {exc.message}", exc.hint) from None
        resolved = recipe_to_yaml(recipe)
        if resolved in seen:  # 1e-3 and 0.001 are one learning rate: the run would be done twice
            raise RecipeError(f"Combinations {seen[resolved].name} and {combo.name} are the same recipe once their "
                              "values are read (e.g. 1e-3 and 0.001): the sweep would train it twice.",
                              "Give each --grid value once.")
        seen[resolved] = combo
    return base


def model_architecture(recipe: Recipe, cache: dict[str, Any]) -> Any:
    """The recipe's model's architecture from its config (no weights), read once per model source."""
    from tunesmith.models.source import resolve_model_config
    from tunesmith.plan.architecture import read_architecture

    if recipe.model.source not in cache:
        model_dir = resolve_model_config(recipe.model.source, recipe.model.revision, Path(recipe.base_dir))
        cache[recipe.model.source] = read_architecture(model_dir)
    return cache[recipe.model.source]


def create_sweep_dir(recipe: Recipe, runs_dir: Path | None) -> Path:
    """`runs/sweep-<name>-<timestamp>/`, with a suffix when two sweeps start in the same second."""
    root = runs_root(recipe, runs_dir)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path, suffix = root / f"sweep-{recipe.name}-{stamp}", 1
    while path.exists():
        suffix += 1
        path = root / f"sweep-{recipe.name}-{stamp}-{suffix}"
    path.mkdir(parents=True)
    return path


def run_sweep(recipe_path: Path, grids: list[str], sets: list[str] | None = None, runs_dir: Path | None = None,
              evaluate: bool = True, report: Callable[[str], None] = print, resume: str | None = None) -> Path:
    """Validate all, run each combination in turn, write sweep.json/.md and the chart; returns the sweep dir.

    A failed combination is recorded in the table and the others still run (see raise_if_any_failed). `resume`
    (a sweep directory, or `latest`): carry on a stopped sweep in its own directory with its own grid and --set
    values; the combinations that trained keep their rows, a stopped (or failed) one resumes from its checkpoint (or
    is evaluated, or starts anew where it saved none), the ones not started run.
    """
    recipe_path, sets = Path(recipe_path).resolve(), list(sets or [])
    earlier: dict[str, dict[str, Any]] = {}
    if resume is not None:
        sweep_dir, header = sweep_to_resume(resume, recipe_path, grids, sets, runs_dir)
        grids, sets, evaluate = header["grid"], header["set"], header["evaluate"]
        earlier = {row["combination"]: row for row in header["rows"]}
    if not grids:
        raise RecipeError("No --grid given: a sweep needs at least one key to vary.",
                          GRID_HINT + " To carry on a stopped sweep: --resume SWEEP_DIR (or latest).")
    axes = [parse_grid(text) for text in grids]
    refuse_set_under_a_grid(axes, sets)
    combos = combinations(axes)
    base = validate_combinations(recipe_path, sets, combos)
    header = {"recipe": str(recipe_path), "grid": grids, "set": sets, "evaluate": evaluate}
    if resume is None:
        sweep_dir = create_sweep_dir(base, runs_dir)
        write_sweep_table(sweep_dir, header, [])  # a sweep killed in its first combination can still be resumed
    rows: list[dict[str, Any]] = []
    for index, combo in enumerate(combos, start=1):
        before = earlier.get(combo.name)
        if before is not None and before["status"] not in ("stopped", "failed"):  # a failed one is tried again
            rows.append(before)
            report(f"[{index}/{len(combos)}] {combo.name}: kept from before ({before['status']})")
            continue
        report(f"[{index}/{len(combos)}] {combo.name}" + (" (resumed)" if before else ""))
        rows.append(run_combination(recipe_path, sets, combo, sweep_dir, evaluate, resumed=before is not None))
        stopped = rows[-1]["status"] == "stopped"
        report(f"      {outcome_line(rows[-1])}{'' if stopped else time_left(rows, len(combos) - index)}")
        # after each run, with the earlier rows not reached yet: a crash mid-sweep keeps all that finished
        written = rows + [earlier[c.name] for c in combos[index:] if c.name in earlier]
        write_sweep_table(sweep_dir, header, written)
        if stopped:
            plot_sweep(written, sweep_dir / "sweep.png")
            raise SweepInterrupted(sweep_dir, rows[-1], [c.name for c in combos[index:] if c.name not in earlier])
    write_sweep_table(sweep_dir, header, rows)
    plot_sweep(rows, sweep_dir / "sweep.png")
    return sweep_dir


def sweep_to_resume(target: str, recipe_path: Path, grids: list[str], sets: list[str],
                    runs_dir: Path | None) -> tuple[Path, dict[str, Any]]:
    """The sweep directory `--resume` names (`latest`: the newest sweep of this recipe with a combination stopped or
    not run) and its sweep.json; refuses another recipe's sweep, and --grid or --set values other than its own."""
    if target == "latest":
        root = runs_root(load_recipe(recipe_path, sets), runs_dir)
        name = load_recipe(recipe_path, sets).name
        found = [path for path in sorted(root.glob(f"sweep-{name}-*"), key=lambda path: path.stat().st_mtime)
                 if unfinished_sweep(path)]
        if not found:
            raise TunesmithError(f"No sweep of {name!r} under {root} has a combination left to run.",
                                 "Pass the sweep's directory (--resume runs/sweep-NAME-STAMP), or start a new sweep "
                                 "without --resume.")
        sweep_dir = found[-1]
    else:
        sweep_dir = Path(target).expanduser().resolve()
    if not (sweep_dir / "sweep.json").is_file():
        raise TunesmithError(f"{sweep_dir} is not a sweep directory (it has no sweep.json).",
                             "Pass the folder `tunesmith sweep` printed (runs/sweep-NAME-STAMP).")
    header = read_json(sweep_dir / "sweep.json")
    if header["recipe"] != str(recipe_path):
        raise RecipeError(f"{sweep_dir} is a sweep of {header['recipe']}, not {recipe_path}.",
                          f"Resume it with its own recipe: tunesmith sweep {shell_arg(header['recipe'])} --resume "
                          f"{shell_arg(sweep_dir)}")
    for flag, given, own in (("--grid", grids, header["grid"]), ("--set", sets, header["set"])):
        if given and list(given) != list(own):
            raise RecipeError(f"{flag} {' '.join(given)} differs from the sweep's own ({' '.join(own) or 'none'}).",
                              "A resumed sweep keeps its grid and --set values: leave them out with --resume, or "
                              "start a new sweep without --resume.")
    return sweep_dir, header


def unfinished_sweep(path: Path) -> bool:
    """A sweep directory with a stopped combination, or fewer rows than its grid has combinations."""
    try:
        header = read_json(path / "sweep.json")
        count = len(combinations([parse_grid(text) for text in header["grid"]]))
    except (OSError, ValueError, KeyError, RecipeError):
        return False
    return len(header["rows"]) < count or any(row["status"] == "stopped" for row in header["rows"])


class SweepInterrupted(TunesmithError):
    """Ctrl-C or SIGTERM stopped a sweep: the running combination was stopped as `train` stops (a checkpoint, its
    run directory in place under its name), the table and chart cover what ran, and the rest did not start. Exits
    128 + the signal number, as `train` does."""

    label = "Stopped"

    def __init__(self, sweep_dir: Path, row: dict[str, Any], not_run: list[str]) -> None:
        rest = f"; not started: {', '.join(not_run)}" if not_run else ""
        super().__init__(f"Sweep stopped by {row['signal']} during {row['combination']}: {row['error']}{rest}.",
                         f"The table of what ran is in {sweep_dir / 'sweep.md'}. Carry the sweep on where it "
                         f"stopped: tunesmith sweep {shell_arg(row['recipe'])} --resume {shell_arg(sweep_dir)}")
        self.sweep_dir = sweep_dir
        self.exit_code = 128 + signal.Signals[row["signal"]].value


@contextmanager
def forwarding_signals(child: subprocess.Popen) -> Iterator[list[int]]:
    """While `child` runs in its own session (no terminal signal reaches it), pass it each SIGINT and SIGTERM this
    process gets, once, as `train` expects them: the first finishes the step and writes a checkpoint, a second
    stops at once. Yields the signals received; the previous handlers come back after."""
    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        with suppress(ProcessLookupError):
            child.send_signal(signum)

    try:
        previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals stay with whoever owns them
        previous = {}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def raise_if_any_failed(sweep_dir: Path) -> None:
    """After the table is shown: a sweep with a failed combination, or none that trained without diverging, must not
    look like a success to scripts."""
    rows = read_json(sweep_dir / "sweep.json")["rows"]
    failed = [row["combination"] for row in rows if row["status"] == "failed"]
    if failed:
        raise SweepFailedError(f"{len(failed)} of {len(rows)} combinations failed: {', '.join(failed)}.",
                               f"The errors are in {sweep_dir / 'sweep.md'}; full output in {sweep_dir / 'logs'}.")
    if rows and all(row["status"] == "diverged" for row in rows):
        raise SweepFailedError(f"Every combination diverged (its loss rose as it trained): {len(rows)} of {len(rows)}.",
                               "Try smaller training.lr values (a tenth), or a longer warm-up "
                               "(training.warmup_ratio); the losses are in " + str(sweep_dir / "sweep.md") + ".")


def run_combination(recipe_path: Path, sets: list[str], combo: Combination, sweep_dir: Path,
                    evaluate: bool, resumed: bool = False) -> dict[str, Any]:
    """Train (and evaluate) one combination in a subprocess; its run directory becomes `<sweep>/<name>/`.
    `resumed`: the combination was stopped before; its run carries on in place (`resumed_arguments`), as does one a
    sweep killed outright left behind."""
    staging, log = sweep_dir / f".staging-{combo.name}", sweep_dir / "logs" / f"{combo.name}.log"
    log.parent.mkdir(exist_ok=True)
    target = sweep_dir / combo.name
    # a sweep killed outright (SIGKILL, the OOM killer) left its run in staging, or in place with no row
    resumed = adopt_run_dir(staging, target, log, keep_staging=True) is not None or resumed
    arguments = resumed_arguments(target, evaluate) if resumed else None
    if arguments is None:
        arguments = ["train", str(recipe_path), *[arg for item in (*sets, *combo.overrides) for arg in ("--set", item)],
                     "--runs-dir", str(staging), *(["--evaluate"] if evaluate else [])]
    staging.mkdir(parents=True, exist_ok=True)
    started, received = time.monotonic(), []
    if arguments:
        command = [sys.executable, "-m", "tunesmith.sweep_child", str(staging / STATUS_FILE), *arguments]
        with log.open("a" if resumed else "w", encoding="utf-8") as handle:
            child = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
            with forwarding_signals(child) as received:
                code = child.wait()
        status = child_status(staging / STATUS_FILE, code, log)
    else:  # trained, nothing to evaluate: its row is read from the run as it is
        status = ChildStatus(exit_code=0)
    wall = round(time.monotonic() - started, 1)
    (staging / STATUS_FILE).unlink(missing_ok=True)
    run_dir = adopt_run_dir(staging, target, log)
    row = {"combination": combo.name, "overrides": list(combo.overrides), "wall_time_s": wall,
           "peak_rss_mb": status.peak_rss_mb, "peak_cuda_mb": status.peak_cuda_mb, "recipe": str(recipe_path)}
    if received:
        return {**row, "status": "stopped", "signal": signal.Signals(received[0]).name,
                "error": stopped_how(run_dir), "run_dir": run_dir and str(run_dir)}
    if status.exit_code != 0:
        error = " ".join(filter(None, [status.error, status.hint and f"Hint: {status.hint}"]))
        return {**row, "status": "failed", "error": error, "run_dir": run_dir and str(run_dir)}
    figures = run_figures(run_dir)
    if figures["train_warnings"]:  # it finished, but its loss says it got worse as it trained
        return {**row, "status": "diverged", "error": figures["train_warnings"][0], **figures, "run_dir": str(run_dir)}
    return {**row, "status": "ok", **figures, "run_dir": str(run_dir)}


def resumed_arguments(run_dir: Path, evaluate: bool) -> list[str] | None:
    """The tunesmith arguments that carry a stopped combination's run on in place: evaluate it where its training
    finished (none, [], without eval), resume it from its checkpoint; None where it saved none (its folder, holding
    nothing to keep, is removed and the combination starts anew)."""
    if (run_dir / "train.json").is_file():  # without eval its training is all there is: nothing to run
        return ["eval", str(run_dir)] if evaluate else []
    if list(run_dir.glob("checkpoints/checkpoint-*")):
        return ["train", str(run_dir / "recipe.yaml"), "--resume", str(run_dir), *(["--evaluate"] if evaluate else [])]
    shutil.rmtree(run_dir, ignore_errors=True)
    return None


def stopped_how(run_dir: Path | None) -> str:
    """Where a stopped combination's run stands, with the command that resumes it from where it now is."""
    checkpoints = sorted(run_dir.glob("checkpoints/checkpoint-*")) if run_dir else []
    if run_dir is not None and (run_dir / "train.json").is_file():
        return f"its training had finished ({run_dir}); evaluation was stopped"
    if not checkpoints:
        return "stopped before its training saved a checkpoint, so there is nothing to resume"
    return (f"resume it with: tunesmith train {shell_arg(run_dir / 'recipe.yaml')} --resume {shell_arg(run_dir)} "
            f"(then tunesmith eval {shell_arg(run_dir)})")


def child_status(path: Path, code: int, log: Path) -> ChildStatus:
    """The subprocess's own report; a process killed before it could write one (OOM killer, a signal) gets its
    exit code and the last line of its log."""
    try:
        return ChildStatus.model_validate_json(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValidationError):
        lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines()
                 if line.strip()]
        killed = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        last = f"; its last output: {lines[-1]}" if lines else " and printed nothing"
        return ChildStatus(exit_code=code or 1, error=f"the run {killed} without reporting an error{last}")


def adopt_run_dir(staging: Path, target: Path, log: Path, keep_staging: bool = False) -> Path | None:
    """Move the one run directory the subprocess made into place under the combination's name, and write that
    place into its log where the run printed its staging path (a resume command copied from the log must work);
    `target` when it is in place. Refuses, keeping everything, where both exist or staging holds several runs."""
    made = [p for p in staging.iterdir() if p.is_dir()] if staging.is_dir() else []
    for candidate in (*made, target):  # a sweep whose parent died leaves its child training: never move or delete it
        if candidate.is_dir() and training_process(Run(candidate)) is not None:
            raise run_being_trained(Run(candidate), waiting="An earlier sweep's process still trains this combination "
                                    "(its parent was stopped or its terminal closed): let it finish or stop it (its "
                                    "PID above), then resume the sweep.")
    if len(made) > 1 or (made and target.exists()):
        raise TunesmithError(f"{staging} holds {', '.join(p.name for p in made)} beside {target}: a sweep killed "
                             "outright left runs it cannot tell apart.",
                             f"Keep the run you want as {target} (move it there), remove the others, and resume.")
    if made:
        os.replace(made[0], target)
        text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
        # the path as printed, also where the console wrapped it over lines (a log is 80 columns wide)
        printed = re.compile("\n?".join(map(re.escape, str(made[0]))))
        if printed.search(text):
            atomic_write_text(log, printed.sub(lambda _: str(target), text))
    if not keep_staging:
        shutil.rmtree(staging, ignore_errors=True)
    return target if target.is_dir() else None


def run_figures(run_dir: Path | None) -> dict[str, Any]:
    """The numbers of one finished run, read from its own train.json and eval/results.json."""
    train = read_json(run_dir / "train.json") if run_dir and (run_dir / "train.json").is_file() else {}
    results_file = run_dir / "eval" / "results.json" if run_dir else None
    results = read_results(results_file) if results_file and results_file.is_file() else None
    metric = results.headline_metric() if results else None
    probes = results.probes if results else None
    return {
        "final_train_loss": fit_loss(train),
        "final_reward": final_reward(train),  # GRPO's progress, where its loss says nothing
        "eval_loss": results.tuned.get("loss") if results else None,
        "metric": metric,
        "metric_value": results.tuned.get(metric) if results and metric else None,
        "metric_base": (results.base or {}).get(metric) if results and metric else None,  # the untuned model's
        # the paired 95% interval of tuned − base, and the rows it was measured on: how sure each bar is
        "metric_ci95": (results.comparison[metric].ci95 if results and metric in results.comparison else None),
        "examples": results.examples if results else None,
        # the forgetting probes (eval.probes): what the tuning cost, beside what it gained
        "probe_accuracy": probes.tuned.get("accuracy") if probes else None,  # results.json's probes block
        "probe_accuracy_base": (probes.base or {}).get("accuracy") if probes else None,
        "regression": probes.regression if probes else None,
        "trainable_params": (train.get("trainable") or {}).get("trainable"),
        "train_time_s": train.get("wall_time_s"),
        "train_warnings": train.get("warnings") or [],  # train.json: a loss that rose, a gradient stuck at 0
    }


def outcome_line(row: dict[str, Any]) -> str:
    if row["status"] == "failed":
        return f"failed after {row['wall_time_s']}s: {row['error']}"
    if row["status"] == "stopped":
        return f"stopped by {row['signal']} after {row['wall_time_s']}s: {row['error']}"
    if row["status"] == "diverged":
        return f"done in {row['wall_time_s']}s, but DIVERGED: {row['error']}"
    metric = f", {row['metric']} {row['metric_value']:.4f}" if row.get("metric_value") is not None else ""
    if row.get("final_reward") is not None:
        metric = f", reward {row['final_reward']:.4f}{metric}"
    if row.get("probe_accuracy") is not None:
        metric += f", probes {row['probe_accuracy']:.3f}" + (" (REGRESSION)" if row.get("regression") else "")
    return f"done in {row['wall_time_s']}s: train loss {format_cell(row['final_train_loss'], '{:.4f}')}{metric}"


def time_left(rows: list[dict[str, Any]], remaining: int) -> str:
    """`; about 12 min left for 3 more` at the mean pace of the combinations that ran: said after each one, so that a
    long grid can be stopped (Ctrl-C) early rather than found unfinished. The first combination also loads what the
    others find cached, so the estimate errs long."""
    if not remaining:
        return ""
    mean_s = sum(row["wall_time_s"] for row in rows) / len(rows)
    left = mean_s * remaining
    when = f"{left / 60:.0f} min" if left >= 90 else f"{left:.0f} s"
    return f"; about {when} left for {remaining} more"


def table_metric(rows: list[dict[str, Any]]) -> str | None:
    """The metric the table's task column shows: the one most runs reported."""
    names = [row["metric"] for row in rows if row.get("metric")]
    return max(set(names), key=names.count) if names else None


def table_cells(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Column names and one row of text cells per combination: what sweep.md and the terminal both show."""
    metric = table_metric(rows)
    based = metric is not None and any(row.get("metric_base") is not None for row in rows)
    columns = [("train loss", "final_train_loss", "{:.4f}"), ("eval loss", "eval_loss", "{:.4f}"),
               *([(f"{metric} (base)", "metric_base", "{:.4f}")] if based else []),
               (metric or "task metric", "metric_value", "{:.4f}"),
               *([("95% CI vs base", "change_ci95", "{}")] if any(row.get("metric_ci95") for row in rows) else []),
               ("trainable", "trainable_params", "{:,}"),
               ("wall (s)", "wall_time_s", "{:.1f}"), ("peak RSS (MB)", "peak_rss_mb", "{:,.0f}")]
    if any(row.get("probe_accuracy") is not None for row in rows):
        columns[-3:-3] = [("probes", "probe_accuracy", "{:.3f}"), ("forgetting", "forgetting", "{}")]
    if any(row.get("final_reward") is not None for row in rows):  # GRPO: the reward in place of a fit loss
        columns[0] = ("final reward", "final_reward", "{:.4f}")
    if any(row.get("peak_cuda_mb") is not None for row in rows):
        columns.append(("peak CUDA (MB)", "peak_cuda_mb", "{:,.0f}"))
    cells = []
    for row in rows:
        same = row.get("metric") == metric
        verdict = row.get("regression")
        interval = row.get("metric_ci95") if same else None
        shown = {**row, "metric_value": row.get("metric_value") if same else None,
                 "metric_base": row.get("metric_base") if same else None,
                 "change_ci95": f"[{interval[0]:+.2f}, {interval[1]:+.2f}]" if interval else None,
                 "forgetting": None if verdict is None else ("REGRESSION" if verdict else "none")}
        status = "ok" if row["status"] == "ok" else f"{row['status']}: {row['error']}"
        cells.append([row["combination"], *(format_cell(shown.get(key), spec) for _, key, spec in columns), status])
    return ["combination", *(name for name, _, _ in columns), "status"], cells


def format_cell(value: Any, spec: str) -> str:
    return "—" if value is None else spec.format(value)


def write_sweep_table(sweep_dir: Path, header: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """sweep.json (every figure, as numbers) and sweep.md (the same table for people), both atomically."""
    atomic_write_json(sweep_dir / "sweep.json", {**header, "metric": table_metric(rows), "rows": rows})
    columns, cells = table_cells(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in cells]
    flags = [*(f"`--grid {g}`" for g in header["grid"]), *(f"`--set {item}`" for item in header["set"])]
    title = f"# Sweep of {Path(header['recipe']).name}\n\nGrid: {' '.join(flags)}"
    atomic_write_text(sweep_dir / "sweep.md", f"{title}\n\n" + "\n".join(lines) + "\n")


def plot_sweep(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Bars of the task metric per combination (final train loss when nothing was evaluated), beside bars of the
    forgetting probes' accuracy where eval ran them, each with the untuned base's score as a dashed line where every
    combination was scored against the same one: what a setting gained next to what it cost."""
    from tunesmith.figures import pyplot, save_figure

    metric = table_metric(rows)
    rewarded = any(row.get("final_reward") is not None for row in rows)
    key, label = (("metric_value", metric) if metric else ("final_reward", "final reward") if rewarded
                  else ("final_train_loss", "final train loss"))
    shown = [row for row in rows if (row.get(key) is not None and (not metric or row.get("metric") == metric))
             or row["status"] in ("failed", "stopped")]  # an empty slot saying so: a grid with a hole shows the hole
    if not any(row.get(key) is not None for row in shown):
        return None
    panels = [(key, label, "metric_base" if metric else None, "tab:blue")]
    if any(row.get("probe_accuracy") is not None for row in shown):
        panels.append(("probe_accuracy", "forgetting probes (accuracy)", "probe_accuracy_base", "tab:green"))
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6, len(shown) * 1.2) * len(panels), 4), dpi=110,
                             squeeze=False)
    for ax, (value_key, title, base_key, color) in zip(axes[0], panels, strict=True):
        plot_sweep_panel(ax, shown, value_key, title, base_key, color)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_sweep_panel(ax: Any, rows: list[dict[str, Any]], key: str, label: str, base_key: str | None,
                     color: str) -> None:
    """One bar per combination of `key` (a missing value is an empty slot, named `failed` or `stopped` where the
    combination did not finish), the base's `base_key` dashed; a probes bar whose run the regression check flagged
    is red."""
    from matplotlib.patches import Patch

    values = [row.get(key) for row in rows]
    colors = [("tab:red" if row.get("regression") else color) if key == "probe_accuracy" else color for row in rows]
    bars = ax.bar(range(len(rows)), [value if value is not None else 0 for value in values], color=colors)
    ax.bar_label(bars, labels=["" if value is None else f"{value:.3f}" for value in values], label_type="center",
                 color="white", fontweight="bold")  # inside the bar: clear of the whiskers and the base line
    ax.bar_label(bars, labels=[(row["status"] if row["status"] in ("failed", "stopped") else "—") if value is None
                               else "" for row, value in zip(rows, values, strict=True)])  # 0: no bar, said why
    intervals = [(i, row["metric_ci95"], row["metric_value"] - row["metric_base"]) for i, row in enumerate(rows)
                 if key == "metric_value" and row.get("metric_ci95") and row.get("metric_value") is not None
                 and row.get("metric_base") is not None]
    scores = all(0 <= value <= 1 for value in values if value is not None)  # a 0..1 score stays in 0..1
    if intervals:  # the tuned score as far as the paired interval of its change from the base reaches
        ax.errorbar([i for i, _, _ in intervals], [values[i] for i, _, _ in intervals],
                    yerr=[[max(0.0, min(delta - low, values[i]) if scores else delta - low)
                           for i, (low, _), delta in intervals],
                          [max(0.0, min(high - delta, 1 - values[i]) if scores else high - delta)
                           for i, (_, high), delta in intervals]],
                    fmt="none", ecolor="black", capsize=4, label="95% CI of the change from base")
    ax.set_xticks(range(len(rows)), [row["combination"] for row in rows], rotation=30, ha="right")
    bases = [row[base_key] for row in rows if base_key and row.get(base_key) is not None]
    if bases and max(bases) - min(bases) < 1e-9:  # one base, one held-out set: the line every bar is measured from
        ax.axhline(bases[0], color="grey", linestyle="--", label=f"base {bases[0]:.3f}")
    flagged = [Patch(color="tab:red", label="forgetting flagged (eval's probes check)")] \
        if "tab:red" in colors else []
    handles = [*ax.get_legend_handles_labels()[0], *flagged]
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.3), fontsize=8, ncol=2,
                  frameon=False)  # below the axes: it hides no bar
    examples = {row.get("examples") for row in rows if row.get("examples")}
    counted = f" ({examples.pop()} held-out rows)" if key == "metric_value" and len(examples) == 1 else ""
    ax.set(ylabel=label, title=f"{label} per combination{counted}")
    known = [value for value in values if value is not None]
    if key not in ("final_train_loss", "final_reward") and all(0 <= value <= 1 for value in known):
        ax.set_ylim(0, 1.05)  # scores: the same scale from sweep to sweep
    ax.grid(axis="y", alpha=0.3)


def peak_memory() -> dict[str, float | None]:
    """This process's peak RSS (its own, not the parent's it was forked from) and, when CUDA was used, its peak
    allocation."""
    rss_bytes = own_peak_rss_bytes()
    cuda = None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return {"peak_rss_mb": round(rss_bytes / 2**20, 1), "peak_cuda_mb": cuda}
