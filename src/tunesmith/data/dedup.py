"""Exact and near-duplicate removal for the data stage, keeping the first occurrence of each text.

Both work on the text of a row without its system turns, with its tool calls (`dedup_text`), and both say, for
every row they remove, which kept row it repeats and how similar the two are, so the data report can show example
pairs.
Near duplicates are found with MinHash LSH (datasketch) and confirmed by the Jaccard similarity of the
two rows' shingle sets.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

from tunesmith.data.rowtext import row_text
from tunesmith.data.shapes import Row

T = TypeVar("T")
WORD = re.compile(r"\w+")
WORD_NGRAM = 3
CHAR_NGRAM = 5
# Below this many words a text is shingled by characters: word 3-grams of a short answer (or of Chinese
# and Japanese, which \w+ reads as one long "word" per clause) are too few to estimate a similarity from.
MIN_WORDS_FOR_WORD_SHINGLES = 10
# LSH only proposes candidates, each then checked against the threshold, so its bands favour recall:
# a pair right at the threshold is proposed ~93% of the time (128 permutations), rather than ~50%.
CANDIDATE_WEIGHTS = (0.05, 0.95)
# Odd 64-bit multipliers that mix three word ids into one shingle id (high 32 bits kept).
MIXERS = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9))


@dataclass
class DedupResult:
    """Which rows stay, and for each removed row the kept row it repeats and their similarity (0..1)."""

    kept: list[int] = field(default_factory=list)
    removed: dict[int, tuple[int, float]] = field(default_factory=dict)

    def select(self, items: Sequence[T]) -> list[T]:
        return [items[index] for index in self.kept]


def dedup_text(row: Row) -> str:
    """What two rows must share to be duplicates; system prompts are left out (see `row_text`). An assistant turn's
    tool calls (name and arguments) are part of it: two rows that differ only in the call they teach are two rows."""
    calls = [json.dumps(call.get("function", call), sort_keys=True, ensure_ascii=False)
             for turns in (row.get("messages"), row.get("prompt"), row.get("completion"), row.get("chosen"),
                           row.get("rejected")) if isinstance(turns, list)
             for turn in turns if isinstance(turn, dict) for call in turn.get("tool_calls") or []
             if isinstance(call, dict)]
    return "\n".join([row_text(row, include_system=False), *calls])


# ---------------------------------------------------------------------------------------------------------------
# Exact duplicates


def dedup_key(text: str) -> bytes:
    """A digest that ignores case, Unicode composition and spacing, but no word, letter or punctuation: lower-cased,
    not case-folded, since folding spells letters otherwise (German `ß` becomes `ss`: "Maße" and "Masse" are two
    words, and "Weiß" and "Weiss" two names)."""
    canonical = " ".join(unicodedata.normalize("NFC", text).lower().split())
    return hashlib.blake2b(canonical.encode("utf-8", errors="surrogatepass"), digest_size=16).digest()


def exact_duplicates(texts: Sequence[str]) -> DedupResult:
    result, first_seen = DedupResult(), {}
    for index, text in enumerate(texts):
        original = first_seen.setdefault(dedup_key(text), index)
        if original == index:
            result.kept.append(index)
        else:
            result.removed[index] = (original, 1.0)
    return result


def exact_duplicate_rows(rows: Sequence[Row]) -> DedupResult:
    return exact_duplicates([dedup_text(row) for row in rows])


# ---------------------------------------------------------------------------------------------------------------
# Near duplicates


def near_duplicates(texts: Sequence[str], threshold: float = 0.85, num_perm: int = 128, seed: int = 1) -> DedupResult:
    """Rows whose shingle sets have Jaccard similarity >= `threshold` with an earlier kept row are removed.

    Each row is compared with kept rows only, so a chain a~b~c where c is not like a keeps both a and c.
    """
    shingles = ShingleHasher()
    shingle_sets = [shingles(text) for text in texts]
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=CANDIDATE_WEIGHTS)
    result = DedupResult()
    for index, sketch in enumerate(sketches(shingle_sets, num_perm, seed)):
        match = best_match(shingle_sets, index, lsh.query(sketch), threshold)
        if match is None:
            lsh.insert(index, sketch, check_duplication=False)
            result.kept.append(index)
        else:
            result.removed[index] = match
    return result


def near_duplicate_rows(rows: Sequence[Row], threshold: float = 0.85, num_perm: int = 128) -> DedupResult:
    return near_duplicates([dedup_text(row) for row in rows], threshold, num_perm)


def near_copies_of(texts: Sequence[str], references: Sequence[str], threshold: float = 0.85, num_perm: int = 128,
                   seed: int = 1) -> list[int]:
    """The indexes of `texts` whose shingle sets have Jaccard similarity >= `threshold` with one of `references`
    (candidates from MinHash LSH over the references alone, each checked exactly, as `near_duplicates` does): train
    rows that are near copies of held-out rows."""
    shingles = ShingleHasher()
    shingle_sets = [shingles(text) for text in [*references, *texts]]
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=CANDIDATE_WEIGHTS)
    found = []
    for index, sketch in enumerate(sketches(shingle_sets, num_perm, seed)):
        if index < len(references):
            lsh.insert(index, sketch, check_duplication=False)
        elif best_match(shingle_sets, index, lsh.query(sketch), threshold) is not None:
            found.append(index - len(references))
    return found


class ShingleHasher:
    """A text's shingles as a sorted array of distinct 32-bit ids.

    Words (casefolded, punctuation dropped) get ids from a shared vocabulary and each word 3-gram is mixed
    from its three ids with numpy, which is far faster than hashing every shingle string.
    """

    def __init__(self) -> None:
        self.vocabulary: dict[str, int] = {}
        self.new_ids = itertools.count()  # unique, not dense: `setdefault` draws one even for a known token

    def ids(self, tokens: list[str]) -> np.ndarray:
        return np.fromiter(map(self.vocabulary.setdefault, tokens, self.new_ids), dtype=np.uint64, count=len(tokens))

    def __call__(self, text: str) -> np.ndarray:
        words = WORD.findall(text.casefold())
        if len(words) < MIN_WORDS_FOR_WORD_SHINGLES:
            joined = " ".join(words)
            grams = [joined[start:start + CHAR_NGRAM] for start in range(max(1, len(joined) - CHAR_NGRAM + 1))]
            return np.unique(self.ids(grams).astype(np.uint32))
        ids = self.ids(words)
        mixed = ids[:-2] * MIXERS[0] ^ ids[1:-1] * MIXERS[1] ^ ids[2:] * MIXERS[2]
        return np.unique((mixed >> np.uint64(32)).astype(np.uint32))


def sketches(shingle_sets: list[np.ndarray], num_perm: int, seed: int) -> Iterator[LeanMinHash]:
    """One MinHash per shingle set; the ids are hashes already, so datasketch's hash is the identity.

    One MinHash is cleared and refilled for every set: `MinHash.bulk` copies (and re-checks) the
    permutations for each, which costs more than the hashing itself.
    """
    minhash = MinHash(num_perm=num_perm, seed=seed, hashfunc=int)
    for shingle_set in shingle_sets:
        minhash.clear()
        minhash.update_batch(shingle_set.tolist())
        yield LeanMinHash(minhash)


def best_match(shingle_sets: list[np.ndarray], index: int, candidates: list[int],
               threshold: float) -> tuple[int, float] | None:
    """The most similar candidate at or above the threshold (the earliest on a tie), with its similarity."""
    best: tuple[int, float] | None = None
    for candidate in sorted(candidates):
        similarity = jaccard(shingle_sets[index], shingle_sets[candidate])
        if similarity >= threshold and (best is None or similarity > best[1]):
            best = (candidate, similarity)
    return best


def jaccard(left: np.ndarray, right: np.ndarray) -> float:
    shared = np.intersect1d(left, right, assume_unique=True).size
    return shared / (left.size + right.size - shared)


# ---------------------------------------------------------------------------------------------------------------
# Scoring against planted duplicates (benchmarks and tests)


@dataclass
class DedupScore:
    recall: float  # share of planted duplicates that were removed
    missed: list[tuple[int, int]]  # planted (original, duplicate) pairs whose duplicate was kept
    false_removals: list[int]  # removed rows that were no planted duplicate


def score_against_planted(result: DedupResult, planted: Sequence[tuple[int, int]]) -> DedupScore:
    """How well `result` found duplicates planted after their originals (as `make_rows` plants them)."""
    duplicates = {duplicate for _, duplicate in planted}
    missed = [(original, duplicate) for original, duplicate in planted if duplicate not in result.removed]
    recall = 1 - len(missed) / len(planted) if planted else 1.0
    return DedupScore(recall, missed, sorted(set(result.removed) - duplicates))
