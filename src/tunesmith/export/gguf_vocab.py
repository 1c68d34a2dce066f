"""The tokenizer inside a GGUF: tokens, their types, merges or scores, special ids, chat template.

llama.cpp tokenizes with its own code from these keys, so they must describe the same tokenizer the
model was trained with. Two kinds are written, judged from the saved tokenizer.json:
- byte-level BPE (Llama 3, SmolLM, Qwen): `tokenizer.ggml.model = "gpt2"` with the merges, and
  `tokenizer.ggml.pre` naming the pre-tokenizer regex (without it llama.cpp falls back to a default
  and warns that generation quality will be degraded);
- SentencePiece-style BPE with byte fallback (Llama 2, Mistral, TinyLlama): `"llama"`, with a score
  per token instead of merges, byte tokens `<0x00>`..`<0xFF>` typed BYTE and the unknown token UNKNOWN.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import gguf

from tunesmith.errors import TunesmithError

# The Split regexes of the tokenizers we recognise, and the name llama.cpp gives their pre-tokenizer.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_PRE_TOKENIZERS = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
PAD_SCORE, USER_DEFINED_SCORE = -10000.0, -1000.0  # the values llama.cpp's converter gives these


def add_tokenizer(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int) -> str:
    """Write the `tokenizer.*` keys for the tokenizer saved in `model_dir`; returns the GGUF tokenizer model."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    kind = tokenizer_model(spec, model_dir)
    if kind == "gpt2":
        add_byte_level_vocab(writer, tokenizer, spec, vocab_size)
    else:
        add_sentencepiece_vocab(writer, tokenizer, spec, vocab_size)
    special = gguf.SpecialVocab(model_dir, load_merges=kind == "gpt2", n_vocab=vocab_size)
    special.add_special_token = added_special_tokens(tokenizer)
    if special.chat_template is None and tokenizer.chat_template:
        special.chat_template = tokenizer.chat_template
    if kind == "gpt2" and not special.merges:
        raise TunesmithError(f"No BPE merges found in {model_dir / 'tokenizer.json'}.",
                             "llama.cpp cannot load a byte-level BPE vocabulary without its merges.")
    special.add_to_gguf(writer, quiet=True)
    return kind


def tokenizer_model(spec: dict[str, Any], model_dir: Path) -> str:
    """`gpt2` (byte-level BPE) or `llama` (SentencePiece-style BPE); other tokenizers are refused."""
    model = spec.get("model", {})
    parts = json.dumps([spec.get("normalizer"), spec.get("pre_tokenizer"), spec.get("decoder")])
    if model.get("type") == "BPE" and "ByteLevel" in parts and not model.get("byte_fallback"):
        return "gpt2"
    if model.get("type") == "BPE" and model.get("byte_fallback") and ("Metaspace" in parts or "\\u2581" in parts):
        return "llama"  # the space marker `▁` comes from a Metaspace pre-tokenizer or a Replace normalizer
    raise TunesmithError(
        f"GGUF export supports byte-level BPE (Llama 3, SmolLM, Qwen) and SentencePiece-style BPE (Llama 2, "
        f"Mistral) tokenizers; {model_dir} has a {model.get('type')} tokenizer of neither kind.",
        "Export a merged checkpoint instead (--format merged) and convert it with llama.cpp's converter.",
    )


def add_byte_level_vocab(writer: gguf.GGUFWriter, tokenizer: Any, spec: dict[str, Any], vocab_size: int) -> None:
    """Tokens and types of a byte-level BPE vocabulary, and the name of its pre-tokenizer (merges come after)."""
    tokens, token_types = token_table(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    pre = pre_tokenizer_name(spec.get("pre_tokenizer"))
    if pre is None:
        print("warning: unrecognised pre-tokenizer; llama.cpp will use its default split and may tokenize "
              "some text differently from transformers.", file=sys.stderr)
    else:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)


def add_sentencepiece_vocab(writer: gguf.GGUFWriter, tokenizer: Any, spec: dict[str, Any], vocab_size: int) -> None:
    """Tokens, scores and types of a SentencePiece-style vocabulary, as llama.cpp's `llama` tokenizer reads them."""
    tokens, token_types = token_table(tokenizer, vocab_size)
    unk_id = tokenizer.unk_token_id
    token_types = [gguf.TokenType.UNKNOWN if index == unk_id
                   else gguf.TokenType.BYTE if kind == gguf.TokenType.NORMAL and BYTE_TOKEN.fullmatch(token)
                   else kind for index, (token, kind) in enumerate(zip(tokens, token_types, strict=True))]
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(sentencepiece_scores(tokens, token_types, merge_list(spec)))
    writer.add_token_types([int(t) for t in token_types])
    writer.add_add_space_prefix(adds_space_prefix(spec))


def merge_list(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """The BPE merges of a tokenizer.json, whichever way it spells them ("a b" or ["a", "b"])."""
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in spec["model"].get("merges", [])]


def sentencepiece_scores(tokens: list[str], token_types: list[int], merges: list[tuple[str, str]]) -> list[float]:
    """A score per token that makes llama.cpp's tokenizer merge in the same order as the BPE merges.

    llama.cpp's SentencePiece tokenizer repeatedly joins the adjacent pair whose joined text is the
    vocabulary entry with the highest score, so a token's score is minus the rank of the first merge
    that makes it (SentencePiece's own scores follow the same order). Tokens no merge makes keep
    SentencePiece's conventions: 0 for control, byte and unknown tokens, below every merge for single
    characters.
    """
    rank: dict[str, int] = {}
    for index, (left, right) in enumerate(merges):
        rank.setdefault(left + right, index)
    scores = []
    for index, (token, kind) in enumerate(zip(tokens, token_types, strict=True)):
        if kind == gguf.TokenType.UNUSED:
            scores.append(PAD_SCORE)
        elif kind == gguf.TokenType.USER_DEFINED:
            scores.append(USER_DEFINED_SCORE)
        elif kind != gguf.TokenType.NORMAL:
            scores.append(0.0)
        else:
            scores.append(-float(rank.get(token, len(merges) + index)))
    return scores


def adds_space_prefix(spec: dict[str, Any]) -> bool:
    """Whether the tokenizer puts `▁` in front of the text (Metaspace prepend, or a Prepend normalizer)."""
    parts = [spec.get("pre_tokenizer") or {}, spec.get("normalizer") or {}]
    steps = [step for part in parts for step in (part.get("pretokenizers") or part.get("normalizers") or [part])]
    for step in steps:
        if step.get("type") == "Metaspace":  # tokenizers >= 0.19 say prepend_scheme, older ones add_prefix_space
            return step.get("prepend_scheme", "always" if step.get("add_prefix_space", True) else "never") != "never"
        if step.get("type") == "Prepend":
            return True
    return False


def token_table(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Every id below `vocab_size` with its text and llama.cpp token type (as `get_vocab_base` does).

    Ids the tokenizer does not use (embedding rows padded for speed) become `[PAD{i}]`, typed UNUSED.
    """
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    if by_id and max(by_id) >= vocab_size:
        raise TunesmithError(f"The tokenizer has ids up to {max(by_id)}, but the model has only {vocab_size} "
                             "embedding rows.", "Resize the model's embeddings to the tokenizer before exporting.")
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[index])
        types.append(token_type(by_id[index], added.get(index)))
    return tokens, [int(t) for t in types]


def token_type(token: str, added: Any | None) -> gguf.TokenType:
    """CONTROL for special added tokens (and ones that look like `<|...|>`), USER_DEFINED for other added ones."""
    if added is None:
        return gguf.TokenType.NORMAL
    if added.special or (token.startswith("<|") and token.endswith("|>")):
        return gguf.TokenType.CONTROL
    return gguf.TokenType.USER_DEFINED


def added_special_tokens(tokenizer: Any) -> dict[str, bool]:
    """Whether the tokenizer itself prepends BOS / appends EOS, measured rather than read from flags.

    llama.cpp otherwise guesses per vocabulary type; with ChatML models where BOS is `<|im_start|>`
    a wrong guess puts a stray token in front of every prompt.
    """
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a")
    extra = len(full) - len(plain)
    add_bos = extra > 0 and tokenizer.bos_token_id is not None and full[0] == tokenizer.bos_token_id
    add_eos = extra > 0 and tokenizer.eos_token_id is not None and full[-1] == tokenizer.eos_token_id
    return {"bos": bool(add_bos), "eos": bool(add_eos)}


def pre_tokenizer_name(pre: dict[str, Any] | None) -> str | None:
    """llama.cpp's name for a tokenizer.json pre-tokenizer, judged from its structure; None if unknown."""
    if not pre:
        return None
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [part.get("type") for part in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True) and not parts[0].get("add_prefix_space"):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"  # StarCoder-style: each digit alone, then the GPT-2 split
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        return SPLIT_PRE_TOKENIZERS.get(parts[0].get("pattern", {}).get("Regex"))
    return None
