"""The bundled routing task (examples/data/make_routing.py): a classifier that words alone cannot solve."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import load_example_generator

ROOT = Path(__file__).resolve().parents[1]


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_bundled_files_are_the_generators_output():
    train, held = load_example_generator("make_routing").build()
    assert read(ROOT / "examples/data/routing/train.jsonl") == train
    assert read(ROOT / "examples/data/routing/eval.jsonl") == held


def test_splits_are_balanced_and_share_no_message():
    generator = load_example_generator("make_routing")
    train, held = generator.build()
    assert len(train) >= 400 and len(held) >= 100
    labels = [r["messages"][1]["content"] for r in train]
    assert set(Counter(labels).values()) == {generator.N_TRAIN_PER_LABEL} and 6 <= len(set(labels)) <= 10
    assert not {r["messages"][0]["content"] for r in train} & {r["messages"][0]["content"] for r in held}


def test_most_messages_name_a_second_team_s_problem_with_the_same_phrases():
    generator = load_example_generator("make_routing")
    train, _ = generator.build()
    phrases = {label: [p.split("{")[0].strip().casefold() for p in problems]
               for label, problems in generator.PROBLEMS.items()}

    def teams_named(text: str) -> set[str]:
        return {label for label, starts in phrases.items() if any(start in text.casefold() for start in starts)}

    two = sum(len(teams_named(r["messages"][0]["content"].split("\nMessage: ")[1])) >= 2 for r in train)
    assert two >= 0.7 * len(train)


def test_words_alone_do_not_separate_the_teams():
    pytest.importorskip("sklearn")
    generator = load_example_generator("make_routing")
    accuracy = generator.keyword_baseline(*generator.build())
    assert 0.4 < accuracy < 0.75  # a bag of words finds the two teams involved, not the one that must act
