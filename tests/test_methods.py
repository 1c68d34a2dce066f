"""Proof tests for the methods beyond SFT (CPT, DPO, ORPO, KTO, SimPO) on a tiny llama.

For each method, one short run is shared by the module: the loss (and the method's own reward
margin) moves the right way, only the adapter trains while the base stays bit-identical, the saved
adapter reloads to the same logits, and data of the wrong shape is refused with a clear message.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import ORDERS, REPO
from tunesmith.config import Recipe, validate_recipe
from tunesmith.errors import DataError, RecipeError
from tunesmith.runs import Run, create_run
from tunesmith.train import run_training

PREFS = REPO / "examples" / "data" / "prefs"
TEXT = REPO / "examples" / "data" / "text"
KINDS = ("dpo", "orpo", "kto", "simpo", "cpt")
PREFERENCE = ("dpo", "orpo", "kto", "simpo")
PROBE_IDS = torch.tensor([[1, 5, 9, 14, 30, 2, 77, 120]])


def slice_file(source: Path, target: Path, rows: int) -> str:
    target.parent.mkdir(parents=True, exist_ok=True)
    lines = source.read_text(encoding="utf-8").splitlines()[:rows]
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(target)


def method_recipe(root: Path, model_dir: Path, kind: str, source: Path | None = None,
                  replay: dict[str, Any] | None = None, **training: Any) -> Recipe:
    """A tiny recipe for `kind` on a slice of the bundled data (prefs pairs, or text for cpt); `replay`: the
    recipe's data.replay section (off otherwise: the base's answers would cost each tiny model seconds)."""
    source = source or (TEXT if kind == "cpt" else PREFS)
    raw = {
        "name": kind,
        "model": {"source": str(model_dir)},
        "data": {"train": slice_file(source / "train.jsonl", root / "data" / "train.jsonl", 64),
                 "eval": slice_file(source / "eval.jsonl", root / "data" / "eval.jsonl", 16),
                 "max_length": 128, "replay": replay or {"ratio": 0}},
        "method": {"kind": kind},
        "adapter": {"r": 8, "alpha": 16, "dropout": 0.0},
        "training": {"max_steps": 16, "lr": 5e-3, "batch_size": 8, "scheduler": "constant", "warmup_ratio": 0.0,
                     "logging_steps": 1, "save_steps": 1000, **training},
        "eval": {"batch_size": 8},
        "base_dir": str(root),
    }
    return validate_recipe(raw)


@dataclass
class Trained:
    kind: str
    run: Run
    trainer: Any
    before: dict[str, torch.Tensor]

    def metric(self, key: str) -> list[float]:
        return [r[key] for r in self.run.read_metrics() if key in r]


@pytest.fixture(scope="module", params=KINDS)
def trained(request, tmp_path_factory, tiny_model_dir) -> Trained:
    """Train one method, keeping its trainer and a snapshot of every weight taken just before training."""
    import tunesmith.train.common as common

    kind = request.param
    root = tmp_path_factory.mktemp(kind)
    recipe = method_recipe(root, tiny_model_dir, kind)
    run = create_run(recipe, root / "runs")
    seen: dict[str, Any] = {}

    def capture(trainer, *args):
        seen["trainer"] = trainer
        seen["before"] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        return common.fit_and_save(trainer, *args)

    module = "tunesmith.train.cpt" if kind == "cpt" else "tunesmith.train.preference"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(f"{module}.fit_and_save", capture)
        run_training(recipe, run)
    return Trained(kind, run, seen["trainer"], seen["before"])


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_loss_moves_the_right_way(trained):
    losses = trained.metric("loss")
    assert len(losses) == 16 and all(math.isfinite(x) for x in losses)
    assert mean(losses[-4:]) < mean(losses[:4]), losses
    if trained.kind in PREFERENCE:
        margins = trained.metric("rewards/margins")
        assert mean(margins[-4:]) > max(mean(margins[:4]), 0.0), margins
    if trained.kind == "dpo":  # the policy starts as its own reference: loss log 2, margin 0; then below log 2
        assert losses[0] == pytest.approx(math.log(2), abs=1e-5)
        assert mean(losses[-4:]) < math.log(2)


def test_reference_is_the_adapter_disabled_base(trained):
    """DPO and KTO keep one copy of the base: no reference model, and rewards start at exactly zero."""
    if trained.kind not in ("dpo", "kto"):
        pytest.skip("ORPO, SimPO and CPT have no reference model")
    from peft import PeftModel

    assert trained.trainer.ref_model is None
    assert isinstance(trained.trainer.model, PeftModel)
    first = trained.run.read_metrics()[0]
    assert first["rewards/chosen"] == 0.0 and first["rewards/rejected"] == 0.0


def test_only_adapter_weights_change(trained):
    after = dict(trained.trainer.model.named_parameters())
    assert set(after) == set(trained.before)
    lora = {name for name in after if ".lora_" in name}
    assert lora and {name for name, p in after.items() if p.requires_grad} == lora
    changed = {name for name, p in after.items() if not torch.equal(p.detach(), trained.before[name])}
    assert changed == lora
    frozen = set(after) - lora
    assert all(torch.equal(after[name].detach(), trained.before[name]) for name in frozen)


def test_saved_adapter_reloads_to_the_same_logits(trained, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = trained.trainer.model.eval()
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                         trained.run.adapter_dir).eval()
    with torch.no_grad():
        trained_logits = model(input_ids=PROBE_IDS.to(model.device)).logits.cpu()
        reloaded_logits = reloaded(input_ids=PROBE_IDS).logits
        with reloaded.disable_adapter():
            base_logits = reloaded(input_ids=PROBE_IDS).logits
    assert torch.allclose(trained_logits, reloaded_logits, atol=1e-5)
    assert not torch.allclose(reloaded_logits, base_logits, atol=1e-3)


def test_run_directory_records_the_method(trained):
    report = json.loads((trained.run.path / "train.json").read_text())
    if trained.kind == "cpt":  # packed into blocks: the length cuts no text, and the table says so
        assert "none is cut" in report["chosen"]["max_length"]["why"] and "are cut" not in \
            report["chosen"]["max_length"]["why"].replace("none is cut", "")
        from tunesmith.card import write_model_card

        blocks = [row["input_ids"] for row in trained.trainer.train_dataset]
        chosen = report["chosen"]["max_length"]
        assert (chosen["blocks"], chosen["tokens"]) == (len(blocks), sum(map(len, blocks)))
        seen = report["throughput"]["loss_tokens"]
        card = write_model_card(trained.run).read_text(encoding="utf-8")  # the card says how much text was trained
        assert (f"- text trained on: {chosen['tokens']:,} tokens in {len(blocks):,} blocks of up to 128 (every token "
                f"carries loss); training went through {seen:,} loss tokens, {seen / chosen['tokens']:.2f} epochs"
                ) in card
    assert report["method"] == trained.kind and report["steps"] == 16
    assert (trained.run.plots_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (trained.run.adapter_dir / "adapter_model.safetensors").is_file()
    if trained.kind in PREFERENCE:
        last_step = [r for r in trained.run.read_metrics() if "loss" in r][-1]
        own = {"rewards/margins", "kl"} if trained.kind == "kto" else {"rewards/margins", "rewards/accuracies"}
        assert own <= set(last_step)
        assert report["final_metrics"]["rewards/margins"] == pytest.approx(last_step["rewards/margins"], abs=1e-5)


def test_eval_scores_base_and_tuned_by_likelihood(trained):
    from tunesmith.eval import run_eval

    results = json.loads(run_eval(trained.run.load_recipe(), trained.run).read_text())
    assert results["examples"] == 16
    if trained.kind == "cpt":
        assert results["tuned"]["perplexity"] < results["base"]["perplexity"]
        from tunesmith.runs import run_summary

        summary = run_summary(trained.run)  # `runs list` shows CPT's score, perplexity
        assert summary["metric"] == "perplexity" and summary["tuned"] == results["tuned"]["perplexity"]
        return
    for variant in ("base", "tuned"):
        assert 0 <= results[variant]["preference_accuracy"] <= 1
    assert results["tuned"]["mean_margin"] > results["base"]["mean_margin"]
    assert len(results["samples"]) == 5 and "margin_tuned" in results["samples"][0]
    # pair by pair, as SFT's metrics: the difference with its interval and the pairs won, lost and tied
    accuracy = results["comparison"]["preference_accuracy"]
    assert accuracy["delta"] == pytest.approx(results["tuned"]["preference_accuracy"]
                                              - results["base"]["preference_accuracy"], abs=1e-4)
    assert accuracy["ci95"][0] <= accuracy["delta"] <= accuracy["ci95"][1]
    margin = results["comparison"]["mean_margin"]
    assert margin["wins"] + margin["losses"] + margin["ties"] == 16 and margin["delta"] > 0
    # DPO's implicit reward accuracy with the base as reference: the pairs whose margin the tuned model widened
    assert results["tuned"]["reward_accuracy"] == pytest.approx(margin["wins"] / 16, abs=1e-4)
    assert "reward_accuracy" not in results["base"]
    report = (trained.run.eval_dir / "report.html").read_text(encoding="utf-8")  # as every eval writes one
    assert "Pairs (5 of 16)" in report and "margin tuned" in report and "preference_accuracy" in report


def test_preference_accuracy_is_per_token_so_a_longer_chosen_answer_can_win():
    """A chosen answer of 30 likely tokens against a rejected one of 2 unlikely ones: summed, the short one wins
    under every model (the accuracy read 0 before and after training on a newcomer's data); per token, the chosen
    answer is the more likely."""
    from tunesmith.eval.preference import pair_summary, reward_accuracy

    chosen, rejected = [(-30.0, 30), (-8.0, 4)], [(-5.0, 2), (-3.0, 3)]
    summary = pair_summary(chosen, rejected)
    assert summary["preference_accuracy"] == 0.5  # -1.0 > -2.5 per token; -2.0 < -1.0
    assert summary["mean_margin"] == pytest.approx((-25.0 - 5.0) / 2)  # summed: what DPO's margin is made of
    assert reward_accuracy([-25.0, -5.0], [-20.0, -6.0]) == 0.5


def test_kto_eval_on_unpaired_rows_compares_tuned_with_base_row_by_row(trained, tmp_path, capsys):
    """Unpaired held-out rows have no pair margin; the tuned model is compared with its base row by row on the
    log-probability signed by the label (KTO's implied reward, sign-corrected)."""
    if trained.kind != "kto":
        pytest.skip("unpaired rows are KTO's")
    from tunesmith.eval import run_eval
    from tunesmith.train.preference import unpair

    pairs = [json.loads(line) for line in (PREFS / "eval.jsonl").read_text().splitlines() if line.strip()]
    held_out = tmp_path / "unpaired.jsonl"
    held_out.write_text("".join(json.dumps(row) + "\n" for row in unpair(pairs, seed=0)))
    results_file = run_eval(trained.run.load_recipe(), trained.run, data=held_out)
    results = json.loads(results_file.read_text())
    assert results["examples"] == 2 * len(pairs) and results["task_metric"] == "label_gap"
    from tunesmith.cli.app import _print_results

    capsys.readouterr()
    _print_results(trained.run.path, results_file, held_out)  # the table, and what its KTO columns mean
    printed = " ".join(capsys.readouterr().err.split())
    assert "label_gap: mean log-probability of the desirable answers" in printed and "signed_logp:" in printed
    signed = results["comparison"]["signed_logp"]
    assert signed["wins"] + signed["losses"] + signed["ties"] == results["examples"]
    assert signed["delta"] == pytest.approx(results["tuned"]["signed_logp"] - results["base"]["signed_logp"], abs=1e-3)
    assert signed["delta"] > 0 and signed["wins"] > signed["losses"]  # trained to prefer the desirable answers


@pytest.mark.parametrize("kind", PREFERENCE)
def test_conversations_are_refused_by_preference_methods(kind, tmp_path, tiny_model_dir):
    recipe = method_recipe(tmp_path, tiny_model_dir, kind, source=ORDERS)
    with pytest.raises(DataError) as caught:
        run_training(recipe, create_run(recipe, tmp_path / "runs"))
    message = caught.value.message
    assert "train.jsonl holds messages rows" in message and kind.upper() in message.upper()
    expected = "unpaired_preference or preference rows" if kind == "kto" else "needs preference rows"
    assert expected in message


def test_preference_pairs_are_refused_by_cpt(tmp_path, tiny_model_dir):
    recipe = method_recipe(tmp_path, tiny_model_dir, "cpt", source=PREFS)
    with pytest.raises(DataError) as caught:
        run_training(recipe, create_run(recipe, tmp_path / "runs"))
    assert "holds preference rows" in caught.value.message and "needs text rows" in caught.value.message
    assert "dpo" in caught.value.hint


def test_kto_takes_unpaired_rows_and_needs_two_per_batch(tmp_path, tiny_model_dir):
    from tunesmith.train.preference import unpair

    rows = [{"prompt": f"p{i}", "chosen": "good", "rejected": "bad"} for i in range(32)]
    unpaired = unpair(rows, seed=0)
    assert len(unpaired) == 64 and sum(r["label"] for r in unpaired) == 32
    assert all(0 < sum(r["label"] for r in unpaired[i : i + 8]) < 8 for i in range(0, 64, 8)), "batches mix labels"
    recipe = method_recipe(tmp_path, tiny_model_dir, "kto", batch_size=1)
    with pytest.raises(RecipeError, match=r"training\.batch_size"):
        run_training(recipe, create_run(recipe, tmp_path / "runs"))


def test_method_knobs_default_to_the_papers():
    recipe = validate_recipe({"data": {"train": "x.jsonl"}, "method": {"kind": "simpo"}})
    assert (recipe.method.beta, recipe.method.gamma) == (2.0, 0.5)
    defaults = {kind: validate_recipe({"data": {"train": "x.jsonl"}, "method": {"kind": kind}}).method
                for kind in ("dpo", "orpo", "kto")}
    assert defaults["dpo"].beta == 0.1 and defaults["dpo"].loss_type == "sigmoid"
    assert defaults["orpo"].beta == 0.1
    assert (defaults["kto"].beta, defaults["kto"].desirable_weight, defaults["kto"].undesirable_weight) == (0.1, 1, 1)
    with pytest.raises(RecipeError, match="dpx"):
        validate_recipe({"data": {"train": "x.jsonl"}, "method": {"kind": "dpx"}})


@pytest.mark.slow
def test_dpo_on_smollm2_widens_the_reward_margin(tmp_path):
    """A few DPO steps on the real embedded model: the reward margin is positive and rising."""
    from tunesmith.config import load_recipe

    recipe = load_recipe(REPO / "recipes" / "dpo.yaml", ["training.max_steps=8", "training.batch_size=4",
                                                         "training.logging_steps=1", "training.warmup_ratio=0",
                                                         "training.scheduler=constant"])
    run = create_run(recipe, tmp_path / "runs")
    run_training(recipe, run)
    margins = [r["rewards/margins"] for r in run.read_metrics() if "rewards/margins" in r]
    assert len(margins) == 8 and margins[0] == 0.0
    assert mean(margins[-4:]) > max(mean(margins[:2]), 0.0), margins  # each step sees new pairs: noisy


@pytest.mark.parametrize("on", [True, False])
def test_checkpointing_reaches_trl_by_its_current_name(on, tmp_path):
    """TRL defaults checkpointing on; the recipe's choice must win, without transformers' deprecation warning."""
    import warnings

    from trl import DPOConfig

    from tunesmith.runs import create_run
    from tunesmith.train.common import common_arguments

    recipe = validate_recipe({"data": {"train": "x"}, "training": {"gradient_checkpointing": on}})
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        config = DPOConfig(**common_arguments(recipe, create_run(recipe, tmp_path), "cpu", "fp32"))
    # transformers up to 5.17 knows only gradient_checkpointing; later ones both (the old name an alias)
    assert getattr(config, "activation_checkpointing", on) is on and config.gradient_checkpointing is on


def replay_kl_after(recipe: Recipe, run: Run) -> float:
    """KL(base || tuned) per token on the run's replay rows (data/replay.jsonl), as the anchor measures it."""
    from peft import PeftModel

    from tunesmith.data.template import encode_split
    from tunesmith.models import load_model, load_tokenizer
    from tunesmith.train.replay import ReplayBatches, anchor_kl, base_log_probs

    tokenizer = load_tokenizer(recipe.model.source)
    model = PeftModel.from_pretrained(load_model(recipe.model.source, torch.float32, "cpu"), str(run.adapter_dir))
    rows = [json.loads(line) for line in (run.path / "data" / "replay.jsonl").read_text().splitlines()]
    examples = [{"input_ids": e.input_ids, "labels": e.labels}
                for e in encode_split(tokenizer, rows, recipe.data.max_length).examples]
    batches = ReplayBatches(examples, len(examples), tokenizer.pad_token_id, 0)
    batch = batches.at(0, "cpu")
    with torch.no_grad():
        return anchor_kl(model, batch, base_log_probs(model, model, batch)).item()


@pytest.mark.parametrize("kind", KINDS)
def test_the_replay_anchor_holds_the_base_on_general_rows_for_every_method(kind, tmp_path, tiny_model_dir):
    """With data.replay the method's steps also carry weight x KL(base || tuned) on general rows the base answered:
    train.json says so, the KL is logged, and at a heavy weight the tuned model stays closer to the base on those
    rows than the same run without it."""
    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps({"prompt": f"Name a colour, number {i}.", "answer": f"Blue {i}."}) + "\n"
                               for i in range(12)), encoding="utf-8")
    kls = {}
    for ratio in (0.5, 0.0):
        root = tmp_path / f"ratio{ratio}"
        recipe = method_recipe(root, tiny_model_dir, kind, max_steps=8,
                               replay={"source": str(general), "ratio": ratio, "weight": 50.0})
        run = create_run(recipe, root / "runs")
        run_training(recipe, run)
        if ratio:
            report = json.loads((run.path / "train.json").read_text())["replay"]
            assert report["loss"] == "kl" and report["rows_per_step"] == 4, report
            assert any("replay_kl" in m for m in run.read_metrics() if "loss" in m)
            replay_run = run
        else:
            (run.path / "data").mkdir(exist_ok=True)
            (run.path / "data" / "replay.jsonl").write_bytes((replay_run.path / "data" / "replay.jsonl").read_bytes())
        kls[ratio] = replay_kl_after(recipe, run)
    assert kls[0.5] < 0.5 * kls[0.0], kls


def test_the_anchor_joins_accumulated_dpo_micro_batches_as_one_batch(tmp_path, tiny_model_dir):
    """DPO's loss is not normalised for gradient accumulation (the Trainer divides it), SFT's is: the anchor's term
    must follow the method's loss either way. Two steps of 2 x 2 accumulated pairs (one replay row each) reach the
    adapter of two steps of 4 pairs (two replay rows): a KL term divided twice, or not at all, would not. Two steps,
    since the KL's gradient is zero while the adapter is still at the base."""
    from safetensors.torch import load_file

    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps({"prompt": f"Name a colour, number {i}.", "answer": f"Blue {i}."}) + "\n"
                               for i in range(1, 9)), encoding="utf-8")
    adapters = {}
    for name, batch, accumulate in (("whole", 4, 1), ("micro", 2, 2)):
        recipe = method_recipe(tmp_path / name, tiny_model_dir, "dpo", max_steps=2, batch_size=batch,
                               grad_accum=accumulate, replay={"source": str(general), "ratio": 0.5, "weight": 50.0},
                               precision="fp32")  # fp32 throughout: bf16's rounding would move more than padding
        run = create_run(recipe, tmp_path / name / "runs")
        run_training(recipe, run)
        adapters[name] = load_file(run.path / "adapter" / "adapter_model.safetensors")
        assert json.loads((run.path / "train.json").read_text())["replay"]["rows_per_step"] == 2
    # padding to 2 rows instead of 4 moves a few values by ~3e-5; dividing the KL twice moves them by ~7e-3
    for key in adapters["whole"]:
        torch.testing.assert_close(adapters["micro"][key], adapters["whole"][key], atol=2e-4, rtol=1e-3)
