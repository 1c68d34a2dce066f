"""A step's micro-batches merged into fewer passes on a CPU (train/micro_batches.py): the regrouping keeps every row
once within the token limit, the padding carries no loss, and training reaches the adapter it reaches unmerged,
replay anchor included."""

from __future__ import annotations

import json

import pytest
import torch

from tunesmith.config import load_recipe
from tunesmith.plan.recommend import with_micro_batch
from tunesmith.runs import create_run
from tunesmith.train import sft
from tunesmith.train.micro_batches import MergedAway, merge_micro_batches

from .conftest import make_tiny_project


def one_row(length: int, seed: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 200, (1, length), generator=torch.Generator().manual_seed(seed))
    labels = ids.clone()
    labels[:, : length // 2] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def test_short_micro_batches_merge_longest_first_within_the_token_limit():
    lengths = [900, 100, 120, 90, 110, 95, 105, 880]
    batches = [one_row(n, seed) for seed, n in enumerate(lengths)]
    merged = merge_micro_batches(batches, tokens=961)
    assert len(merged) == len(batches)
    passes = [b for b in merged if not isinstance(b, MergedAway)]
    assert [tuple(p["input_ids"].shape) for p in passes] == [(1, 900), (1, 880), (6, 120)]
    assert all(p["input_ids"].numel() <= 961 for p in passes)
    short = passes[2]
    kept = {tuple(row[mask.bool()].tolist()) for row, mask in zip(short["input_ids"], short["attention_mask"],
                                                                  strict=True)}
    assert kept == {tuple(batches[i]["input_ids"][0].tolist()) for i in range(1, 7)}
    assert int(short["attention_mask"].sum()) == sum(lengths[1:7])
    assert int((short["labels"] != -100).sum()) == sum(int((batches[i]["labels"] != -100).sum()) for i in range(1, 7))
    assert bool((short["labels"][short["attention_mask"] == 0] == -100).all())  # padding carries no loss


def test_batches_that_cannot_be_joined_stay_as_they_are():
    left_padded = one_row(50, 0)
    left_padded["attention_mask"][0, 0] = 0
    extra_key = {**one_row(50, 1), "position_ids": torch.arange(50)[None]}
    for odd in (left_padded, extra_key):
        batches = [one_row(40, 2), odd]
        assert merge_micro_batches(batches, tokens=10_000) is batches


def test_merging_applies_to_the_plans_micro_batches_on_a_cpu_only(tmp_path, tiny_model_dir):
    recipe = load_recipe(make_tiny_project(tmp_path, tiny_model_dir))
    planned = with_micro_batch(recipe, 2)  # what the plan does for long rows: 4 micro-batches of 2 rows
    assert sft.merged_micro_batch_tokens(planned, "cpu", False, [60, 300]) == 600
    assert sft.merged_micro_batch_tokens(with_micro_batch(recipe, 4), "cpu", False, [60, 400]) == 1024
    assert sft.merged_micro_batch_tokens(planned, "cuda", False, [60, 300]) is None
    assert sft.merged_micro_batch_tokens(planned, "cpu", True, [60, 300]) is None  # packed rows
    assert sft.merged_micro_batch_tokens(recipe, "cpu", False, [60, 300]) is None  # one micro-batch a step
    given = load_recipe(make_tiny_project(tmp_path, tiny_model_dir), ["training.batch_size=2",
                                                                       "training.grad_accum=4"])
    assert sft.merged_micro_batch_tokens(given, "cpu", False, [60, 300]) is None  # the recipe's own micro-batches


@pytest.mark.parametrize("replay", [False, True])
def test_merged_steps_reach_the_adapter_of_unmerged_ones(tmp_path, tiny_model_dir, monkeypatch, replay):
    """Batch 4 as 4 micro-batches of one row (as the plan makes them), merged into one pass or not. With the
    replay anchor, its one row a step rides on the last micro-batch, a merged-away slot: the anchor's pass runs
    alone there."""
    from safetensors.torch import load_file

    from tunesmith.train import run_training

    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps({"prompt": f"Name a colour, number {i}.", "answer": f"Blue {i}."}) + "\n"
                               for i in range(1, 9)), encoding="utf-8")
    settings = ["training.max_steps=2", "training.batch_size=4", "training.precision=fp32", "training.lr=0.01",
                "training.fused_lora=false"]
    if replay:
        settings += [f"data.replay.source={general}", "data.replay.ratio=0.25", "data.replay.weight=50",
                     "data.replay.null_space=0"]
    adapters, chosen = {}, {}
    for name, tokens in (("merged", 10_000), ("apart", None)):
        monkeypatch.setattr(sft, "merged_micro_batch_tokens", lambda *args, tokens=tokens: tokens)
        recipe = with_micro_batch(load_recipe(make_tiny_project(tmp_path / name, tiny_model_dir, train_rows=16,
                                                                eval_rows=4), settings), 1)
        run = create_run(recipe, tmp_path / name / "runs")
        run_training(recipe, run)
        adapters[name] = load_file(run.path / "adapter" / "adapter_model.safetensors")
        report = json.loads((run.path / "train.json").read_text())
        chosen[name] = report["chosen"]
        padding = report["throughput"]["padding_share"]
        assert padding > 0 if name == "merged" else padding == 0  # rows of several lengths joined: padded
        if replay:  # one row a step, two steps: two anchor batches either way
            reference = report["replay"]["base_reference"]
            assert reference["base_passes"] + reference["batches_from_cache"] == 2
    assert "micro_batch_merge" in chosen["merged"] and "micro_batch_merge" not in chosen["apart"]
    for key in adapters["apart"]:
        torch.testing.assert_close(adapters["merged"][key], adapters["apart"][key], atol=2e-4, rtol=1e-3)
