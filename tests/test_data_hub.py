"""Hub dataset ids as data sources: routing, splits, and what users see when the Hub is out of reach."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tunesmith.config import validate_recipe
from tunesmith.data import load_splits
from tunesmith.data.hub import is_hub_dataset, split_spec


@pytest.mark.parametrize(("value", "expected"), [
    ("hf:acme/orders", True),
    ("acme/orders", True),
    ("acme/orders:test", True),
    ("data/train.jsonl", False),
    ("train.jsonl", False),
    ("just-a-name", False),
])
def test_what_counts_as_a_hub_id(value, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_hub_dataset(value) is expected


def test_an_existing_local_folder_wins_over_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "acme" / "orders").mkdir(parents=True)
    assert not is_hub_dataset("acme/orders")


def test_split_defaults_to_train():
    assert split_spec("hf:acme/orders") == ("acme/orders", "train")
    assert split_spec("acme/orders:validation") == ("acme/orders", "validation")


def test_hub_rows_flow_through_the_normal_loaders(monkeypatch, tmp_path):
    import datasets

    calls = []

    def fake_load_dataset(repo, split):
        calls.append((repo, split))
        return datasets.Dataset.from_list([{"question": f"q{i}", "answer": f"a{i}"} for i in range(20)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    recipe = validate_recipe({"data": {"train": "hf:acme/qa:test", "eval_fraction": 0.25,
                                       "columns": {"question": "prompt", "answer": "completion"}},
                              "base_dir": str(tmp_path)})
    splits = load_splits(recipe)
    assert calls == [("acme/qa", "test")]
    assert len(splits.train) + len(splits.eval) == 20
    assert splits.source["train"] == "hf:acme/qa:test"
    assert splits.train[0]["messages"][-1]["role"] == "assistant"


def test_unreachable_hub_exits_2_with_a_way_round(tmp_path, tiny_model_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-m", "tunesmith", "data", "inspect", "hf:acme/missing",
                             "--model", str(tiny_model_dir)], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Could not load the Hub dataset 'acme/missing'" in result.stderr
    assert "save_to_disk" in result.stderr and "Traceback" not in result.stderr
