"""`tunesmith cache list|clean`: sizes per area, cleaning by area and age, and writes under way left alone."""

import json
import os
import subprocess
import sys
import time

import pytest

from tunesmith.export.gguf import atomic_output
from tunesmith.models.cache import clean_cache


@pytest.fixture()
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("TUNESMITH_HOME", str(home))
    (home / "serve").mkdir(parents=True)
    (home / "serve" / "base-abc.Q8_0.gguf").write_bytes(b"g" * 3000)
    (home / "serve" / "run-def-lora-F16.gguf").write_bytes(b"l" * 200)
    (home / "models" / "imported").mkdir(parents=True)
    (home / "models" / "imported" / "model.safetensors").write_bytes(b"w" * 5000)
    (home / "models" / "imported" / "config.json").write_text("{}")
    return home


def tunesmith(home, *args):
    return subprocess.run([sys.executable, "-m", "tunesmith", "cache", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "TUNESMITH_HOME": str(home)})


def test_list_gives_each_area_its_entries_and_bytes(home):
    result = tunesmith(home, "list", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["area"]: row for row in json.loads(result.stdout)}
    assert (rows["serve"]["entries"], rows["serve"]["bytes"]) == (2, 3200)
    assert (rows["models"]["entries"], rows["models"]["bytes"]) == (1, 5002)  # a model folder is one entry
    assert (rows["replay"]["entries"], rows["replay"]["bytes"]) == (0, 0)


def test_clean_removes_only_the_areas_named_and_dry_run_removes_nothing(home):
    dry = tunesmith(home, "clean", "serve", "--dry-run")
    assert dry.returncode == 0 and "Would free 3.1 KiB in 2 entries" in dry.stderr
    assert len(list((home / "serve").iterdir())) == 2
    result = tunesmith(home, "clean", "serve")
    assert result.returncode == 0, result.stderr
    assert not list((home / "serve").iterdir()) and (home / "models" / "imported" / "config.json").is_file()
    everything = tunesmith(home, "clean", "all")
    assert everything.returncode == 0 and not (home / "models" / "imported").exists()


def test_older_than_keeps_what_was_used_recently(home):
    old = home / "serve" / "base-abc.Q8_0.gguf"
    week_ago = time.time() - 7 * 86400
    os.utime(old, (week_ago, week_ago))
    removed = clean_cache(("serve",), older_than_days=3)
    assert [entry.path for entry in removed] == [old] and not old.exists()
    assert (home / "serve" / "run-def-lora-F16.gguf").is_file()


def test_a_file_being_written_is_left_alone_and_lands_whole(home):
    target = home / "serve" / "new-base.Q8_0.gguf"
    with atomic_output(target) as draft:  # how serve writes a GGUF: a hidden name, renamed when complete
        draft.write_bytes(b"partial")
        removed = clean_cache(("serve",))
        assert draft.exists() and draft not in [entry.path for entry in removed]
        draft.write_bytes(b"complete")
    assert target.read_bytes() == b"complete"


def test_naming_no_area_or_an_unknown_one_is_a_usage_error(home):
    for args, said in (((), "Name what to clean"), (("servee",), "Unknown cache area 'servee'")):
        result = tunesmith(home, "clean", *args)
        assert result.returncode == 2 and said in result.stderr and "Traceback" not in result.stderr
    assert len(list((home / "serve").iterdir())) == 2


def test_cleaning_the_embedded_model_says_it_needs_the_network_to_come_back(home):
    (home / "models" / "smollm2-135m-instruct").mkdir()
    (home / "models" / "smollm2-135m-instruct" / "config.json").write_text("{}")
    dry = tunesmith(home, "clean", "models", "--dry-run")
    assert dry.returncode == 0 and "in 2 entries" in dry.stderr
    assert "smollm2-135m-instruct would be fetched again from PyPI" in dry.stderr and "network" in dry.stderr
    (home / "serve" / "run-def-lora-F16.gguf").unlink()
    assert "Freed 2.9 KiB in 1 entry." in tunesmith(home, "clean", "serve").stderr


def test_a_tunesmith_home_that_is_a_file_is_a_usage_error(tmp_path):
    (tmp_path / "home").write_text("not a folder")
    result = tunesmith(tmp_path / "home", "list")
    assert result.returncode == 2 and "which is a file, not a folder" in result.stderr, result.stderr


USES = {  # how a command comes to read a cached model: by its name (train), or as a run's recorded base (eval, serve)
    "resolved": "from tunesmith.models.source import resolve_model_source\nresolve_model_source('imported')\n",
    "run's base": "from tunesmith.manifest import BaseModelRecord, TrainRecord\n"
                  "from tunesmith.models.tuned import run_base_model\n"
                  "from tunesmith.runs import Run, record_stage\n"
                  "run = Run(Path(sys.argv[1]))\n"
                  "record_stage(run, 'train', TrainRecord(artifact='adapter', path='adapter', method='sft', adapter="
                  "'lora', base_model=BaseModelRecord(source='imported', path=sys.argv[2])))\n"
                  "run_base_model(run)\n",
}


@pytest.mark.parametrize("use", list(USES))
def test_a_model_a_running_tunesmith_uses_is_kept_until_it_ends(home, tmp_path, use):
    """`cache clean models` beside a training of the embedded model deleted the base its eval and export load next
    (on an offline machine, for good). A process that reads the model holds it; the lock goes with the process."""
    script = f"import sys, time\nfrom pathlib import Path\n{USES[use]}print('resolved', flush=True)\ntime.sleep(120)"
    user = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "run"), str(home / "models" / "imported")],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "TUNESMITH_HOME": str(home)})
    try:
        assert user.stdout.readline().strip() == "resolved"
        kept = tunesmith(home, "clean", "models")
        assert kept.returncode == 0 and "kept" in kept.stderr and "is using it" in kept.stderr, kept.stderr
        assert (home / "models" / "imported" / "model.safetensors").is_file()
    finally:
        user.kill()
        user.wait()
    removed = tunesmith(home, "clean", "models")
    assert removed.returncode == 0 and not (home / "models" / "imported").exists(), removed.stderr
