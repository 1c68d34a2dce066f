"""Exact and near-duplicate removal, checked against planted duplicates."""

from __future__ import annotations

import random

import pytest

from tunesmith.data.dedup import (
    DedupResult,
    ShingleHasher,
    exact_duplicate_rows,
    exact_duplicates,
    jaccard,
    near_duplicate_rows,
    near_duplicates,
    score_against_planted,
)

WORDS = [f"{a}{b}" for a in ("ka", "lo", "mi", "ra", "te", "vo", "shi", "ne", "dar", "pel", "qu", "zo")
         for b in ("n", "t", "ra", "mo", "li", "sk", "vi", "do", "pe", "ga")]


def distinct_texts(count: int, words: int = 50, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) + "." for _ in range(count)]


def conversation(user: str, answer: str, system: str | None = None) -> dict:
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"messages": ([{"role": "system", "content": system}] if system else []) + messages}


# ---------------------------------------------------------------------------------------------------------------
# Exact


def test_exact_dedup_ignores_case_spacing_and_composition_only() -> None:
    texts = ["Hello  World", "hello world", "Hello world!", "Cafe\u0301 au lait", "café AU lait\n", "Hello there"]
    result = exact_duplicates(texts)
    assert result.kept == [0, 2, 3, 5]
    assert result.removed == {1: (0, 1.0), 4: (3, 1.0)}


def test_exact_dedup_keeps_letters_that_case_folding_would_spell_otherwise() -> None:
    """casefold() turns ß into ss: "Jürgen Weiß" and "Jürgen Weiss" were one row (a newcomer's German data)."""
    texts = ["Jürgen Weiß aus München", "Jürgen Weiss aus München", "JÜRGEN WEISS AUS MÜNCHEN", "Die Maße", "Die Masse"]
    assert exact_duplicates(texts).kept == [0, 1, 3, 4]  # case alone still does not count


def test_exact_dedup_keeps_the_first_of_many_copies() -> None:
    result = exact_duplicates(["b", "a", "B", "a ", "A"])
    assert result.kept == [0, 1]
    assert result.removed == {2: (0, 1.0), 3: (1, 1.0), 4: (1, 1.0)}


def test_exact_dedup_of_rows_ignores_system_prompts_but_not_turns() -> None:
    rows = [conversation("Hi", "Hello!", system="Be terse."), conversation("Hi", "Hello!"),
            conversation("Hi", "Hello?"), {"prompt": "Hi", "completion": "Hello!"}]
    result = exact_duplicate_rows(rows)
    assert result.removed == {1: (0, 1.0), 3: (0, 1.0)}
    assert result.select(rows) == [rows[0], rows[2]]


# ---------------------------------------------------------------------------------------------------------------
# Near


def edited(text: str, kind: str) -> str:
    words = text.split(" ")
    if kind == "word":
        words[len(words) // 2] = "changed"
    elif kind == "case":
        words = [word.upper() if index % 3 == 0 else word for index, word in enumerate(words)]
    elif kind == "punctuation":
        words = [word + "," if index % 7 == 0 else word for index, word in enumerate(words)]
    return " ".join(words)


def test_near_dedup_removes_planted_copies_and_keeps_distinct_rows() -> None:
    texts = distinct_texts(60)
    planted = []
    for number, (source, kind) in enumerate(zip((3, 10, 17, 25, 33, 41), ("word", "case", "punctuation") * 2,
                                                strict=True)):
        planted.append((source, len(texts)))
        texts.append(edited(texts[source], kind) + (" extra" if number % 2 else ""))
    result = near_duplicates(texts)
    assert result.kept == list(range(60))
    assert {index: original for index, (original, _) in result.removed.items()} == dict(
        (duplicate, original) for original, duplicate in planted)
    assert all(0.85 <= similarity <= 1.0 for _, similarity in result.removed.values())
    assert score_against_planted(result, planted).recall == 1.0


def test_near_dedup_respects_the_threshold() -> None:
    base = distinct_texts(1, words=40)[0].split(" ")
    variant = base[:30] + ["zz"] * 10  # a quarter of the words replaced: Jaccard about 0.6
    texts = [" ".join(base), " ".join(variant)]
    shingles = ShingleHasher()
    similarity = jaccard(shingles(texts[0]), shingles(texts[1]))
    assert 0.5 < similarity < 0.8
    assert near_duplicates(texts, threshold=0.85).removed == {}
    assert near_duplicates(texts, threshold=0.5).removed == {1: (0, pytest.approx(similarity))}


def test_short_texts_are_compared_by_characters() -> None:
    texts = ["Thanks a lot, that fixed it!", "thanks a lot - that fixed it", "Thanks, that did not fix it.",
             "你能帮我给房东写一封关于暖气坏了的邮件吗？我已经等了三天，房间里非常冷，孩子们也生病了。",
             "你能帮我给房东写一封关于暖气坏了的邮件吗？我已经等了三天，房间里特别冷，孩子们也生病了。"]
    result = near_duplicates(texts, threshold=0.7)
    assert set(result.removed) == {1, 4}
    assert result.removed[1][0] == 0 and result.removed[4][0] == 3


def test_near_dedup_compares_with_kept_rows_only() -> None:
    """In a chain a~b~c, b goes (it repeats a) and c stays: it is like b, which is gone, but not like a."""
    a = distinct_texts(1, words=40)[0].split(" ")
    b = [*a[:37], "x1", "x2", "x3"]
    c = [*a[:34], "y1", "y2", "y3", "x1", "x2", "x3"]
    texts = [" ".join(words) for words in (a, b, c)]
    shingles = ShingleHasher()
    sets = [shingles(text) for text in texts]
    assert jaccard(sets[0], sets[1]) > 0.85 and jaccard(sets[1], sets[2]) > 0.75 > jaccard(sets[0], sets[2])
    result = near_duplicates(texts, threshold=0.75)
    assert result.kept == [0, 2]
    assert list(result.removed) == [1]


def test_near_dedup_of_rows_ignores_system_prompts() -> None:
    system = " ".join(distinct_texts(1, words=200, seed=7))  # a long shared prompt must not make rows alike
    rows = [conversation(user, answer, system) for user, answer in zip(distinct_texts(20, 12, seed=1),
                                                                       distinct_texts(20, 30, seed=2), strict=True)]
    assert near_duplicate_rows(rows).kept == list(range(20))


def test_near_dedup_is_deterministic() -> None:
    texts = distinct_texts(30) + [edited(text, "word") for text in distinct_texts(30)[:5]]
    first, second = near_duplicates(texts, num_perm=64), near_duplicates(texts, num_perm=64)
    assert first == second
    assert len(first.removed) == 5


def test_dedup_result_select() -> None:
    assert DedupResult(kept=[0, 2], removed={1: (0, 1.0)}).select(["a", "b", "c"]) == ["a", "c"]


def test_score_counts_misses_and_false_removals() -> None:
    result = DedupResult(kept=[0, 1, 3], removed={2: (0, 0.9), 4: (1, 0.9)})
    score = score_against_planted(result, [(0, 2), (1, 3)])
    assert score.recall == 0.5
    assert score.missed == [(1, 3)]
    assert score.false_removals == [4]


# ---------------------------------------------------------------------------------------------------------------
# The benchmark's synthetic rows


@pytest.fixture(scope="module")
def synthetic():
    from tunesmith.data import synthetic

    return synthetic


def test_synthetic_rows_plant_duplicates_after_originals_and_pii(synthetic) -> None:
    dataset = synthetic.make_dataset(500, near_dup_fraction=0.1, pii_fraction=0.1, seed=3)
    assert len(dataset.rows) == 500 and len(dataset.near_duplicates) == 50
    assert all(original < duplicate for original, duplicate in dataset.near_duplicates)
    assert all(dataset.rows[original] != dataset.rows[duplicate] for original, duplicate in dataset.near_duplicates)
    for index, values in dataset.pii.items():
        assert all(value in str(dataset.rows[index]) for value in values)
    assert 45 <= len(dataset.pii) <= 60  # 10% of the originals, plus the copies of those that were copied
    rows, pairs = synthetic.make_rows(500, 0.1, 0.1, 3)
    assert rows == dataset.rows and pairs == dataset.near_duplicates


def test_near_dedup_on_synthetic_rows(synthetic) -> None:
    rows, planted = synthetic.make_rows(2000, near_dup_fraction=0.1, pii_fraction=0.0, seed=1)
    score = score_against_planted(near_duplicate_rows(rows), planted)
    assert score.false_removals == []
    assert score.recall > 0.9  # the rest had a word swapped in a short row: Jaccard below 0.85


def test_rows_that_differ_only_in_their_tool_call_are_not_duplicates() -> None:
    def row(name: str, city: str, call_id: str) -> dict:
        call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": f'{{"city": "{city}"}}'}}
        return {"messages": [{"role": "user", "content": "Help me."},
                             {"role": "assistant", "content": "", "tool_calls": [call]},
                             {"role": "tool", "content": "{}"}, {"role": "assistant", "content": "Done."}]}

    rows = [row("get_weather", "Quito", "c0"), row("get_time", "Quito", "c1"), row("get_weather", "Lima", "c2"),
            row("get_weather", "Quito", "c3")]  # the last repeats the first; only the call id differs
    assert exact_duplicate_rows(rows).select(list(range(4))) == [0, 1, 2]
    assert near_duplicate_rows(rows).select(list(range(4))) == [0, 1, 2]
