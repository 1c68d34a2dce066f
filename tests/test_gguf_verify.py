"""The llama.cpp check after a GGUF export: tiny llama and qwen2 models agree with transformers in
llama.cpp, the result lands in the manifest, and a broken conversion is caught, kept and flagged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.test_gguf_export import build_tiny
from tunesmith.errors import TunesmithError
from tunesmith.export import gguf as gguf_export
from tunesmith.export import verify
from tunesmith.export.gguf import write_gguf
from tunesmith.export.verify import shared_prefix_length, verify_gguf

needs_llama_cpp = pytest.mark.skipif(not verify.llama_cpp_available(),
                                     reason="llama-cpp-python not installed (pip install '.[gguf]')")


@pytest.fixture(scope="module")
def model_dirs(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny llama and qwen2 at the usual initialisation (std 0.02). The conftest model's std 0.3 weights
    amplify quantization noise about tenfold: its Q8_0 file agrees on ~93% only, below any real model."""
    return {kind: build_tiny(tokenizer_dir, tmp_path_factory.mktemp(kind), kind) for kind in ("llama", "qwen2")}


def test_shared_prefix_is_measured_across_all_sequences():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert shared_prefix_length([[7, 1], [8, 1]]) == 0


@needs_llama_cpp
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("quant", ["F32", "BF16", "Q8_0"])
def test_llama_cpp_agrees_with_transformers(kind, quant, model_dirs, tmp_path):
    model_dir = model_dirs[kind]
    path = write_gguf(model_dir, tmp_path / f"{kind}.{quant}.gguf", quant)
    result = verify_gguf(path, model_dir, quant)
    assert result.threshold == {"F32": 0.99, "BF16": 0.97, "Q8_0": 0.95}[quant]
    assert result.passed and result.agreement >= result.threshold, result
    assert result.tokenization_matches == result.prompts == len(verify.VERIFY_PROMPTS)
    assert result.positions > 8 * verify.ANSWER_TOKENS // 2


def test_the_runs_own_conversations_are_picked_as_they_would_be_answered():
    from tunesmith.export.verify import TASK_PROMPTS, held_out_conversations

    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}]
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    rows = [{"messages": chat, "tools": tools}, {"prompt": "x", "completion": "y"},
            {"messages": chat[:2]}] + [{"messages": chat}] * 20
    picked = held_out_conversations(rows)
    assert picked[0] == (chat[:-1], tools) and len(picked) == TASK_PROMPTS
    assert all(messages[-1]["role"] == "user" for messages, _ in picked)
    assert held_out_conversations(None) == []


@needs_llama_cpp
def test_the_runs_own_multi_turn_prompts_count_in_the_check(model_dirs):
    """The held-out conversations (a system prompt, earlier turns) are rendered by the checkpoint's template,
    tokenized by both engines and reported beside the fixed prompts, which alone meet the threshold they were
    measured on; a conversation over TASK_PROMPT_TOKENS is left out."""
    model_dir = model_dirs["llama"]
    path = write_gguf(model_dir, model_dir.parent / "task.F32.gguf", "F32")
    conversations = [([{"role": "system", "content": "Answer in ISO dates."},
                       {"role": "user", "content": "the third of May 2021"},
                       {"role": "assistant", "content": "2021-05-03"},
                       {"role": "user", "content": "Christmas day 1999"}], None),
                     ([{"role": "user", "content": "New year's eve 2000"}], None),
                     ([{"role": "user", "content": "word " * (verify.TASK_PROMPT_TOKENS + 10)}], None)]
    result = verify_gguf(path, model_dir, "F32", conversations)
    alone = verify_gguf(path, model_dir, "F32")
    assert result.task_prompts == 2 and result.prompts == len(verify.VERIFY_PROMPTS) + 2
    assert result.tokenization_matches == result.prompts and result.positions == alone.positions
    assert result.passed and result.task_agreement >= 0.99 and alone.task_agreement is None
    assert "on 2 of the run's own held-out prompts (reported)" in result.summary()


def make_run(model_dir: Path, tmp_path: Path):
    """A run whose adapter is a random (non-zero) LoRA on `model_dir`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunesmith.config import load_recipe
    from tunesmith.runs import create_run

    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(f"name: tiny\nmodel:\n  source: {model_dir}\ndata:\n  train: train.jsonl\n",
                           encoding="utf-8")
    run = create_run(load_recipe(recipe_file), tmp_path / "runs")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), lora).save_pretrained(run.adapter_dir)
    return run


def export(run, *args: str):
    from tunesmith.cli import app

    return CliRunner().invoke(app, ["export", str(run.path), "--format", "gguf", *args])


def manifest_of(run) -> dict:
    return json.loads((run.exports_dir / "manifest.json").read_text(encoding="utf-8"))


@needs_llama_cpp
def test_export_verifies_by_default_and_records_the_result(model_dirs, tmp_path):
    run = make_run(model_dirs["llama"], tmp_path)
    result = export(run, "--quant", "Q8_0")
    assert result.exit_code == 0, result.output
    assert "top-1 agreement" in result.output and "passes the 95% threshold" in result.output
    check = manifest_of(run)["gguf"]["Q8_0"]["verify"]
    assert check["passed"] is True and check["agreement"] >= 0.95 and check["threshold"] == 0.95
    assert check["tokenization_matches"] == check["prompts"]


@needs_llama_cpp
def test_a_broken_conversion_fails_and_the_file_is_kept_and_flagged(tiny_model_dir, tmp_path, monkeypatch):
    """Without the Q/K permutation llama.cpp runs RoPE on the wrong pairs: even F32 must fail the check."""
    run = make_run(tiny_model_dir, tmp_path)
    monkeypatch.setattr(gguf_export, "prepare_weights", lambda name, weights, config, spec: weights)
    result = export(run, "--quant", "F32")
    assert isinstance(result.exception, TunesmithError)  # the CLI's main() turns it into exit code 2
    assert "should agree on at least 99%" in result.exception.message and "--no-verify" in result.exception.hint
    target = run.exports_dir / "gguf" / "tiny.F32.gguf"
    assert target.is_file()
    check = manifest_of(run)["gguf"]["F32"]["verify"]
    assert check["passed"] is False and check["agreement"] < 0.99


def test_no_verify_skips_the_check_and_verify_needs_llama_cpp(tiny_model_dir, tmp_path, monkeypatch):
    run = make_run(tiny_model_dir, tmp_path)
    result = export(run, "--quant", "F16", "--no-verify")
    assert result.exit_code == 0, result.output
    assert "verify" not in manifest_of(run)["gguf"]["F16"]

    monkeypatch.setattr(verify, "llama_cpp_available", lambda: False)
    monkeypatch.setattr(gguf_export, "llama_cpp_available", lambda: False)
    (run.exports_dir / "manifest.json").unlink()  # the default export's own record, not the one before
    assert export(run, "--quant", "F16").exit_code == 0  # default: no llama.cpp, no check
    assert "verify" not in manifest_of(run)["gguf"]["F16"]
    refused = export(run, "--quant", "F16", "--verify")
    assert isinstance(refused.exception, TunesmithError)
    assert "--verify needs llama-cpp-python, which is not installed" in refused.exception.message
    assert "pip install 'tunesmith[gguf]'" in refused.exception.hint


def test_a_type_without_a_threshold_is_recorded_as_reported_not_passed():
    """exports/manifest.json: Q4_0 at 73% was `passed: true` with `threshold: null`, read by anyone as a pass."""
    from tunesmith.export.verify import Verification

    reported = Verification("Q4_0", 100, 0.73, 0.7, None, 8, 8)
    assert reported.as_dict()["passed"] is None and "reported only" in reported.summary()
    assert Verification("Q8_0", 100, 0.97, 0.96, 0.95, 8, 8).as_dict()["passed"] is True


@needs_llama_cpp
def test_a_re_export_that_fails_its_check_never_replaces_the_file_that_passed(model_dirs, tmp_path, monkeypatch):
    """A good Q8_0/F32 file, then a broken conversion of the same type: the good file stays (serve and Ollama
    use it), the new one is kept aside in a hidden .rejected/ (no listing of the exports takes it for the export); a
    later good export replaces the file and drops the rejected."""
    from tunesmith.serve.catalog import exported_gguf

    run = make_run(model_dirs["llama"], tmp_path)
    assert export(run, "--quant", "F32").exit_code == 0
    target = run.exports_dir / "gguf" / "tiny.F32.gguf"
    good = target.read_bytes()

    with monkeypatch.context() as patch:
        patch.setattr(gguf_export, "prepare_weights", lambda name, weights, config, spec: weights)
        result = export(run, "--quant", "F32")
    assert isinstance(result.exception, TunesmithError)
    assert "The earlier tiny.F32.gguf, which passed its check, is kept" in result.exception.message
    rejected = run.exports_dir / "gguf" / ".rejected" / "tiny.F32.gguf"
    assert target.read_bytes() == good and rejected.is_file() and rejected.read_bytes() != good
    assert "kept for inspection in exports/gguf/.rejected/" in result.exception.message
    entry = manifest_of(run)["gguf"]["F32"]
    assert entry["verify"]["passed"] is True and entry["rejected"]["verify"]["passed"] is False
    assert entry["rejected"]["path"] == "exports/gguf/.rejected/tiny.F32.gguf"
    assert exported_gguf(run) == target
    assert sorted(p.name for p in target.parent.glob("*.gguf")) == ["tiny.F32.gguf"]  # what push and the card list
    assert not any((target.parent / ".unverified").iterdir())

    assert export(run, "--quant", "F32").exit_code == 0
    assert not rejected.exists() and "rejected" not in manifest_of(run)["gguf"]["F32"]
