"""The llama.cpp engine (llama-cpp-python): each base GGUF loaded once, LoRA adapters switched per request.

llama.cpp applies LoRA adapters per context (`llama_set_adapters_lora`), so one loaded base serves every
adapter trained on it: a request for another adapter than the last sets it on the context and drops the
cached prompt state (computed with the other adapter's weights), without reloading anything. One context
runs one generation at a time, so requests to one base take turns (`Base.lock`).

Prompts are rendered and tokenized by the run's own tokenizer (`data.template.render`, what training and
`data preview` use), and llama.cpp gets the token ids, so the served model sees what it was trained on.
"""

from __future__ import annotations

import ctypes
import json
import math
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError, shell_arg
from tunesmith.serve.catalog import ServedModel


@dataclass
class Sampling:
    """One generation's settings, as the API validated them."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    json_schema: dict[str, Any] | None = None  # constrained decoding to this schema (llama.cpp grammar)
    json_object: bool = False  # any JSON object
    frequency_penalty: float = 0.0  # OpenAI's: minus this times the count of a token already generated
    presence_penalty: float = 0.0  # minus this once a token has appeared
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit
    top_k: int = 0  # llama.cpp's: 0 is off
    min_p: float = 0.0
    repeat_penalty: float = 1.0  # 1 is off


@dataclass
class Piece:
    """A piece of generated text; the last one carries `finish_reason` (stop or length)."""

    text: str
    finish_reason: str | None = None


@dataclass
class Base:
    """One loaded GGUF and the adapter currently set on its context."""

    llm: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    active: Any = None  # the adapter pointer set on the context (None: the base alone)
    switches: int = 0
    switch_seconds: float = 0.0


class LlamaEngine:
    """Serve `models` from llama.cpp: a Llama per distinct GGUF, an adapter handle per LoRA."""

    def __init__(self, models: list[ServedModel], n_ctx: int = 4096, threads: int | None = None) -> None:
        from tunesmith.export.verify import compute_threads, require_llama_cpp

        llama_cpp = require_llama_cpp("tunesmith serve (the llama.cpp engine)")
        self.llama_cpp = llama_cpp
        self.models = {m.name: m for m in models}
        self.n_ctx = n_ctx
        self.bases: dict[Path, Base] = {}
        self.adapters: dict[str, Any] = {}
        self.tokenizers: dict[Path, Any] = {}
        for model in models:
            if model.gguf not in self.bases:
                llm = llama_cpp.Llama(model_path=str(model.gguf), n_ctx=n_ctx, n_threads=threads or compute_threads(),
                                      verbose=False)
                self.bases[model.gguf] = Base(llm)
            if model.lora is not None:
                adapter = llama_cpp.llama_adapter_lora_init(self.bases[model.gguf].llm.model, str(model.lora).encode())
                if not adapter:
                    from_run = model.run is not None and (model.run / "recipe.yaml").is_file()
                    again = (f"tunesmith export {shell_arg(model.run)} --format gguf-lora" if from_run
                             else "tunesmith cache clean serve (serve writes it again)")
                    raise TunesmithError(f"llama.cpp could not load the LoRA {model.lora} for {model.name}.",
                                         f"Write it again: {again}")
                self.adapters[model.name] = adapter
            self.tokenizer(model.name)  # at start-up: a tokenizer that cannot load fails here, not in a request

    def tokenizer(self, name: str) -> Any:
        from tunesmith.models import load_tokenizer

        folder = self.models[name].tokenizer_dir
        if folder not in self.tokenizers:
            self.tokenizers[folder] = load_tokenizer(folder)
        return self.tokenizers[folder]

    def chat_prompt(self, name: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[int]:
        """Token ids of `messages` through the model's own chat template, ready for the assistant's turn; the
        recipe's system prompt comes first when the request has no system turn, and its data fallbacks apply (tools
        and tool turns in the Hermes format, a merged system turn), as in training."""
        from tunesmith.data.fallbacks import apply_fallbacks
        from tunesmith.data.formats import with_system_prompt
        from tunesmith.data.template import render

        model = self.models[name]
        row = with_system_prompt({"messages": messages, **({"tools": tools} if tools else {})}, model.system_prompt)
        row = apply_fallbacks(row, model.data) if model.data is not None else row
        text = render(self.tokenizer(name), row["messages"], generation_prompt=True, tools=row.get("tools"))
        return self.tokenizer(name)(text, add_special_tokens=False)["input_ids"]

    def text_prompt(self, name: str, prompt: str) -> list[int]:
        return self.tokenizer(name)(prompt)["input_ids"]

    def vocab_size(self, name: str) -> int:
        """The number of token ids model `name` has (its GGUF's vocabulary)."""
        model = self.models[name]
        return self.bases[model.gguf].llm.n_vocab()

    def count_tokens(self, name: str, text: str) -> int:
        return len(self.tokenizer(name)(text, add_special_tokens=False)["input_ids"])

    def generate(self, name: str, prompt_ids: list[int], sampling: Sampling,
                 cancelled: threading.Event) -> Iterator[Piece]:
        """Stream the completion of `prompt_ids` by model `name`; stops early (freeing the context) once
        `cancelled` is set, e.g. when the client went away.

        A request with a seed gets the same text every time: llama-cpp-python reuses the cached state of a
        prompt it has just seen and evaluates only its last token again, whose logits differ from the whole
        prompt's batch evaluation in the last bits, enough to sample another token at temperature > 0 (the first
        request for a prompt then differed from the ones after it). A seeded request drops the cache first, at
        the cost of evaluating its prompt again."""
        model = self.models[name]
        base = self.bases[model.gguf]
        with base.lock:
            self.select_adapter(base, self.adapters.get(name))
            if sampling.seed is not None:
                base.llm.reset()  # a seeded request always evaluates its prompt whole (see `generate`)
            stream = base.llm.create_completion(
                prompt=prompt_ids, max_tokens=sampling.max_tokens, temperature=sampling.temperature,
                top_p=sampling.top_p, min_p=sampling.min_p, top_k=sampling.top_k,
                repeat_penalty=sampling.repeat_penalty, frequency_penalty=sampling.frequency_penalty,
                presence_penalty=sampling.presence_penalty, logit_bias=sampling.logit_bias, stop=sampling.stop or [],
                seed=sampling.seed, stream=True, grammar=self.grammar(sampling))
            try:
                for chunk in stream:
                    choice = chunk["choices"][0]
                    yield Piece(choice.get("text") or "", choice.get("finish_reason"))
                    if cancelled.is_set():
                        break
            finally:
                stream.close()

    def select_adapter(self, base: Base, adapter: Any) -> None:
        """Set `adapter` (or none) on the base's context when it is not the one set; the prompt cache goes with
        the old weights."""
        if adapter is base.active:
            return
        started = time.perf_counter()
        ctx = base.llm.ctx
        if adapter is None:
            result = self.llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
        else:
            adapters = (self.llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
            result = self.llama_cpp.llama_set_adapters_lora(ctx, adapters, 1, (ctypes.c_float * 1)(1.0))
        if result != 0:
            raise RuntimeError(f"llama.cpp refused to set the LoRA adapter (code {result})")
        base.llm.reset()
        base.active = adapter
        base.switches += 1
        base.switch_seconds += time.perf_counter() - started

    def grammar(self, sampling: Sampling) -> Any:
        """The llama.cpp grammar for the request's JSON schema (`json_schema_grammar`) or any JSON object, or
        None."""
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

        if sampling.json_schema is not None:
            return json_schema_grammar(sampling.json_schema)
        if sampling.json_object:
            return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
        return None

    def close(self) -> None:
        """Take the adapters off every context, then free them and the models."""
        for base in self.bases.values():
            self.select_adapter(base, None)
        for adapter in self.adapters.values():
            self.llama_cpp.llama_adapter_lora_free(adapter)
        self.adapters = {}
        for base in self.bases.values():
            base.llm.close()
        self.bases = {}


def json_schema_grammar(schema: dict[str, Any]) -> Any:
    """The llama.cpp grammar (LlamaGrammar) that constrains decoding to `schema`. llama-cpp-python's schema
    converter lets strings hold raw control characters, which JSON forbids (RFC 8259 §7) and json.loads
    rejects; its string rule is narrowed as llama.cpp's own converter writes it. It also ignores an integer's
    bounds, so bounded integers become enums first (`integer_ranges_as_enums`).
    Raises ValueError naming what the converter could not read (an unknown type, a $ref that leads nowhere) and
    the keywords its grammar would not hold answers to (`unenforced_keywords`: an answer could break them): the API
    checks each schema with this before a response starts."""
    from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

    oversized = oversized_repetitions(schema)
    if oversized:
        raise ValueError(f"{', '.join(oversized[:4])}{' and more' if len(oversized) > 4 else ''}: constrained "
                         f"decoding holds lengths and item counts up to {MAX_REPETITIONS:,} (each one is a rule of "
                         "the grammar). Lower them, or leave them out and check the answer's length yourself")
    rewritten = integer_ranges_as_enums(schema)
    unenforced = unenforced_keywords(rewritten)
    if unenforced:
        raise ValueError(f"constrained decoding would not hold answers to {', '.join(unenforced[:8])}"
                         f"{' and more' if len(unenforced) > 8 else ''} (llama.cpp's grammar cannot express them), so "
                         "an answer could break the schema. Remove them and check the answer yourself; integer "
                         f"bounds are held where both are given and the range has at most {MAX_ENUM_RANGE} values")
    try:
        rules = json_schema_to_gbnf(json.dumps(rewritten))
        if len(rules) > MAX_GRAMMAR_CHARS:
            raise ValueError(f"its grammar would be {len(rules):,} characters, over the {MAX_GRAMMAR_CHARS:,} this "
                             "server compiles; send a smaller schema (fewer properties, enums or alternatives)")
        return LlamaGrammar.from_string(rules.replace(r'[^"\\]', r'[^"\\\x7F\x00-\x1F]'), verbose=False)
    except AssertionError as exc:  # the converter asserts on a type it does not know
        raise ValueError(f"{exc}; a schema's type is one of {', '.join(SCHEMA_TYPES)}") from None
    except Exception as exc:  # KeyError or ValueError on what it cannot read ($ref that leads nowhere, ...)
        raise ValueError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None


SCHEMA_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
# Keywords llama-cpp-python's json_schema_to_gbnf (0.3) reads nowhere, by the type they apply to ("*": any schema)
UNENFORCED = {
    "number": ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"),
    "integer": ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"),
    "array": ("uniqueItems", "contains", "minContains", "maxContains", "unevaluatedItems"),
    "object": ("minProperties", "maxProperties", "patternProperties", "propertyNames", "dependentRequired",
               "dependentSchemas", "unevaluatedProperties"),
    "*": ("not", "if", "then", "else"),
}
GRAMMAR_FORMATS = ("date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5")
SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")


def unenforced_keywords(schema: Any, path: str = "schema") -> list[str]:
    """Where `schema` (after `integer_ranges_as_enums`) uses a keyword the grammar ignores, as `path.keyword`
    (read from json_schema_to_gbnf's `visit`: numbers' bounds, unique items, property counts and names,
    not/if/then/else, string formats other than dates, times and UUIDs, string lengths beside a pattern)."""
    if not isinstance(schema, dict):
        return []
    kinds = schema.get("type") if isinstance(schema.get("type"), list) else [schema.get("type")]
    found = [f"{path}.{key}" for kind in [*kinds, "*"] for key in UNENFORCED.get(kind or "*", ()) if key in schema]
    if "format" in schema and schema["format"] not in GRAMMAR_FORMATS:
        found.append(f"{path}.format")
    if "pattern" in schema:
        found += [f"{path}.{key}" for key in ("minLength", "maxLength") if key in schema]
    for key in SUBSCHEMA_LISTS:
        for index, item in enumerate(schema.get(key) or [] if isinstance(schema.get(key), list) else []):
            found += unenforced_keywords(item, f"{path}.{key}[{index}]")
    for key in SUBSCHEMA_MAPS:
        if isinstance(schema.get(key), dict):
            for name, item in schema[key].items():
                found += unenforced_keywords(item, f"{path}.{key}.{name}")
    for key in ("items", "additionalProperties"):
        found += unenforced_keywords(schema.get(key), f"{path}.{key}")
    return list(dict.fromkeys(found))


MAX_REPETITIONS = 2000  # a string length or item count the grammar spells out (one nested rule per unit)
MAX_GRAMMAR_CHARS = 200_000  # llama.cpp's grammar parser recurses per nesting level: a huge grammar can crash it
REPETITION_KEYWORDS = ("minLength", "maxLength", "minItems", "maxItems")


def oversized_repetitions(schema: Any, path: str = "schema") -> list[str]:
    """Where `schema` asks for a length or item count (REPETITION_KEYWORDS) over MAX_REPETITIONS, at any depth, as
    `path.keyword=value`: json_schema_to_gbnf writes `maxLength: 100000` as 100,000 nested rules (which can crash
    llama.cpp's parser) and `minItems: 10**9` as a list it builds in memory."""
    if isinstance(schema, list):
        return [found for index, item in enumerate(schema) for found in oversized_repetitions(item, f"{path}[{index}]")]
    if not isinstance(schema, dict):
        return []
    found = [f"{path}.{key}={schema[key]}" for key in REPETITION_KEYWORDS
             if isinstance(schema.get(key), int | float) and not isinstance(schema[key], bool)
             and schema[key] > MAX_REPETITIONS]
    if isinstance(schema.get("pattern"), str) and pattern_repetitions(schema["pattern"]) > MAX_REPETITIONS:
        found.append(f"{path}.pattern={schema['pattern'][:40]!r}")
    return found + [deeper for key, value in schema.items() for deeper in oversized_repetitions(value, f"{path}.{key}")]


PATTERN_BOUND = re.compile(r"\{(\d+)(?:,(\d*))?\}")


def pattern_repetitions(pattern: str) -> int:
    """About how many units a regex spells out once its `{n}`, `{n,}` and `{n,m}` counts are written out, as
    json_schema_to_gbnf writes them (`a{20000000}`: 20 MB of grammar): counts in sequence add up (a UUID's
    8-4-4-4-12 is 36 units), a count applied to a group multiplies what the group holds."""
    stack, index = [0], 0
    while index < len(pattern):
        char, unit = pattern[index], None
        if char == "\\":
            index, unit = index + 2, 1
        elif char == "[":
            close = index + 1
            while close < len(pattern) and pattern[close] != "]":
                close += 2 if pattern[close] == "\\" else 1
            index, unit = close + 1, 1
        elif char == "(":
            stack.append(0)
            index += 1
        elif char == ")" and len(stack) > 1:
            index, unit = index + 1, max(stack.pop(), 1)
        else:
            index, unit = index + 1, 1
        if unit is None:
            continue
        bound = PATTERN_BOUND.match(pattern, index)
        if bound:
            low, high = bound.groups()
            unit *= max(int(low), int(high) if high else 0, 1)
            index = bound.end()
        stack[-1] += unit
        if stack[-1] > MAX_REPETITIONS:
            return stack[-1]
    return sum(stack)


MAX_ENUM_RANGE = 1000  # integers a bounded range may hold and still become an enum (one grammar alternative each)


def integer_ranges_as_enums(schema: Any) -> Any:
    """`schema` with every `{"type": "integer", "minimum": a, "maximum": b}` (exclusive bounds too) of at most
    MAX_ENUM_RANGE values rewritten as `{"enum": [a, ..., b]}`, at any depth. llama-cpp-python's
    json_schema_to_gbnf (0.3) writes an integer as any run of up to 16 digits whatever its bounds, so a
    constrained answer could still fail validation; an enum it does enforce. Wider ranges are left as they are
    (their bounds are not enforced by the grammar)."""
    if isinstance(schema, list):
        return [integer_ranges_as_enums(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    rewritten = {key: integer_ranges_as_enums(value) for key, value in schema.items()}
    if rewritten.get("type") != "integer":
        return rewritten
    low, high = rewritten.get("minimum"), rewritten.get("maximum")
    if isinstance(rewritten.get("exclusiveMinimum"), int | float):
        low = max(low if low is not None else -float("inf"), math.floor(rewritten["exclusiveMinimum"]) + 1)
    if isinstance(rewritten.get("exclusiveMaximum"), int | float):
        high = min(high if high is not None else float("inf"), math.ceil(rewritten["exclusiveMaximum"]) - 1)
    if low is None or high is None or not 0 <= high - low < MAX_ENUM_RANGE:
        return rewritten
    step = rewritten.get("multipleOf")
    kept = {key: value for key, value in rewritten.items()
            if key not in ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")}
    return {**kept, "enum": [value for value in range(math.ceil(low), math.floor(high) + 1)
                             if not isinstance(step, int | float) or step <= 0 or value % step == 0]}
