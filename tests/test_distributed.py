"""Several processes for one recipe (issue 21): DDP over gloo on this CPU, the launch configs accelerate and
DeepSpeed generate and check, the batch scripts, and the failures that must not pass silently.

The proof of DDP: `tunesmith train --nproc 2` at batch 4 per process trains what one process at batch 8 trains:
per-step loss within 1e-5 and final weights within 1e-6 (fp32, same rows per step, same order).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, make_tiny_project
from tunesmith.errors import RecipeError
from tunesmith.runs import Run

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


SHORT = ["--set", f"training.max_steps={STEPS}", "--set", "training.logging_steps=1", "--set", "training.save_steps=3",
         "--set", "training.lr=1e-2"]


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
    with pytest.raises(RecipeError, match="trained with 1 process"):
        check_same_world_size(Run(one), 2)


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
    print(f"rank {os.environ['RANK']}: group of", Trainer(args).accelerator.num_processes)
except TunesmithError as exc:
    print(f"rank {os.environ['RANK']}: refused: {exc}")
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
                           "0" if False else str(free_port()), str(script), str(tmp_path), "cpu" if cpu else "none"],
                          env=env, capture_output=True, text=True, timeout=300)
    lines = sorted(line for line in done.stdout.splitlines() if line.startswith("rank "))
    assert len(lines) == 2, done.stdout + done.stderr[-3000:]
    if cpu:
        assert all(line.endswith("group of 2") for line in lines), lines
    else:
        assert all("refused" in line and "WORLD_SIZE=2" in line for line in lines), lines


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
