"""`tunesmith train --nproc` (several processes through `accelerate launch`) and `tunesmith launch-script`
(batch scripts for SLURM and torchrun-style launchers): thin commands over train/launch.py."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from tunesmith.cli.common import SHOW, SetOption, err
from tunesmith.errors import TunesmithError


def refuse_unlaunched(recipe: Any, run_dir: Path | None, launch_flags: bool, launched: bool,
                      resume: str | None = None) -> None:
    """Usage errors of a `train` that launches nothing: launch flags without --nproc, several processes started by
    another launcher without a shared --run-dir or with what only accelerate's launcher sets up, a multi-process
    strategy started alone (`resume`: the run being resumed, whose process count the fix names). `launched`: a rank
    of `train --nproc` (its launch was checked)."""
    from tunesmith.errors import RecipeError
    from tunesmith.train.distributed import this_rank
    from tunesmith.train.launch import check_multi_process

    if launch_flags:
        raise TunesmithError("--print-launch, --nnodes and --node-rank describe a launch and need --nproc.",
                             "Add --nproc N (processes on each machine).")
    rank = this_rank()
    if rank.distributed and run_dir is None:
        raise TunesmithError(f"This is rank {rank.rank} of {rank.world_size} processes started by a launcher, and each "
                             "would make its own run directory.",
                             "Pass the same --run-dir to every rank, or let tunesmith launch them: "
                             "tunesmith train RECIPE --nproc N.")
    if rank.distributed and not launched:
        check_multi_process(recipe, launched_by_accelerate=False)
    strategy = recipe.training.distributed.strategy
    if strategy != "none" and not rank.launched:
        from tunesmith.models import pick_device
        from tunesmith.train.launch import refuse_sharding_on_cpu

        refuse_sharding_on_cpu(strategy, pick_device(recipe.training.device))  # said first: --nproc would not help
        if resume is not None:
            raise RecipeError(f"training.distributed is {strategy}, which trains with several processes, and this is "
                              "one process started alone.", resume_launch_hint(resume, recipe))
        raise RecipeError(f"training.distributed is {strategy}, which trains with several processes, and this is one "
                          "process started alone.",
                          "Launch them: tunesmith train RECIPE --nproc N (or set training.distributed: none).")


def resume_launch_hint(resume: str, recipe: Any) -> str:
    """The launch that resumes a multi-process run: its own process count (the checkpoint belongs to it)."""
    from tunesmith.train.resume import find_run_to_resume, resume_hint

    try:
        run = find_run_to_resume(resume, recipe, None)
    except TunesmithError:
        return "Resume it with as many processes as it trained with: tunesmith train RECIPE --nproc N --resume RUN."
    return resume_hint(run)


@dataclass(frozen=True)
class LaunchOptions:
    """`train`'s options for a multi-process launch, as given."""

    nproc: int
    nnodes: int
    node_rank: int
    main_address: str
    main_port: int
    print_launch: bool
    run_dir: Path | None
    resume: str | None
    runs_dir: Path | None
    force: bool


def launch(recipe_file: Path, overrides: list[str], recipe: Any, options: LaunchOptions) -> Any:
    """`train --nproc`: check what the launch needs, set up the run directory and its launch configs, then run
    `accelerate launch` and return the run once every rank finished (None with --print-launch, which prints the
    command instead). Raises TunesmithError when a rank failed, naming the resume command."""
    import shlex
    import subprocess

    from tunesmith.config import load_recipe
    from tunesmith.models import pick_device
    from tunesmith.runs import create_run, removed_if_unstarted
    from tunesmith.train.common import resolve_precision
    from tunesmith.train.launch import (
        LaunchSpec,
        check_launchable,
        check_same_world_size,
        launch_command,
        launched_failure,
        rank_arguments,
        require_engine,
        shared_run,
        write_command,
        write_launch_files,
    )
    from tunesmith.train.resume import find_run_to_resume, resumed_run

    spec = LaunchSpec(options.nproc, options.nnodes, options.node_rank, options.main_address, options.main_port)
    if options.resume:  # said before ddp is set below, which the run's own recipe would name as a change
        check_same_world_size(find_run_to_resume(options.resume, recipe, options.runs_dir), spec.world_size)
    if recipe.training.distributed.strategy == "none" and spec.world_size > 1:
        overrides = [*overrides, "training.distributed=ddp"]
        recipe = load_recipe(recipe_file, overrides)
        err.print(f"training.distributed: ddp ({spec.world_size} processes; set it to fsdp or deepspeed-zero2/3 to "
                  "shard)", **SHOW)
    device = pick_device(recipe.training.device)
    check_launchable(recipe, spec, device)
    if not options.print_launch:
        require_engine(recipe.training.distributed)
    if not options.force and spec.node_rank == 0:
        from tunesmith.plan.fit import fit_recipe

        recipe, note = fit_recipe(recipe, processes=spec.world_size, per_node=spec.nproc)
        if note:
            err.print(note, **SHOW)
            overrides = [*overrides, "training.gradient_checkpointing=true"]
    if options.resume:
        run = resumed_run(recipe, options.resume, options.runs_dir)
        check_same_world_size(run, spec.world_size)
    elif options.run_dir is not None:
        run = shared_run(recipe, options.run_dir, main=spec.node_rank == 0)  # node 0 sets it up, the others wait
        if run.checkpoints_dir.is_dir():
            check_same_world_size(run, spec.world_size)
    elif spec.nnodes > 1:
        raise TunesmithError(f"--nnodes {spec.nnodes} needs --run-dir: a folder every node sees (a shared disk), the "
                             "same on each.", "Add --run-dir /shared/runs/NAME to the command on every node.")
    else:
        run = create_run(recipe, options.runs_dir)
    new = not options.resume and options.run_dir is None
    config_file = write_launch_files(run, recipe, spec, resolve_precision(recipe.training.precision, device))
    command = launch_command(config_file, rank_arguments(recipe_file, overrides, run))
    script = write_command(run, command, config_file)
    if options.print_launch:
        print(shlex.join(command))
        err.print(f"[bold]Run directory:[/bold] {run.path} (the command is also in {script})", **SHOW)
        return None
    err.print(f"launching {spec.world_size} processes ({recipe.training.distributed.strategy}): {shlex.join(command)}",
              **SHOW)
    with removed_if_unstarted(run) if new else nullcontext(run):  # a launch that fails before a step leaves no run
        returncode = subprocess.call(command)
        if returncode != 0:
            raise launched_failure(returncode, run)
    return run


def launch_script(kind: Annotated[str, typer.Argument(metavar="slurm|torchrun",
                                                      help="slurm: an sbatch script (srun + accelerate); torchrun: a "
                                                           "per-node entry point for one-container-per-node launchers "
                                                           "(Kubeflow PyTorchJob).")],
                  recipe: Path, set_: SetOption = None,
                  nodes: Annotated[int, typer.Option("--nodes", "--nnodes", min=1,
                                                     help="Machines (--nnodes, as train names it).")] = 1,
                  gpus_per_node: Annotated[int, typer.Option("--gpus-per-node", "--nproc", min=1,
                                                             help="Processes (GPUs) on each machine (--nproc, as "
                                                                  "train names it).")] = 1,
                  run_dir: Annotated[Path | None, typer.Option(
                      "--run-dir", help="The shared run directory (slurm appends the job id); default: the recipe's "
                                        "runs_dir / NAME-KIND.")] = None,
                  partition: Annotated[str | None, typer.Option(help="slurm: #SBATCH --partition.")] = None,
                  time_limit: Annotated[str | None, typer.Option("--time", help="slurm: #SBATCH --time, e.g. "
                                                                                "04:00:00.")] = None,
                  output: Annotated[Path | None, typer.Option("--output", "-o", "--out", help="Write the script here "
                                                              "(default: print it).")] = None) -> None:
    """Write a batch script that trains a recipe on several machines, for the launcher a cluster has.

    Example: tunesmith launch-script slurm my-recipe.yaml --nodes 2 --gpus-per-node 8 -o train.sbatch
    Example: tunesmith launch-script torchrun my-recipe.yaml --gpus-per-node 4 -o entrypoint.sh
    """
    from tunesmith.config import load_recipe
    from tunesmith.errors import RecipeError
    from tunesmith.runs import atomic_write_text, check_output_file
    from tunesmith.train.launch import (
        SCRIPT_KINDS,
        check_multi_process,
        check_slurm_time,
        slurm_script,
        torchrun_script,
    )

    if output is not None:
        check_output_file(output, "--output")

    if kind not in SCRIPT_KINDS:
        raise RecipeError(f"Unknown launch-script kind {kind!r}.", f"Choose one of: {', '.join(SCRIPT_KINDS)}.")
    overrides = list(set_ or [])
    loaded = load_recipe(recipe, overrides)
    if loaded.training.distributed.strategy == "none" and nodes * gpus_per_node > 1:
        overrides.append("training.distributed=ddp")
        loaded = load_recipe(recipe, overrides)
    if nodes * gpus_per_node > 1:  # what train would refuse once the job is scheduled, refused now
        check_multi_process(loaded, launched_by_accelerate=kind == "slurm")
    if time_limit is not None:
        check_slurm_time(time_limit)
    target = (run_dir or Path(loaded.runs_dir) / f"{loaded.name}-{kind}").expanduser().resolve()
    if kind == "slurm":
        text = slurm_script(loaded, recipe, overrides, nodes, gpus_per_node, target, partition, time_limit)
    else:
        text = torchrun_script(loaded, recipe, overrides, gpus_per_node, target)
    if output is None:
        print(text, end="")
        return
    atomic_write_text(output, text)
    output.chmod(0o755)
    err.print(f"wrote {output} ({kind}, {nodes} node(s) x {gpus_per_node}); "
              + ("submit it with: sbatch " if kind == "slurm" else "run it on every node: bash ") + str(output), **SHOW)
