"""Slow: `tunesmith eval` on a short quickstart run of the real SmolLM2 (the run the e2e test trained, reused):
the tuned model wins on the bundled order-to-JSON task, and the forgetting probes are reported for both."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_eval_reports_task_win_and_forgetting_probes(smollm2_quickstart_run):
    run = smollm2_quickstart_run
    result = subprocess.run([sys.executable, "-m", "tunesmith", "eval", str(run.path), "--json"],
                            capture_output=True, text=True, timeout=1800, cwd=run.path.parent)
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)
    task = results["comparison"]["field_accuracy"]
    assert task["tuned"] > task["base"] and task["wins"] > task["losses"]
    probes = results["probes"]
    assert probes["count"] >= 40 and isinstance(probes["regression"], bool)
    assert probes["regression"] == bool(probes["reasons"])
    for variant in ("base", "tuned"):
        assert 0 <= probes[variant]["accuracy"] <= 1 and probes[variant]["perplexity"] > 1
        assert {"factual", "reasoning", "instruction"} <= set(probes[variant])
    assert probes["base"]["accuracy"] >= 0.7  # the set is chosen so that the base mostly passes
    card = (run.path / "README.md").read_text()
    assert "Forgetting probes" in card and ("no regression" in card or "REGRESSION" in card)
