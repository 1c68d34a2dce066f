"""GGUF export of a SentencePiece-style vocabulary (Llama 2, Mistral): a real sentencepiece model trained
here, wrapped as transformers' LlamaTokenizer, written as `tokenizer.ggml.model = "llama"` and read back
by gguf's reader, transformers' GGUF loader and (when installed) llama.cpp."""

from __future__ import annotations

import io
import json
from pathlib import Path

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import ORDERS
from tunesmith.export.gguf import write_gguf

spm = pytest.importorskip("sentencepiece")

T = gguf.TokenType
# No leading space: llama.cpp always puts `▁` in front, transformers (Metaspace, prepend "first") does not
# when the text already starts with a space; that is a difference between the two tokenizers, not the file.
TEXTS = ["Deliver 3 pizzas to 221B Baker St.  Thanks!", "Ünïcödé 🍕 and\nnew lines\ttabs",
         "I'd like 6 medium t-shirts, colour green, for tomorrow", "x"]


def train_sentencepiece() -> bytes:
    """A BPE sentencepiece model with byte fallback, trained on the bundled order texts."""
    texts = [m["content"] for name in ("train.jsonl", "eval.jsonl")
             for line in (ORDERS / name).read_text(encoding="utf-8").splitlines()
             for m in json.loads(line)["messages"]]
    model = io.BytesIO()
    # 400 pieces: 256 byte tokens, 3 control ones and the ~70 characters of the texts must fit
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model, vocab_size=400,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   pad_id=-1, unk_id=0, bos_id=1, eos_id=2, minloglevel=2)
    return model.getvalue()


@pytest.fixture(scope="module")
def spm_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny llama on the sentencepiece vocabulary, as transformers' LlamaTokenizer (merges as its converter
    derives them from the pieces)."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    processor = spm.SentencePieceProcessor(model_proto=train_sentencepiece())
    vocab = {processor.IdToPiece(i): i for i in range(processor.vocab_size())}
    tokenizer = LlamaTokenizer(vocab=vocab, merges=generate_merges(vocab))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    target = tmp_path_factory.mktemp("spm-llama")
    LlamaForCausalLM(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def spm_gguf(spm_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gguf(spm_model_dir, tmp_path_factory.mktemp("spm-gguf") / "spm.F32.gguf", "F32")


def field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def test_vocabulary_is_written_as_sentencepiece(spm_gguf, spm_model_dir):
    reader = gguf.GGUFReader(spm_gguf)
    tokenizer = AutoTokenizer.from_pretrained(spm_model_dir)
    assert field(reader, "tokenizer.ggml.model") == "llama" and field(reader, "tokenizer.ggml.pre") == "default"
    assert "tokenizer.ggml.merges" not in reader.fields  # llama.cpp's SentencePiece tokenizer ranks by score
    assert field(reader, "tokenizer.ggml.add_space_prefix") is True
    tokens, types = field(reader, "tokenizer.ggml.tokens"), field(reader, "tokenizer.ggml.token_type")
    scores = field(reader, "tokenizer.ggml.scores")
    assert len(tokens) == len(types) == len(scores) == 400 == field(reader, "llama.vocab_size")
    assert tokens == tokenizer.convert_ids_to_tokens(list(range(400)))
    assert types[:3] == [T.UNKNOWN, T.CONTROL, T.CONTROL]
    assert tokens[3:259] == [f"<0x{b:02X}>" for b in range(256)] and set(types[3:259]) == {T.BYTE}
    assert set(types[259:]) == {T.NORMAL}
    assert {field(reader, f"tokenizer.ggml.{k}_token_id") for k in ("unknown", "bos", "eos")} == {0, 1, 2}
    merged = [i for i in range(259, 400) if len(tokens[i]) > 1]  # pieces made by a merge, in merge order
    assert [scores[i] for i in merged] == sorted((scores[i] for i in merged), reverse=True)
    assert max(scores[i] for i in range(259, 400) if len(tokens[i]) == 1) < min(scores[i] for i in merged)


def test_transformers_reads_back_the_same_tokenizer_and_logits(spm_gguf, spm_model_dir):
    original = AutoTokenizer.from_pretrained(spm_model_dir)
    loaded = AutoTokenizer.from_pretrained(spm_gguf.parent, gguf_file=spm_gguf.name)
    for text in [*TEXTS, " leading space"]:
        assert loaded.encode(text, add_special_tokens=False) == original.encode(text, add_special_tokens=False)
    ids = torch.tensor([original.encode(TEXTS[0])])
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(spm_model_dir, dtype=torch.float32)(input_ids=ids).logits
        got = AutoModelForCausalLM.from_pretrained(spm_gguf.parent, gguf_file=spm_gguf.name,
                                                   dtype=torch.float32)(input_ids=ids).logits
    assert float((expected - got).abs().max()) < 1e-4


def test_llama_cpp_tokenizes_like_transformers(spm_gguf, spm_model_dir):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (pip install '.[gguf]')")
    tokenizer = AutoTokenizer.from_pretrained(spm_model_dir)
    llm = llama_cpp.Llama(model_path=str(spm_gguf), n_ctx=64, vocab_only=True, verbose=False)
    try:
        for text in TEXTS:
            expected = tokenizer.encode(text, add_special_tokens=False)
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == expected, text
            assert llm.detokenize(expected).decode() == " " + text  # llama.cpp keeps the prefix space
    finally:
        llm.close()
