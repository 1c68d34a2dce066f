"""Forgetting probes: the checks, the bundled set, and the regression flag on a tiny llama whose "tuned" adapter
is deliberately broken (flag raised) or a no-op (flag down); then through `tunesmith eval` on a trained tiny run."""

import hashlib
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import make_tiny_project
from tunesmith.config import load_recipe
from tunesmith.errors import TunesmithError
from tunesmith.eval import run_eval
from tunesmith.eval.forgetting import (
    BUNDLED_PROBES,
    GENERAL_TEXT,
    NEAR_TIE_MARGIN,
    ask,
    general_paragraphs,
    load_probes,
    regression,
    run_probes,
    text_perplexity,
)
from tunesmith.eval.gate import GateRule, check_gate
from tunesmith.eval.probe_checks import CHECKS, passes
from tunesmith.results import EvalResults
from tunesmith.runs import create_run
from tunesmith.train import run_training

SETTINGS = SimpleNamespace(probe_margin=0.05, probe_perplexity_margin=0.05, probe_max_new_tokens=6, batch_size=4)


@pytest.mark.parametrize(("check", "expected", "good", "bad"), [
    ("contains", "Paris", "The capital of France is paris.", "It is Lyon."),
    ("contains", ["CO2", "carbon dioxide"], "Carbon dioxide.", "Oxygen."),
    ("exact", "yes", " Yes. ", "yes, of course"),
    ("exact", "Hello there.", "hello there", "hello"),
    ("regex", r"1,\s*2,\s*3", "1, 2, 3, 4", "one two three"),
    ("number", 12, "There are 12 months.", "There are twelve months."),
    ("number", 5, "2 + 3 = 5", "2 + 3 = 6"),
    ("number", "0", "0 degrees", "32 degrees"),
    ("number", 1000, "About 1,000 meters.", "About 1,001 meters."),  # "1,000" was read as 1.0
    ("number", 3.5, "3,5 kg", "3,6 kg"),  # a decimal comma
    ("number", 1234567, "The population is 1,234,567, roughly.", "The population is 1,234,568, roughly."),
    ("all_caps", None, "GREEN, LIKE GRASS!", "GREEN like grass"),
    ("word_count", 3, "Red, green, blue.", "Red, green, blue and yellow."),
])
def test_each_check_passes_the_right_answer_and_fails_the_wrong_one(check, expected, good, bad):
    probe = {"check": check, "answer": expected}
    assert passes(probe, good) and not passes(probe, bad)


def test_bundled_probes_are_valid_and_cover_three_kinds_of_skill():
    probes = load_probes(BUNDLED_PROBES)
    assert 40 <= len(probes) <= 60
    categories = {p["category"] for p in probes}
    assert categories == {"factual", "reasoning", "instruction"}
    assert all(sum(p["category"] == c for p in probes) >= 10 for c in categories)
    assert {p["check"] for p in probes} <= set(CHECKS) and len({p["id"] for p in probes}) == len(probes)
    paragraphs = general_paragraphs(GENERAL_TEXT)
    assert len(paragraphs) >= 5 and all(len(p.split()) > 30 for p in paragraphs)


def test_a_bad_probe_file_is_named_with_its_line(tmp_path):
    path = tmp_path / "probes.jsonl"
    path.write_text('{"prompt": "Say hi", "check": "exact", "answer": "hi"}\n{"prompt": "x", "check": "rhymes"}\n')
    with pytest.raises(TunesmithError, match=r"probes.jsonl, line 2: unknown check 'rhymes'"):
        load_probes(path)
    path.write_text('{"prompt": "x", "check": "regex", "answer": "(unclosed"}\n')
    with pytest.raises(TunesmithError, match=r"line 1: .* not a valid regular expression"):
        load_probes(path)
    with pytest.raises(TunesmithError, match="no such file"):
        load_probes(tmp_path / "missing.jsonl")


@pytest.fixture(scope="module")
def tiny_peft(tiny_model_dir):
    """A tiny llama with a LoRA adapter whose weights the tests set (zero: tuned == base; huge: broken)."""
    from peft import LoraConfig, get_peft_model

    from tunesmith.models import load_model, load_tokenizer

    model = load_model(tiny_model_dir, torch.float32, "cpu")
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                  init_lora_weights=False)).eval()
    return peft_model, load_tokenizer(tiny_model_dir)


def set_lora_scale(model, scale: float) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn_like(parameter) * scale)


def probes_the_base_passes(model, tokenizer) -> list[dict]:
    """Probes whose expected answers are the base's own greedy answers, so base scores 1.0 by construction."""
    prompts = ["Say hello in one short sentence.", "You are a helpful assistant.", "system user assistant",
               "Convert the order to JSON.", "hello", "Say hello.", "assistant", "JSON please"]
    probes = [{"id": str(i), "category": "factual" if i % 2 else "instruction", "prompt": p, "check": "exact"}
              for i, p in enumerate(prompts)]
    with model.disable_adapter():
        answers = ask(model, tokenizer, probes, SETTINGS.probe_max_new_tokens, SETTINGS.batch_size).answers
    return [{**probe, "answer": answer} for probe, answer in zip(probes, answers, strict=True) if answer.strip()]


def variants_of(model):
    return {"base": (model, model.disable_adapter), "tuned": (model, torch.no_grad)}


def test_a_broken_tuned_model_is_flagged_as_a_regression(tiny_peft):
    model, tokenizer = tiny_peft
    probes = probes_the_base_passes(model, tokenizer)
    assert len(probes) >= 4
    set_lora_scale(model, 5.0)  # far from the base weights: answers and text likelihood fall apart
    results = run_probes(variants_of(model), tokenizer, probes, general_paragraphs()[:3], SETTINGS)
    assert results["base"]["accuracy"] == 1.0 and results["tuned"]["accuracy"] < 0.5
    assert results["tuned"]["perplexity"] != results["base"]["perplexity"]  # a random tiny model: no direction
    assert results["regression"] is True
    assert any("probe accuracy fell" in reason for reason in results["reasons"])
    comparison = results["comparison"]
    assert comparison["probe_accuracy"]["losses"] >= len(probes) // 2 and comparison["probe_accuracy"]["wins"] == 0
    assert {"probe/factual", "probe/instruction", "probe_perplexity"} <= set(comparison)
    assert not comparison["probe_perplexity"]["higher_is_better"]
    lost = [row for row in results["rows"] if row["base_passed"] and not row["tuned_passed"]]
    assert lost and lost[0]["base"] == lost[0]["expected"]
    [verdict] = check_gate(results_with(results), [GateRule("probes")])
    assert not verdict.passed and "probe accuracy fell" in verdict.message


def test_each_probe_records_the_margin_its_first_token_was_chosen_by(tiny_peft):
    """The margin is the base's top-1 minus top-2 probability at the end of the rendered prompt (checked against a
    forward pass of each prompt alone, no batch, no padding); each lost probe is marked a near-tie by it."""
    from tunesmith.data.template import render
    from tunesmith.eval.add_ons import probe_verdict
    from tunesmith.results import ProbesBlock

    model, tokenizer = tiny_peft
    set_lora_scale(model, 0.0)
    probes = probes_the_base_passes(model, tokenizer)
    set_lora_scale(model, 5.0)
    results = run_probes(variants_of(model), tokenizer, probes, general_paragraphs()[:3], SETTINGS)
    for probe, row in zip(probes, results["rows"], strict=True):
        text = render(tokenizer, [{"role": "user", "content": probe["prompt"]}], generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with model.disable_adapter(), torch.no_grad():
            top = model(input_ids=ids).logits[0, -1].softmax(-1).topk(2).values
        assert row["base_first_token_margin"] == pytest.approx(float(top[0] - top[1]), abs=1e-3)
        assert 0 <= row["tuned_first_token_margin"] <= 1
    lost = results["lost"]
    assert lost and [p["id"] for p in lost] == [r["id"] for r in results["rows"]
                                                 if r["base_passed"] and not r["tuned_passed"]]
    assert all(p["near_tie"] == (p["base_first_token_margin"] < NEAR_TIE_MARGIN) for p in lost)
    block = ProbesBlock(count=4, margin=0.05, perplexity_margin=0.05, base={"accuracy": 1.0},
                        tuned={"accuracy": 0.5}, regression=True, reasons=["probe accuracy fell 0.500"],
                        lost=[{"id": "a", "base_first_token_margin": 0.01, "near_tie": True},
                              {"id": "b", "base_first_token_margin": 0.4, "near_tie": False}])
    assert probe_verdict(block).endswith("(1 of the 2 probes lost were near-ties in the base, its first answer "
                                         "token under 0.05 ahead of the next: a)")


def test_an_unchanged_tuned_model_is_not_flagged(tiny_peft):
    model, tokenizer = tiny_peft
    set_lora_scale(model, 0.0)  # lora_B = 0: the adapter adds nothing
    probes = probes_the_base_passes(model, tokenizer)
    results = run_probes(variants_of(model), tokenizer, probes, general_paragraphs()[:3], SETTINGS)
    assert results["base"]["accuracy"] == results["tuned"]["accuracy"] == 1.0
    assert results["tuned"]["perplexity"] == pytest.approx(results["base"]["perplexity"], rel=1e-4)
    assert results["regression"] is False and results["reasons"] == []
    [verdict] = check_gate(results_with(results), [GateRule("probes")])
    assert verdict.passed and verdict.message.startswith("ok: probes accuracy base 1.0000")


def test_text_perplexity_is_the_models_own_loss_over_the_paragraph(tiny_peft):
    model, tokenizer = tiny_peft
    set_lora_scale(model, 0.0)
    paragraph = general_paragraphs()[0]
    ids = torch.tensor([tokenizer(paragraph + tokenizer.eos_token, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        expected = torch.exp(model(input_ids=ids, labels=ids).loss).item()
        assert text_perplexity(model, tokenizer, [paragraph], batch_size=2) == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize(("tuned", "flagged", "reason"), [
    ({"accuracy": 0.80, "perplexity": 10.0}, False, None),  # a drop of exactly the margin is allowed
    ({"accuracy": 0.79, "perplexity": 10.0}, True, "probe accuracy fell 0.060 (0.850 → 0.790)"),
    ({"accuracy": 0.85, "perplexity": 10.4}, False, None),
    ({"accuracy": 0.95, "perplexity": 10.6}, True, "general-text perplexity rose 6.0% (10.000 → 10.600)"),
])
def test_regression_margins(tuned, flagged, reason):
    found, reasons = regression({"base": {"accuracy": 0.85, "perplexity": 10.0}, "tuned": tuned}, SETTINGS)
    assert found is flagged and len(reasons) == int(flagged)
    assert not flagged or reasons[0].startswith(reason)


def results_with(probes: dict) -> EvalResults:
    return EvalResults.model_validate({"examples": 1, "task_metric": "loss", "tuned": {"loss": 0.9},
                                       "comparison": {"loss": {"base": 1.0, "tuned": 0.9, "delta": -0.1, "ci95": None,
                                                               "higher_is_better": False}}, "probes": probes})


@pytest.fixture(scope="module")
def probed_run(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("probes")
    recipe_file = make_tiny_project(root, tiny_model_dir, eval_rows=6)
    recipe = load_recipe(recipe_file, ["training.max_steps=8", "eval.probes=true", "eval.probe_max_new_tokens=8",
                                       "eval.batch_size=24"])
    run = create_run(recipe, root / "runs")
    run_training(recipe, run)
    run_eval(recipe, run)
    return run


def test_eval_writes_the_probe_block_with_both_variants(probed_run):
    results = json.loads((probed_run.eval_dir / "results.json").read_text())
    probes = results["probes"]
    assert probes["count"] == len(load_probes(BUNDLED_PROBES)) and isinstance(probes["regression"], bool)
    for variant in ("base", "tuned"):
        assert {"accuracy", "factual", "reasoning", "instruction", "perplexity"} <= set(probes[variant])
        assert probes[variant]["perplexity"] > 1
    assert probes["comparison"]["probe_accuracy"]["base"] == probes["base"]["accuracy"]
    assert probes["file"] == {"path": str(BUNDLED_PROBES), "bundled": True,
                              "sha256": hashlib.sha256(BUNDLED_PROBES.read_bytes()).hexdigest()}
    report = (probed_run.eval_dir / "report.html").read_text()
    assert "forgetting probes" in report and "Forgetting probes, answer by answer" in report
    assert probes["rows"][0]["prompt"] in report


OWN_PROBES = [{"id": "hi", "category": "greeting", "prompt": "Say hello.", "check": "contains", "answer": "hello"},
              {"id": "json", "category": "format", "prompt": "Convert the order to JSON.", "check": "regex",
               "answer": "[{}]"},
              {"id": "two", "category": "format", "prompt": "Reply in two words.", "check": "word_count", "answer": 2}]


def test_cli_prints_the_probes_and_gates_on_them(probed_run, tmp_path):
    own = tmp_path / "my_probes.jsonl"
    own.write_text("".join(json.dumps(probe) + "\n" for probe in OWN_PROBES))
    result = subprocess.run([sys.executable, "-m", "tunesmith", "eval", str(probed_run.path), "--fail-if-worse",
                             "probes", "--set", f"eval.probe_file={own}"], capture_output=True, text=True,
                            timeout=600, cwd=probed_run.path.parent)
    results = json.loads((probed_run.eval_dir / "results.json").read_text())
    assert results["probes"]["count"] == 3 and {"greeting", "format"} <= set(results["probes"]["tuned"])
    assert results["probes"]["file"]["path"] == str(own) and not results["probes"]["file"]["bundled"]
    text = " ".join(result.stderr.split())
    assert "forgetting probes (3 prompts of my_probes.jsonl" in text
    assert "probe_accuracy" not in text  # rows are named by category
    assert "accuracy" in text and "perplexity" in text
    if results["probes"]["regression"]:
        assert result.returncode == 3 and "WORSE: probes:" in text
    else:
        assert result.returncode == 0 and "ok: probes accuracy" in text and "no regression" in text
    card = (probed_run.path / "README.md").read_text()
    assert "Forgetting probes" in card and "| accuracy |" in card and "delta (95% CI)" in card
