"""The command line as users meet it: a mistyped command line is a usage error (exit 2, usage, did-you-mean),
`data inspect` fails like a linter on problem rows, `export --out` copies the exports, and no command
prints bitsandbytes' CPU-kernel notice. Each runs the installed entry point, as a user would."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).with_name("tunesmith")  # the console script, so usage reads "tunesmith ..."
ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}


def tunesmith(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    command = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "tunesmith"]
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=300)


def assert_not_internal(result: subprocess.CompletedProcess) -> None:
    assert "Internal error" not in result.stderr and "Traceback" not in result.stderr, result.stderr


USAGE_ERRORS = [
    (["train", "--bogus", "r.yaml"], "train [OPTIONS]", "No such option: --bogus"),
    (["export", "runs/x", "--formt", "merged"], "export [OPTIONS]", "Did you mean --format"),
    (["export", "runs/x", "--quant"], "export [OPTIONS]", "Option '--quant' requires an argument"),
    (["trian", "r.yaml"], "tunesmith [OPTIONS] COMMAND", "No such command 'trian'. Did you mean 'train'?"),
    (["data", "inspec", "d.jsonl"], "data [OPTIONS] COMMAND", "Did you mean 'inspect'?"),
    (["train"], "train [OPTIONS]", "Missing argument"),
    (["data", "inspect", "d.jsonl", "--examples", "many"], "inspect [OPTIONS]", "Invalid value for '--examples'"),
]


@pytest.mark.parametrize(("args", "usage", "message"), USAGE_ERRORS, ids=lambda v: " ".join(v) if isinstance(v, list)
                         else None)
def test_a_bad_command_line_is_a_usage_error_not_an_internal_one(args, usage, message, tmp_path):
    result = tunesmith(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Usage: " in result.stderr and usage in result.stderr
    assert "--help' for help" in result.stderr
    assert message in result.stderr
    assert_not_internal(result)


def test_an_unknown_option_without_a_close_match_names_it_and_suggests_nothing_odd(tmp_path):
    result = tunesmith("export", str(tmp_path), "--bogus", cwd=tmp_path)
    assert result.returncode == 2
    assert "No such option: --bogus" in result.stderr and "Possible options" not in result.stderr
    assert_not_internal(result)


def test_no_command_line_error_prints_the_bitsandbytes_kernel_notice(tmp_path):
    result = tunesmith("train", "nonexistent.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "Recipe file not found" in result.stderr
    assert "gemm_4bit" not in result.stdout + result.stderr


def test_the_notice_filter_drops_that_line_only():
    """The subprocess test above passes trivially on a CPU without AVX512-BF16 (bitsandbytes stays quiet
    there); this pins the filter itself."""
    from tunesmith.cli import _hide_library_notices

    loggers = [logging.getLogger(name) for name in ("bitsandbytes.backends.cpu.ops", "DeepSpeed")]
    before = [list(logger.filters) for logger in loggers]
    try:
        _hide_library_notices()

        def record(logger: logging.Logger, message: str) -> logging.LogRecord:
            return logger.makeRecord(logger.name, logging.WARNING, __file__, 1, message, ("x",), None)

        bitsandbytes, deepspeed = loggers
        assert not bitsandbytes.filter(record(bitsandbytes, "Failed to load CPU gemm_4bit_forward from kernels-"
                                                            "community: %s."))
        assert not deepspeed.filter(record(deepspeed, "Setting accelerator to CPU. If you have GPU or other "
                                                      "accelerator, we were unable to detect it."))
        assert bitsandbytes.filter(record(bitsandbytes, "Something else went wrong: %s"))
        assert deepspeed.filter(record(deepspeed, "Setting ds_accelerator to cpu (auto detect)"))
    finally:
        for logger, filters in zip(loggers, before, strict=True):
            logger.filters[:] = filters


def test_the_gradient_checkpointing_deprecation_is_hidden_and_other_future_warnings_are_not():
    import warnings

    from tunesmith.cli import _hide_library_notices

    with warnings.catch_warnings(record=True) as caught:  # restores the filters afterwards
        warnings.simplefilter("always")
        _hide_library_notices()
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed", FutureWarning, stacklevel=1)
        warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]


def qa(question: str, answer: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})


def test_inspect_exits_1_after_the_full_report_when_a_line_is_broken(tmp_path, tiny_model_dir):
    data = tmp_path / "d.jsonl"
    data.write_text(f"{qa('a', 'b')}\n{{broken\n{qa('c', 'd')}\n", encoding="utf-8")
    result = tunesmith("data", "inspect", str(data), "--model", str(tiny_model_dir), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "line 2" in result.stderr and "2 usable rows" in result.stderr
    assert result.stderr.index("line 2") < result.stderr.index("Found 1 problem row")
    assert result.stderr.rstrip().endswith("data.skip_invalid: true to train without them.")
    assert "the recipe leaves it off" not in result.stderr  # a bare file: there is no recipe to speak of
    assert "off unless a recipe sets it" in " ".join(result.stderr.split())
    assert_not_internal(result)
    result = tunesmith("data", "inspect", str(data), "--model", str(tiny_model_dir), "--set",
                       "data.skip_invalid=true", cwd=tmp_path)
    assert result.returncode == 1 and "line 2" in result.stderr
    assert result.stderr.rstrip().endswith("data.skip_invalid is on, so training skips these rows; fix them to "
                                           "train on them.")


def test_inspect_json_is_printed_before_failing(tmp_path, tiny_model_dir):
    data = tmp_path / "d.jsonl"
    data.write_text(f"{qa('a', 'b')}\n{{broken\n", encoding="utf-8")
    result = tunesmith("data", "inspect", str(data), "--model", str(tiny_model_dir), "--json", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["files"]["train"]["problems"][0].startswith(f"{data}, line 2")


def test_json_commands_that_fail_before_their_report_still_print_one_json_document(tmp_path, tiny_model_dir):
    result = tunesmith("data", "inspect", str(tmp_path / "missing.jsonl"), "--model", str(tiny_model_dir), "--json",
                       cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    document = json.loads(result.stdout)
    assert document["exit_code"] == 2 and "missing.jsonl" in document["error"] and document["hint"]
    assert "missing.jsonl" in result.stderr  # the person at the terminal still reads it


def test_inspect_exits_0_when_every_row_is_usable(tmp_path, tiny_model_dir):
    data = tmp_path / "d.jsonl"
    data.write_text(f"{qa('a', 'b')}\n{qa('c', 'd')}\n", encoding="utf-8")
    result = tunesmith("data", "inspect", str(data), "--model", str(tiny_model_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "problem" not in result.stderr


@pytest.fixture
def run_with_adapter(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A run directory holding a (random, untrained) LoRA adapter: all that export needs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunesmith.config import load_recipe
    from tunesmith.runs import create_run

    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(f"name: tiny\nmodel:\n  source: {tiny_model_dir}\ndata:\n  train: train.jsonl\n",
                           encoding="utf-8")
    run = create_run(load_recipe(recipe_file), tmp_path / "runs")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora).save_pretrained(run.adapter_dir)
    return run.path


def test_export_out_copies_each_format_into_the_folder_and_never_overwrites(run_with_adapter, tmp_path):
    out = tmp_path / "shipped"
    (out / "merged").mkdir(parents=True)  # an empty folder of the same name is filled, not refused
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    args = ["export", str(run_with_adapter), "--format", "adapter", "--format", "merged", "--format", "gguf",
            "--quant", "F16", "--no-verify", "--out", str(out)]
    result = tunesmith(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("adapter/adapter_config.json", "merged/config.json", "gguf/tiny.F16.gguf"):
        copied, kept = out / name, run_with_adapter / "exports" / name
        assert copied.is_file() and kept.is_file(), name
        assert copied.read_bytes() == kept.read_bytes(), name
    for name in ("adapter", "merged", "gguf/tiny.F16.gguf"):
        assert f"Copied to {out / name}\n" in result.stderr
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert not [p for p in out.rglob(".*")], "no temporary names left behind"

    again = tunesmith(*args, cwd=tmp_path)
    assert again.returncode == 2
    assert "already holds adapter, merged, gguf/tiny.F16.gguf" in again.stderr and "Hint:" in again.stderr
    assert "Exported to" not in again.stderr, "a taken name fails before anything is exported"
    assert_not_internal(again)


def test_export_out_that_is_a_file_is_refused(run_with_adapter, tmp_path):
    out = tmp_path / "file"
    out.write_text("x", encoding="utf-8")
    result = tunesmith("export", str(run_with_adapter), "--format", "adapter", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 2 and "is a file, not a folder" in result.stderr
    assert not (run_with_adapter / "exports").exists()


def test_a_train_that_fails_before_its_first_step_leaves_no_run_directory(tmp_path, tiny_model_dir):
    (tmp_path / "r.yaml").write_text(f"name: gone\nmodel: {{source: {tiny_model_dir}}}\ndata: {{train: nope.jsonl}}\n",
                                     encoding="utf-8")
    result = tunesmith("train", "r.yaml", "--runs-dir", "runs", cwd=tmp_path)
    assert result.returncode == 2 and "nope.jsonl" in result.stderr, result.stderr
    assert_not_internal(result)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("command", [["train"], ["sweep", "--grid", "training.lr=1e-3,2e-3"], ["baseline"]])
def test_runs_dir_that_is_a_file_is_a_usage_error(command, tmp_path, tiny_model_dir):
    """It was "Internal error: NotADirectoryError"."""
    rows = "".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(12))
    (tmp_path / "d.jsonl").write_text(rows, encoding="utf-8")
    (tmp_path / "r.yaml").write_text(f"model: {{source: {tiny_model_dir}}}\ndata: {{train: d.jsonl}}\n",
                                     encoding="utf-8")
    (tmp_path / "afile").write_text("", encoding="utf-8")
    result = tunesmith(command[0], "r.yaml", *command[1:], "--runs-dir", "afile/runs", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Runs cannot be made in afile/runs: afile is a file, not a folder." in " ".join(result.stderr.split())
    assert_not_internal(result)


def test_a_run_that_logged_a_step_is_kept_when_training_stops_on_an_error(tmp_path):
    from tunesmith.errors import TunesmithError
    from tunesmith.runs import Run, removed_if_unstarted

    started, unstarted = Run(tmp_path / "started"), Run(tmp_path / "unstarted")
    for run in (started, unstarted):
        run.path.mkdir()
        (run.path / "recipe.yaml").write_text("name: x\n", encoding="utf-8")
    started.metrics_file.write_text('{"step": 1, "loss": 2.0}\n', encoding="utf-8")
    for run in (started, unstarted):
        with pytest.raises(TunesmithError), removed_if_unstarted(run):
            raise TunesmithError("out of memory at step 2")
    assert started.path.is_dir() and not unstarted.path.exists()


def test_importing_tunesmith_keeps_bitsandbytes_from_fetching_a_kernel_from_the_hub(tmp_path):
    """bitsandbytes (imported for QLoRA, and by some peft versions on `import peft`) asks the Hub for a compiled CPU
    kernel on AVX512-BF16 CPUs: with tunesmith imported first, nothing connects to the Hub's address (here a local
    listener standing in for it); without it, on such a CPU, the same import connects."""
    import socket
    import threading
    import time

    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("bitsandbytes asks the Hub for its kernel on CPUs with AVX512-BF16 only")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    connections: list[str] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed at the end of the test
                return
            connections.append("connected")
            connection.close()

    threading.Thread(target=accept, daemon=True).start()
    # A machine's HTTP proxy would take the request away from the stand-in: loopback is asked for directly.
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "LOCAL_KERNELS") and not k.lower().endswith("_proxy")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{listener.getsockname()[1]}", HF_HOME=str(tmp_path),
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")

    def connects(code: str) -> tuple[bool, str]:
        connections.clear()
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                              check=True)
        time.sleep(0.5)  # a connection still in the listener's queue is counted
        return bool(connections), done.stderr[-2000:]

    try:
        assert not connects("import tunesmith, bitsandbytes")[0]
        control, stderr = connects("import bitsandbytes")  # without tunesmith's setting, it asks the Hub
        if not control:
            pytest.skip(f"on this machine `import peft` did not ask the stand-in Hub either: {stderr.strip()!r}")
    finally:
        stop.set()
        time.sleep(0.3)  # the accepting thread sees the flag before the socket closes under it
        listener.close()


def test_help_debug_and_json_work_wherever_a_user_puts_them(tmp_path):
    """`-h` is help; `--debug` after the command (where the internal-error message sends users) is taken, not "No such
    option"; a usage error under --json still prints one JSON document."""
    assert "Usage: tunesmith runs list" in tunesmith("runs", "list", "-h", cwd=tmp_path).stdout
    late_debug = tunesmith("train", "nonexistent.yaml", "--debug", cwd=tmp_path)
    assert late_debug.returncode == 2 and "Recipe file not found" in late_debug.stderr, late_debug.stderr
    usage = tunesmith("eval", str(tmp_path), "--json", "--rollback", cwd=tmp_path)
    assert usage.returncode == 2 and json.loads(usage.stdout)["exit_code"] == 2
    assert "--checkpoints" in json.loads(usage.stdout)["error"]
    nothing_yet = tunesmith("runs", "list", "--json", cwd=tmp_path)  # no runs/ here yet: an empty list
    assert nothing_yet.returncode == 0 and json.loads(nothing_yet.stdout) == []
    assert tunesmith("runs", "list", "--runs-dir", "elsewhere", cwd=tmp_path).returncode == 2
    recipe = tmp_path / "r.yaml"  # train's names for processes and machines work on launch-script too
    recipe.write_text("model: {source: smollm2-135m-instruct}\ndata: {train: d.jsonl}\n", encoding="utf-8")
    script = tunesmith("launch-script", "slurm", str(recipe), "--nnodes", "2", "--nproc", "4", cwd=tmp_path)
    assert script.returncode == 0 and "#SBATCH --nodes=2" in script.stdout, script.stderr


def test_a_full_disk_or_a_failed_tool_is_the_users_to_fix_not_an_internal_error(tmp_path):
    """What the environment refused is said with the path or the command and what to do, exit 1; other errors stay
    internal errors."""
    import errno

    from tunesmith.cli.app import _environment_error

    full = _environment_error(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "runs" / "r1")))
    assert full.exit_code == 1 and str(tmp_path / "runs" / "r1") in full.message and "Free disk space" in full.hint
    denied = _environment_error(PermissionError(errno.EACCES, "Permission denied", "/srv/out"))
    assert "/srv/out" in denied.message and "permissions" in denied.hint
    tool = _environment_error(subprocess.CalledProcessError(1, ["ollama", "create", "m"], stderr=b"Error: boom\n"))
    assert tool.exit_code == 1 and tool.message == "`ollama create m` failed (exit code 1): Error: boom"
    assert _environment_error(FileNotFoundError(errno.ENOENT, "No such file", "x")) is None
    # end to end: the console script writing a launch script onto a full device
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {source: smollm2-135m-instruct}\ndata: {train: d.jsonl}\n", encoding="utf-8")
    result = tunesmith("launch-script", "slurm", str(recipe), "--output", "/dev/full", cwd=tmp_path)
    assert_not_internal(result)
    assert result.returncode == 1 and "Could not write or read /dev/full: No space left" in result.stderr, result.stderr
