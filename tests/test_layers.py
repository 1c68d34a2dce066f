"""The import layers (pyproject.toml [tool.importlinter]) hold, and the check fails on a backward import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
                          capture_output=True, text=True, env=env, cwd=package_parent, timeout=300)


def test_the_package_keeps_its_layers():
    result = lint_imports(REPO / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_a_backward_import_breaks_the_contract(tmp_path):
    shutil.copytree(REPO / "src" / "tunesmith", tmp_path / "tunesmith",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "tunesmith" / "data" / "backward.py").write_text("from tunesmith.eval import evaluate\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout
    assert "tunesmith.data is not allowed to import tunesmith.eval" in result.stdout
    assert "tunesmith.data.backward -> tunesmith.eval" in result.stdout


def test_a_cycle_inside_a_stage_breaks_the_contract(tmp_path):
    """Two eval modules importing each other (even inside a function) is a cycle the second contract refuses."""
    shutil.copytree(REPO / "src" / "tunesmith", tmp_path / "tunesmith",
                    ignore=shutil.ignore_patterns("__pycache__"))
    decoding = tmp_path / "tunesmith" / "eval" / "decoding.py"
    decoding.write_text(decoding.read_text() + "\n\ndef late():\n    from tunesmith.eval import evaluate\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout
    assert "No cycles are allowed in tunesmith.eval" in result.stdout
