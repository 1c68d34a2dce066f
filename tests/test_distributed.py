"""Several processes for one recipe (issue 21): DDP over gloo on this CPU, the launch configs accelerate and
DeepSpeed generate and check, the batch scripts, and the failures that must not pass silently.

The proof of DDP: `tunesmith train --nproc 2` at batch 4 per process trains what one process at batch 8 trains:
per-step loss within 1e-5 and final weights within 1e-6 (fp32, same rows per step, same order).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, make_tiny_project
from tunesmith.config import load_recipe
from tunesmith.errors import RecipeError, TunesmithError
from tunesmith.runs import Run
from tunesmith.train.resume import recorded_world_size, resume_hint

STEPS = 6


def tunesmith(*args: str, cwd: Path, timeout: int = 600, **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tunesmith", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, **popen)


def run_dir_from(output: str, cwd: Path) -> Path:
    line = next(line for line in output.splitlines() if line.startswith("Run directory:"))
    return cwd / line.split(":", 1)[1].split("(")[0].strip()


def losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def adapter_weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def project(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("distributed")
    recipe = make_tiny_project(root, tiny_model_dir, train_rows=48)
    return recipe


# fp32 throughout: on a CPU with fast bf16 a single process would multiply the frozen base in bf16 (one process only)
SHORT = ["--set", f"training.max_steps={STEPS}", "--set", "training.logging_steps=1", "--set", "training.save_steps=3",
         "--set", "training.lr=1e-2", "--set", "training.precision=fp32"]


@pytest.fixture(scope="module")
def one_and_two(project: Path) -> tuple[Path, Path, str, Path]:
    """The same global batch three ways: one process at batch 8; one process at batch 4 with 2 accumulation steps;
    two processes at batch 4 each."""
    root = project.parent
    runs = {}
    for name, extra in (("one", ["--set", "training.batch_size=8"]),
                        ("accumulated", ["--set", "training.batch_size=4", "--set", "training.grad_accum=2"]),
                        ("two", ["--set", "training.batch_size=4", "--nproc", "2"])):
        done = tunesmith("train", str(project), *SHORT, *extra, "--runs-dir", f"runs-{name}", cwd=root)
        assert done.returncode == 0, done.stderr[-5000:]
        runs[name] = (run_dir_from(done.stderr, root), done.stderr)
    return runs["one"][0], runs["two"][0], runs["two"][1], runs["accumulated"][0]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_processes_train_what_one_process_trains(one_and_two) -> None:
    """Two ranks at 4 rows each are one process accumulating 2 x 4 rows, to the last bit; against one batch of 8
    the loss agrees within 1e-5 at every step and the weights differ only as much as accumulation itself makes
    them differ (float32 sums over 8 rows at once vs two halves, which Adam's normalisation magnifies where a
    gradient is nearly zero)."""
    one, two, _, accumulated = one_and_two
    first, second, third = losses(one), losses(two), losses(accumulated)
    assert len(first) == len(second) == len(third) == STEPS  # logged every step
    assert max(abs(a - b) for a, b in zip(first, second, strict=True)) <= 1e-5, (first, second)
    assert max(abs(a - b) for a, b in zip(third, second, strict=True)) <= 1e-5, (third, second)
    a, b, c = adapter_weights(one), adapter_weights(two), adapter_weights(accumulated)
    assert max_difference(b, c) <= 1e-6
    assert max_difference(a, b) <= max_difference(a, c) + 1e-6
    assert first[-1] < first[0]  # it learnt something: the comparison is not between two untrained adapters


def test_two_process_run_directory_is_written_once_like_a_one_process_run(one_and_two) -> None:
    one, two, stderr, _ = one_and_two
    assert "launching 2 processes (ddp)" in stderr
    config = yaml.safe_load((two / "launch" / "accelerate.yaml").read_text())
    assert config["num_processes"] == 2 and config["distributed_type"] == "MULTI_GPU"
    assert (two / "launch" / "command.sh").is_file()
    train = json.loads((two / "train.json").read_text())
    assert train["processes"] == 2 and train["steps"] == STEPS
    alone = json.loads((one / "train.json").read_text())["throughput"]  # both ranks' tokens: the same rows as one
    assert train["throughput"]["real_tokens"] == alone["real_tokens"] > 0
    assert train["throughput"]["loss_tokens"] == alone["loss_tokens"] and train["throughput"]["processes"] == 2
    said = " ".join(stderr.split())
    assert "2 processes joined one training group (gloo)" in said and "of the 2 processes' summed" in said
    # one line per step (rank 0 alone logs), the same files as the one-process run, a model card at the end
    def steps(run: Path) -> list[int]:
        return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert steps(two) == steps(one)
    same = {"adapter", "train.json", "data.json", "run.json", "metrics.jsonl", "README.md", "plots"}
    assert same <= {p.name for p in one.iterdir()} and same <= {p.name for p in two.iterdir()}
    checkpoints = sorted(p.name for p in (two / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-3", "checkpoint-6"]
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in (two / "checkpoints" / "checkpoint-6").iterdir()}
    recipe = yaml.safe_load((two / "recipe.yaml").read_text())
    assert recipe["training"]["distributed"]["strategy"] == "ddp"


def test_resume_keeps_the_number_of_processes(one_and_two, project: Path) -> None:
    from tunesmith.train.launch import check_same_world_size

    one, two, _, _ = one_and_two
    check_same_world_size(Run(two), 2)
    with pytest.raises(RecipeError, match="trained with 2 process"):
        check_same_world_size(Run(two), 4)
    with pytest.raises(RecipeError, match="trained with 1 process") as alone:
        check_same_world_size(Run(one), 2)
    assert alone.value.hint == f"Resume with: tunesmith train {Run(one).recipe_file} --resume {Run(one).path}"


SILENT_SOLO = """
import os, sys
from transformers import TrainingArguments
from tunesmith.train.distributed import check_process_group
from tunesmith.errors import TunesmithError

class Trainer:  # the accelerator a Trainer builds from these arguments, nothing else
    def __init__(self, args):
        from accelerate import Accelerator
        self.accelerator = Accelerator()

args = TrainingArguments(output_dir=sys.argv[1], use_cpu=sys.argv[2] == "cpu", report_to="none")
args.device  # transformers sets up the process group (or not) here
try:
    check_process_group(Trainer(args))
    said = f"rank {os.environ['RANK']}: group of {Trainer(args).accelerator.num_processes}"
except TunesmithError as exc:
    said = f"rank {os.environ['RANK']}: refused: {exc}"
with open(os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.txt"), "w") as out:  # one file each: no interleaving
    out.write(said)
"""


@pytest.mark.parametrize("cpu", [False, True])
def test_ranks_that_did_not_form_one_group_are_refused(tmp_path: Path, cpu: bool) -> None:
    """torchrun starts 2 processes; without use_cpu on a machine with no GPU, accelerate leaves each alone
    (distributed type NO): the check refuses. With use_cpu they join over gloo and it passes."""
    script = tmp_path / "solo.py"
    script.write_text(SILENT_SOLO)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(free_port()), str(script), str(tmp_path), "cpu" if cpu else "none"],
                          env=env, capture_output=True, text=True, timeout=300)
    said = sorted(tmp_path.glob("rank*.txt"))
    assert len(said) == 2, done.stdout + done.stderr[-3000:]
    lines = [path.read_text() for path in said]
    if cpu:
        assert all(line.endswith("group of 2") for line in lines), lines
    else:
        assert all("refused" in line and "WORLD_SIZE=2" in line for line in lines), lines


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


STRATEGIES = ["ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"]


def launch_files(project: Path, tmp_path: Path, strategy: str, spec=None, **knobs) -> tuple[Path, object]:
    """The launch folder tunesmith writes for `strategy` (as `train --nproc` does), in a fresh run directory."""
    from tunesmith.runs import create_run_at
    from tunesmith.train.launch import LaunchSpec, write_launch_files

    distributed = {"strategy": strategy, **knobs}
    recipe = load_recipe(project, [f"training.distributed={json.dumps(distributed)}"])
    run = create_run_at(recipe, tmp_path / f"run-{strategy}")
    return write_launch_files(run, recipe, spec or LaunchSpec(nproc=2), "bf16"), recipe


def accelerate_sees(config_file: Path, rank_args: list[str]):
    """The launch command parsed and validated by accelerate's own `accelerate launch` code (commands/launch.py:
    the parser, then `_validate_launch_command`, which merges the config file), and the launcher it would pick
    with the environment it would give the ranks (utils/launch.py)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    from tunesmith.train.launch import launch_command

    command = launch_command(config_file, rank_args)
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(command[3:]))
    if args.use_deepspeed:  # as launch_command does before deepspeed_launcher
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        cmd, env = prepare_deepspeed_cmd_env(args)
        return "deepspeed", args, cmd, env
    assert args.multi_gpu or args.use_fsdp
    return "torchrun", args, None, prepare_multi_gpu_env(args)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_generated_launch_configs_pass_accelerates_own_validation(project: Path, tmp_path: Path,
                                                                   strategy: str) -> None:
    if strategy.startswith("deepspeed"):
        pytest.importorskip("deepspeed", reason="deepspeed is the `distributed` extra")
    config_file, _ = launch_files(project, tmp_path, strategy)
    launcher, args, cmd, env = accelerate_sees(config_file, ["train", str(project), "--run-dir", "x", "--launched"])
    assert args.num_processes == 2 and args.num_machines == 1
    assert args.training_script == "tunesmith" and args.module  # -m tunesmith, then train's own arguments
    assert args.training_script_args[:2] == ["train", str(project)]
    if strategy == "ddp":
        assert launcher == "torchrun" and args.multi_gpu and not args.use_fsdp
    elif strategy == "fsdp":
        assert launcher == "torchrun" and env["ACCELERATE_USE_FSDP"] == "true"
        assert env["FSDP_VERSION"] == "2" and env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
        assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
        # the plugin accelerate builds from that environment in each rank accepts it
        from accelerate.utils import FullyShardedDataParallelPlugin

        saved = dict(os.environ)
        try:
            os.environ.update(env)
            plugin = FullyShardedDataParallelPlugin()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        assert plugin.fsdp_version == 2 and plugin.state_dict_type.name == "FULL_STATE_DICT"
    else:
        assert launcher == "deepspeed" and env["ACCELERATE_USE_DEEPSPEED"] == "true"
        assert env["ACCELERATE_DEEPSPEED_CONFIG_FILE"] == str(config_file.parent / "deepspeed.json")
        assert cmd is None  # no pdsh/ssh command: accelerate starts the ranks through torchrun (standard launcher)
        assert args.deepspeed_multinode_launcher == "standard"


@pytest.mark.parametrize("strategy", ["deepspeed-zero2", "deepspeed-zero3"])
@pytest.mark.parametrize("offload", [False, True])
def test_deepspeed_json_passes_deepspeeds_own_parser(project: Path, tmp_path: Path, strategy: str,
                                                     offload: bool) -> None:
    """transformers fills the "auto" values from the recipe's TrainingArguments (as the Trainer does), then
    DeepSpeed's DeepSpeedConfig parses and sanity-checks the result, and accelerate's DeepSpeedPlugin accepts it."""
    pytest.importorskip("deepspeed", reason="deepspeed is the `distributed` extra")
    from accelerate.utils import DeepSpeedPlugin
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    knobs = {"offload_optimizer": True, "offload_params": strategy == "deepspeed-zero3"} if offload else {}
    config_file, recipe = launch_files(project, tmp_path, strategy, **knobs)
    raw = json.loads((config_file.parent / "deepspeed.json").read_text())
    hf = HfTrainerDeepSpeedConfig(json.loads(json.dumps(raw)))
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=recipe.training.batch_size,
                             gradient_accumulation_steps=3, learning_rate=1e-4, report_to="none", use_cpu=True)
    hf.trainer_config_process(args)
    hf.fill_only("zero_optimization.reduce_bucket_size", 64 * 64)
    for key in ("stage3_prefetch_bucket_size", "stage3_param_persistence_threshold"):
        hf.fill_only(f"zero_optimization.{key}", 64 * 64)
    parsed = DeepSpeedConfig(hf.config)
    stage = 3 if strategy.endswith("3") else 2
    assert parsed.zero_optimization_stage == stage
    assert parsed.train_micro_batch_size_per_gpu == recipe.training.batch_size
    assert parsed.gradient_accumulation_steps == 3
    assert parsed.zero_config.offload_optimizer is not None if offload else parsed.zero_config.offload_optimizer is None
    if stage == 3:
        assert parsed.zero_config.gather_16bit_weights_on_model_save
    DeepSpeedPlugin(hf_ds_config=raw)  # accelerate's own structural checks, with the "auto" values as written


def test_multi_node_launch_names_rank_zeros_address(project: Path, tmp_path: Path) -> None:
    from tunesmith.train.launch import LaunchSpec

    spec = LaunchSpec(nproc=4, nnodes=2, node_rank=1, main_address="10.0.0.7", main_port=29511)
    config_file, _ = launch_files(project, tmp_path, "ddp", spec)
    _, args, _, _ = accelerate_sees(config_file, ["train", str(project), "--run-dir", "x", "--launched"])
    assert args.num_processes == 8 and args.num_machines == 2 and int(args.machine_rank) == 1
    assert args.nproc_per_node == "4" and args.nnodes == "2" and args.node_rank == 1
    assert args.rdzv_endpoint == "10.0.0.7:29511" and args.rdzv_backend == "static"  # torchrun finds rank 0 there


def test_print_launch_sets_up_the_run_and_prints_the_command(project: Path) -> None:
    root = project.parent
    done = tunesmith("train", str(project), "--nproc", "2", "--print-launch", "--runs-dir", "runs-printed", cwd=root,
                     timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    command = done.stdout.strip().splitlines()[-1]
    run = run_dir_from(done.stderr, root)
    assert f"--run-dir {run.resolve()}" in command  # both absolute: launch/command.sh runs from any folder
    assert f"accelerate.commands.launch --config_file {(run / 'launch' / 'accelerate.yaml').resolve()}" in command
    assert (run / "recipe.yaml").is_file() and not (run / "adapter").exists()
    assert (run / "launch" / "command.sh").read_text().rstrip().endswith(command.split(" ", 0)[0][-40:])


def test_launch_mistakes_are_refused_before_anything_starts(project: Path, tmp_path: Path) -> None:
    """A port out of range, a script for what train would refuse once the job is scheduled, a --time sbatch would
    reject, and resuming a multi-process run as one process: exit 2 naming the fix, nothing launched."""
    port = tunesmith("train", str(project), "--nproc", "2", "--main-port", "99999", "--runs-dir", "runs-port",
                     cwd=tmp_path, timeout=120)
    assert port.returncode == 2 and "--main-port" in port.stderr and not (tmp_path / "runs-port").exists()
    for sets, said in ((["training.time_budget=10m"], "time_budget cannot be used with several processes"),
                       (['adapter={"kind": "hft"}'], "hft cannot train with several processes")):
        script = tunesmith("launch-script", "slurm", str(project), *(a for s in sets for a in ("--set", s)),
                           "--nodes", "2", "--gpus-per-node", "8", cwd=tmp_path, timeout=120)
        assert script.returncode == 2 and said in " ".join(script.stderr.split()), script.stderr[-2000:]
    slurm_time = tunesmith("launch-script", "slurm", str(project), "--nodes", "2", "--time", "4h", cwd=tmp_path,
                           timeout=120)
    assert slurm_time.returncode == 2 and "--time '4h' is not a time sbatch reads" in slurm_time.stderr


def test_a_multi_process_run_resumed_alone_is_told_its_own_process_count(one_and_two) -> None:
    _, two, _, _ = one_and_two
    alone = tunesmith("train", str(two / "recipe.yaml"), "--resume", str(two), cwd=two.parent, timeout=120)
    assert alone.returncode == 2
    assert f"--nproc 2 --resume {two.resolve()}" in " ".join(alone.stderr.split()), alone.stderr[-2000:]


@pytest.mark.parametrize(("sets", "message"), [
    (["training.distributed=fsdp"], "runs on CUDA GPUs only"),
    (["training.distributed=deepspeed-zero3"], "runs on CUDA GPUs only"),
    (['adapter={"kind": "hft"}'], "hft cannot train with several processes"),
    (["training.time_budget=5m"], "time_budget cannot be used with several processes"),
])
def test_launches_the_stack_cannot_run_are_refused_before_anything_starts(project: Path, sets: list[str],
                                                                          message: str) -> None:
    args = [a for s in sets for a in ("--set", s)]
    done = tunesmith("train", str(project), *args, "--nproc", "2", "--runs-dir", "runs-refused", cwd=project.parent,
                     timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in " ".join(done.stderr.split())
    assert not (project.parent / "runs-refused").exists()


def test_a_multi_process_recipe_started_alone_or_without_a_shared_directory_is_refused(project: Path) -> None:
    alone = tunesmith("train", str(project), "--set", "training.distributed=ddp", cwd=project.parent, timeout=300)
    assert alone.returncode == 2 and "--nproc N" in alone.stderr
    # fsdp on this CPU: the refusal --nproc would meet next is said at once, not after a first "launch them" one
    sharded = tunesmith("train", str(project), "--set", "training.distributed=fsdp", cwd=project.parent, timeout=300)
    assert sharded.returncode == 2 and "runs on CUDA GPUs only" in " ".join(sharded.stderr.split())
    env_rank = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    saved = dict(os.environ)
    try:
        os.environ.update(env_rank)
        ranked = tunesmith("train", str(project), cwd=project.parent, timeout=300)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert ranked.returncode == 2 and "--run-dir" in ranked.stderr


def script_for(kind: str, project: Path, tmp_path: Path, *extra: str) -> Path:
    target = tmp_path / f"{kind}.sh"
    done = tunesmith("launch-script", kind, str(project), *SHORT, *extra, "-o", str(target), cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return target


def variables_left_unnamed(text: str) -> set[str]:
    """Shell variables the script reads but neither assigns nor names in its header comment."""
    import re

    used = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", text))
    assigned = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", text, flags=re.M))
    header = " ".join(line for line in text.splitlines() if line.startswith("#"))
    return {name for name in used - assigned if name not in header}


@pytest.mark.parametrize(("kind", "extra"), [("slurm", ["--nodes", "2", "--gpus-per-node", "8"]),
                                             ("torchrun", ["--gpus-per-node", "4"])])
def test_launch_scripts_parse_and_name_every_variable_they_need(project: Path, tmp_path: Path, kind: str,
                                                                extra: list[str]) -> None:
    script = script_for(kind, project, tmp_path, *extra)
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True).returncode == 0
    assert variables_left_unnamed(text) == set()
    assert "training.distributed=ddp" in text
    if kind == "slurm":
        assert "#SBATCH --nodes=2" in text and "#SBATCH --gpus-per-node=8" in text and "--kill-on-bad-exit=1" in text
        assert "--nproc 8 --nnodes 2" in text
        bare = {"PATH": os.environ["PATH"]}
        outside = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=bare)
        assert outside.returncode != 0 and "submit this script with sbatch" in outside.stderr
    else:
        assert "--nproc-per-node 4" in text


@pytest.mark.parametrize("kind", ["slurm", "torchrun"])
def test_a_runs_dir_with_shell_syntax_is_a_path_in_the_launch_script_not_a_command(project: Path, tmp_path: Path,
                                                                                    kind: str) -> None:
    """The default run directory sat quoted inside "${RUN_DIR:-'...'}", where bash keeps the single quotes as text
    and still runs $(...): a colleague's recipe with `runs_dir: runs/$(...)` ran its command on sbatch."""
    weird = "runs/$(touch INJECTED) and spaces"
    script = script_for(kind, project, tmp_path, "--set", f"runs_dir={weird}")
    lines = [line for line in script.read_text().splitlines() if line.startswith(("DEFAULT_", "RUN_DIR="))]
    shown = subprocess.run(["bash", "-c", "\n".join([*lines, 'printf %s "$RUN_DIR"'])], capture_output=True,
                           text=True, cwd=tmp_path, env={"PATH": os.environ["PATH"], "SLURM_JOB_ID": "7"})
    assert shown.returncode == 0, shown.stderr
    assert weird in shown.stdout and "'" not in shown.stdout
    assert not (tmp_path / "INJECTED").exists()


def test_the_torchrun_script_refuses_sharded_strategies(project: Path, tmp_path: Path) -> None:
    done = tunesmith("launch-script", "torchrun", str(project), "--set", "training.distributed=fsdp", cwd=tmp_path,
                     timeout=120)
    assert done.returncode == 2 and "accelerate's launcher" in " ".join(done.stderr.split())


SRUN_SHIM = """#!/usr/bin/env bash
# stands in for SLURM's srun on one node: drops srun's own options, runs the task with SLURM_NODEID=0
while [[ "$1" == --* ]]; do shift; done
SLURM_NODEID=0 exec "$@"
"""


def test_the_slurm_script_trains_as_submitted(project: Path, tmp_path: Path) -> None:
    """The generated script, run as sbatch would run it on one node (srun and scontrol stood in for by shims), trains
    with 2 processes into the shared run directory and finishes it (adapter, model card)."""
    script = script_for("slurm", project, tmp_path, "--nodes", "1", "--gpus-per-node", "2")
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "srun").write_text(SRUN_SHIM)
    (shims / "scontrol").write_text("#!/usr/bin/env bash\necho localhost\n")
    for shim in shims.iterdir():
        shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "node1", "RUN_DIR": str(tmp_path / "shared-run"),
           "MAIN_PORT": str(free_port())}
    done = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    run = tmp_path / "shared-run"
    assert (run / "adapter" / "adapter_model.safetensors").is_file() and (run / "README.md").is_file()
    assert json.loads((run / "train.json").read_text())["processes"] == 2


def test_the_torchrun_script_trains_with_ranks_started_by_torchrun(project: Path, tmp_path: Path) -> None:
    """torchrun starts both ranks at once, each `tunesmith train --run-dir`: rank 0 sets the directory up, rank 1
    waits for it, and rank 0 alone writes (one metrics line per step, the model card)."""
    script = script_for("torchrun", project, tmp_path, "--gpus-per-node", "2")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "RUN_DIR": str(tmp_path / "k8s-run"),
           "MASTER_PORT": str(free_port())}
    done = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    run = tmp_path / "k8s-run"
    assert (run / "adapter" / "adapter_model.safetensors").is_file() and (run / "README.md").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, STEPS + 1))
    assert json.loads((run / "train.json").read_text())["processes"] == 2
    # no launch/accelerate.yaml: the checkpoints' per-rank random states say how many processes to resume with
    assert recorded_world_size(Run(run)) == 2 and "Start the launch that trained it again" in resume_hint(Run(run))
    again = subprocess.run(["bash", str(script)], cwd=tmp_path, env={**env, "MASTER_PORT": str(free_port())},
                           capture_output=True, text=True, timeout=600)  # a job restarted on the finished run
    assert again.returncode != 0
    assert again.stderr.count("finished training; there is nothing to resume") == 2, again.stderr[-4000:]  # each rank
    assert "forcefully exiting" not in again.stderr  # no rank was still loading a model when told to stop


def descendants_with_rank(pid: int, rank: int) -> list[int]:
    import psutil

    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "tunesmith" in " ".join(child.cmdline()):
                found.append(child.pid)
        except psutil.Error:
            continue
    return found


def test_killing_one_rank_stops_the_others_with_a_message(project: Path, tmp_path: Path) -> None:
    """SIGKILL rank 1 mid-training: the launch ends within a bounded time (torchrun stops rank 0), exit 2 with a
    message naming the run and the resume command; no process is left behind."""
    import psutil

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "tunesmith", "train", str(project), "--set", "training.max_steps=2000",
         "--set", "training.logging_steps=1", "--set", "training.batch_size=4", "--set", "training.save_steps=1000",
         "--nproc", "2", "--runs-dir", str(tmp_path / "runs")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # wait until training runs: steps are being logged
            logged = list((tmp_path / "runs").glob("*/metrics.jsonl"))
            if logged and logged[0].read_text().count("\n") >= 3:
                break
            assert launcher.poll() is None, launcher.communicate()[1][-3000:]
            time.sleep(0.5)
        victims = descendants_with_rank(launcher.pid, 1)
        assert victims, "rank 1 not found"
        everyone = psutil.Process(launcher.pid).children(recursive=True)
        killed_at = time.monotonic()
        os.kill(victims[0], signal.SIGKILL)
        _, stderr = launcher.communicate(timeout=120)
        stopped_after = time.monotonic() - killed_at
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 2, stderr[-3000:]
    assert stopped_after < 60, stopped_after
    print(f"the launch ended {stopped_after:.1f} s after rank 1 was killed:\n{stderr[-1500:]}")
    message = " ".join(stderr.split())
    assert "a rank stopped and the launcher stopped the others" in message
    assert "before any checkpoint was saved" in message and "--resume" not in message  # save_steps 1000: none yet
    assert "Internal error" not in message and "MarkupError" not in message
    assert "rank 0 cannot go on: another process of the training group stopped" in message
    assert not [p for p in everyone if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_a_two_process_run_killed_mid_way_resumes_to_the_same_weights(project: Path, tmp_path: Path) -> None:
    """Rank 1 is SIGKILLed at step 5 (checkpoints every 2 steps); `--resume` with the same --nproc continues from
    checkpoint-4 and ends where the uninterrupted two-process run ends (weights within 1e-6, same losses after)."""
    settings = ["--set", "training.max_steps=8", "--set", "training.save_steps=2", "--set", "training.logging_steps=1",
                "--set", "training.batch_size=4", "--set", "training.lr=1e-2"]
    whole = tunesmith("train", str(project), *settings, "--nproc", "2", "--runs-dir", "whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'tests' / 'kill_rank'}:{REPO}", "OMP_NUM_THREADS": "1",
           "KILL_RANK": "1", "KILL_AT_STEP": "5"}
    killed = subprocess.run([sys.executable, "-m", "tunesmith", "train", str(project), *settings, "--nproc", "2",
                             "--runs-dir", "killed"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode == 2 and "--resume" in killed.stderr, killed.stderr[-3000:]
    run = next((tmp_path / "killed").iterdir())
    assert not (run / "adapter").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("checkpoint-"))[-1] == \
        "checkpoint-4"
    resumed = tunesmith("train", str(run / "recipe.yaml"), "--nproc", "2", "--resume", str(run), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr and "from step 4" in resumed.stderr
    straight = run_dir_from(whole.stderr, tmp_path)
    assert max_difference(adapter_weights(straight), adapter_weights(run)) <= 1e-6
    assert losses(run)[-4:] == losses(straight)[-4:]


def test_qlora_shards_only_in_4_bit_stored_like_the_other_weights(project: Path) -> None:
    """On GPUs (checked here by name: nothing loads), 8-bit QLoRA with fsdp/zero3 is refused; 4-bit is loaded with
    its packed weights stored in fp32, the dtype of the model's other weights, so FSDP can flatten them together."""
    pytest.importorskip("bitsandbytes")
    from tunesmith.train.adapters import model_load_kwargs
    from tunesmith.train.launch import LaunchSpec, check_launchable

    for strategy in ("fsdp", "deepspeed-zero3"):
        eight = load_recipe(project, ['adapter={"kind": "qlora", "bits": 8}', f"training.distributed={strategy}"])
        with pytest.raises(RecipeError, match=r"adapter\.bits: 8 cannot be sharded"):
            check_launchable(eight, LaunchSpec(nproc=2), "cuda")
        four = load_recipe(project, ['adapter={"kind": "qlora"}', f"training.distributed={strategy}"])
        check_launchable(four, LaunchSpec(nproc=2), "cuda")
    zero2 = load_recipe(project, ['adapter={"kind": "qlora", "bits": 8}', "training.distributed=deepspeed-zero2"])
    check_launchable(zero2, LaunchSpec(nproc=2), "cuda")  # ZeRO-2 leaves the weights whole: 8-bit is fine
    import torch

    try:
        sharded = model_load_kwargs(load_recipe(project, ['adapter={"kind": "qlora"}']).adapter, sharded=True)
    except TunesmithError:
        pytest.skip("bitsandbytes has no backend on this machine")
    assert sharded["quantization_config"].bnb_4bit_quant_storage == torch.float32
    alone = model_load_kwargs(load_recipe(project, ['adapter={"kind": "qlora"}']).adapter)
    assert alone["quantization_config"].bnb_4bit_quant_storage == torch.uint8


SHARDED_SAVE = """
import os, sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunesmith.config import DistributedSection
from tunesmith.runs import Run
from tunesmith.train.adapters import save_trained
from tunesmith.train.distributed import sharded_state_dict

model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
dist.init_process_group("gloo")
torch.manual_seed(0)
model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(r=4, target_modules="all-linear",
                                                                                  init_lora_weights=False))
whole = {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}
mesh = init_device_mesh("cpu", (1,))
for layer in model.base_model.model.model.layers:
    fully_shard(layer, mesh=mesh)
fully_shard(model, mesh=mesh)  # as accelerate's FSDP2 wraps it: the weights become DTensors, even for one process
# accelerate's get_state_dict for FSDP2 (accelerator.py): torch's full state dict, offloaded to the CPU
gather = lambda m: get_model_state_dict(m, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
trainer = SimpleNamespace(model=model, accelerator=SimpleNamespace(get_state_dict=gather))
state = sharded_state_dict(trainer, DistributedSection(strategy="fsdp"))
assert state is not None, "a launched fsdp run of one process must gather its shards"
adapter = save_trained(model, AutoTokenizer.from_pretrained(model_dir), Run(out), SimpleNamespace(kind="lora"), state)
saved = load_file(str(adapter / "adapter_model.safetensors"))
assert len(saved) == len(whole)
for name, tensor in saved.items():
    original = next(v for k, v in whole.items() if k.replace(".default", "") == name)
    assert torch.equal(tensor, original), name
print("saved", len(saved))
"""


def test_a_launched_single_process_fsdp_run_saves_its_gathered_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`--nproc 1` with fsdp: FSDP2 turns the weights into DTensors even for one process, and safetensors fails on
    them (seen on an H200: "Attempted to access the data pointer on an invalid python storage"). The gathered state
    dict is saved instead: the one-process adapter format, tensor for tensor. FSDP2 over gloo, on this CPU."""
    script = tmp_path / "sharded_save.py"
    script.write_text(SHARDED_SAVE, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "29517", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
    done = subprocess.run([sys.executable, str(script), str(tiny_model_dir), str(tmp_path / "run")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "saved" in done.stdout


def test_deepspeed_gathers_through_its_engine_and_only_an_adapters_weights(monkeypatch) -> None:
    """ZeRO-3's gather is a method of DeepSpeed's engine (the module has none); for an adapter only the trained
    weights are gathered. The engine is a stand-in recording what it was asked (DeepSpeed needs CUDA to run)."""
    from types import SimpleNamespace

    from tunesmith.config import DistributedSection
    from tunesmith.train.distributed import sharded_state_dict

    asked = []
    engine = SimpleNamespace(_zero3_consolidated_16bit_state_dict=lambda **kw: asked.append(kw) or {"w": 1})
    accelerator = SimpleNamespace(get_state_dict=lambda model: asked.append(model) or {"all": 1})
    zero3 = DistributedSection(strategy="deepspeed-zero3")
    adapter_model, whole_model = SimpleNamespace(peft_config={}), SimpleNamespace()
    monkeypatch.setenv("WORLD_SIZE", "1")  # launched, even as the only process
    trainer = SimpleNamespace(model=adapter_model, deepspeed=engine, accelerator=accelerator)
    assert sharded_state_dict(trainer, zero3) == {"w": 1} and asked == [{"exclude_frozen_parameters": True}]
    trainer.model = whole_model
    assert sharded_state_dict(trainer, zero3) == {"all": 1} and asked[-1] is engine
    assert sharded_state_dict(trainer, DistributedSection(strategy="deepspeed-zero2")) is None  # whole weights
    monkeypatch.delenv("WORLD_SIZE")
    assert sharded_state_dict(trainer, zero3) is None  # not launched: nothing to gather
