"""Cleaning: normalize → PII → length, refusal and language filters → dedup, each step counted.

The same `clean_rows` runs inside `train` (from the recipe's `data.clean`) and in `tunesmith data
prepare`, which also writes the cleaned rows and a report. Steps keep rows in their original order and
remember each row's position in the source file, so a report can point at what it removed.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunesmith.config import CleanSection
from tunesmith.errors import DataError

Row = dict[str, Any]
EXAMPLES_PER_STEP = 5


@dataclass
class Step:
    """What one cleaning step did: rows removed, rows changed, and a few examples for the report."""

    name: str
    removed: int = 0
    changed: int = 0
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Cleaned:
    rows: list[Row]
    origins: list[int]  # 1-based position of each row in its source
    steps: list[Step] = field(default_factory=list)

    def keep(self, mask: list[bool], step: Step) -> None:
        """Drop the rows whose mask is False; the step counts them."""
        step.removed = mask.count(False)
        self.rows = [row for row, kept in zip(self.rows, mask, strict=True) if kept]
        self.origins = [origin for origin, kept in zip(self.origins, mask, strict=True) if kept]
        self.steps.append(step)


def clean_rows(rows: list[Row], clean: CleanSection, tokenizer: Any = None) -> Cleaned:
    """Run the enabled cleaning steps in order; `tokenizer` is needed only for token-length bounds."""
    state = Cleaned(list(rows), list(range(1, len(rows) + 1)))
    if (clean.min_tokens or clean.max_tokens) and tokenizer is None:
        raise DataError("data.clean.min_tokens/max_tokens need the model's tokenizer.")
    steps: list[tuple[bool, Callable[[], None]]] = [
        (clean.normalize, lambda: normalize_step(state)),
        (clean.pii != "off", lambda: pii_step(state, clean)),
        (clean.pii == "off", lambda: pii_scan_step(state, clean)),
        (bool(clean.min_tokens or clean.max_tokens), lambda: length_step(state, clean, tokenizer)),
        (clean.drop_refusals, lambda: refusal_step(state)),
        (bool(clean.languages), lambda: language_step(state, clean)),
        (clean.dedup != "off", lambda: dedup_step(state, clean)),
    ]
    for enabled, run_step in steps:
        if enabled:
            started, count = time.perf_counter(), len(state.steps)
            run_step()
            for step in state.steps[count:]:
                step.seconds = step.seconds or round(time.perf_counter() - started, 3)
    return state


def normalize_step(state: Cleaned) -> None:
    from tunesmith.data.clean import normalize_text
    from tunesmith.data.rowtext import map_row_texts, row_text

    step = Step("normalize")
    normalized = []
    for row, origin in zip(state.rows, state.origins, strict=True):
        new = map_row_texts(row, normalize_text)
        if new != row:
            step.changed += 1
            before, after = visible_difference(row_text(row), row_text(new))
            add_example(step, {"row": origin, "before": before, "after": after})
        normalized.append(new)
    state.rows = normalized
    state.steps.append(step)


INVISIBLE_CATEGORIES = {"Mn", "Me", "Cf", "Cc", "Co", "Cn", "Zl", "Zp"}  # combining marks, format and control


def visible_difference(before: str, after: str, width: int = 160) -> tuple[str, str]:
    """Excerpts of `before` and `after` (at most `width` characters of text each) from a little before their first
    difference, with the characters a reader cannot see written as `\\uXXXX` (combining marks, zero-width and control
    characters, spaces other than U+0020; newlines and tabs as they are): NFC's "e" + U+0301 against "é" then reads as
    two different strings, not one."""
    import unicodedata

    start = next((i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b),
                 min(len(before), len(after)))
    start = max(0, start - 40)

    def invisible(c: str) -> bool:
        category = unicodedata.category(c)
        return c not in "\n\t" and (category in INVISIBLE_CATEGORIES or (category == "Zs" and c != " "))

    def shown(text: str) -> str:
        visible = "".join(f"\\u{ord(c):04x}" if invisible(c) else c for c in text[start:start + width])
        return ("…" if start else "") + visible + ("…" if len(text) > start + width else "")

    return shown(before), shown(after)


def pii_step(state: Cleaned, clean: CleanSection) -> None:
    """Redact PII in place with <KIND> tokens, or drop the rows that hold any."""
    from tunesmith.data.pii import PiiScanner
    from tunesmith.data.rowtext import map_row_texts

    scanner = PiiScanner(kinds=clean.pii_kinds)
    step = Step(f"pii_{clean.pii}")
    found: Counter[str] = Counter()
    redacted_rows, mask = [], []
    for row, origin in zip(state.rows, state.origins, strict=True):
        counts: Counter[str] = Counter()

        def redact(text: str, counts: Counter[str] = counts) -> str:
            new, kinds = scanner.redact(text)
            counts.update(kinds)
            return new

        new = map_row_texts(row, redact, tool_arguments=True)
        found.update(counts)
        if counts:
            step.changed += 1
            add_example(step, {"row": origin, "kinds": dict(counts)})
        redacted_rows.append(new)
        mask.append(not (counts and clean.pii == "drop"))
    step.details["found_by_kind"] = dict(sorted(found.items()))
    if clean.pii == "redact":
        state.rows = redacted_rows
        state.steps.append(step)
    else:
        state.keep(mask, step)


PII_SCAN_ROWS = 2000  # rows scanned for personal data while data.clean.pii is off: enough to warn, cheap to do


def pii_scan_step(state: Cleaned, clean: CleanSection) -> None:
    """With data.clean.pii off, count (not change) the personal data in the first PII_SCAN_ROWS rows, so that
    training can say it trains on it as written (step `pii_found`: rows with any, by kind)."""
    from tunesmith.data.pii import PiiScanner
    from tunesmith.data.rowtext import map_row_texts

    scanner, found, rows_with = PiiScanner(kinds=clean.pii_kinds), Counter(), 0
    step = Step("pii_found")
    for row, origin in zip(state.rows[:PII_SCAN_ROWS], state.origins, strict=False):
        counts: Counter[str] = Counter()

        def scan(text: str, counts: Counter[str] = counts) -> str:
            counts.update(scanner.redact(text)[1])
            return text

        map_row_texts(row, scan, tool_arguments=True)
        if counts:
            rows_with += 1
            found.update(counts)
            add_example(step, {"row": origin, "kinds": dict(counts)})
    step.details.update(rows_scanned=min(len(state.rows), PII_SCAN_ROWS), rows_with_pii=rows_with,
                        found_by_kind=dict(sorted(found.items())))
    state.steps.append(step)


def length_step(state: Cleaned, clean: CleanSection, tokenizer: Any) -> None:
    lengths = token_lengths(tokenizer, state.rows)
    low, high = clean.min_tokens or 0, clean.max_tokens or float("inf")
    step = Step("token_length", details={"min_tokens": clean.min_tokens, "max_tokens": clean.max_tokens,
                                         "too_short": sum(n < low for n in lengths),
                                         "too_long": sum(n > high for n in lengths)})
    mask = [low <= n <= high for n in lengths]
    for origin, n, kept in zip(state.origins, lengths, mask, strict=True):
        if not kept:
            add_example(step, {"row": origin, "tokens": n})
    state.keep(mask, step)


def refusal_step(state: Cleaned) -> None:
    from tunesmith.data.clean import is_refusal
    from tunesmith.data.rowtext import answer_texts

    step = Step("refusals")
    mask = []
    for row, origin in zip(state.rows, state.origins, strict=True):
        refused = next((text for text in answer_texts(row) if is_refusal(text)), None)
        mask.append(refused is None)
        if refused is not None:
            add_example(step, {"row": origin, "answer": refused[:160]})
    state.keep(mask, step)


def language_step(state: Cleaned, clean: CleanSection) -> None:
    from tunesmith.data.clean import check_language_codes, detect_language
    from tunesmith.data.rowtext import row_text

    allowed = {code.lower() for code in clean.languages}
    check_language_codes(allowed)
    step = Step("language", details={"allowed": sorted(allowed)})
    seen: Counter[str] = Counter()
    mask = []
    for row, origin in zip(state.rows, state.origins, strict=True):
        code, confidence = detect_language(row_text(row))
        seen[code] += 1
        kept = code in allowed or confidence < clean.language_confidence
        mask.append(kept)
        if not kept:
            add_example(step, {"row": origin, "language": code, "confidence": round(confidence, 3),
                               "text": row_text(row)[:120]})
    step.details["detected"] = dict(seen.most_common())
    state.keep(mask, step)


def dedup_step(state: Cleaned, clean: CleanSection) -> None:
    """Exact duplicates first (normalized hash), then near duplicates (MinHash LSH); the first one stays.

    System turns are left out of the compared text, so a long shared system prompt does not make
    unrelated rows look alike.
    """
    from tunesmith.data.dedup import dedup_text, exact_duplicates, near_duplicates

    started = time.perf_counter()
    texts = [dedup_text(row) for row in state.rows]
    exact = exact_duplicates(texts)
    record_duplicates(state, texts, exact.removed, Step("dedup_exact"), started)
    if clean.dedup == "near":
        started = time.perf_counter()
        texts = [dedup_text(row) for row in state.rows]
        near = near_duplicates(texts, threshold=clean.near_threshold, num_perm=clean.num_perm)
        record_duplicates(state, texts, near.removed, Step("dedup_near", details={"threshold": clean.near_threshold}),
                          started)


def record_duplicates(state: Cleaned, texts: list[str], removed: dict[int, tuple[int, float]], step: Step,
                      started: float) -> None:
    for index, (kept, similarity) in sorted(removed.items())[:EXAMPLES_PER_STEP]:
        text, kept_text = visible_difference(texts[index], texts[kept], width=120)  # where the two part, not the
        step.examples.append({"row": state.origins[index], "duplicate_of": state.origins[kept],  # prompt they share
                              "similarity": round(similarity, 3), "text": text, "kept_text": kept_text})
    state.keep([index not in removed for index in range(len(state.rows))], step)
    step.seconds = round(time.perf_counter() - started, 3)


def add_example(step: Step, example: dict[str, Any]) -> None:
    if len(step.examples) < EXAMPLES_PER_STEP:
        step.examples.append(example)


def token_lengths(tokenizer: Any, rows: list[Row]) -> list[int]:
    """Tokens per row as training renders it (chat template for conversations; the longer side of a pair)."""
    from tunesmith.data.preview import conversations_of

    texts: list[str] = []
    owners: list[int] = []
    for index, row in enumerate(rows):
        for _, sequence in conversations_of(row):
            texts.append(sequence if isinstance(sequence, str) else rendered_or_joined(tokenizer, sequence, row))
            owners.append(index)
    lengths = [0] * len(rows)
    for start in range(0, len(texts), 1024):
        encoded = tokenizer(texts[start:start + 1024], add_special_tokens=False)["input_ids"]
        for owner, ids in zip(owners[start:start + 1024], encoded, strict=True):
            lengths[owner] = max(lengths[owner], len(ids))
    return lengths


def rendered_or_joined(tokenizer: Any, sequence: list[dict[str, Any]], row: Row) -> str:
    """The chat template's text, or the turns' contents joined where the template fails on them (the template
    contract check reports that failure, with its fix; a length estimate must not crash first)."""
    from tunesmith.data.template import render_sequence

    try:
        return render_sequence(tokenizer, sequence, row.get("tools"))
    except Exception:  # jinja templates raise anything (raise_exception on a role they refuse)
        return "\n".join(str(message.get("content") or "") for message in sequence)


# what each step that removes rows removes, in words (`train` names them before training)
CLEANING_REASONS = {"dedup_exact": "exact duplicates", "dedup_near": "near duplicates",
                    "token_length": "outside data.clean's token bounds", "refusals": "refusals",
                    "language": "in another language"}


def steps_report(steps: list[Step]) -> list[dict[str, Any]]:
    return [{"step": s.name, "removed": s.removed, "changed": s.changed, "seconds": s.seconds, **s.details,
             "examples": s.examples} for s in steps]
