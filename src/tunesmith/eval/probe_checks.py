"""Automatic checks for the forgetting probes: each maps (answer, expected) to pass or fail.

A probe names its check and the expected value in its JSONL row, e.g.
`{"check": "contains", "answer": "Paris"}` or `{"check": "word_count", "answer": 3}`. The checks are
deliberately lenient about wrapping (a small model that says "The capital of France is Paris." passes
a one-word question): a probe measures whether the knowledge or the skill is still there, not style.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from tunesmith.errors import TunesmithError

# thousands grouped by commas first ("1,000", "12,500.5"), then a plain number with a decimal point or comma ("3,5")
NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d|,\d)|-?\d+(?:[.,]\d+)?")
THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
WORD = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")


def check_contains(answer: str, expected: Any) -> bool:
    """Any of the expected strings appears in the answer, ignoring case."""
    options = expected if isinstance(expected, list) else [expected]
    return any(str(option).casefold() in answer.casefold() for option in options)


def check_exact(answer: str, expected: Any) -> bool:
    """The whole answer, ignoring case, surrounding space, quotes and a final full stop or exclamation mark."""
    return _plain(answer) == _plain(str(expected))


def _plain(text: str) -> str:
    return text.strip().strip("\"'`").rstrip(".!").strip().casefold()


def check_regex(answer: str, expected: Any) -> bool:
    """The pattern is found somewhere in the answer (anchor it with ^ and $ to demand the whole answer)."""
    return re.search(str(expected), answer.strip()) is not None


def check_number(answer: str, expected: Any) -> bool:
    """The last number in the answer equals the expected one: "2 + 3 = 5" passes for 5, "2 + 3 = 6" fails
    (digits only: "seven" does not count). Commas grouping thousands are read as such ("1,000" is 1000), any other
    comma as a decimal one ("3,5" is 3.5)."""
    numbers = NUMBER.findall(answer)
    if not numbers:
        return False
    last = numbers[-1]
    value = float(last.replace(",", "") if THOUSANDS.fullmatch(last) else last.replace(",", "."))
    return value == float(expected)


def check_all_caps(answer: str, expected: Any) -> bool:
    """The answer has letters and none of them is lower case."""
    letters = [c for c in answer if c.isalpha()]
    return bool(letters) and not any(c.islower() for c in letters)


def check_word_count(answer: str, expected: Any) -> bool:
    """Exactly `expected` words (a word is a run of letters or digits; punctuation does not count)."""
    return len(WORD.findall(answer)) == int(expected)


CHECKS: dict[str, Callable[[str, Any], bool]] = {
    "contains": check_contains, "exact": check_exact, "regex": check_regex, "number": check_number,
    "all_caps": check_all_caps, "word_count": check_word_count,
}


def validate_probe(probe: dict[str, Any], where: str) -> None:
    """A probe row needs a prompt, a known check and (for most checks) an expected answer: a number for `number`,
    a whole number for `word_count` (checked here, not after the probes were generated)."""
    if not isinstance(probe, dict):
        raise TunesmithError(f"{where}: a probe is a JSON object, not a {type(probe).__name__}.",
                             'Write it as {"prompt": "...", "check": "contains", "answer": "..."}.')
    if not isinstance(probe.get("prompt"), str) or not probe["prompt"].strip():
        raise TunesmithError(f"{where}: a probe needs a non-empty 'prompt'.")
    if probe.get("check") not in CHECKS:
        raise TunesmithError(f"{where}: unknown check {probe.get('check')!r}.", f"Use one of {', '.join(CHECKS)}.")
    if probe["check"] != "all_caps" and probe.get("answer") is None:
        raise TunesmithError(f"{where}: the {probe['check']!r} check needs an 'answer'.")
    if probe["check"] in ("number", "word_count"):
        try:
            value = float(probe["answer"])
        except (TypeError, ValueError):
            value = None
        if value is None or (probe["check"] == "word_count" and value != int(value)):
            kind = "a number" if probe["check"] == "number" else "a whole number of words"
            raise TunesmithError(f"{where}: the {probe['check']!r} check needs {kind} as its 'answer', got "
                                 f"{probe['answer']!r}.", "Write the answer as digits, e.g. \"answer\": 5.")
    if probe["check"] == "regex":
        try:
            re.compile(str(probe["answer"]))
        except re.error as exc:
            raise TunesmithError(f"{where}: {probe['answer']!r} is not a valid regular expression: {exc}.") from None


def passes(probe: dict[str, Any], answer: str) -> bool:
    return CHECKS[probe["check"]](answer, probe.get("answer"))
