"""Text normalization, refusal detection, language allow-lists, token counts, and the texts of a row."""

from __future__ import annotations

import dataclasses
import random

import ftfy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunesmith.data.clean import (
    MOJIBAKE_ONLY,
    MOJIBAKE_SUSPECT,
    NormalizeOptions,
    count_tokens,
    detect_language,
    is_refusal,
    language_allowed,
    length_ok,
    normalize_text,
)
from tunesmith.data.rowtext import answer_texts, map_row_texts, row_text
from tunesmith.errors import RecipeError

# ---------------------------------------------------------------------------------------------------------------
# normalize_text

NORMALIZE_CASES = [
    ("cafe\u0301", "café", "nfd_becomes_nfc"),
    ("cafÃ©", "café", "utf8_read_as_latin1"),
    ("â€œquotedâ€\x9d", "“quoted”", "utf8_read_as_cp1252"),
    ("ÃƒÂ©tÃƒÂ©", "été", "double_mojibake"),
    ("voilÃ le travail", "voilà le travail", "lost_nbsp_byte"),
    ("РџСЂРёРІРµС‚", "Привет", "cyrillic_mojibake"),
    ("a\x00b\x07c\x1bd\x7fe", "abcde", "c0_controls_dropped"),
    ("a\x85b", "a…b", "c1_control_read_as_cp1252"),
    ("zero\u200bwidth\ufeff\u2060", "zerowidth", "zero_width_and_bom_dropped"),
    ("family 👨\u200d👩\u200d👧", "family 👨\u200d👩\u200d👧", "zwj_in_emoji_kept"),
    ("a  b\t\tc \t d", "a b c d", "inner_space_runs_collapsed"),
    ("def f():\n    return  1\n\tpass", "def f():\n    return 1\n\tpass", "indentation_kept"),
    ("line one   \nline two\t\nend", "line one\nline two\nend", "line_ends_trimmed"),
    ("a\n\n\n\n\n\nb", "a\n\n\nb", "blank_line_runs_cut_to_two"),
    ("a\n\nb\n\n\nc", "a\n\nb\n\n\nc", "two_blank_lines_kept"),
    ("a\r\nb\rc", "a\nb\nc", "line_breaks_unified"),
    ("  \n hello \n\n", "hello", "stripped"),
    ("全角？「引用」", "全角？「引用」", "full_width_punctuation_kept"),
    ("don’t “quote”", "don’t “quote”", "curly_quotes_kept"),
    ("Ceci est très simple, à mon avis.", "Ceci est très simple, à mon avis.", "clean_french_unchanged"),
    ("", "", "empty"),
]


@pytest.mark.parametrize(("raw", "expected"), [case[:2] for case in NORMALIZE_CASES],
                         ids=[case[2] for case in NORMALIZE_CASES])
def test_normalize_text(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


SWITCH_CASES = [
    ("unify_line_breaks", False, "a\r\nb", "a\r\nb"),
    ("drop_zero_width", False, "a\u200bb", "a\u200bb"),
    ("drop_control_chars", False, "a\x00b", "a\x00b"),
    ("fix_mojibake", False, "cafÃ©", "cafÃ©"),
    ("nfc", False, "cafe\u0301", "cafe\u0301"),
    ("collapse_spaces", False, "a  b\tc", "a  b\tc"),
    ("trim_line_ends", False, "a  \nb", "a  \nb"),
    ("max_blank_lines", None, "a\n\n\n\n\nb", "a\n\n\n\n\nb"),
    ("max_blank_lines", 0, "a\n\n\nb", "a\nb"),
    ("strip", False, "\n  a  \n", "\n  a\n"),
]


@pytest.mark.parametrize(("option", "value", "raw", "expected"), SWITCH_CASES)
def test_each_normalization_can_be_switched_off(option: str, value: object, raw: str, expected: str) -> None:
    options = dataclasses.replace(NormalizeOptions(), **{option: value})
    if option == "unify_line_breaks":  # "\r" is a control character: keep it by switching that off too
        options = dataclasses.replace(options, drop_control_chars=False)
    assert normalize_text(raw, options) == expected
    assert normalize_text(raw) != expected  # and the default does make the change


def test_control_characters_keep_newlines_and_tabs() -> None:
    options = NormalizeOptions(collapse_spaces=False)
    assert normalize_text("a\tb\nc\x0bd\x0ce", options) == "a\tb\ncde"


TRICKY = st.sampled_from(list("Ã©â€œ\x9d\x81\x85 \t\n\r\u200b\u200d\u0301\u00a0Â?\ufffdРС"))


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.one_of(st.characters(), TRICKY), max_size=80))
def test_normalize_text_is_idempotent_and_total(text: str) -> None:
    once = normalize_text(text)
    assert normalize_text(once) == once


def test_mojibake_prefilter_never_hides_text_ftfy_would_repair() -> None:
    """The cheap pre-check must flag every text ftfy changes, or damaged text would slip through."""
    rng = random.Random(0)
    pieces = ["é", "à", "ü", "ß", "ñ", "ç", "“q”", "—", "€", "™", "…", "•", "°", "©", "中文", "日本語", "Привет",
              "Ελληνικά", "ł", "ő", "😀", "x\u00a0y", "word", "word"]
    repaired = 0
    for _ in range(3000):
        text = " ".join(rng.choice(pieces) for _ in range(rng.randint(1, 5)))
        encoding = rng.choice(ftfy.chardata.CHARMAP_ENCODINGS)
        try:
            damaged = text.encode("utf-8").decode(encoding)
        except UnicodeDecodeError:
            continue
        if rng.random() < 0.3:
            damaged = damaged.replace("\u00a0", " ")
        if ftfy.fix_text(damaged, MOJIBAKE_ONLY) != damaged:
            repaired += 1
            assert MOJIBAKE_SUSPECT.search(damaged), damaged
    assert repaired > 1000


def test_mojibake_prefilter_passes_clean_text() -> None:
    clean = ["The “quick” brown fox — really.", "你好，世界。今天天气很好。", "Ceci est très simple, à mon avis.",
             "Привет, как дела сегодня?", "Die Straße in München ist schön."]
    assert [text for text in clean if MOJIBAKE_SUSPECT.search(text)] == []


# ---------------------------------------------------------------------------------------------------------------
# is_refusal

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I’m sorry, but I can’t.",
    "As an AI language model, I do not have personal opinions.",
    "Sure! As a large language model, I can only guess.",
    "I cannot help with requests like this one.",
    "I am unable to provide that information.",
    "Sorry, I cannot assist with that request.",
    "Unfortunately, I cannot fulfill this request.",
    "I apologize, but I'm not able to share those details.",
    "I must respectfully decline.",
    "That's not something I can help with.",
    "I'm an AI language model and cannot browse the web.",
    "  **I can't assist with that.**",
]
NOT_REFUSALS = [
    "I cannot wait to try this recipe tonight!",
    "I can't help but laugh at this joke.",
    "I am unable to reproduce the bug without logs; could you share them?",
    "Here is the recipe. I cannot stress enough how good it is.",
    "I'm sorry to hear that. Here is what you can do first.",
    "As an AI researcher, you will enjoy this paper.",
    "You said you cannot help with the move, so I booked a van.",
    "Sorry for the delay! Here is the summary you asked for.",
    'If the chatbot says "I cannot assist with that", rephrase your question.',
    "Open the settings first. I can't provide exact prices, but the basic plan is usually cheapest.",
    "",
]


@pytest.mark.parametrize("answer", REFUSALS)
def test_refusals_are_detected(answer: str) -> None:
    assert is_refusal(answer)


@pytest.mark.parametrize("answer", NOT_REFUSALS)
def test_normal_answers_are_not_refusals(answer: str) -> None:
    assert not is_refusal(answer)


# ---------------------------------------------------------------------------------------------------------------
# Languages

SENTENCES = {
    "en": "Can you help me write a short email to my landlord about the broken heater?",
    "fr": "Pouvez-vous m'aider à écrire un courriel à mon propriétaire au sujet du chauffage ?",
    "de": "Kannst du mir helfen, eine kurze E-Mail an meinen Vermieter zu schreiben?",
    "es": "¿Puedes ayudarme a escribir un correo a mi casero sobre la calefacción rota?",
    "zh": "你能帮我给房东写一封关于暖气坏了的邮件吗？",
    "ja": "大家さんに暖房が壊れたことについてメールを書くのを手伝ってくれますか？",
}


@pytest.mark.parametrize(("language", "sentence"), SENTENCES.items())
def test_detect_language(language: str, sentence: str) -> None:
    code, confidence = detect_language(sentence)
    assert code == language
    assert 0.5 < confidence <= 1.0


def test_language_allow_list() -> None:
    allow = {"en", "de"}
    assert language_allowed(SENTENCES["en"], allow)
    assert language_allowed(SENTENCES["de"], allow)
    assert not language_allowed(SENTENCES["fr"], allow)
    assert not language_allowed(SENTENCES["zh"], allow)


def test_texts_too_short_to_tell_are_kept() -> None:
    assert language_allowed("ok", {"fr"})
    assert language_allowed("12345 + 678", {"fr"})
    assert not language_allowed(SENTENCES["en"], {"fr"}, min_confidence=0.5)
    assert language_allowed(SENTENCES["en"], {"fr"}, min_confidence=1.01)


def test_unknown_language_code_is_a_recipe_error() -> None:
    with pytest.raises(RecipeError, match="'english'"):
        language_allowed("hello there", {"english"})


# ---------------------------------------------------------------------------------------------------------------
# Token lengths


def test_count_tokens_matches_single_encodes_across_batches(tokenizer_dir) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    texts = ["Hello there.", "", "A somewhat longer sentence about orders and refunds.", "ok", "x " * 40]
    expected = [len(tokenizer.encode(text, add_special_tokens=False)) for text in texts]
    assert count_tokens(tokenizer, texts, batch_size=2) == expected
    assert expected[1] == 0 and expected[4] > expected[0]


@pytest.mark.parametrize(("n", "low", "high", "ok"), [
    (10, 5, 20, True), (5, 5, 20, True), (20, 5, 20, True), (4, 5, 20, False), (21, 5, 20, False),
    (10_000, None, None, True), (0, 1, None, False), (99, None, 98, False),
])
def test_length_ok(n: int, low: int | None, high: int | None, ok: bool) -> None:
    assert length_ok(n, low, high) is ok


# ---------------------------------------------------------------------------------------------------------------
# Texts of a row

TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Find  an order",
                                           "parameters": {"type": "object", "properties": {}}}}]
MESSAGES_ROW = {
    "messages": [
        {"role": "system", "content": "Be  brief."},
        {"role": "user", "content": "where is  my order"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
            "name": "lookup", "arguments": '{"id":  "A1"}'}}]},
        {"role": "tool", "content": "shipped", "name": "lookup"},
        {"role": "assistant", "content": "It  shipped."},
    ],
    "tools": TOOLS,
}
PREFERENCE_ROW = {"prompt": [{"role": "user", "content": "hi  there"}],
                  "chosen": [{"role": "assistant", "content": "Hello!"}],
                  "rejected": [{"role": "assistant", "content": "Go  away."}]}
UNPAIRED_ROW = {"prompt": "hi  there", "completion": "Go  away.", "label": False}


def collapse(text: str) -> str:
    return " ".join(text.split())


def test_map_row_texts_touches_contents_only() -> None:
    mapped = map_row_texts(MESSAGES_ROW, collapse)
    contents = [message["content"] for message in mapped["messages"]]
    assert contents == ["Be brief.", "where is my order", "", "shipped", "It shipped."]
    assert [m["role"] for m in mapped["messages"]] == [m["role"] for m in MESSAGES_ROW["messages"]]
    assert mapped["messages"][2]["tool_calls"] == MESSAGES_ROW["messages"][2]["tool_calls"]
    assert mapped["messages"][3]["name"] == "lookup"
    assert mapped["tools"] == TOOLS
    assert MESSAGES_ROW["messages"][1]["content"] == "where is  my order"  # the input row is unchanged


def test_map_row_texts_on_every_shape() -> None:
    assert map_row_texts({"text": "a  b"}, collapse) == {"text": "a b"}
    assert map_row_texts({"prompt": "a  b", "completion": "c  d"}, collapse) == {"prompt": "a b", "completion": "c d"}
    assert map_row_texts(UNPAIRED_ROW, collapse) == {"prompt": "hi there", "completion": "Go away.", "label": False}
    mapped = map_row_texts(PREFERENCE_ROW, collapse)
    assert mapped["prompt"][0] == {"role": "user", "content": "hi there"}
    assert mapped["rejected"][0]["content"] == "Go away."


def test_row_text_reads_in_order_and_can_leave_system_out() -> None:
    assert row_text(MESSAGES_ROW) == "Be  brief.\nwhere is  my order\n\nshipped\nIt  shipped."
    assert row_text(MESSAGES_ROW, include_system=False).startswith("where is  my order")
    assert row_text(PREFERENCE_ROW) == "hi  there\nHello!\nGo  away."
    assert row_text({"text": "plain"}) == "plain"


def test_answer_texts_are_what_the_row_teaches() -> None:
    assert answer_texts(MESSAGES_ROW) == ["", "It  shipped."]
    assert answer_texts(PREFERENCE_ROW) == ["Hello!"]
    assert answer_texts({"prompt": "q", "completion": "a"}) == ["a"]
    assert answer_texts(UNPAIRED_ROW) == []
    assert answer_texts({**UNPAIRED_ROW, "label": True}) == ["Go  away."]
    assert answer_texts({"text": "raw"}) == ["raw"]
