"""K-quant GGUF export through llama.cpp's quantizer: what the file holds (gguf's reader), that llama.cpp
runs it, and the message when llama-cpp-python is missing."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from tests.test_gguf_export import build_tiny, field, tensors_by_name
from tunesmith.errors import TunesmithError
from tunesmith.export import gguf as gguf_export
from tunesmith.export import gguf_quantize
from tunesmith.export.gguf import write_gguf
from tunesmith.export.verify import llama_cpp_available, verify_gguf

Q = gguf.GGMLQuantizationType
needs_llama_cpp = pytest.mark.skipif(not llama_cpp_available(),
                                     reason="K-quants need llama-cpp-python (pip install '.[gguf]')")
# The 2-D tensor types llama.cpp's quantizer picks for each file type (it raises some tensors, e.g. attn_v,
# ffn_down and the tied token_embd/output head, to a higher type).
K_TYPES = {
    "Q2_K": {Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K},
    "Q3_K_M": {Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K},
    "Q4_K_M": {Q.Q4_K, Q.Q6_K},
    "Q5_K_M": {Q.Q5_K, Q.Q6_K},
    "Q6_K": {Q.Q6_K},
}


@pytest.fixture(scope="module")
def k_model_dirs(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny llama and qwen2 models whose rows are whole 256-value K-quant blocks."""
    size = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2)
    return {kind: build_tiny(tokenizer_dir, tmp_path_factory.mktemp(f"k-{kind}"), kind, **size)
            for kind in ("llama", "qwen2")}


@pytest.fixture(scope="module")
def k_ggufs(k_model_dirs, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    if not llama_cpp_available():
        pytest.skip("K-quants need llama-cpp-python (pip install '.[gguf]')")
    folder = tmp_path_factory.mktemp("k-gguf")
    return {(kind, quant): write_gguf(model_dir, folder / f"{kind}.{quant}.gguf", quant)
            for kind, model_dir in k_model_dirs.items() for quant in ["F32", *K_TYPES]}


@needs_llama_cpp
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("quant", list(K_TYPES))
def test_k_quant_file_holds_every_tensor_in_k_types(kind, quant, k_ggufs, k_model_dirs):
    path = k_ggufs[kind, quant]
    tensors, reference = tensors_by_name(path), tensors_by_name(k_ggufs[kind, "F32"])
    assert len(tensors) == (20 if kind == "llama" else 26)  # qwen2 adds q/k/v biases
    assert {n: t.shape.tolist() for n, t in tensors.items()} == {n: t.shape.tolist() for n, t in reference.items()}
    matrices = {name: t.tensor_type for name, t in tensors.items() if len(t.shape) == 2}
    assert set(matrices.values()) <= K_TYPES[quant], matrices
    assert matrices["blk.0.attn_q.weight"] == min(K_TYPES[quant])  # the file type's own K type
    assert {t.tensor_type for t in tensors.values() if len(t.shape) == 1} == {Q.F32}
    reader = gguf.GGUFReader(path)
    assert field(reader, "general.file_type") == getattr(gguf.LlamaFileType, f"MOSTLY_{quant}")
    assert field(reader, "general.architecture") == kind
    assert field(reader, "general.name") == k_model_dirs[kind].name
    written = gguf.GGUFReader(k_ggufs[kind, "F32"])  # as our writer wrote it, before llama.cpp requantized it
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.pre", "tokenizer.chat_template",
                "tokenizer.ggml.eos_token_id", f"{kind}.context_length", f"{kind}.rope.freq_base"):
        assert field(reader, key) == field(written, key), key
    assert len(field(reader, "tokenizer.ggml.tokens")) == 600


@needs_llama_cpp
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_llama_cpp_runs_a_k_quant_and_reports_its_agreement(kind, k_ggufs, k_model_dirs):
    result = verify_gguf(k_ggufs[kind, "Q6_K"], k_model_dirs[kind], "Q6_K")
    assert result.threshold is None and result.passed  # K-quants are reported, not gated
    assert result.tokenization_matches == result.prompts
    assert result.agreement >= 0.8, result  # far above chance (1/600): the file computes the same model


def test_k_quant_without_llama_cpp_names_the_extra(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_quantize, "llama_cpp_available", lambda: False)
    with pytest.raises(TunesmithError) as info:
        write_gguf(tiny_model_dir, tmp_path / "k.gguf", "q4_k_m")
    assert "K-quant" in info.value.message and "llama-cpp-python is not installed" in info.value.message
    assert "pip install 'tunesmith[gguf]'" in info.value.hint and "llama-quantize" in info.value.hint
    assert not list(tmp_path.iterdir())


@needs_llama_cpp
def test_a_failed_quantization_leaves_no_file(k_model_dirs, tmp_path, monkeypatch):
    def failing(source: Path, target: Path, quant: str) -> None:
        assert source.is_file() and source.parent == target.parent  # the F16 is written next to the target
        raise TunesmithError("quantizer failed")

    monkeypatch.setattr(gguf_export, "quantize_with_llama_cpp", failing)
    with pytest.raises(TunesmithError, match="quantizer failed"):
        write_gguf(k_model_dirs["llama"], tmp_path / "out" / "model.Q4_K_M.gguf", "Q4_K_M")
    assert list((tmp_path / "out").iterdir()) == []
