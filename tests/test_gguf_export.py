"""GGUF export: what the file holds (read back with gguf's own reader) and what it computes (loaded back
with transformers' GGUF loader, which undoes llama.cpp's Q/K permutation and dequantizes)."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunesmith.errors import TunesmithError
from tunesmith.export import gguf as gguf_export
from tunesmith.export.gguf import QUANT_TYPES, write_gguf
from tunesmith.export.gguf_arch import llama3_rope_factors, permute_for_adjacent_rope
from tunesmith.export.gguf_vocab import LLAMA3_SPLIT, QWEN2_SPLIT, pre_tokenizer_name, tokenizer_model

Q = gguf.GGMLQuantizationType
PROMPTS = [[{"role": "user", "content": "2 large pizzas and a cola to 12 Main St, please."}],
           [{"role": "system", "content": "Reply in JSON."}, {"role": "user", "content": "Say hello."}]]
# Relative RMS error of each weight matrix after the round trip: the quantizers' own noise on Gaussian
# weights (gguf 0.19 measures 2e-4 F16, 1.6e-3 BF16, 5.3e-3 Q8_0, ~0.04 Q5_x, ~0.085 Q4_x), with headroom.
WEIGHT_ERROR = {"F32": 0.0, "F16": 5e-4, "BF16": 4e-3, "Q8_0": 1e-2,
                "Q5_0": 6e-2, "Q5_1": 6e-2, "Q4_0": 0.12, "Q4_1": 0.12}


def build_tiny(tokenizer_dir: Path, target: Path, kind: str = "llama", **overrides) -> Path:
    """A 2-layer model of the given family on the shared BPE tokenizer, with non-zero biases."""
    from transformers import (
        Gemma2Config,
        Gemma2ForCausalLM,
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        GemmaConfig,
        GemmaForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    classes = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
               "qwen3": (Qwen3Config, Qwen3ForCausalLM), "gemma": (GemmaConfig, GemmaForCausalLM),
               "gemma2": (Gemma2Config, Gemma2ForCausalLM), "gemma3": (Gemma3TextConfig, Gemma3ForCausalLM)}
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    settings = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                    tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config_class, model_class = classes[kind]
    torch.manual_seed(1)
    model = model_class(config_class(**{**settings, **overrides}))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or name.endswith("norm.weight"):  # Gemma's zero-initialised norms too
                param.normal_(0.0, 0.5)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def tensors_by_name(path: Path) -> dict[str, gguf.ReaderTensor]:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def prompt_ids(model_dir: Path) -> list[torch.Tensor]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return [tokenizer.apply_chat_template(p, add_generation_prompt=True, return_tensors="pt",
                                          return_dict=True)["input_ids"] for p in PROMPTS]


def logits_of(model: torch.nn.Module, ids: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(input_ids=x).logits[0] for x in ids])


def load_gguf_model(path: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def compare_with_gguf(model_dir: Path, path: Path) -> dict[str, float]:
    """The GGUF loaded back vs the fp32 checkpoint: max |logit diff|, relative logit error, top-1 agreement."""
    ids = prompt_ids(model_dir)
    expected = logits_of(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval(), ids)
    got = logits_of(load_gguf_model(path), ids)
    return {"max_diff": float((expected - got).abs().max()),
            "relative": float((expected - got).norm() / expected.norm()),
            "top1": float((expected.argmax(-1) == got.argmax(-1)).float().mean())}


@pytest.fixture(scope="module")
def llama_ggufs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("gguf")
    return {quant: write_gguf(tiny_model_dir, folder / f"tiny.{quant}.gguf", quant) for quant in QUANT_TYPES}


@pytest.mark.parametrize("quant", list(QUANT_TYPES))
def test_every_tensor_is_written_with_its_shape_and_type(quant, llama_ggufs, tiny_model_dir):
    from safetensors import safe_open

    with safe_open(tiny_model_dir / "model.safetensors", framework="pt") as handle:
        names = handle.keys()
        hf_shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in names}
    tensors = tensors_by_name(llama_ggufs[quant])
    assert len(tensors) == len(hf_shapes) == 2 * 9 + 2  # per block: 2 norms + q,k,v,o + gate,up,down
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    assert tuple(reversed(tensors["token_embd.weight"].shape.tolist())) == hf_shapes["model.embed_tokens.weight"]
    assert tuple(reversed(tensors["blk.1.attn_k.weight"].shape.tolist())) == (32, 64)
    assert tuple(reversed(tensors["blk.0.ffn_down.weight"].shape.tolist())) == (64, 128)
    requested = QUANT_TYPES[quant][0]
    head_type = Q.Q8_0 if quant in ("Q4_0", "Q4_1", "Q5_0", "Q5_1") else requested
    for name, tensor in tensors.items():
        if len(tensor.shape) == 1:
            assert tensor.tensor_type == Q.F32, name
        else:
            assert tensor.tensor_type == (head_type if name == "token_embd.weight" else requested), name
    assert field(gguf.GGUFReader(llama_ggufs[quant]), "general.file_type") == QUANT_TYPES[quant][1]


def test_metadata_describes_the_model_and_its_tokenizer(llama_ggufs, tiny_model_dir):
    reader = gguf.GGUFReader(llama_ggufs["Q8_0"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    expected = {"general.architecture": "llama", "llama.block_count": 2, "llama.context_length": 512,
                "llama.embedding_length": 64, "llama.feed_forward_length": 128, "llama.attention.head_count": 4,
                "llama.attention.head_count_kv": 2, "llama.rope.freq_base": 10000.0, "llama.vocab_size": 600,
                "llama.rope.dimension_count": 16, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
                "tokenizer.ggml.bos_token_id": tokenizer.bos_token_id,
                "tokenizer.ggml.eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
                "tokenizer.ggml.padding_token_id": tokenizer.pad_token_id,
                "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.add_bos_token": False,
                "tokenizer.chat_template": tokenizer.chat_template}
    assert {key: field(reader, key) for key in expected} == expected
    assert field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert tokens == tokenizer.convert_ids_to_tokens(list(range(600)))
    types = field(reader, "tokenizer.ggml.token_type")
    assert types[:3] == [gguf.TokenType.CONTROL] * 3 and set(types[3:]) == {gguf.TokenType.NORMAL}
    merges = json.loads((tiny_model_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"]["merges"]
    assert field(reader, "tokenizer.ggml.merges") == [" ".join(pair) for pair in merges]


@pytest.mark.parametrize("quant", list(QUANT_TYPES))
def test_weights_load_back_within_the_quantization_error(quant, llama_ggufs, tiny_model_dir):
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    loaded = load_gguf_model(llama_ggufs[quant]).state_dict()
    for name, weight in original.items():
        error = float((loaded[name] - weight).norm() / weight.norm())
        assert error <= (WEIGHT_ERROR[quant] if weight.ndim == 2 else 0.0), (name, error)


# The conftest model has large random weights (std 0.3), so it amplifies weight noise about tenfold
# into the logits; SmolLM2-135M kept 94-98% top-1 agreement at Q8_0 on two chat prompts.
@pytest.mark.parametrize(("quant", "max_relative", "min_top1"),
                         [("F32", 1e-6, 1.0), ("F16", 1e-2, 0.97), ("BF16", 5e-2, 0.95), ("Q8_0", 0.1, 0.9)])
def test_logits_survive_the_round_trip(quant, max_relative, min_top1, llama_ggufs, tiny_model_dir):
    result = compare_with_gguf(tiny_model_dir, llama_ggufs[quant])
    assert result["relative"] <= max_relative and result["top1"] >= min_top1, result
    if quant == "F32":
        assert result["max_diff"] < 1e-4


def test_tokenizer_and_template_survive_the_round_trip(llama_ggufs, tiny_model_dir):
    original = AutoTokenizer.from_pretrained(tiny_model_dir)
    path = llama_ggufs["F16"]
    loaded = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    text = "<|im_start|>user\nDeliver 3 pizzas to 221B Baker St.  Thanks!<|im_end|>\n"
    assert loaded.encode(text) == original.encode(text)
    assert loaded.chat_template == original.chat_template


def test_llama_q_and_k_rows_are_permuted_and_v_is_not(llama_ggufs, tiny_model_dir):
    from safetensors.torch import load_file

    weights = {k: v.numpy() for k, v in load_file(tiny_model_dir / "model.safetensors").items()}
    tensors = tensors_by_name(llama_ggufs["F32"])
    q, k = weights["model.layers.0.self_attn.q_proj.weight"], weights["model.layers.0.self_attn.k_proj.weight"]
    assert np.array_equal(tensors["blk.0.attn_q.weight"].data, permute_for_adjacent_rope(q, 4))
    assert np.array_equal(tensors["blk.0.attn_k.weight"].data, permute_for_adjacent_rope(k, 2))
    assert not np.array_equal(tensors["blk.0.attn_q.weight"].data, q)
    assert np.array_equal(tensors["blk.0.attn_v.weight"].data, weights["model.layers.0.self_attn.v_proj.weight"])


def rotate_half_rope(x: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """transformers' RoPE on one head: dims i and i + d/2 form a pair."""
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * np.cos(angles) - b * np.sin(angles), b * np.cos(angles) + a * np.sin(angles)], -1)


def adjacent_pair_rope(x: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """llama.cpp's NORM RoPE on one head: dims 2i and 2i + 1 form a pair."""
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = a * np.cos(angles) - b * np.sin(angles), b * np.cos(angles) + a * np.sin(angles)
    return out


def test_permutation_turns_rotate_half_rope_into_adjacent_pair_rope():
    rng = np.random.default_rng(0)
    n_head, dim, hidden = 3, 8, 12
    weights, x = rng.normal(size=(n_head * dim, hidden)), rng.normal(size=hidden)
    angles = 5 * 10000.0 ** (-np.arange(dim // 2) * 2 / dim)  # position 5
    hf = np.concatenate([rotate_half_rope(h, angles) for h in (weights @ x).reshape(n_head, dim)])
    ours = permute_for_adjacent_rope(weights, n_head) @ x
    cpp = np.concatenate([adjacent_pair_rope(h, angles) for h in ours.reshape(n_head, dim)])
    assert np.allclose(permute_for_adjacent_rope(hf[:, None], n_head)[:, 0], cpp)


def test_qwen2_keeps_q_k_rows_and_biases_and_round_trips(tokenizer_dir, tmp_path):
    model_dir = build_tiny(tokenizer_dir, tmp_path / "qwen2", "qwen2")
    path = write_gguf(model_dir, tmp_path / "out" / "qwen2.F32.gguf", "F32")
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    assert field(reader, "general.architecture") == "qwen2"
    assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias"} <= tensors.keys()
    assert "output.weight" not in tensors
    from safetensors.torch import load_file

    q = load_file(model_dir / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"].numpy()
    assert np.array_equal(tensors["blk.0.attn_q.weight"].data, q)  # NEOX RoPE in llama.cpp: no permutation
    result = compare_with_gguf(model_dir, path)
    assert result["max_diff"] < 1e-4 and result["top1"] == 1.0


def test_untied_head_and_explicit_head_dim_are_written(tokenizer_dir, tmp_path):
    """Qwen3 shape: an output.weight of its own, q/k norms, head_dim 128 > hidden/heads."""
    model_dir = build_tiny(tokenizer_dir, tmp_path / "qwen3", "qwen3", head_dim=128, tie_word_embeddings=False)
    path = write_gguf(model_dir, tmp_path / "out" / "qwen3.Q8_0.gguf", "Q8_0")
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    assert tensors["output.weight"].tensor_type == Q.Q8_0 and "blk.1.attn_k_norm.weight" in tensors
    assert field(reader, "qwen3.attention.key_length") == field(reader, "qwen3.attention.value_length") == 128
    result = compare_with_gguf(model_dir, path)
    assert result["relative"] < 2e-2 and result["top1"] >= 0.95, result


def test_rows_that_are_not_whole_blocks_fall_back_to_f16(tokenizer_dir, tmp_path):
    model_dir = build_tiny(tokenizer_dir, tmp_path / "odd", hidden_size=48, intermediate_size=96)
    path = write_gguf(model_dir, tmp_path / "out" / "odd.Q4_0.gguf", "Q4_0")
    tensors = tensors_by_name(path)
    assert tensors["blk.0.attn_q.weight"].tensor_type == Q.F16  # rows of 48 values
    assert tensors["blk.0.ffn_down.weight"].tensor_type == Q.Q4_0  # rows of 96 values
    assert compare_with_gguf(model_dir, path)["relative"] < 0.2


def test_unknown_quant_lists_the_valid_ones(tiny_model_dir, tmp_path):
    with pytest.raises(TunesmithError, match="Unknown GGUF quant") as info:
        write_gguf(tiny_model_dir, tmp_path / "x.gguf", "Q3_X")
    assert "Q8_0" in info.value.hint


def test_a_failed_write_leaves_no_file(tiny_model_dir, tmp_path, monkeypatch):
    real, calls = gguf_export.load_weights, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(gguf_export, "load_weights", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        write_gguf(tiny_model_dir, tmp_path / "out" / "model.gguf", "Q8_0")
    assert list((tmp_path / "out").iterdir()) == []


def test_llama3_rope_factors_match_transformers_frequencies():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    config = LlamaConfig(hidden_size=2048, num_attention_heads=32, head_dim=64, rope_parameters=rope,
                         max_position_embeddings=131072)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    base = 1.0 / (500000.0 ** (np.arange(0, 64, 2, dtype=np.float64) / 64))
    factors = llama3_rope_factors(config)
    assert factors.shape == (32,) and factors.min() == 1.0 and factors.max() == 32.0
    assert np.allclose(base / factors, scaled.numpy(), rtol=1e-5)


@pytest.mark.parametrize(("pre", "name"), [
    ({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}, "gpt-2"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                            {"type": "ByteLevel", "use_regex": True}]}, "smollm"),
    ({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}},
        {"type": "ByteLevel", "use_regex": False}]}, "llama-bpe"),
    ({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}},
        {"type": "ByteLevel", "use_regex": False}]}, "qwen2"),
    ({"type": "Metaspace"}, None),
])
def test_pre_tokenizer_is_named_the_way_llama_cpp_names_it(pre, name):
    assert pre_tokenizer_name(pre) == name


@pytest.mark.parametrize(("spec", "kind"), [
    ({"model": {"type": "BPE"}, "pre_tokenizer": {"type": "ByteLevel"}}, "gpt2"),
    ({"model": {"type": "BPE", "byte_fallback": True}, "pre_tokenizer": {"type": "Metaspace"}}, "llama"),
    ({"model": {"type": "BPE", "byte_fallback": True}, "pre_tokenizer": None,  # Llama 2's original tokenizer.json
      "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                                                         {"type": "Replace", "content": "\u2581"}]}}, "llama"),
])
def test_tokenizer_kind_is_judged_from_tokenizer_json(spec, kind, tmp_path):
    assert tokenizer_model(spec, tmp_path) == kind


def test_wordpiece_tokenizer_is_refused(tmp_path):
    spec = {"model": {"type": "WordPiece"}, "pre_tokenizer": {"type": "BertPreTokenizer"}}
    with pytest.raises(TunesmithError, match="SentencePiece-style BPE"):
        tokenizer_model(spec, tmp_path)


def test_cli_exports_a_run_as_gguf(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from typer.testing import CliRunner

    from tunesmith.cli import app
    from tunesmith.config import load_recipe
    from tunesmith.runs import create_run

    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(f"name: tiny\nmodel:\n  source: {tiny_model_dir}\ndata:\n  train: train.jsonl\n",
                           encoding="utf-8")
    recipe = load_recipe(recipe_file)
    run = create_run(recipe, tmp_path / "runs")
    base = AutoModelForCausalLM.from_pretrained(recipe.model.source)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    torch.manual_seed(0)  # the random LoRA, whatever ran before in this process

    untrained = CliRunner().invoke(app, ["export", str(run.path), "--format", "gguf"])
    assert isinstance(untrained.exception, TunesmithError) and "has no trained model" in untrained.exception.message
    get_peft_model(base, lora).save_pretrained(run.adapter_dir)

    result = CliRunner().invoke(app, ["export", str(run.path), "--format", "gguf", "--quant", "Q8_0", "--no-verify"])
    assert result.exit_code == 0, result.output
    target = run.exports_dir / "gguf" / "tiny.Q8_0.gguf"
    assert field(gguf.GGUFReader(target), "general.name") == "tiny"
    assert (run.exports_dir / "merged" / "config.json").is_file()
    manifest = json.loads((run.exports_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["gguf"]["Q8_0"]["bytes"] == target.stat().st_size
    result = compare_with_gguf(run.exports_dir / "merged", target)
    assert result["relative"] < 0.1 and result["top1"] >= 0.9, result


@pytest.mark.parametrize(("quant", "max_relative", "min_top1"), [("F32", 1e-2, 0.95), ("Q8_0", 0.1, 0.9)])
def test_llama_cpp_tokenizes_and_predicts_like_transformers(quant, max_relative, min_top1, llama_ggufs,
                                                            tiny_model_dir):
    """The file as llama.cpp itself reads it: same token ids for a chat prompt, logits close to fp32."""
    llama_cpp = pytest.importorskip("llama_cpp")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = tokenizer.apply_chat_template(PROMPTS[0], add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    llm = llama_cpp.Llama(model_path=str(llama_ggufs[quant]), n_ctx=256, logits_all=True, verbose=False)
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
    llm.eval(ids)
    got = torch.tensor(np.array(llm.scores[: len(ids)]))
    expected = logits_of(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval(),
                         [torch.tensor([ids])])
    assert float((got - expected).norm() / expected.norm()) <= max_relative
    assert float((got.argmax(-1) == expected.argmax(-1)).float().mean()) >= min_top1


# Gemma sizes as llama.cpp runs them: head_dim given (the attention scale), 6 (Gemma 3) or 2 (Gemma 2) layers so that
# sliding and full layers both occur, a sliding window shorter than the prompts so that it matters.
GEMMAS = {
    "gemma": dict(head_dim=32),
    "gemma2": dict(head_dim=32, query_pre_attn_scalar=32, num_hidden_layers=2, sliding_window=8,
                   attn_logit_softcapping=50.0, final_logit_softcapping=30.0),
    "gemma3": dict(head_dim=32, query_pre_attn_scalar=32, num_hidden_layers=6, sliding_window=8),
}


@pytest.mark.parametrize("kind", list(GEMMAS))
def test_gemma_families_compute_in_llama_cpp_what_they_compute_in_transformers(kind, tokenizer_dir, tmp_path):
    """The file as llama.cpp runs it (norms shifted by one, soft-capping, sliding windows, q/k norms) gives the
    logits of the fp32 checkpoint at every position of a chat prompt longer than the sliding window."""
    llama_cpp = pytest.importorskip("llama_cpp")
    model_dir = build_tiny(tokenizer_dir, tmp_path / kind, kind, **GEMMAS[kind])
    path = write_gguf(model_dir, tmp_path / "out" / f"{kind}.F32.gguf", "F32")
    assert field(gguf.GGUFReader(path), "general.architecture") == kind
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer.apply_chat_template(PROMPTS[1], add_generation_prompt=True, return_dict=True)["input_ids"]
    assert len(ids) > 2 * GEMMAS[kind].get("sliding_window", 0)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False)
    llm.eval(ids)
    got = torch.tensor(np.array(llm.scores[: len(ids)]))
    expected = logits_of(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                              attn_implementation="eager").eval(),
                         [torch.tensor([ids])])
    assert float((got - expected).norm() / expected.norm()) < 1e-3
    assert bool((got.argmax(-1) == expected.argmax(-1)).all())


def test_a_gemma_config_llama_cpp_would_run_differently_is_refused(tokenizer_dir, tmp_path):
    model_dir = build_tiny(tokenizer_dir, tmp_path / "gemma3", "gemma3", head_dim=32, query_pre_attn_scalar=64,
                           num_hidden_layers=2, sliding_window=8, layer_types=["full_attention", "sliding_attention"])
    with pytest.raises(TunesmithError, match=r"(?s)query_pre_attn_scalar 64.*layer_types") as refused:
        write_gguf(model_dir, tmp_path / "out" / "g.F32.gguf", "F32")
    assert "--format merged" in refused.value.hint
    assert not (tmp_path / "out" / "g.F32.gguf").exists()
