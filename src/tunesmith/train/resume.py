"""Resume is not continue: `--resume` carries on an unfinished run in its own directory from its newest complete
checkpoint; `--init-from` (training.init_from) starts a new run from a finished run's trained adapter. Each is
decided here, before any data or model loads, and each refuses the other's situation saying which is wanted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tunesmith.config import Recipe, load_recipe, recipe_differences
from tunesmith.errors import RecipeError, TunesmithError, shell_arg
from tunesmith.manifest import hub_commit
from tunesmith.models import resolve_model_source
from tunesmith.runs import LAUNCH_DIR, Run, open_run, run_being_trained, training_process
from tunesmith.train.distributed import is_main_process
from tunesmith.train.survival import complete_checkpoints, discard_incomplete_checkpoints, newest_complete_checkpoint

# Keys that change how a run is logged or kept, never what it computes: a resume may change these.
RESUME_SAFE_KEYS = ("training.logging_steps", "training.save_steps", "training.keep_checkpoints",
                    "training.max_bad_steps")
# PEFT config keys that decide the adapter's tensors: an adapter to start from must agree on each.
ADAPTER_SHAPE_KEYS = ("peft_type", "r", "target_modules", "layers_to_transform", "use_dora", "modules_to_save",
                      "num_virtual_tokens")


def recorded_world_size(run: Run) -> int:
    """How many processes trained `run`: the num_processes of the accelerate config `train --nproc` wrote in its
    launch/ folder; for a run a launcher started itself (`launch-script`, torchrun or srun with --run-dir), the
    per-process random states of its checkpoints (transformers' Trainer saves rng_state_<rank>.pth per process when
    there are several, rng_state.pth for one); else 1."""
    import yaml

    configs = sorted((run.path / LAUNCH_DIR).glob("accelerate*.yaml"))
    if configs:
        return int(yaml.safe_load(configs[0].read_text(encoding="utf-8")).get("num_processes", 1))
    ranks = [len(list(folder.glob("rng_state_*.pth"))) for folder in complete_checkpoints(run.checkpoints_dir)]
    return max([1, *ranks])


def resume_hint(run: Run) -> str:
    """How to continue `run` from its newest complete checkpoint, launched as it was: alone, with `--nproc N` where
    `train --nproc` launched it, or, where a launcher started it (several nodes, a launch-script, torchrun or srun
    with --run-dir: no launch config of tunesmith's, and several processes or a distributed strategy), that launch
    again with the same --run-dir."""
    configs = sorted((run.path / LAUNCH_DIR).glob("accelerate*.yaml"))
    size = recorded_world_size(run)
    by_launcher = not configs and (size > 1 or run_strategy(run) != "none")  # torchrun, srun, a launch-script
    if by_launcher or any(config.name.startswith("accelerate-node") for config in configs):
        return (f"Start the launch that trained it again, unchanged (on every node, with the same --run-dir "
                f"{shell_arg(run.path)}): it goes on from the newest complete checkpoint.")
    nproc = f" --nproc {size}" if configs else ""
    return f"Resume with: tunesmith train {shell_arg(run.recipe_file)}{nproc} --resume {shell_arg(run.path)}"


def run_strategy(run: Run) -> str:
    """The run's training.distributed strategy (its recipe.yaml), "none" where the recipe no longer reads."""
    try:
        return run.load_recipe().training.distributed.strategy
    except TunesmithError:
        return "none"


def finished(run: Run) -> bool:
    manifest = run.manifest()
    return manifest is not None and manifest.train is not None


def find_run_to_resume(target: str, recipe: Recipe, runs_dir: Path | None) -> Run:
    """`latest`: the newest run of this recipe's name under the runs folder that has a checkpoint and did not
    finish; otherwise `target` is a run directory."""
    if target != "latest":
        return open_run(target)
    root = Path(runs_dir or recipe.runs_dir).expanduser()
    runs = [Run(p) for p in sorted(root.glob(f"{recipe.name}-*"), key=lambda p: p.stat().st_mtime)
            if (p / "recipe.yaml").is_file()]
    resumable = [run for run in runs if complete_checkpoints(run.checkpoints_dir) and not finished(run)]
    if not resumable:
        swept = sorted((path for path in root.glob(f"sweep-{recipe.name}-*/*/checkpoints")
                        if complete_checkpoints(path) and not finished(Run(path.parent))),
                       key=lambda path: path.stat().st_mtime)
        sweep_hint = (f" A sweep's combination is unfinished ({swept[-1].parent}): a sweep carries on with "
                      f"tunesmith sweep RECIPE --resume {shell_arg(swept[-1].parent.parent)}." if swept else "")
        raise TunesmithError(f"No unfinished run of {recipe.name!r} under {root} has a checkpoint to resume from.",
                             "Start it anew without --resume, pass the run directory (--resume runs/NAME-STAMP), "
                             "or name the folder its runs are in (--runs-dir DIR) if it is not "
                             f"{recipe.runs_dir}.{sweep_hint}")
    return resumable[-1]


def refuse_finished(run: Run) -> None:
    """Raise TunesmithError where `run` finished training: resuming it has nothing to do."""
    if finished(run):
        raise TunesmithError(
            f"{run.path} finished training; there is nothing to resume.",
            f"To train further from its weights, start a new run: tunesmith train RECIPE --init-from "
            f"{shell_arg(run.path)}")


def check_resumable(run: Run, recipe: Recipe) -> Path:
    """The checkpoint `run` resumes from under `recipe`; refuses a finished run, a changed recipe (naming the
    keys) and a run without a complete checkpoint. Incomplete checkpoints are removed and said so."""
    refuse_finished(run)
    if is_main_process() and training_process(run) is not None:  # other ranks: the main one holds the lock
        raise run_being_trained(run)
    changed = {key: values for key, values in recipe_differences(load_recipe(run.recipe_file), recipe).items()
               if key not in RESUME_SAFE_KEYS}
    if changed:
        listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changed.items())
        raise RecipeError(
            f"Cannot resume {run.path} with a changed recipe ({listed}): the rest of the run would not be the run "
            "it started as.",
            f"Resume with the recipe it started with ({run.recipe_file}); only {', '.join(RESUME_SAFE_KEYS)} may "
            "change. To train with new settings from its weights, let it finish (or start anew) and use "
            "--init-from in a new run.")
    check_data_unchanged(run, recipe)
    discard_incomplete_checkpoints(run, report=lambda line: print(line, file=sys.stderr, flush=True))
    checkpoint = newest_complete_checkpoint(run)
    if checkpoint is None:
        raise TunesmithError(
            f"{run.path} has no complete checkpoint to resume from (one is written every training.save_steps="
            f"{recipe.training.save_steps} steps).", "Start the run anew without --resume.")
    return checkpoint


def check_data_unchanged(run: Run, recipe: Recipe) -> None:
    """Refuse to resume on data files whose content differs from (or that are gone since) what the run's first
    steps trained on, by the sha256 run.json recorded: the rest of the run would train on other rows, and the run's
    record of its data would be overwritten with rows its first steps never saw. The files checked are the ones
    `recipe` reads now (a project moved with its runs reads the same bytes from its new place)."""
    from tunesmith.manifest import content_sha256

    manifest = run.manifest()
    if manifest is None or manifest.data is None:
        return
    for split, source in manifest.data.sources.items():
        if source.sha256 is None:  # a Hub dataset: pinned by its revision in the recipe
            continue
        read = recipe.resolve_path(source.path)
        now = content_sha256(read)
        if now != source.sha256:
            state = "is gone since" if now is None else "has changed since"
            saved = run.path / manifest.data.train.path
            raise TunesmithError(
                f"Cannot resume {run.path}: its {split} data {read} {state} the run started (run.json "
                f"records the file's sha256, {source.sha256[:12]}..., read from {source.resolved}).",
                "Put the original file back, byte for byte, and resume; or train a new run"
                f"{new_run_start(run)}, on new data or on the rows this run kept ({saved} and its eval file beside "
                "it, already cleaned and split: `--set data.train=... --set data.eval=...`).")


def base_the_run_started_on(run: Run, recipe: Recipe) -> Path:
    """The base model folder `run` trains on: for a resumed run, the one its newest checkpoint was trained on
    (an adapter's base_model_name_or_path, a whole model's `_name_or_path`), so that a Hub id without
    model.revision whose newest commit moved on while the run was stopped does not train the rest of the run on
    another model (nor download it first). Where that folder is gone, its Hub commit is resolved again; a fresh run,
    or a checkpoint that names no folder, resolves model.source as the recipe gives it."""
    started = checkpoint_base(newest_complete_checkpoint(run))
    if started is not None and started.is_dir():
        return started
    commit = hub_commit(started) if started is not None else None
    return resolve_model_source(recipe.model.source, commit or recipe.model.revision, Path(recipe.base_dir))


def checkpoint_base(checkpoint: Path | None) -> Path | None:
    """The absolute base model folder a checkpoint names (PEFT's adapter_config.json, or a whole model's config.json
    `_name_or_path`, as transformers writes the folder it loaded from), or None."""
    if checkpoint is None:
        return None
    config = checkpoint / "adapter_config.json"
    key = "base_model_name_or_path"
    if not config.is_file():
        config, key = checkpoint / "config.json", "_name_or_path"
    try:
        named = json.loads(config.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return Path(named) if isinstance(named, str) and Path(named).is_absolute() else None


def new_run_start(run: Run) -> str:
    """How a new run starts where the stopped `run` got to: its newest checkpoint as --init-from, where that holds an
    adapter (a whole-model checkpoint is no adapter to start from), else nothing to add."""
    newest = newest_complete_checkpoint(run)
    if newest is None or not (newest / "adapter_config.json").is_file():
        return ""
    return f" started from this one's last checkpoint (`tunesmith train RECIPE --init-from {newest}`)"


def initial_weights(recipe: Recipe) -> Path | None:
    """training.init_from as the trained adapter folder to start from, checked: a finished run (its adapter) or a
    PEFT adapter folder. Whole models are a base, not a start: model.source takes those."""
    if recipe.training.init_from is None:
        return None
    path = recipe.resolve_path(recipe.training.init_from)
    key = f"training.init_from ({recipe.training.init_from})"
    if (path / "recipe.yaml").is_file():
        run = Run(path)
        manifest = run.manifest()
        if manifest is None or manifest.train is None:
            if complete_checkpoints(run.checkpoints_dir):
                raise RecipeError(f"{key}: {path} did not finish training, so it has no trained adapter to start from.",
                                  f"To continue that run where it stopped: tunesmith train RECIPE --resume "
                                  f"{shell_arg(path)}")
            raise RecipeError(f"{key}: {path} has no trained weights.", "Pass a run that finished training.")
        path = run.path / manifest.train.path
    if (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise RecipeError(f"{key}: {path} is a whole model, not an adapter.",
                          f"To train on top of it, make it the base: model.source: {path}")
    if not (path / "adapter_config.json").is_file():
        raise RecipeError(f"{key}: {path} is neither a finished tunesmith run nor a PEFT adapter folder "
                          "(no adapter_config.json).", "Pass a run directory or an adapter folder.")
    if not (path / "adapter_model.safetensors").is_file():
        older = (path / "adapter_model.bin").is_file()
        raise RecipeError(f"{key}: {path} has no adapter_model.safetensors"
                          + (" (only adapter_model.bin, the pickle format older PEFT versions wrote)." if older else
                             " (its weights are missing: copied half-way?)."),
                          "Load it with PEFT and save it again (`PeftModel.from_pretrained(base, path)"
                          ".save_pretrained(new_path)` writes safetensors), then pass the new folder." if older else
                          "Copy the adapter folder again whole, or pass another run.")
    if recipe.adapter.kind in ("full", "partial", "hft"):
        raise RecipeError(f"{key} is an adapter, but adapter.kind={recipe.adapter.kind} trains the model itself.",
                          "Use an adapter kind that matches it (e.g. lora), or merge it and set model.source.")
    return path


def load_initial_adapter(model: Any, folder: Path) -> None:
    """Copy the adapter weights in `folder` into `model`'s adapter (a PeftModel built from the recipe), after
    checking that the two adapters have the same shape."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    saved = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    current = model.peft_config["default"].to_dict()
    differ = {key: (saved.get(key), current.get(key)) for key in ADAPTER_SHAPE_KEYS
              if normalised(saved.get(key)) != normalised(current.get(key))}
    if differ:
        listed = "; ".join(f"{key}: {old!r} there, {new!r} here" for key, (old, new) in differ.items())
        raise RecipeError(f"training.init_from: the adapter in {folder} has another shape than this recipe's "
                          f"({listed}).", "Set the adapter section to the one that run used (its recipe.yaml).")
    weights = load_file(str(folder / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    if result.unexpected_keys:
        raise RecipeError(f"training.init_from: {len(result.unexpected_keys)} tensors in {folder} fit no module of "
                          f"this model (e.g. {result.unexpected_keys[0]}).",
                          "Start from an adapter trained on the same base model.")


def normalised(value: Any) -> Any:
    return sorted(value) if isinstance(value, list | set) else value


def resumed_run(recipe: Recipe, target: str, runs_dir: Path | None) -> Run:
    """The run --resume names, checked against the recipe (check_resumable); its recipe.yaml takes the allowed
    changes."""
    from tunesmith.config import recipe_to_yaml
    from tunesmith.runs import atomic_write_text

    run = find_run_to_resume(target, recipe, runs_dir)
    check_resumable(run, recipe)
    atomic_write_text(run.recipe_file, recipe_to_yaml(recipe))
    return run
