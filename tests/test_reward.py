"""Proof tests for reward-model training (method.kind reward) and GRPO's `reward_model` reward, on a tiny llama.

The toy task is learnable by a tiny random model: the chosen answer is the order's JSON, the rejected one a
prose reply. One LoRA run is shared by the module: the loss falls and pairwise accuracy rises; only the LoRA
weights and the score head change; the saved adapter reloads to the same scores; eval reports base (random
head) vs tuned; the trained model ranks chosen above rejected as a GRPO reward, and a GRPO run uses it.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import ORDERS, REPO
from tunesmith.config import Recipe, RewardSpec, validate_recipe
from tunesmith.errors import DataError, RecipeError, TunesmithError
from tunesmith.runs import Run, create_run
from tunesmith.train import run_training
from tunesmith.train.reward_model import encode_answer, load_reward_model, score_encoded

PREFS = REPO / "examples" / "data" / "prefs"
PROSE = ["Sure, I will place that order for you.", "Here is the order you asked for.",
         "I cannot convert this order, sorry.", "Your order has been noted, thank you!"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's matmuls are too small to split: one thread is several times faster, most of all on a busy
    machine where a second thread waits for a core. Restored after this module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def toy_pairs(source: Path, target: Path, rows: int) -> str:
    """Bundled preference prompts with the exact JSON as chosen and a prose reply as rejected."""
    rng = random.Random(0)
    pairs = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()[:rows]]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(json.dumps({"prompt": p["prompt"], "chosen": p["chosen"],
                                          "rejected": [{"role": "assistant", "content": rng.choice(PROSE)}]}) + "\n"
                              for p in pairs), encoding="utf-8")
    return str(target)


def reward_recipe(root: Path, model_dir: Path, adapter: dict[str, Any] | None = None, train: str | None = None,
                  method: dict[str, Any] | None = None, **training: Any) -> Recipe:
    raw = {
        "name": "reward",
        "model": {"source": str(model_dir)},
        "data": {"train": train or toy_pairs(PREFS / "train.jsonl", root / "data" / "train.jsonl", 64),
                 "eval": toy_pairs(PREFS / "eval.jsonl", root / "data" / "eval.jsonl", 16), "max_length": 128},
        "method": {"kind": "reward", **(method or {})},
        "adapter": adapter or {"r": 8, "alpha": 16, "dropout": 0.0},
        "training": {"max_steps": 12, "lr": 5e-3, "batch_size": 8, "scheduler": "constant", "warmup_ratio": 0.0,
                     "logging_steps": 1, "save_steps": 1000, **training},
        "eval": {"batch_size": 8},
        "export": {"formats": ["adapter"]},
        "base_dir": str(root),
    }
    return validate_recipe(raw)


@dataclass
class Trained:
    run: Run
    trainer: Any
    before: dict[str, torch.Tensor]

    def metric(self, key: str) -> list[float]:
        return [r[key] for r in self.run.read_metrics() if key in r and "loss" in r]

    def eval_rows(self) -> list[dict]:
        recipe = self.run.load_recipe()
        path = recipe.resolve_path(recipe.data.eval or "")
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def train_capturing(recipe: Recipe, root: Path) -> Trained:
    """Train, keeping the trainer and a snapshot of every weight taken just before training."""
    import tunesmith.train.common as common

    run = create_run(recipe, root / "runs")
    seen: dict[str, Any] = {}

    def capture(trainer, *args):
        seen["trainer"] = trainer
        seen["before"] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        return common.fit_and_save(trainer, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("tunesmith.train.reward.fit_and_save", capture)
        run_training(recipe, run)
    return Trained(run, seen["trainer"], seen["before"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir) -> Trained:
    root = tmp_path_factory.mktemp("reward")
    return train_capturing(reward_recipe(root, tiny_model_dir, method={"center_rewards_coefficient": 0.01}), root)


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def scores_of(model: Any, tokenizer: Any, rows: list[dict], key: str) -> list[float]:
    encoded = [encode_answer(tokenizer, row["prompt"], row[key]) for row in rows]
    return score_encoded(model.eval(), encoded, tokenizer.pad_token_id, batch_size=8)


def test_loss_falls_and_pairwise_accuracy_rises(trained):
    losses, accuracy, margin = trained.metric("loss"), trained.metric("accuracy"), trained.metric("margin")
    assert len(losses) == 12 and all(math.isfinite(x) for x in losses)
    assert mean(losses[-4:]) < mean(losses[:4]) and mean(losses[-4:]) < math.log(2), losses
    assert mean(accuracy[-4:]) > mean(accuracy[:4]) and mean(accuracy[-4:]) >= 0.9, accuracy
    assert mean(margin[-4:]) > max(mean(margin[:4]), 0.0), margin
    assert trained.trainer.args.center_rewards_coefficient == 0.01
    report = json.loads((trained.run.path / "train.json").read_text())
    assert report["method"] == "reward" and report["steps"] == 12
    assert {"accuracy", "margin"} <= set(report["final_metrics"])
    assert (trained.run.plots_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_only_lora_weights_and_the_score_head_change(trained):
    after = dict(trained.trainer.model.named_parameters())
    assert set(after) == set(trained.before)
    head = {name for name in after if "score.modules_to_save" in name}
    intended = {name for name in after if ".lora_" in name} | head
    assert head and {name for name, p in after.items() if p.requires_grad} == intended
    changed = {name for name, p in after.items() if not torch.equal(p.detach(), trained.before[name])}
    assert changed == intended
    assert any("score.original_module" in name for name in set(after) - intended)  # the untrained head, kept as is


def test_scoring_encodes_pairs_exactly_as_the_trainer_did(trained):
    tokenizer, dataset = trained.trainer.processing_class, trained.trainer.train_dataset
    rows = [json.loads(line) for line in Path(trained.run.load_recipe().data.train).read_text().splitlines()]
    for index in (0, 7):
        row, seen = rows[index], dataset[index]
        assert encode_answer(tokenizer, row["prompt"], row["chosen"]) == seen["chosen_ids"]
        assert encode_answer(tokenizer, row["prompt"], row["rejected"]) == seen["rejected_ids"]
    assert encode_answer(tokenizer, "Q: 2+2?", " 4") == tokenizer("Q: 2+2? 4<|im_end|>")["input_ids"]


def test_saved_adapter_reloads_to_the_same_scores(trained, tiny_model_dir):
    from peft import AutoPeftModelForSequenceClassification, PeftModel
    from transformers import AutoModelForSequenceClassification

    rows, tokenizer = trained.eval_rows(), trained.trainer.processing_class
    at_end = scores_of(trained.trainer.model, tokenizer, rows, "chosen")
    plain = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    reloaded = PeftModel.from_pretrained(plain, trained.run.adapter_dir)
    assert reloaded.active_peft_config.task_type == "SEQ_CLS"
    assert scores_of(reloaded, tokenizer, rows, "chosen") == pytest.approx(at_end, abs=1e-5)
    for path in (trained.run.path, trained.run.adapter_dir):  # what GRPO's reward_model loads
        scorer = load_reward_model(path, device="cpu")
        assert scorer.score([r["prompt"] for r in rows], [r["chosen"] for r in rows]) == pytest.approx(at_end, abs=1e-5)
    with reloaded.disable_adapter():
        assert scores_of(reloaded, tokenizer, rows, "chosen") != pytest.approx(at_end, abs=1e-2)
    card_way = AutoPeftModelForSequenceClassification.from_pretrained(trained.run.adapter_dir, num_labels=1)  # card
    assert scores_of(card_way, tokenizer, rows, "chosen") == pytest.approx(at_end, abs=1e-5)


def test_eval_reports_accuracy_and_margin_for_random_base_and_tuned(trained):
    from tunesmith.eval import run_eval
    from tunesmith.eval.reward import run_reward_eval
    from tunesmith.train.reward_model import load_reward_base

    results = json.loads(run_eval(trained.run.load_recipe(), trained.run).read_text())
    assert results["examples"] == 16 and results["task_metric"] == "preference_accuracy"
    assert results["tuned"]["preference_accuracy"] >= 0.9
    assert results["tuned"]["preference_accuracy"] > results["base"]["preference_accuracy"]
    assert results["tuned"]["mean_margin"] > max(results["base"]["mean_margin"], 0.0)
    assert "randomly initialised" in results["base_note"] and "no learned preference" in results["base_note"]
    assert len(results["samples"]) == 5 and {"margin_base", "margin_tuned"} <= set(results["samples"][0])
    accuracy, margin = results["comparison"]["preference_accuracy"], results["comparison"]["mean_margin"]
    assert accuracy["delta"] == pytest.approx(results["tuned"]["preference_accuracy"]
                                              - results["base"]["preference_accuracy"], abs=1e-4)
    assert margin["wins"] + margin["losses"] + margin["ties"] == 16 and margin["delta"] > 0  # pair by pair, as DPO's
    assert "Pairs (5 of 16)" in (trained.run.eval_dir / "report.html").read_text(encoding="utf-8")
    with pytest.raises(TunesmithError, match="comparing two reward runs is not supported"):
        run_reward_eval(trained.run.load_recipe(), trained.run, against=trained.run.path)
    recipe = trained.run.load_recipe()  # `base` is scored with the very head training started from
    base = load_reward_base(Path(recipe.model.source), trained.trainer.processing_class, "cpu", recipe.training.seed)
    assert torch.equal(base.score.weight, trained.before["base_model.model.score.original_module.weight"])


def test_model_card_and_export_describe_a_reward_model(trained):
    from tunesmith.card import write_model_card
    from tunesmith.export import run_export

    card = write_model_card(trained.run).read_text()
    assert "AutoPeftModelForSequenceClassification" in card and "reward_model" in card and "Note: base" in card
    manifest = json.loads((run_export(trained.run.load_recipe(), trained.run, ["adapter", "merged"])
                           / "manifest.json").read_text())
    assert "skipped" in manifest["merged"] and (trained.run.path / manifest["adapter"]).is_dir()  # relative to the run


@pytest.mark.parametrize("formats", [["merged"], ["gguf"], ["adapter", "ollama"]])
def test_exporting_a_reward_model_as_a_language_model_is_refused_on_the_command_line(trained, formats):
    """--format merged/gguf/ollama would merge the adapter into a causal LM, dropping the score head (and record it
    as exported): refused with exit 2, naming the head, before anything is written."""
    import subprocess
    import sys

    args = [arg for name in formats for arg in ("--format", name)]
    done = subprocess.run([sys.executable, "-m", "tunesmith", "export", str(trained.run.path), *args],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "is a reward model" in done.stderr and "without that head" in done.stderr
    assert not (trained.run.exports_dir / "gguf").exists() and "Traceback" not in done.stderr


def test_reward_model_reward_ranks_chosen_above_rejected(trained, tmp_path):
    from tunesmith.train.rewards import build_rewards

    rows = trained.eval_rows()
    (reward,), weights = build_rewards([RewardSpec(name="reward_model", path=str(trained.run.path), weight=0.5)],
                                       tmp_path)
    assert reward.__name__ == "reward_model" and weights == [0.5]
    prompts = [r["prompt"] for r in rows] * 2
    scores = reward(prompts=prompts, completions=[r["chosen"] for r in rows] + [r["rejected"] for r in rows],
                    completion_ids=[[1]] * len(prompts), trainer_state=None)
    chosen, rejected = scores[: len(rows)], scores[len(rows):]
    assert all(isinstance(s, float) for s in scores)
    assert sum(c > r for c, r in zip(chosen, rejected, strict=True)) >= 0.9 * len(rows)


def test_grpo_runs_with_the_reward_model(trained, tmp_path, tiny_model_dir):
    (tmp_path / "data").mkdir()
    lines = (ORDERS / "train.jsonl").read_text(encoding="utf-8").splitlines()[:8]
    (tmp_path / "data" / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    relative = os.path.relpath(trained.run.path, tmp_path)  # resolves from the recipe's folder
    raw = {"name": "grpo-rm", "model": {"source": str(tiny_model_dir)},
           "data": {"train": "data/train.jsonl", "eval_fraction": 0.2, "max_length": 64},
           "method": {"kind": "grpo", "num_generations": 2, "max_completion_length": 8,
                      "rewards": [{"name": "reward_model", "path": relative}]},
           "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
           "training": {"max_steps": 2, "lr": 1e-2, "batch_size": 4, "logging_steps": 1, "save_steps": 1000},
           "base_dir": str(tmp_path)}
    recipe = validate_recipe(raw)
    run = create_run(recipe, tmp_path / "runs")
    run_training(recipe, run)
    logged = [r["rewards/reward_model/mean"] for r in run.read_metrics() if "rewards/reward_model/mean" in r]
    assert len(logged) == 2 and all(math.isfinite(x) for x in logged)
    assert (run.adapter_dir / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize(("spec", "message"), [
    ({"name": "reward_model"}, "needs 'path'"),
    ({"name": "exact_match", "path": "runs/x"}, "does not use path"),
])
def test_reward_model_spec_needs_its_path(spec, message):
    with pytest.raises(RecipeError, match=message):
        validate_recipe({"data": {"train": "t.jsonl"}, "method": {"kind": "grpo", "rewards": [spec]}})


def test_reward_model_path_must_be_a_reward_model(tmp_path, trained):
    from tunesmith.train.rewards import build_rewards

    with pytest.raises(TunesmithError, match="does not exist"):
        build_rewards([RewardSpec(name="reward_model", path="nowhere")], tmp_path)
    sft_run = create_run(validate_recipe({"data": {"train": "t.jsonl"}}), tmp_path / "runs")
    with pytest.raises(TunesmithError, match=r"method\.kind sft run, not a reward model"):
        build_rewards([RewardSpec(name="reward_model", path=str(sft_run.path))], tmp_path)
    with pytest.raises(TunesmithError, match="not a reward model"):
        build_rewards([RewardSpec(name="reward_model", path=str(tmp_path / "runs"))], tmp_path)


def test_conversations_are_refused_with_the_shape_needed(tmp_path, tiny_model_dir):
    recipe = reward_recipe(tmp_path, tiny_model_dir, train=str(ORDERS / "train.jsonl"))
    with pytest.raises(DataError) as caught:
        run_training(recipe, create_run(recipe, tmp_path / "runs"))
    message = caught.value.message
    assert "train.jsonl holds messages rows" in message and "method.kind reward" in message
    assert "needs preference rows" in message


@pytest.mark.parametrize(("override", "message"), [
    ({"adapter": {"kind": "prompt_tuning"}}, "cannot train adapter.kind=prompt_tuning"),
    ({"adapter": {"kind": "qlora"}}, "cannot train adapter.kind=qlora"),
    ({"adapter": {"kind": "partial", "train_lm_head": True}}, "has no LM head"),
    ({"export": {"formats": ["adapter", "gguf"]}}, "need a language model"),
    ({"export": {"formats": ["adapter", "merged"]}}, r"'merged'\] need a language model"),  # a LoRA reward adapter
    ({"method": {"kind": "reward", "center_rewards_coefficient": -1}}, "center_rewards_coefficient"),
])
def test_recipes_that_cannot_make_a_reward_model_are_refused(override, message):
    with pytest.raises(RecipeError, match=message):
        validate_recipe({"data": {"train": "t.jsonl"}, "method": {"kind": "reward"}, **override})


def test_a_reward_recipe_without_export_formats_exports_what_a_reward_model_can_be():
    """The default formats (adapter, merged) failed a LoRA reward run after it had trained and been evaluated."""
    lora = validate_recipe({"data": {"train": "t.jsonl"}, "method": {"kind": "reward"}})
    assert lora.export.formats == ["adapter"] and "formats" not in lora.export.model_fields_set
    whole = validate_recipe({"data": {"train": "t.jsonl"}, "method": {"kind": "reward"}, "adapter": {"kind": "full"}})
    assert whole.export.formats == ["adapter", "merged"]  # model/ holds the score head: merged copies it
    assert validate_recipe({"data": {"train": "t.jsonl"}}).export.formats == ["adapter", "merged"]


@pytest.mark.parametrize("adapter", [{"kind": "full"}, {"kind": "partial", "last_blocks": 1}])
def test_whole_model_kinds_train_the_head_and_reload(adapter, tmp_path, tiny_model_dir):
    trained = train_capturing(reward_recipe(tmp_path, tiny_model_dir, adapter=adapter, max_steps=3), tmp_path)
    after = dict(trained.trainer.model.named_parameters())
    trainable = {name for name, p in after.items() if p.requires_grad}
    changed = {name for name, p in after.items() if not torch.equal(p.detach(), trained.before[name])}
    if adapter["kind"] == "full":
        assert trainable == set(after)
    else:
        assert trainable == {n for n in after if n.startswith("model.layers.1.")} | {"model.norm.weight",
                                                                                     "score.weight"}
    assert "score.weight" in changed and changed <= trainable
    rows, tokenizer = trained.eval_rows(), trained.trainer.processing_class
    at_end = scores_of(trained.trainer.model, tokenizer, rows, "chosen")
    reloaded = load_reward_model(trained.run.path, device="cpu")
    assert reloaded.score([r["prompt"] for r in rows], [r["chosen"] for r in rows]) == pytest.approx(at_end, abs=1e-5)


@pytest.mark.slow
def test_reward_recipe_on_smollm2_learns_to_rank(tmp_path):
    """A few steps of recipes/reward.yaml on the real embedded model: the margin rises, and held-out accuracy
    beats the random-head base."""
    from tunesmith.config import load_recipe
    from tunesmith.eval import run_eval

    recipe = load_recipe(REPO / "recipes" / "reward.yaml", ["training.max_steps=6", "training.batch_size=4",
                                                            "training.logging_steps=1", "eval.max_examples=20"])
    run = create_run(recipe, tmp_path / "runs")
    run_training(recipe, run)
    margins = [r["margin"] for r in run.read_metrics() if "margin" in r and "loss" in r]
    results = json.loads(run_eval(recipe, run).read_text())
    assert len(margins) == 6
    assert mean(margins[-3:]) > mean(margins[:3]) or (
        results["tuned"]["preference_accuracy"] > results["base"]["preference_accuracy"]), (margins, results)
    assert results["tuned"]["mean_margin"] > results["base"]["mean_margin"], results


def test_the_new_score_head_is_not_reported_missing_and_logging_is_restored(tiny_model_dir, capfd):
    """transformers' load report calls the fresh score head MISSING and advises training it, in the middle of a
    reward run's output: quieted for that load only."""
    from transformers.utils import logging as hf_logging

    from tunesmith.models.loading import load_model

    before = hf_logging.get_verbosity()
    load_model(tiny_model_dir, torch.float32, "cpu", task="SEQ_CLS")
    assert "LOAD REPORT" not in capfd.readouterr().err and hf_logging.get_verbosity() == before
