"""Constrained decoding: hold generation to a constraint (data/constraint.py) with llguidance.

llguidance (https://github.com/guidance-ai/llguidance) runs as a transformers `LogitsProcessor`: before each token,
the tokens that cannot continue a valid answer get -inf. It was picked over xgrammar and outlines by
`benchmarks/constrained_engines.py` on this project's 2-core CPU (benchmarks/results/constrained_engines.json, 20
rows per task, warm): the fastest of the three on both tasks (labels 3.4 s vs 4.6 and 4.0; JSON 11.2 s vs 13.3 and
13.3), the only one with 20/20 schema-valid JSON within the token limit (xgrammar 19, outlines 18), and one small
wheel without dependencies (xgrammar pulls in triton and tvm-ffi). Its JSON separators are set to the ones
json.dumps writes (`", "` and `": "`), so a model writes compact JSON the way training data shows it instead of
spending tokens on free whitespace.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from tunesmith.data.constraint import Constraint, choices_regex
from tunesmith.errors import TunesmithError

# llguidance's JSON options: no free whitespace, and the separators json.dumps writes by default.
COMPACT_JSON = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def guidance_grammar(constraint: Constraint) -> str:
    """The llguidance grammar of a constraint (raises TunesmithError when the JSON Schema cannot be one)."""
    from llguidance import LLMatcher

    if constraint.kind == "choices":
        return LLMatcher.grammar_from_regex(choices_regex(json.loads(constraint.spec)))
    if constraint.kind == "regex":
        return LLMatcher.grammar_from_regex(constraint.spec)
    schema = {key: value for key, value in json.loads(constraint.spec).items() if key != "$schema"}
    try:
        return LLMatcher.grammar_from_json_schema(schema, defaults=COMPACT_JSON)
    except ValueError as exc:
        raise TunesmithError(f"{constraint.source}: not a JSON Schema llguidance can decode with: {exc}",
                             "Fix the schema file.") from None


@functools.cache
def guidance_tokenizer(tokenizer: Any, vocab_size: int) -> Any:
    """llguidance's view of a fast transformers tokenizer (building it reads the whole vocabulary: ~1 s)."""
    import llguidance.hf

    try:
        return llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
    except ValueError as exc:
        raise TunesmithError(f"Constrained decoding needs a fast (Rust) tokenizer: {exc}",
                             "Use a model whose folder has a tokenizer.json.") from None


def logits_processor(constraint: Constraint, tokenizer: Any, vocab_size: int) -> Any:
    """A fresh transformers LogitsProcessor for one `generate` call (it keeps one matcher per batch row).

    The grammar is compiled once per constraint and tokenizer (`start_matcher`); each row's matcher is a copy."""
    return GuidanceLogitsProcessor(start_matcher(constraint, guidance_tokenizer(tokenizer, vocab_size)), vocab_size)


def processor_factory(constraint: Constraint | None, tokenizer: Any, model: Any) -> Callable[[], Any]:
    """A maker of fresh processors for `model`'s vocabulary, one per `generate` call; the grammar is compiled and
    checked now, so an unusable constraint fails before any answer."""
    if constraint is None:
        raise ValueError("constrained decoding needs a constraint")
    vocab_size = model.get_output_embeddings().weight.shape[0]
    logits_processor(constraint, tokenizer, vocab_size)
    return functools.partial(logits_processor, constraint, tokenizer, vocab_size)


@functools.lru_cache(maxsize=16)
def start_matcher(constraint: Constraint, lltokenizer: Any) -> Any:
    """A matcher at the start of an answer, compiled and checked once (an unusable grammar fails here, naming
    where the constraint came from)."""
    from llguidance import LLMatcher

    grammar = guidance_grammar(constraint)
    problem = LLMatcher.validate_grammar(grammar, lltokenizer)
    if problem and not LLMatcher.is_validate_warning(problem):
        raise TunesmithError(f"{constraint.source}: llguidance cannot decode with it: {problem}", "Fix the constraint.")
    return LLMatcher(lltokenizer, grammar)


class GuidanceLogitsProcessor:
    """Masks, before each token, every token that cannot continue an allowed answer (batched, left-padded rows;
    a row that has finished its answer is given only end-of-sequence)."""

    def __init__(self, start: Any, vocab_size: int) -> None:
        self.start, self.vocab_size = start, vocab_size
        self.matchers: list[Any] = []
        self.bitmask: Any = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import llguidance.torch as llt

        if not self.matchers:  # the first call sees the prompts: nothing generated to consume yet
            self.matchers = [self.start.deep_copy() for _ in range(input_ids.shape[0])]
            self.bitmask = llt.allocate_token_bitmask(input_ids.shape[0], self.vocab_size)
        else:
            for row, matcher in enumerate(self.matchers):
                if not matcher.is_stopped():
                    matcher.consume_token(int(input_ids[row, -1]))
        for row, matcher in enumerate(self.matchers):
            if matcher.is_error():
                raise TunesmithError(f"Constrained decoding failed: {matcher.get_error()}",
                                     "This is a bug in tunesmith's constrained decoding; please report it.")
            llt.fill_next_token_bitmask(matcher, self.bitmask, row)
        return apply_bitmask(scores, self.bitmask)


def apply_bitmask(scores: Any, bitmask: Any) -> Any:
    """-inf where the packed bitmask (int32 words, 32 tokens each) has a 0 bit; logits past the mask are masked too.

    llguidance's own `apply_token_bitmask_inplace` is torch.compile'd, which costs ~30 s per process on CPU before
    the first token; unpacking the bits directly costs ~1 ms per step for a 49k vocabulary."""
    import torch

    bits = (bitmask.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
    allowed = bits.reshape(bitmask.shape[0], -1).bool().to(scores.device)
    width = min(allowed.shape[1], scores.shape[1])
    masked = torch.full_like(scores, float("-inf"))
    masked[:, :width] = scores[:, :width].masked_fill(~allowed[:, :width], float("-inf"))
    return masked
