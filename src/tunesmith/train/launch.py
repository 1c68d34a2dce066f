"""Several processes for one recipe, on accelerate's launcher: the config files it reads, the command that starts
the ranks, and batch scripts for SLURM and torchrun-style launchers. tunesmith launches nothing of its own:
`accelerate launch` starts torchrun (DDP, FSDP) or DeepSpeed's launcher, and every rank runs `tunesmith train`.

Sources: accelerate 1.15 `commands/launch.py` (`launch_command`: --cpu starts ONE process, so CPU ranks go through
the multi-GPU launcher, i.e. torchrun, and find the CPU through TrainingArguments(use_cpu=True)), accelerate's
config-file format (`commands/config/config_args.py` ClusterConfig), the FSDP2 keys of accelerate's FSDP guide,
and transformers' DeepSpeed integration ("auto" values filled from TrainingArguments; docs "DeepSpeed").
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tunesmith.config import DistributedSection, Recipe
from tunesmith.errors import RecipeError, TunesmithError
from tunesmith.runs import LAUNCH_DIR, Run, atomic_write_text

DEFAULT_PORT = 29500  # torch.distributed's usual MASTER_PORT


@dataclass(frozen=True)
class LaunchSpec:
    """Where the ranks run: `nproc` processes on each of `nnodes` machines; this machine is `node_rank`, and
    rank 0 listens on main_address:main_port."""

    nproc: int
    nnodes: int = 1
    node_rank: int = 0
    main_address: str = "127.0.0.1"
    main_port: int = DEFAULT_PORT

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes


def check_launchable(recipe: Recipe, spec: LaunchSpec, device: str) -> None:
    """Refuse, before anything starts, what the library stack cannot run here (RecipeError naming the key).

    - fsdp and deepspeed-* run on CUDA only: accelerate disables both whenever the CPU is used
      (accelerate/state.py, `launch_command`); on a CPU, ddp over gloo works.
    - ddp needs at least 2 processes (accelerate refuses --multi_gpu with 1).
    - QLoRA shards only in 4-bit (PEFT "FSDP + QLoRA" / "DeepSpeed ZeRO-3 + QLoRA" guides: the 4-bit weights are
      stored in the dtype of the other weights, `bnb_4bit_quant_storage`, so FSDP can flatten them; 8-bit has no
      such storage; bitsandbytes docs, "FSDP-QLoRA").
    - multi-node runs need the address of rank 0's machine.
    - what check_multi_process refuses.
    """
    distributed, adapter_kind = recipe.training.distributed, recipe.adapter.kind
    bits = getattr(recipe.adapter, "bits", None)
    strategy = distributed.strategy
    check_multi_process(recipe)
    refuse_sharding_on_cpu(strategy, device)
    if strategy == "ddp" and spec.world_size < 2:
        raise RecipeError("training.distributed: ddp needs at least 2 processes; --nproc x --nnodes is 1.",
                          "Pass --nproc 2 or more, or leave training.distributed at none for one process.")
    if adapter_kind == "qlora" and distributed.shards_weights and bits == 8:
        raise RecipeError(f"adapter.bits: 8 cannot be sharded by {strategy}: only 4-bit QLoRA stores its weights in a "
                          "dtype FSDP and ZeRO-3 can flatten (bnb_4bit_quant_storage).",
                          "Use adapter.bits: 4, or training.distributed: ddp / deepspeed-zero2.")
    if spec.nnodes > 1 and spec.main_address in ("127.0.0.1", "localhost"):
        raise RecipeError(f"--nnodes {spec.nnodes} needs --main-address: the address of the machine running rank 0 "
                          "(node rank 0), reachable from every node.", "Pass --main-address HOST.")
    if not 0 <= spec.node_rank < spec.nnodes:
        raise RecipeError(f"--node-rank {spec.node_rank} is outside 0..{spec.nnodes - 1} (--nnodes {spec.nnodes}).",
                          "Number the machines 0 to nnodes - 1; node 0 runs rank 0.")


def check_multi_process(recipe: Recipe, launched_by_accelerate: bool = True) -> None:
    """What tunesmith does not train with several processes yet, and what needs accelerate's launcher
    (RecipeError naming the key):
    - adapter.kind hft: it switches which weights train between rounds, which DDP fixes when it wraps the model;
    - training.time_budget: each rank would measure its own speed and stop at another step;
    - fsdp and deepspeed-* started by another launcher (torchrun, srun) without `accelerate launch`: the ranks
      would not know the strategy (accelerate passes it in their environment) and train as plain DDP.
    """
    if recipe.adapter.kind == "hft":
        raise RecipeError("adapter.kind: hft cannot train with several processes: it changes which blocks train "
                          "every round, and DDP/FSDP/DeepSpeed fix the trained weights when they wrap the model.",
                          "Use kind: partial or full, or train hft in one process.")
    if recipe.training.time_budget is not None:
        raise RecipeError("training.time_budget cannot be used with several processes yet: each would measure its "
                          "own speed and stop at a different step.",
                          "Set training.max_steps (or epochs) for a multi-process run.")
    strategy = recipe.training.distributed.strategy
    if not launched_by_accelerate and strategy not in ("none", "ddp"):
        raise RecipeError(f"training.distributed: {strategy} was started by a launcher other than accelerate's, so "
                          "these ranks would train as plain DDP without sharding.",
                          "Start them with `tunesmith train RECIPE --nproc N` (on each node), or the script of "
                          "`tunesmith launch-script slurm`.")


def refuse_sharding_on_cpu(strategy: str, device: str) -> None:
    """fsdp and deepspeed-* run on CUDA only: accelerate disables both whenever the CPU is used (accelerate/state.py,
    `launch_command`). RecipeError naming the key; on a CPU, ddp over gloo works."""
    if strategy in ("fsdp", "deepspeed-zero2", "deepspeed-zero3") and device == "cpu":
        raise RecipeError(f"training.distributed: {strategy} runs on CUDA GPUs only: accelerate turns FSDP and "
                          "DeepSpeed off whenever training runs on the CPU.",
                          "On a CPU use training.distributed: ddp (one full copy per process, over gloo).")


def require_engine(distributed: DistributedSection) -> None:
    """DeepSpeed strategies need the `deepspeed` package in the environment the ranks run in."""
    import importlib.util

    if distributed.strategy.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        raise TunesmithError(f"training.distributed: {distributed.strategy} needs DeepSpeed, which is not installed.",
                             "pip install 'tunesmith[distributed]' (with PyTorch already installed, so that pip keeps "
                             "it), or use training.distributed: fsdp.")


def mixed_precision(precision: str) -> str:
    """accelerate's mixed_precision value for training.precision (resolved: fp32, bf16 or fp16)."""
    return {"bf16": "bf16", "fp16": "fp16"}.get(precision, "no")


def accelerate_config(distributed: DistributedSection, spec: LaunchSpec, precision: str,
                      deepspeed_file: Path | None = None) -> dict[str, Any]:
    """The accelerate config file's content (what `accelerate config` writes) for this strategy.

    ddp is accelerate's MULTI_GPU (torchrun); on a CPU the ranks pick gloo themselves from
    TrainingArguments(use_cpu=True). fsdp: FSDP2 (fsdp_version 2) wrapping each transformer block, full state
    dicts on save so that the saved model is one file set whatever the world size; offloading in FSDP moves
    weights, gradients and optimizer state to the CPU together (torch CPUOffload), so either knob turns it on.
    deepspeed-*: the JSON beside it (`deepspeed_config`), with the standard launcher on each node (torchrun).
    """
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "downcast_bf16": "no",
        "machine_rank": spec.node_rank,
        "main_process_ip": spec.main_address,
        "main_process_port": spec.main_port,
        "main_training_function": "main",
        "mixed_precision": mixed_precision(precision),
        "num_machines": spec.nnodes,
        "num_processes": spec.world_size,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
    }
    if distributed.strategy == "fsdp":
        config["distributed_type"] = "FSDP"
        config["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_offload_params": distributed.offload_params or distributed.offload_optimizer,
            "fsdp_reshard_after_forward": True,
            "fsdp_state_dict_type": "FULL_STATE_DICT",
            "fsdp_activation_checkpointing": False,
        }
    elif distributed.strategy.startswith("deepspeed"):
        config["distributed_type"] = "DEEPSPEED"
        config["deepspeed_config"] = {
            "deepspeed_config_file": str(deepspeed_file),
            "deepspeed_multinode_launcher": "standard",
            "zero3_init_flag": distributed.strategy == "deepspeed-zero3",
        }
        del config["mixed_precision"]  # the JSON's bf16/fp16 blocks say it ("auto": from TrainingArguments)
    else:
        config["distributed_type"] = "MULTI_GPU"
        config["gpu_ids"] = "all"
    return config


def deepspeed_config(distributed: DistributedSection) -> dict[str, Any]:
    """DeepSpeed's JSON for ZeRO stage 2 or 3, every batch/precision/clipping value "auto" so that transformers
    fills it from the recipe's TrainingArguments (one source of truth; transformers DeepSpeed docs, "auto").

    The optimizer is the trainer's AdamW; with offload_optimizer it is DeepSpeed's (AdamW on its CPU kernel),
    since DeepSpeed refuses a client optimizer with ZeRO-Offload. Stage 3 gathers the weights for saving, so the
    final model or adapter is written whole, as a one-process run writes it.
    """
    stage = 3 if distributed.strategy == "deepspeed-zero3" else 2
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True,
                            "reduce_bucket_size": "auto"}
    if stage == 3:
        zero.update({"stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto",
                     "stage3_gather_16bit_weights_on_model_save": True})
    if distributed.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if distributed.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config: dict[str, Any] = {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
    }
    if distributed.offload_optimizer:
        config["optimizer"] = {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                           "weight_decay": "auto"}}
    return config


def write_launch_files(run: Run, recipe: Recipe, spec: LaunchSpec, precision: str) -> Path:
    """accelerate.yaml (and deepspeed.json) in the run's launch/ folder; returns the accelerate config's path. On
    several machines sharing the folder each writes its own, accelerate-node<R>.yaml (its machine_rank differs)."""
    folder = run.path / LAUNCH_DIR
    folder.mkdir(parents=True, exist_ok=True)
    distributed = recipe.training.distributed
    deepspeed_file = None
    if distributed.strategy.startswith("deepspeed"):
        deepspeed_file = (folder / "deepspeed.json").resolve()
        atomic_write_text(deepspeed_file, json.dumps(deepspeed_config(distributed), indent=2) + "\n")
    config_file = folder / ("accelerate.yaml" if spec.nnodes == 1 else f"accelerate-node{spec.node_rank}.yaml")
    atomic_write_text(config_file, yaml.safe_dump(accelerate_config(distributed, spec, precision, deepspeed_file),
                                                  sort_keys=False))
    return config_file


def rank_arguments(recipe_file: Path, overrides: list[str], run: Run) -> list[str]:
    """What each rank's `tunesmith train` gets: the same recipe and --set values, the run directory they share,
    --force (the launching process already checked the memory plan) and --launched (it also evaluates and writes
    the model card once the ranks finish)."""
    args = ["train", str(recipe_file.resolve())]
    for override in overrides:
        args += ["--set", override]
    return [*args, "--run-dir", str(run.path.resolve()), "--force", "--launched"]


def launch_command(config_file: Path, rank_args: list[str]) -> list[str]:
    """`accelerate launch --config_file FILE -m tunesmith <rank_args>`, run with this Python (so the ranks use the
    same environment as the command that launched them)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file.resolve()),
            "-m", "tunesmith", *rank_args]  # absolute, like the rank's paths: command.sh runs from any folder


def write_command(run: Run, command: list[str], config_file: Path) -> Path:
    """launch/command.sh (command-node<R>.sh beside accelerate-node<R>.yaml): the launch command as a script a user
    can run again (or read)."""
    path = config_file.with_name(config_file.stem.replace("accelerate", "command") + ".sh")
    atomic_write_text(path, "#!/usr/bin/env bash\n# written by tunesmith train --nproc\nset -euo pipefail\n"
                            f"exec {shlex.join(command)}\n")
    path.chmod(0o755)
    return path


def launched_failure(returncode: int, run: Run) -> TunesmithError:
    """What the user reads when the launched ranks did not all finish: torchrun stops the other ranks of a job
    when one exits (torch.distributed.elastic: the agent terminates the worker group, SIGTERM then SIGKILL)."""
    import signal

    from tunesmith.train.resume import resume_hint
    from tunesmith.train.survival import complete_checkpoints

    how = (f"was killed by {signal.Signals(-returncode).name}" if returncode < 0 and -returncode in
           {s.value for s in signal.Signals} else f"exited with code {returncode}")
    stopped = (f"The launched training {how}: a rank stopped and the launcher stopped the others (their errors are "
               "above)")
    if not complete_checkpoints(run.checkpoints_dir):  # nothing to continue from: resuming would only be refused
        return TunesmithError(f"{stopped}, before any checkpoint was saved.",
                              "Fix the first error above, then start the training again (the same command).")
    return TunesmithError(f"{stopped}. Run directory: {run.path}.",
                          f"Fix the first error above, then continue from the last complete checkpoint. "
                          f"{resume_hint(run)}")


RUN_DIR_WAIT_S = 300.0  # how long a rank waits for rank 0 to set up the shared run directory


def shared_run(recipe: Recipe, path: Path, main: bool | None = None) -> Run:
    """The run directory every rank trains in (`--run-dir`). Rank 0 (`main`; default: this process's RANK is 0)
    creates it when it has no recipe.yaml yet, or checks that an existing one holds this recipe (it then continues
    from its newest complete checkpoint); the others wait for it, so a launcher that starts every rank at once
    (torchrun, srun) needs no set-up step."""
    from tunesmith.runs import create_run_at, open_run
    from tunesmith.train.distributed import this_rank, wait_for_file
    from tunesmith.train.resume import check_resumable, refuse_finished

    path = path.expanduser().resolve()
    recipe_file = path / "recipe.yaml"
    if path.exists() and not path.is_dir():
        raise TunesmithError(f"--run-dir {path} is a file; it names the run's folder.",
                             "Name a new folder (it is made), or a run directory this recipe started.")
    if not (this_rank().is_main if main is None else main):
        wait_for_file(recipe_file, RUN_DIR_WAIT_S, "the run directory")
        run = open_run(path)
        refuse_finished(run)  # as rank 0 does: no rank loads a model for a run with nothing left to train
        return run
    if not recipe_file.is_file():
        if path.is_dir() and any(path.iterdir()):
            raise TunesmithError(f"--run-dir {path} exists, is not empty and is not a tunesmith run (no recipe.yaml).",
                                 "Name a new folder, or a run directory this recipe started.")
        return create_run_at(recipe, path)
    run = open_run(path)
    if run.checkpoints_dir.is_dir() and any(run.checkpoints_dir.iterdir()):
        check_resumable(run, recipe)
    return run


def check_same_world_size(run: Run, world_size: int) -> None:
    """A resumed run keeps its number of processes: its checkpoint's data position (batches consumed per process)
    and per-rank random states belong to that count. Raises RecipeError naming both counts and the launch that
    resumes it (train.resume.resume_hint)."""
    from tunesmith.train.resume import recorded_world_size, resume_hint

    recorded = recorded_world_size(run)
    if recorded != world_size:
        raise RecipeError(f"{run.path} trained with {recorded} process(es); resuming with {world_size} would replay "
                          "its data in another order (the checkpoint counts batches per process).",
                          resume_hint(run))


SCRIPT_KINDS = ("slurm", "torchrun")
# sbatch --time: minutes, minutes:seconds, hours:minutes:seconds, days-hours, days-hours:minutes,
# days-hours:minutes:seconds (sbatch(1), -t/--time)
SLURM_TIME = re.compile(r"\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}")


def check_slurm_time(text: str) -> None:
    """Refuse a --time sbatch would reject only once the script is submitted (RecipeError naming the formats)."""
    if not SLURM_TIME.fullmatch(text.strip()):
        raise RecipeError(f"--time {text!r} is not a time sbatch reads.",
                          "Write minutes (240), hours:minutes:seconds (04:00:00) or days-hours (1-12), as sbatch's "
                          "--time takes them.")


def train_arguments(recipe_file: Path, overrides: list[str]) -> str:
    """`tunesmith train RECIPE --set ...` as shell words (the recipe by absolute path)."""
    words = ["train", str(recipe_file.resolve())]
    for override in overrides:
        words += ["--set", override]
    return shlex.join(words)


def slurm_script(recipe: Recipe, recipe_file: Path, overrides: list[str], nodes: int, gpus_per_node: int,
                 run_dir: Path, partition: str | None = None, time_limit: str | None = None) -> str:
    """A batch script for `sbatch`: one task per node (srun), each running `tunesmith train --nproc`, which starts
    that node's ranks through accelerate. Rank 0's machine is the first of the job's nodes (scontrol); every node
    must see `run_dir` (a shared disk). `srun --kill-on-bad-exit=1` ends the whole job when one node's task fails,
    and torchrun ends a node's other ranks when one rank dies, so a lost rank never leaves the rest waiting."""
    extra = "".join(f"#SBATCH --{key}={value}\n" for key, value in (("partition", partition), ("time", time_limit))
                    if value)
    python = shlex.quote(sys.executable)
    return f"""#!/usr/bin/env bash
#SBATCH --job-name=tunesmith-{recipe.name}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={gpus_per_node}
#SBATCH --output=%x-%j.out
{extra}# Written by `tunesmith launch-script slurm`; submit as is: sbatch THIS_FILE
# Strategy: training.distributed = {recipe.training.distributed.strategy} ({nodes} nodes x {gpus_per_node} GPUs).
# SLURM sets: SLURM_JOB_ID, SLURM_JOB_NODELIST, SLURM_NODEID (per task). You may set before sbatch:
#   MAIN_PORT (default 29500), RUN_DIR (default below; a folder every node sees), TUNESMITH (the command).
set -euo pipefail
: "${{SLURM_JOB_ID:?submit this script with sbatch: SLURM sets SLURM_JOB_ID}}"
: "${{SLURM_JOB_NODELIST:?submit this script with sbatch: SLURM sets SLURM_JOB_NODELIST}}"
MAIN_ADDRESS="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
MAIN_PORT="${{MAIN_PORT:-29500}}"
DEFAULT_RUN_DIR={shlex.quote(str(run_dir))}
DEFAULT_PYTHON={python}
RUN_DIR="${{RUN_DIR:-$DEFAULT_RUN_DIR-$SLURM_JOB_ID}}"
TUNESMITH="${{TUNESMITH:-$DEFAULT_PYTHON -m tunesmith}}"
export MAIN_ADDRESS MAIN_PORT RUN_DIR TUNESMITH
echo "tunesmith: {nodes} nodes, rank 0 on $MAIN_ADDRESS:$MAIN_PORT, run directory $RUN_DIR"
# each task: $SLURM_NODEID is its own node's number (expanded inside the task, hence the single quotes)
srun --nodes={nodes} --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c \\
  'exec $TUNESMITH "$@" --node-rank "$SLURM_NODEID" --main-address "$MAIN_ADDRESS" --main-port "$MAIN_PORT" \\
     --run-dir "$RUN_DIR"' tunesmith-node \\
  {train_arguments(recipe_file, overrides)} --nproc {gpus_per_node} --nnodes {nodes}
"""


def torchrun_script(recipe: Recipe, recipe_file: Path, overrides: list[str], nproc_per_node: int,
                    run_dir: Path) -> str:
    """A per-node entry point for launchers that start one container per node and set the rendezvous in the
    environment (Kubeflow's PyTorchJob sets PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT; plain
    NNODES/NODE_RANK/MASTER_ADDR/MASTER_PORT win). It runs torchrun itself, each rank `tunesmith train --run-dir`:
    rank 0 sets up the shared run directory and writes the model card, the others wait for it. DDP only:
    FSDP and DeepSpeed need accelerate's launcher (the slurm script, or `tunesmith train --nproc` per node)."""
    if recipe.training.distributed.strategy not in ("none", "ddp"):
        raise RecipeError(f"The torchrun script runs DDP; training.distributed {recipe.training.distributed.strategy} "
                          "needs accelerate's launcher, which sets up FSDP/DeepSpeed in every rank.",
                          "Use `tunesmith launch-script slurm`, or run `tunesmith train RECIPE --nproc N --nnodes M "
                          "--node-rank R --main-address HOST --run-dir DIR` on each node.")
    python = shlex.quote(sys.executable)
    return f"""#!/usr/bin/env bash
# Written by `tunesmith launch-script torchrun`: run it on every node (one container per node).
# Reads: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT (or Kubeflow's PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR,
# PET_MASTER_PORT), RUN_DIR (a folder every node sees; default below), PYTHON (default: this environment's).
set -euo pipefail
NNODES="${{NNODES:-${{PET_NNODES:-1}}}}"
NODE_RANK="${{NODE_RANK:-${{PET_NODE_RANK:-0}}}}"
MASTER_ADDR="${{MASTER_ADDR:-${{PET_MASTER_ADDR:-127.0.0.1}}}}"
MASTER_PORT="${{MASTER_PORT:-${{PET_MASTER_PORT:-29500}}}}"
DEFAULT_RUN_DIR={shlex.quote(str(run_dir))}
DEFAULT_PYTHON={python}
RUN_DIR="${{RUN_DIR:-$DEFAULT_RUN_DIR}}"
PYTHON="${{PYTHON:-$DEFAULT_PYTHON}}"
if [ "$NNODES" -gt 1 ] && [ "$MASTER_ADDR" = 127.0.0.1 ]; then
  echo "tunesmith: NNODES=$NNODES needs MASTER_ADDR (or PET_MASTER_ADDR): the address of node 0" >&2; exit 2
fi
exec "$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --node-rank "$NODE_RANK" \\
  --nproc-per-node {nproc_per_node} --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \\
  -m tunesmith {train_arguments(recipe_file, overrides)} --run-dir "$RUN_DIR"
"""
