"""The tokenizer inside a GGUF: byte-level BPE tokens, their types, merges, special ids, chat template.

llama.cpp tokenizes with its own code from these keys, so they must describe the same tokenizer the
model was trained with: `tokenizer.ggml.model = "gpt2"` (byte-level BPE) needs the merges, and
`tokenizer.ggml.pre` names the pre-tokenizer regex (without it llama.cpp falls back to a default
and warns that generation quality will be degraded).
"""

from __future__ import annotations

import json
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


def add_bpe_tokenizer(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int) -> None:
    """Write the `tokenizer.*` keys for the byte-level BPE tokenizer saved in `model_dir`."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    require_byte_level_bpe(spec, model_dir)
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
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    special.add_special_token = added_special_tokens(tokenizer)
    if special.chat_template is None and tokenizer.chat_template:
        special.chat_template = tokenizer.chat_template
    if not special.merges:
        raise TunesmithError(f"No BPE merges found in {model_dir / 'tokenizer.json'}.",
                             "llama.cpp cannot load a byte-level BPE vocabulary without its merges.")
    special.add_to_gguf(writer, quiet=True)


def require_byte_level_bpe(spec: dict[str, Any], model_dir: Path) -> None:
    """Refuse tokenizers we would write wrongly (SentencePiece-style BPE, WordPiece, Unigram)."""
    model = spec.get("model", {})
    byte_level = "ByteLevel" in json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")])
    if model.get("type") == "BPE" and byte_level and not model.get("byte_fallback"):
        return
    kind = "SentencePiece-style BPE" if model.get("byte_fallback") else f"{model.get('type')} (not byte-level)"
    raise TunesmithError(
        f"GGUF export supports byte-level BPE tokenizers (Llama 3, SmolLM, Qwen) only; {model_dir} has a "
        f"{kind} tokenizer.",
        "Export a merged checkpoint instead (--format merged) and convert it with llama.cpp's converter.",
    )


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
