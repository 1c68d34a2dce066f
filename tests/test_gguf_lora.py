"""GGUF LoRA export: the file read back with gguf's reader (type, alpha, names, shapes), its arithmetic
(base GGUF + alpha/r * B A equals the merged model's GGUF, tensor by tensor, Q/K permutation included),
llama.cpp applying it (when llama-cpp-python is installed), the refusals, and the export / Ollama wiring."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from peft import IA3Config, LoraConfig, PeftModel, PromptTuningConfig, TaskType, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunesmith.errors import TunesmithError
from tunesmith.export.gguf import write_gguf
from tunesmith.export.gguf_arch import permute_for_adjacent_rope
from tunesmith.export.gguf_lora import write_gguf_lora

PROMPTS = [[{"role": "user", "content": "2 large pizzas and a cola to 12 Main St, please."}],
           [{"role": "system", "content": "Reply in JSON."}, {"role": "user", "content": "Say hello."}]]


def save_adapter(base: Path, target: Path, config, seed: int = 5) -> Path:
    torch.manual_seed(seed)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), config).save_pretrained(target)
    return target


def lora(r: int = 4, alpha: int = 8, targets: str | list[str] = "all-linear", **options) -> LoraConfig:
    return LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, init_lora_weights=False, **options)


def build_untied(tokenizer_dir: Path, target: Path) -> Path:
    """The conftest llama with its own output head, so embeddings and lm_head can carry a LoRA in llama.cpp."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False, initializer_range=0.3, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def files(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An all-linear LoRA of the tiny llama, as a GGUF LoRA, next to the base and merged models as GGUF (F32)."""
    from tunesmith.export import export_merged

    root = tmp_path_factory.mktemp("gguf-lora")
    adapter = save_adapter(tiny_model_dir, root / "adapter", lora())
    merged, _ = export_merged(tiny_model_dir, adapter, root / "merged")
    return {"adapter": adapter, "lora": write_gguf_lora(adapter, tiny_model_dir, root / "lora.F32.gguf", "F32"),
            "base": write_gguf(tiny_model_dir, root / "base.F32.gguf", "F32"),
            "merged": write_gguf(merged, root / "merged.F32.gguf", "F32")}


def tensors(path: Path) -> dict[str, np.ndarray]:
    return {t.name: np.asarray(t.data) for t in gguf.GGUFReader(path).tensors}


def test_the_file_is_a_lora_adapter_for_the_base_architecture(files):
    reader = gguf.GGUFReader(files["lora"])
    fields = {key: reader.fields[key].contents() for key in
              ("general.type", "general.architecture", "adapter.type", "adapter.lora.alpha")}
    assert fields == {"general.type": "adapter", "general.architecture": "llama", "adapter.type": "lora",
                      "adapter.lora.alpha": 8.0}
    assert reader.fields["adapter.lora.alpha"].types == [gguf.GGUFValueType.FLOAT32]  # llama.cpp reads an f32
    lora_tensors = {t.name: (t.tensor_type, tuple(reversed(t.shape.tolist()))) for t in reader.tensors}
    assert len(lora_tensors) == 2 * 2 * 7  # 2 blocks x (q, k, v, o, gate, up, down) x (a, b)
    assert lora_tensors["blk.0.attn_q.weight.lora_a"] == (gguf.GGMLQuantizationType.F32, (4, 64))
    assert lora_tensors["blk.1.attn_k.weight.lora_b"] == (gguf.GGMLQuantizationType.F32, (32, 4))
    assert lora_tensors["blk.0.ffn_down.weight.lora_a"] == (gguf.GGMLQuantizationType.F32, (4, 128))
    base_names = set(tensors(files["base"]))
    assert {name.rsplit(".", 1)[0] for name in lora_tensors} <= base_names


def test_q_and_k_factors_b_get_the_base_permutation_and_a_does_not(files):
    from safetensors.torch import load_file

    peft = {k: v.numpy() for k, v in load_file(files["adapter"] / "adapter_model.safetensors").items()}
    prefix = "base_model.model.model.layers.0.self_attn"
    q_b, k_b = peft[f"{prefix}.q_proj.lora_B.weight"], peft[f"{prefix}.k_proj.lora_B.weight"]
    got = tensors(files["lora"])
    assert np.array_equal(got["blk.0.attn_q.weight.lora_b"], permute_for_adjacent_rope(q_b, 4))
    assert np.array_equal(got["blk.0.attn_k.weight.lora_b"], permute_for_adjacent_rope(k_b, 2))
    assert not np.array_equal(got["blk.0.attn_q.weight.lora_b"], q_b)
    assert np.array_equal(got["blk.0.attn_q.weight.lora_a"], peft[f"{prefix}.q_proj.lora_A.weight"])
    assert np.array_equal(got["blk.0.attn_v.weight.lora_b"], peft[f"{prefix}.v_proj.lora_B.weight"])


def test_base_plus_scaled_lora_equals_the_merged_gguf(files):
    """What llama.cpp computes, W + alpha/r * B A on the GGUF tensors, is the merged model's GGUF tensor."""
    base, merged, adapter = tensors(files["base"]), tensors(files["merged"]), tensors(files["lora"])
    adapted = {name.removesuffix(".lora_a") for name in adapter if name.endswith(".lora_a")}
    for name, weight in base.items():
        expected = merged[name]
        if name in adapted:
            weight = weight + (8 / 4) * adapter[f"{name}.lora_b"] @ adapter[f"{name}.lora_a"]
            assert not np.allclose(base[name], expected, atol=1e-3), name  # the adapter changes it
        np.testing.assert_allclose(weight, expected, atol=2e-5, err_msg=name)


def test_rslora_alpha_is_rescaled_for_llama_cpp(tiny_model_dir, tmp_path):
    adapter = save_adapter(tiny_model_dir, tmp_path / "rs", lora(r=16, alpha=8, use_rslora=True))
    path = write_gguf_lora(adapter, tiny_model_dir, tmp_path / "rs.gguf")
    reader = gguf.GGUFReader(path)
    assert reader.fields["adapter.lora.alpha"].contents() == pytest.approx(8 * math.sqrt(16))  # alpha/sqrt(r) = a'/r
    assert {t.tensor_type for t in reader.tensors} == {gguf.GGMLQuantizationType.F16}


@pytest.mark.parametrize(("config", "message", "fix"), [
    (IA3Config(task_type=TaskType.CAUSAL_LM), "ia3 adapter", "--format gguf"),
    # no GGUF holds virtual tokens, merged or not: the hint leads to what runs them
    (PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4), "prompt_tuning adapter",
     "`tunesmith chat RUN`"),
    (lora(use_dora=True), "DoRA", "--format gguf"),
    # merged, it would change the tied head too (merge refuses it): transformers is the way to use it
    (lora(targets=["embed_tokens", "q_proj"]), "token embeddings of a model whose output head is tied",
     "tunesmith chat BASE --adapter FOLDER"),
], ids=["ia3", "prompt_tuning", "dora", "tied-embedding"])
def test_adapters_a_gguf_lora_cannot_hold_are_refused(config, message, fix, tiny_model_dir, tmp_path):
    adapter = save_adapter(tiny_model_dir, tmp_path / "adapter", config)
    with pytest.raises(TunesmithError, match=message) as error:
        write_gguf_lora(adapter, tiny_model_dir, tmp_path / "x.gguf")
    assert fix in error.value.hint and not (tmp_path / "x.gguf").exists()


def test_quantized_lora_types_are_refused(files, tiny_model_dir, tmp_path):
    with pytest.raises(TunesmithError, match="F16 or F32"):
        write_gguf_lora(files["adapter"], tiny_model_dir, tmp_path / "x.gguf", "Q8_0")


def llama_cpp_vs_transformers(base_dir: Path, adapter: Path, base_gguf: Path, lora_gguf: Path) -> dict[str, float]:
    """Teacher-forced next-token agreement of llama.cpp (base GGUF + LoRA GGUF) with transformers base+adapter."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter).eval()
    plain = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    llm = llama_cpp.Llama(model_path=str(base_gguf), lora_path=str(lora_gguf), n_ctx=256, logits_all=True,
                          verbose=False, n_threads=2)
    same = diff = differs_from_base = 0.0
    count = 0
    for prompt in PROMPTS:
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)["input_ids"]
        llm.reset()
        llm.eval(ids)
        got = np.asarray(llm.scores[: len(ids)])
        with torch.no_grad():
            expected = reference(input_ids=torch.tensor([ids])).logits[0].numpy()
            base_only = plain(input_ids=torch.tensor([ids])).logits[0].numpy()
        same += float((got.argmax(-1) == expected.argmax(-1)).sum())
        count += len(ids)
        diff = max(diff, float(np.abs(got - expected).max()))
        differs_from_base = max(differs_from_base, float(np.abs(got - base_only).max()))
    llm.close()
    return {"top1": same / count, "max_diff": diff, "vs_base": differs_from_base}


def test_llama_cpp_applies_the_lora_like_peft(files, tiny_model_dir):
    result = llama_cpp_vs_transformers(tiny_model_dir, files["adapter"], files["base"], files["lora"])
    print("llama.cpp base+LoRA vs transformers base+adapter:", result)
    assert result["top1"] >= 0.95 and result["max_diff"] < 0.2, result
    assert result["vs_base"] > 1.0, result  # the LoRA was applied


def test_llama_cpp_applies_embedding_and_output_head_loras(tokenizer_dir, tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    base = build_untied(tokenizer_dir, tmp_path / "untied")
    adapter = save_adapter(base, tmp_path / "adapter", lora(targets=["embed_tokens", "lm_head", "q_proj", "k_proj"]))
    lora_gguf = write_gguf_lora(adapter, base, tmp_path / "lora.gguf", "F32")
    names = set(tensors(lora_gguf))
    assert {"token_embd.weight.lora_a", "output.weight.lora_b"} <= names
    result = llama_cpp_vs_transformers(base, adapter, write_gguf(base, tmp_path / "base.gguf", "F32"), lora_gguf)
    print("untied, embeddings + lm_head + q/k LoRA:", result)
    assert result["top1"] >= 0.95 and result["max_diff"] < 0.2 and result["vs_base"] > 1.0, result


def make_run(model_dir: Path, root: Path, adapter_config=None):
    """A run of the tiny model with an untrained (random) adapter saved where training puts it."""
    from tunesmith.config import load_recipe
    from tunesmith.runs import create_run

    recipe_file = root / "recipe.yaml"
    recipe_file.write_text(f"name: Tiny\nmodel:\n  source: {model_dir}\ndata:\n  train: train.jsonl\n",
                           encoding="utf-8")
    run = create_run(load_recipe(recipe_file), root / "runs")
    save_adapter(model_dir, run.adapter_dir, adapter_config or lora())
    return run


def test_export_writes_the_lora_and_an_ollama_folder_with_adapter(tiny_model_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    run = make_run(tiny_model_dir, tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no ollama on PATH
    result = CliRunner().invoke(app, ["export", str(run.path), "--format", "gguf-lora", "--format", "ollama",
                                      "--ollama-adapter", "--quant", "Q8_0", "--no-verify"])
    assert result.exit_code == 0, result.output
    lora_file = run.exports_dir / "gguf" / "Tiny-lora-F16.gguf"
    said = " ".join(result.stderr.split())  # how to use the LoRA file: it needs a GGUF of the base
    assert f"llama-cli -m BASE.gguf --lora {lora_file}" in said
    assert "writes a GGUF of the base into exports/ollama/" in said
    assert gguf.GGUFReader(lora_file).fields["general.type"].contents() == "adapter"
    folder = run.exports_dir / "ollama"
    lines = (folder / "Modelfile").read_text(encoding="utf-8").splitlines()
    assert lines[1:3] == ["FROM ./base-Q8_0.gguf", "ADAPTER ./adapter-F16.gguf"]
    assert gguf.GGUFReader(folder / "base-Q8_0.gguf").fields["general.type"].contents() == "model"
    assert gguf.GGUFReader(folder / "adapter-F16.gguf").fields["adapter.type"].contents() == "lora"
    assert not (run.exports_dir / "merged").exists()  # the adapter route needs no merged model
    manifest = json.loads((run.exports_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["gguf_lora"]["F16"]["path"] == lora_file.relative_to(run.path).as_posix()  # inside the run


def test_export_refuses_a_non_lora_run_with_a_pointer_to_the_merged_gguf(tiny_model_dir, tmp_path):
    from tunesmith.export.gguf_lora import run_gguf_lora_export

    run = make_run(tiny_model_dir, tmp_path, IA3Config(task_type=TaskType.CAUSAL_LM))
    with pytest.raises(TunesmithError, match="ia3") as error:
        run_gguf_lora_export(run.load_recipe(), run)
    assert "--format gguf" in error.value.hint


def test_llama_cpp_applies_a_gemma3_lora_like_peft(tokenizer_dir, tmp_path):
    """Gemma 3 (NEOX RoPE, shifted norms, q/k norms, sliding windows): the base GGUF plus the GGUF LoRA in llama.cpp
    gives what PEFT gives."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from tests.test_gguf_export import GEMMAS, build_tiny

    base = build_tiny(tokenizer_dir, tmp_path / "gemma3", "gemma3", **GEMMAS["gemma3"])
    adapter = save_adapter(base, tmp_path / "adapter", lora())
    lora_gguf = write_gguf_lora(adapter, base, tmp_path / "lora.gguf", "F32")
    result = llama_cpp_vs_transformers(base, adapter, write_gguf(base, tmp_path / "base.gguf", "F32"), lora_gguf)
    print("gemma3 all-linear LoRA:", result)
    assert result["top1"] >= 0.95 and result["max_diff"] < 0.2 and result["vs_base"] > 1.0, result


def test_a_run_whose_adapter_no_gguf_lora_holds_is_served_from_its_merged_gguf(tiny_model_dir, tmp_path, capsys):
    """serve took the LoRA route by adapter.kind alone: a LoRA training biases failed there, and its hint (export
    the merged GGUF) changed nothing. It is now served from its merged GGUF, said; an adapter folder that is
    no run is told to merge it first."""
    from tunesmith.manifest import BaseModelRecord, TrainRecord
    from tunesmith.runs import record_stage
    from tunesmith.serve.catalog import build_catalog

    run = make_run(tiny_model_dir, tmp_path, lora(bias="lora_only"))
    record_stage(run, "train", TrainRecord(artifact="adapter", path="adapter", method="sft", adapter="lora",
                                           base_model=BaseModelRecord(source=str(tiny_model_dir),
                                                                      path=str(tiny_model_dir))))
    [served] = build_catalog([f"tied={run.path}"], quant="F32")
    assert served.lora is None and served.gguf == run.exports_dir / "gguf" / "Tiny.F32.gguf" and served.gguf.is_file()
    assert "It is served from its merged GGUF instead" in " ".join(capsys.readouterr().err.split())
    with pytest.raises(TunesmithError, match="it trains biases") as refused:
        build_catalog([str(run.adapter_dir)], quant="F32")
    assert f"tunesmith merge {run.adapter_dir} --out {run.adapter_dir}-model" in refused.value.hint
