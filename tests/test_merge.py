"""`tunesmith merge`: one adapter into its base (logits checked), several adapters into one (PEFT's
combinations, checked against hand-computed factors and the exact weighted sum), whole models (linear,
slerp, TIES against the base), sharded output, and the refusals."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tests.conftest import build_tiny_llama
from tunesmith.errors import TunesmithError
from tunesmith.merge import run_merge
from tunesmith.merge.into_base import CHECK_PROMPTS, check_prompt_ids, prompt_logits
from tunesmith.merge.models import merge_tensor, slerp

Q_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
Q_B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"


def make_adapter(base: Path, target: Path, seed: int, r: int = 4, alpha: int = 8, **options) -> Path:
    """A LoRA adapter with random (non-zero) A and B, so it really changes the model."""
    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules="all-linear", init_lora_weights=False, **options)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), config).save_pretrained(target)
    return target


def make_finetune(base: Path, target: Path, seed: int, scale: float = 0.05) -> Path:
    """A "full fine-tune" of `base`: every weight moved by seeded noise."""
    model = AutoModelForCausalLM.from_pretrained(base)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))
    model.save_pretrained(target)
    (target / "tokenizer.json").write_bytes((base / "tokenizer.json").read_bytes())
    (target / "tokenizer_config.json").write_bytes((base / "tokenizer_config.json").read_bytes())
    return target


def adapter_delta(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    """ΔW of every adapted layer, as PEFT computes it (scale included)."""
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    from peft.tuners.lora import LoraLayer

    return {name: module.get_delta_weight("default") for name, module in model.named_modules()
            if isinstance(module, LoraLayer) and "default" in module.lora_A}


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {"a": make_adapter(tiny_model_dir, root / "a", seed=1),
            "b": make_adapter(tiny_model_dir, root / "b", seed=2),
            "rank8_rslora": make_adapter(tiny_model_dir, root / "c", seed=3, r=8, use_rslora=True)}


def logits(model_dir: Path, prompt_dir: Path, adapter: Path | None = None,
           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    return prompt_logits(model.eval(), check_prompt_ids(prompt_dir))


def test_one_adapter_merges_into_its_base_with_the_logits_checked(adapters, tiny_model_dir, tmp_path):
    out = run_merge([adapters["a"]], tmp_path / "merged", dtype="bf16")
    record = json.loads((out / "merge.json").read_text())
    check = record["verification"]
    assert record["kind"] == "adapter into base" and record["base"] == str(tiny_model_dir.resolve())
    assert check["prompts"] == len(CHECK_PROMPTS) and check["max_abs_logit_diff"] < 1e-4
    assert check["dtype"] == "bf16" and check["max_abs_logit_diff_after_cast"] > 0
    assert check["top1_agreement_after_cast"] > 0.8
    weights = load_file(out / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    expected = logits(tiny_model_dir, tiny_model_dir, adapters["a"])
    got = logits(out, tiny_model_dir, dtype=torch.bfloat16)  # the saved checkpoint, run as it was checked
    assert float((expected - got).abs().max()) == pytest.approx(check["max_abs_logit_diff_after_cast"], rel=1e-3)
    assert float((expected - logits(tiny_model_dir, tiny_model_dir)).abs().max()) > 1.0  # the adapter matters
    assert not list(tmp_path.glob(".merged.*"))  # no temporary folder left behind
    from tunesmith.runs import current_umask

    modes = {file.name: file.stat().st_mode & 0o777 for file in out.iterdir() if file.is_file()}
    assert set(modes.values()) == {0o666 & ~current_umask()}, modes  # transformers wrote the weights 0600
    run_merge([adapters["a"]], out)  # its own earlier output is replaced
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.float32}


def test_merge_refuses_an_output_folder_holding_other_files(adapters, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(TunesmithError, match=r"mine already holds files that tunesmith did not write"):
        run_merge([adapters["a"]], out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_linear_combines_a_and_b_factors_the_way_peft_documents(adapters, tmp_path):
    """linear: A = Σ sign·√|wᵢsᵢ|·Aᵢ and B = Σ √|wᵢsᵢ|·Bᵢ (s = alpha/r = 2), result alpha = r (scale 1)."""
    weights = [0.7, -0.3]
    out = run_merge([adapters["a"], adapters["b"]], tmp_path / "linear", method="linear", weights=weights)
    got = load_file(out / "adapter_model.safetensors")
    inputs = [load_file(adapters[k] / "adapter_model.safetensors") for k in ("a", "b")]
    factors = [math.sqrt(abs(w * 2.0)) for w in weights]
    expected_a = sum(math.copysign(f, w) * t[Q_A] for f, w, t in zip(factors, weights, inputs, strict=True))
    expected_b = sum(f * t[Q_B] for f, t in zip(factors, inputs, strict=True))
    assert torch.allclose(got[Q_A], expected_a, atol=1e-6) and torch.allclose(got[Q_B], expected_b, atol=1e-6)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 4
    record = json.loads((out / "merge.json").read_text())
    assert record["method"] == "linear" and record["weights"] == weights
    assert record["verification"]["relative_delta_error"] > 0.1  # linear is only an approximation


def test_a_merge_output_given_to_a_run_command_says_how_to_score_and_use_it(adapters, tiny_model_dir, tmp_path):
    from tunesmith.runs import open_run

    combined = run_merge([adapters["a"], adapters["b"]], tmp_path / "cat", method="cat")
    with pytest.raises(TunesmithError) as caught:
        open_run(combined)
    hint = caught.value.hint
    assert f"tunesmith compare --prompts eval.jsonl {combined}" in hint and "combined adapter" in hint
    assert f"tunesmith merge {combined} --out" in hint and "model.source" not in hint  # an adapter is no model
    whole = run_merge([adapters["a"]], tmp_path / "whole")
    with pytest.raises(TunesmithError) as caught:
        open_run(whole)
    assert "whole model" in caught.value.hint and f"model.source: {whole}" in caught.value.hint
    assert f"tunesmith chat {whole}" in caught.value.hint


def test_compare_takes_an_into_base_merge_by_the_combined_adapter_beside_its_model(adapters, tmp_path):
    """`merge --into-base` of several adapters writes the whole model and its combined adapter/ beside it: the
    compare command its note suggests scores that adapter."""
    from tunesmith.eval.compare import adapter_source

    out = run_merge([adapters["a"], adapters["b"]], tmp_path / "both", method="cat", into_base=True)
    assert (out / "config.json").is_file() and adapter_source(out).adapter_dir == out / "adapter"


def test_cat_is_exact_even_across_ranks_and_rslora(adapters, tiny_model_dir, tmp_path):
    weights = [0.6, 0.4]
    out = run_merge([adapters["a"], adapters["rank8_rslora"]], tmp_path / "cat", method="cat", weights=weights)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 12
    assert json.loads((out / "merge.json").read_text())["verification"]["relative_delta_error"] < 1e-5
    parts = [adapter_delta(tiny_model_dir, adapters[k]) for k in ("a", "rank8_rslora")]
    got = adapter_delta(tiny_model_dir, out)  # reloaded from disk: the saved scale is what users get
    for name, delta in got.items():
        expected = weights[0] * parts[0][name] + weights[1] * parts[1][name]
        assert torch.allclose(delta, expected, atol=1e-5), name


def test_entrywise_methods_refuse_different_ranks_and_need_density(adapters, tmp_path):
    with pytest.raises(TunesmithError, match="same rank") as error:
        run_merge([adapters["a"], adapters["rank8_rslora"]], tmp_path / "x", method="ties", density=0.5)
    assert "cat" in error.value.hint
    with pytest.raises(TunesmithError, match="needs --density"):
        run_merge([adapters["a"], adapters["b"]], tmp_path / "x", method="dare_ties")
    with pytest.raises(TunesmithError, match="does not apply"):
        run_merge([adapters["a"], adapters["b"]], tmp_path / "x", method="cat", density=0.5)
    with pytest.raises(TunesmithError, match=r"slerp merges whole models \(fine-tuned checkpoints\), and these "
                                             r"inputs are adapters") as error:  # a documented method, for other inputs
        run_merge([adapters["a"], adapters["b"]], tmp_path / "x", method="slerp")
    assert "merge each adapter into its base first" in error.value.hint
    assert not (tmp_path / "x").exists()


def test_dare_is_reproducible_with_its_seed(adapters, tmp_path):
    runs = [run_merge([adapters["a"], adapters["b"]], tmp_path / f"d{i}", method="dare_ties", density=0.5, seed=seed)
            for i, seed in enumerate((7, 7, 8))]
    first, again, other = (load_file(out / "adapter_model.safetensors")[Q_A] for out in runs)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_combined_adapters_into_base_from_the_command_line(adapters, tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    out = tmp_path / "both"
    result = CliRunner().invoke(app, ["merge", str(adapters["a"]), str(adapters["b"]), "--method", "svd",
                                      "--weights", "0.5,0.5", "--into-base", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert "combined adapter (svd, rank 4)" in result.output and "merged vs base+adapter on 3 prompts" in result.output
    record = json.loads((out / "merge.json").read_text())
    assert json.loads(result.stdout[result.stdout.index("{"):]) == record
    assert record["kind"] == "adapters into base" and record["verification"]["into_base"]["max_abs_logit_diff"] < 1e-4
    assert (out / "config.json").is_file() and (out / "adapter" / "adapter_config.json").is_file()
    expected = logits(tiny_model_dir, tiny_model_dir, out / "adapter")
    assert float((expected - logits(out, tiny_model_dir)).abs().max()) < 1e-4


def test_adapters_of_different_bases_are_refused(adapters, tokenizer_dir, tmp_path):
    other_base = build_tiny_llama(tokenizer_dir, tmp_path / "other-base", seed=1)
    foreign = make_adapter(other_base, tmp_path / "foreign", seed=4)
    result = subprocess.run([sys.executable, "-m", "tunesmith", "merge", str(adapters["a"]), str(foreign),
                             "--method", "cat", "--out", str(tmp_path / "x")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert "different base models" in result.stderr and str(other_base.resolve()) in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x").exists()


def test_an_adapter_that_does_not_fit_the_base_given_with_base_is_a_usage_error(adapters, tokenizer_dir, tmp_path):
    """The refusal above suggests --base for one model under two names; an adapter of another model then fails
    PEFT's load with a size mismatch, which is said as such (exit 2), not as an internal error."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    narrow = tmp_path / "narrow-base"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(narrow)
    tokenizer.save_pretrained(narrow)
    foreign = make_adapter(narrow, tmp_path / "foreign", seed=4)
    for inputs in ([str(adapters["a"]), str(foreign), "--method", "cat"], [str(foreign)]):
        result = subprocess.run([sys.executable, "-m", "tunesmith", "merge", *inputs, "--base",
                                 str(json.loads((adapters["a"] / "adapter_config.json").read_text())
                                     ["base_model_name_or_path"]), "--out", str(tmp_path / "x")],
                                capture_output=True, text=True, timeout=180)
        assert result.returncode == 2, result.stderr
        assert f"The adapter {foreign} does not fit the base model" in " ".join(result.stderr.split())
        assert "Internal error" not in result.stderr and not (tmp_path / "x").exists()


def test_slerp_follows_the_arc():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert torch.allclose(slerp(0.5, e1, e2), torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]), atol=1e-6)
    assert torch.allclose(slerp(1 / 3, e1, e2), torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6)]))
    assert torch.allclose(slerp(0.0, e1, 2 * e2), e1) and torch.allclose(slerp(1.0, e1, 2 * e2), 2 * e2)
    same_direction = slerp(0.25, torch.tensor([1.0, 1.0]), torch.tensor([3.0, 3.0]))
    assert torch.allclose(same_direction, torch.tensor([1.5, 1.5]))  # colinear: plain interpolation


def test_ties_trims_elects_a_sign_and_averages_the_agreeing_entries():
    base = torch.tensor([10.0, 10.0, 10.0])
    tuned = [base + torch.tensor([3.0, -1.0, 0.5]), base + torch.tensor([-2.0, -2.0, 1.0])]
    # density 2/3 keeps each task vector's two largest entries: [3, -1, 0] and [-2, -2, 0]; the elected
    # signs (of the sums 1, -3, 0) are +, -, +; agreeing entries are averaged: [3, (-1-2)/2, 0].
    got = merge_tensor("ties", tuned, [1.0, 1.0], 2 / 3, base)
    assert torch.allclose(got, torch.tensor([13.0, 8.5, 10.0]))
    assert torch.allclose(merge_tensor("task_arithmetic", tuned, [1.0, 0.5], None, base),
                          torch.tensor([12.0, 8.0, 11.0]))
    assert torch.allclose(merge_tensor("linear", tuned, [1.0, 3.0], None, None), torch.tensor([9.25, 8.25, 10.875]))


@pytest.fixture(scope="module")
def finetunes(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("finetunes")
    return [make_finetune(tiny_model_dir, root / f"ft{seed}", seed) for seed in (1, 2)]


def test_whole_model_linear_merge_is_the_weighted_average_and_shards(finetunes, tiny_model_dir, tmp_path):
    out = run_merge(finetunes, tmp_path / "avg", method="linear", weights=[1.0, 3.0], max_shard_size="100KB")
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(shards) >= 3 and set(index["weight_map"].values()) == {s.name for s in shards}
    merged = {}
    for shard in shards:
        merged |= load_file(shard)
    inputs = [load_file(path / "model.safetensors") for path in finetunes]
    for name, tensor in merged.items():
        assert torch.allclose(tensor, 0.25 * inputs[0][name] + 0.75 * inputs[1][name], atol=1e-6), name
    record = json.loads((out / "merge.json").read_text())
    rows = record["verification"]["agreement_with_inputs"]
    assert record["kind"] == "models" and len(rows) == 2
    assert rows[1]["mean_abs_logit_diff"] < rows[0]["mean_abs_logit_diff"]  # weighted towards the second
    assert AutoModelForCausalLM.from_pretrained(out).config.tie_word_embeddings


def test_whole_model_ties_needs_and_uses_the_base(finetunes, tiny_model_dir, tmp_path):
    with pytest.raises(TunesmithError, match="--base"):
        run_merge(finetunes, tmp_path / "x", method="ties", density=0.5)
    out = run_merge(finetunes, tmp_path / "ties", method="ties", density=0.5, weights=[1.0, 1.0],
                    base=str(tiny_model_dir), dtype="fp16")
    name = "model.layers.1.mlp.up_proj.weight"
    base = load_file(tiny_model_dir / "model.safetensors")[name]
    tuned = [load_file(path / "model.safetensors")[name] for path in finetunes]
    expected = merge_tensor("ties", tuned, [1.0, 1.0], 0.5, base).half()
    assert torch.equal(load_file(out / "model.safetensors")[name], expected)
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"


def test_whole_model_slerp_end_point_is_the_first_model(finetunes, tmp_path):
    out = run_merge(finetunes, tmp_path / "slerp", method="slerp", weights=[1.0, 0.0])
    got, first = load_file(out / "model.safetensors"), load_file(finetunes[0] / "model.safetensors")
    assert all(torch.allclose(got[name], first[name], atol=1e-6) for name in first)
    with pytest.raises(TunesmithError, match="exactly two"):
        run_merge([*finetunes, finetunes[0]], tmp_path / "y", method="slerp")
    with pytest.raises(TunesmithError, match="is a whole model") as alone:  # not "linear needs two or more models"
        run_merge([finetunes[0]], tmp_path / "alone")
    assert "tunesmith export RUN --format merged" in alone.value.hint


def test_adapters_and_whole_models_do_not_mix(adapters, finetunes, tmp_path):
    with pytest.raises(TunesmithError, match="Merge the adapter into its base first"):
        run_merge([adapters["a"], finetunes[0]], tmp_path / "x")


def test_merged_export_shards_and_reloads_to_identical_logits(adapters, tiny_model_dir, tmp_path):
    from tunesmith.export import export_merged

    whole, _ = export_merged(tiny_model_dir, adapters["a"], tmp_path / "whole")
    sharded, _ = export_merged(tiny_model_dir, adapters["a"], tmp_path / "sharded", max_shard_size="120KB")
    assert (whole / "model.safetensors").is_file() and not (whole / "model.safetensors.index.json").exists()
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) >= 3
    assert (sharded / "model.safetensors.index.json").is_file() and not (sharded / "model.safetensors").exists()
    assert torch.equal(logits(whole, tiny_model_dir), logits(sharded, tiny_model_dir))


def test_merge_help_has_an_example():
    from typer.testing import CliRunner

    from tunesmith.cli import app

    result = CliRunner().invoke(app, ["merge", "--help"])
    assert result.exit_code == 0 and "Example: tunesmith merge" in result.output


def test_dora_and_non_lora_adapters_are_not_combined(adapters, tiny_model_dir, tmp_path):
    dora = make_adapter(tiny_model_dir, tmp_path / "dora", seed=6, use_dora=True)
    with pytest.raises(TunesmithError, match="DoRA") as error:
        run_merge([adapters["a"], dora], tmp_path / "x", method="cat")
    assert "tunesmith merge ADAPTER --out DIR" in error.value.hint and not (tmp_path / "x").exists()


def test_export_command_takes_the_shard_size(adapters, tiny_model_dir, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from tunesmith.cli import app
    from tunesmith.config import load_recipe
    from tunesmith.runs import create_run

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"name: tiny\nmodel:\n  source: {tiny_model_dir}\ndata:\n  train: t.jsonl\n", encoding="utf-8")
    run = create_run(load_recipe(recipe), tmp_path / "runs")
    shutil.copytree(adapters["a"], run.adapter_dir)
    result = CliRunner().invoke(app, ["export", str(run.path), "--format", "merged", "--max-shard-size", "150KB"])
    assert result.exit_code == 0, result.output
    assert len(list((run.exports_dir / "merged").glob("model-*-of-*.safetensors"))) >= 2
    bad = CliRunner().invoke(app, ["export", str(run.path), "--format", "merged", "--max-shard-size", "5 gigs"])
    assert isinstance(bad.exception, TunesmithError) and "Cannot read the shard size" in str(bad.exception)


def test_adapters_combine_exactly_by_default_and_linear_on_alike_a_says_it_is_a_multiple(adapters, tmp_path):
    """Two runs from the same seed keep alike LoRA A matrices; PEFT's linear weights A and B by √wᵢ each, so at
    weights 0.5, 0.5 it gives their sum, twice the average asked for. The default (cat) is the exact weighted sum,
    and linear's record and note say what it gave."""
    import shutil

    from safetensors.torch import save_file

    from tunesmith.cli.merge import far_from_the_sum_note

    twin = tmp_path / "twin"  # adapter a's A matrices, other B matrices
    shutil.copytree(adapters["a"], twin)
    tensors = load_file(twin / "adapter_model.safetensors")
    generator = torch.Generator().manual_seed(7)
    save_file({k: torch.randn(v.shape, generator=generator) * 0.1 if "lora_B" in k else v for k, v in tensors.items()},
              twin / "adapter_model.safetensors")

    default = run_merge([adapters["a"], twin], tmp_path / "default")
    record = json.loads((default / "merge.json").read_text())
    assert record["method"] == "cat" and record["verification"]["relative_delta_error"] < 1e-5

    linear = run_merge([adapters["a"], twin], tmp_path / "linear", method="linear")
    check = json.loads((linear / "merge.json").read_text())["verification"]
    assert check["relative_delta_error"] == pytest.approx(1.0, abs=1e-3)  # 100% away: ΔW = 2 S
    assert check["scale_to_sum"] == pytest.approx(2.0, abs=1e-3) and check["error_after_scale"] < 1e-3
    note = far_from_the_sum_note("linear", check, linear)
    assert "2.00 x that sum" in note and "LoRA A matrices are alike" in note and "`cat` (the default)" in note
    apart = run_merge([adapters["a"], adapters["b"]], tmp_path / "apart", method="linear")
    other = json.loads((apart / "merge.json").read_text())["verification"]
    assert other["error_after_scale"] > 0.5  # independent A matrices: cross terms, no multiple of the sum
    assert "x that sum" not in far_from_the_sum_note("linear", other, apart)


def test_an_embedding_lora_of_a_tied_model_is_refused_with_the_reason_not_report_it(tiny_model_dir, tmp_path):
    """The tiny llama ties its head to its embeddings: merged, a LoRA on embed_tokens changes the head too, and the
    merge failed its logit check with "report it". It is refused for what it is, before the check."""
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"], init_lora_weights=False)
    adapter = tmp_path / "embedding-lora"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config).save_pretrained(adapter)
    with pytest.raises(TunesmithError, match="shares the embedding matrix") as refused:
        run_merge([adapter], tmp_path / "merged")
    assert "report it" not in str(refused.value) and not (tmp_path / "merged").exists()
