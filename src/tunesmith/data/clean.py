"""Row-level cleaning for the data stage: text normalization, refusal/boilerplate detection, language
allow-lists and token-length limits.

Each check works on plain strings; `tunesmith.data.rowtext` says which strings of a row to give it.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import ftfy
from ftfy.chardata import CHARMAP_ENCODINGS

from tunesmith.errors import RecipeError

if TYPE_CHECKING:
    from py3langid.langid import LanguageIdentifier
    from transformers import PreTrainedTokenizerBase

# ---------------------------------------------------------------------------------------------------------------
# Text normalization


@dataclass(frozen=True)
class NormalizeOptions:
    """Which repairs `normalize_text` makes; the recipe can switch each one off."""

    unify_line_breaks: bool = True  # "\r\n" and a lone "\r" become "\n"
    drop_zero_width: bool = True  # zero-width space, word joiner, BOM (ZWJ/ZWNJ stay: emoji and scripts need them)
    drop_control_chars: bool = True  # C0/C1 control characters other than "\n" and "\t"
    fix_mojibake: bool = True  # UTF-8 read as Latin-1/cp1252 ("cafÃ©" -> "café"), through ftfy
    nfc: bool = True  # Unicode NFC, so "e" + combining acute and "é" are the same text
    collapse_spaces: bool = True  # runs of spaces/tabs between words -> one space; indentation is kept (code)
    trim_line_ends: bool = True  # spaces/tabs before a line break
    max_blank_lines: int | None = 2  # longer runs of blank lines are cut to this many; None keeps them
    strip: bool = True  # whitespace at the start and end of the text


# ftfy repairs encoding only: its quote uncurling, width folding and ligature splitting would rewrite
# correct text (full-width CJK punctuation, typographic quotes), and the steps around it do the rest.
MOJIBAKE_ONLY = ftfy.TextFixerConfig(
    unescape_html=False, remove_terminal_escapes=False, fix_latin_ligatures=False, fix_character_width=False,
    uncurl_quotes=False, fix_line_breaks=False, remove_control_chars=False, normalization=None, explain=False)
LINE_BREAK = re.compile(r"\r\n?")
ZERO_WIDTH = re.compile("[\u200b\u2060\ufeff]")
C0_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")
C1_CONTROL = re.compile("[\x80-\x9f]")
# Two or more spaces/tabs, or one tab, between non-space characters; starting with the character class
# (lookbehind second) lets the regex engine skip ahead to the next space, twice as fast as `(?<=\S)...`.
INNER_SPACE_RUN = re.compile(r"[ \t](?<=\S[ \t])(?:[ \t]+|(?<=\t))(?=\S)")
LINE_END_SPACE = re.compile(r"[ \t]+$", re.MULTILINE)
MAX_PASSES = 4


def normalize_text(text: str, options: NormalizeOptions = NormalizeOptions()) -> str:
    """`text` with encoding damage repaired and invisible or redundant characters removed.

    Cleaning twice changes nothing: when the result could still hold mojibake (a removed control
    character or NFC can expose some), the steps run again until it stops changing.
    """
    for _ in range(MAX_PASSES):
        cleaned = tidy_whitespace(repaired_characters(text, options), options)
        if cleaned == text or not (options.fix_mojibake and MOJIBAKE_SUSPECT.search(cleaned)):
            return cleaned
        text = cleaned
    return text


def repaired_characters(text: str, options: NormalizeOptions) -> str:
    """C0 controls go before the mojibake repair, C1 controls after it: ftfy reads those as cp1252 bytes."""
    if options.unify_line_breaks and "\r" in text:
        text = LINE_BREAK.sub("\n", text)
    if options.drop_control_chars:
        text = C0_CONTROL.sub("", text)
    if text.isascii():  # nothing below applies to ASCII text, which is most of it
        return text
    if options.drop_zero_width:
        text = ZERO_WIDTH.sub("", text)
    if options.fix_mojibake and MOJIBAKE_SUSPECT.search(text):
        text = ftfy.fix_text(text, MOJIBAKE_ONLY)
    if options.drop_control_chars:
        text = C1_CONTROL.sub("", text)
    return unicodedata.normalize("NFC", text) if options.nfc else text


def tidy_whitespace(text: str, options: NormalizeOptions) -> str:
    """The whitespace steps; each regex runs only when a substring test says it has work to do."""
    if options.collapse_spaces and ("  " in text or "\t" in text):
        text = INNER_SPACE_RUN.sub(" ", text)
    if options.trim_line_ends and (" \n" in text or "\t\n" in text or text.endswith((" ", "\t"))):
        text = LINE_END_SPACE.sub("", text)
    if options.max_blank_lines is not None:
        text = capped_blank_lines(text, options.max_blank_lines)
    return text.strip() if options.strip else text


def capped_blank_lines(text: str, max_blank_lines: int) -> str:
    """Longer runs of empty lines cut to `max_blank_lines` (each empty line is one more "\\n")."""
    allowed = "\n" * (max_blank_lines + 1)
    return re.sub(f"{allowed}\n+", allowed, text) if allowed + "\n" in text else text


def mojibake_suspect() -> re.Pattern[str]:
    """What mojibake cannot do without, so that ftfy's slow check runs only on text that has it.

    UTF-8 read through one of ftfy's codepages turns each multi-byte character into a lead-byte character
    followed by a continuation-byte character; ftfy also restores a continuation byte lost to a space or
    "?" where its `ALTERED_UTF8_RE` and `LOSSY_UTF8_RE` say so, and repairs C1 controls and surrogates.
    The codepages are pooled (one character class per role, which keeps the scan fast): ASCII, CJK and
    most accented text still have none of these pairs.
    """
    codepages = CHARMAP_ENCODINGS
    a0_codepages = [codepage for codepage in codepages if codepage != "macroman"]  # ftfy restores no 0xA0 there
    leads = char_class(decoded(range(0xC0, 0x100), codepages))
    followers = char_class(decoded(range(0x80, 0xC0), codepages) + "\ufffd")
    pairs = [leads + followers,  # a multi-byte character
             char_class(decoded([0xC2, 0xC3], codepages)) + r"\?",  # ... whose second byte became "?"
             char_class(decoded([0xC2, 0xC3, 0xC5, 0xCE, 0xD0, 0xD9], a0_codepages)) + " ",  # ... or a space
             char_class(decoded([0xE2, 0xE3, 0xF0], a0_codepages)) + " " + followers]
    return re.compile(f"[\x80-\x9f\ud800-\udfff]|(?={leads})(?:{'|'.join(pairs)})")


def decoded(byte_values: Iterable[int], codepages: list[str]) -> str:
    """The characters `byte_values` stand for in each of the single-byte `codepages`."""
    return "".join(bytes(byte_values).decode(codepage) for codepage in codepages)


def char_class(chars: str) -> str:
    return "[" + "".join(re.escape(char) for char in sorted(set(chars))) + "]"


MOJIBAKE_SUSPECT = mojibake_suspect()


# ---------------------------------------------------------------------------------------------------------------
# Refusals and assistant boilerplate

# Phrases that mark an answer as canned assistant boilerplate wherever they appear.
BOILERPLATE_PHRASES = (
    r"as an? (?:ai|artificial intelligence) (?:language )?model",  # "As an AI language model, I ..."
    r"as an ai(?: assistant| chatbot)?,",  # "As an AI, I don't have feelings"
    r"as an ai (?:assistant|chatbot|developed by)",
    r"as a large language model",
    r"i(?:'m| am) (?:just |only )?an? (?:ai|artificial intelligence) (?:language )?model",
    r"as of my (?:last )?knowledge (?:update|cutoff)",
)
# An apology that may open a refusal: "I'm sorry, but", "Unfortunately,", "I apologize, however".
APOLOGY = (r"(?:(?:i'm|i am) (?:really |very |so |truly )?(?:sorry|afraid)|sorry|apologies|i apologi[sz]e"
           r"|unfortunately|regrettably)[^.!?\n]{0,60}?(?:[,.!;:]\s*|\s+)(?:but\s+|however,?\s+)?")
# Verbs that make "I cannot ..." a refusal; "I cannot wait" and "I can't help but smile" are not.
REFUSED_ACTS = (r"(?:help|assist|provide|fulfil|fulfill|comply|complete|create|generate|write|produce|answer"
                r"|respond|support|engage|participate|share|give|offer|do that|do this|continue|process"
                r"|perform|accommodate|discuss)\b(?! but\b)")
# Ways an answer starts when it refuses (after an optional apology).
REFUSAL_OPENINGS = (
    r"i (?:cannot|can't|can not|won't|will not|must not|am not going to|'m not going to) " + REFUSED_ACTS,
    r"i(?:'m| am) (?:unable|not able|not allowed|not permitted|not comfortable) (?:to )?" + REFUSED_ACTS,
    r"i (?:cannot|can't|can not|won't)(?: do that| do this)?\s*(?:[.!]|$)",  # a bare "I'm sorry, but I can't."
    r"i (?:must|have to) (?:respectfully |politely )?decline",
    r"(?:that|this)(?: is|'s) not something i can (?:help|assist)",
)
BOILERPLATE = re.compile(rf"\b(?:{'|'.join(BOILERPLATE_PHRASES)})", re.IGNORECASE)
REFUSAL = re.compile(rf"""^[\s"'*>_]*(?:{APOLOGY})?(?:{'|'.join(REFUSAL_OPENINGS)})""", re.IGNORECASE)
CURLY_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'"})


def is_refusal(text: str) -> bool:
    """Whether an answer refuses ("I'm sorry, but I can't help with that") or is AI boilerplate.

    Refusals are matched only where the answer starts (after an optional apology), so the same words
    inside a helpful answer ("... I cannot stress this enough") do not count.
    """
    text = text.translate(CURLY_APOSTROPHES)
    return bool(REFUSAL.match(text) or BOILERPLATE.search(text))


# ---------------------------------------------------------------------------------------------------------------
# Language allow-list

# py3langid is fast (~10k texts/s) and its confidence needs only the start of a text.
LANGUAGE_SAMPLE_CHARS = 200
NO_LANGUAGE = "zxx"  # py3langid's label for text without linguistic content (numbers, code)


@functools.cache
def language_identifier() -> LanguageIdentifier:
    """py3langid's bundled model, loaded once (about a second) with probabilities normalised to 0..1."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


@functools.cache
def supported_languages() -> frozenset[str]:
    return frozenset(language_identifier().labels)


def detect_language(text: str) -> tuple[str, float]:
    """The ISO 639 code of the language of `text` (judged on its first 200 characters) and its probability."""
    code, confidence = language_identifier().classify(text[:LANGUAGE_SAMPLE_CHARS])
    return code, float(confidence)


def language_allowed(text: str, allow: Collection[str], min_confidence: float = 0.5) -> bool:
    """False only for text confidently in a language outside `allow`.

    Text too short or too mixed to tell (below `min_confidence`, or without language at all) is kept:
    dropping every "Thanks!" would remove good rows.
    """
    check_language_codes(allow)
    code, confidence = detect_language(text)
    return code in allow or code == NO_LANGUAGE or confidence < min_confidence


def check_language_codes(codes: Collection[str]) -> None:
    unknown = sorted(set(codes) - supported_languages())
    if unknown:
        raise RecipeError(f"unknown language code(s) {unknown} in the language allow-list.",
                          f"Use ISO 639-1 codes such as 'en', 'fr', 'zh'; supported: {sorted(supported_languages())}.")


# ---------------------------------------------------------------------------------------------------------------
# Token lengths


def count_tokens(tokenizer: PreTrainedTokenizerBase, texts: list[str], batch_size: int = 1024) -> list[int]:
    """Token counts without special tokens, in batches: a fast tokenizer then encodes each batch in parallel."""
    counts: list[int] = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(texts[start:start + batch_size], add_special_tokens=False, return_attention_mask=False)
        counts += [len(ids) for ids in encoded["input_ids"]]
    return counts


def length_ok(n_tokens: int, min_tokens: int | None = None, max_tokens: int | None = None) -> bool:
    """Whether a count lies within the bounds (both inclusive); None leaves a side open."""
    return (min_tokens is None or n_tokens >= min_tokens) and (max_tokens is None or n_tokens <= max_tokens)
