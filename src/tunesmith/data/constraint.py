"""What constrained decoding holds answers to: a label set, a JSON Schema or a regex, and where it came from.

The constraint is the user's (`eval.choices`, `eval.json_schema`, `eval.regex`, or `--choices` / `--json-schema`
on chat and compare) or inferred from the training answers: a small closed set of labels becomes the choices
(data/answers.py decides what counts as labels), JSON objects that all have the same keys become the JSON Schema
genson infers from them. Free text has no structure to hold to, and inference says so: before training, when the
recipe asks for constrained baselines (train's preflight), not after it. Decoding itself is eval/constrained.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tunesmith.config import Recipe
from tunesmith.data.answers import classify_answers, row_answer
from tunesmith.data.shapes import Row
from tunesmith.errors import TunesmithError
from tunesmith.scoring import read_json_schema

ConstraintKind = Literal["choices", "json_schema", "regex"]
HOW_TO_SET = ("set eval.choices (the labels), eval.json_schema (a JSON Schema file) or eval.regex in the recipe, "
              "or leave the constrained baselines out of eval.baselines")


@dataclass(frozen=True)
class Constraint:
    """What answers decoding may give. `spec`: the choices as a JSON list, the JSON Schema as JSON text, or the
    regex; `source`: where it came from (a recipe key, an option, or `inferred from N training answers`)."""

    kind: ConstraintKind
    spec: str
    source: str

    def describe(self) -> dict[str, Any]:
        """results.json's `constraint` block."""
        return {"kind": self.kind, "source": self.source,
                "spec": json.loads(self.spec) if self.kind != "regex" else self.spec}

    def satisfied_by(self, answer: str) -> bool:
        """Whether `answer` is one the constraint allows (the choices, the regex in full, schema-valid JSON)."""
        if self.kind == "choices":
            return answer in json.loads(self.spec)
        if self.kind == "regex":
            return re.fullmatch(self.spec, answer) is not None
        import jsonschema

        try:
            return jsonschema.Draft202012Validator(json.loads(self.spec)).is_valid(json.loads(answer))
        except ValueError:
            return False


def choices_regex(choices: list[str]) -> str:
    """One alternative per choice, each matched literally."""
    return "(" + "|".join(re.escape(choice) for choice in choices) + ")"


def choices_constraint(choices: list[str], source: str) -> Constraint:
    kept = sorted({choice.strip() for choice in choices if choice.strip()})
    if not kept:
        raise TunesmithError(f"{source}: no choices given.", "List at least one answer, e.g. --choices yes,no.")
    return Constraint("choices", json.dumps(kept, ensure_ascii=False), source)


def schema_file_constraint(path: Path, source: str) -> Constraint:
    """A JSON Schema file, read and checked now (a missing or broken file fails before any model loads)."""
    return Constraint("json_schema", json.dumps(read_json_schema(path, source)), source)


KIND_WORDS = {"numbers": "numbers", "tool_calls": "tool calls", "short": "short values of no one shape"}


def infer_constraint(rows: list[Row]) -> Constraint:
    """The structure the training answers share: their label set, or the JSON Schema of objects that all have the
    same keys (inferred with genson). Raises TunesmithError, naming the fix, for answers with no shared structure."""
    summary = classify_answers(rows)
    source = f"inferred from {summary.rows} training answers"
    if summary.kind == "labels":
        return choices_constraint(summary.labels, source)
    if summary.kind == "json":
        return json_constraint([json.loads(a) for a in map(row_answer, rows) if a is not None], source)
    if summary.kind == "numbers" and (pattern := number_pattern([a for a in map(row_answer, rows) if a])):
        return Constraint("regex", pattern, source)
    if summary.kind == "short" and summary.pattern:  # one shape for every answer: a date, a code
        return Constraint("regex", summary.pattern, source)
    raise TunesmithError(f"Constrained decoding needs answers with a structure to hold to, but the training answers "
                         f"are {KIND_WORDS.get(summary.kind, 'free text')} ({summary.reason}).",
                         f"Give one: {HOW_TO_SET}.")


BARE_NUMBER = re.compile(r"(-?)(\d+)(?:\.(\d+))?")


def number_pattern(answers: list[str]) -> str | None:
    """A regex for answers that are all bare numbers (`42`, `-3`, `12.75`), as long as the longest seen: up to one
    digit more than their integer parts and as many decimals as they have, so that decoding ends where the answers
    do (an unbounded `\d+` let a base model write digits to max_new_tokens). None for numbers with units or signs
    of currency, whose shape a regex would have to guess."""
    parts = [BARE_NUMBER.fullmatch(answer.strip()) for answer in answers]
    if not parts or not all(parts):
        return None
    digits = max(len(part.group(2)) for part in parts) + 1
    decimals = max(len(part.group(3) or "") for part in parts)
    sign = "-?" if any(part.group(1) for part in parts) else ""
    return sign + rf"\d{{1,{digits}}}" + (rf"(\.\d{{1,{decimals}}})?" if decimals else "")


def json_constraint(objects: list[dict[str, Any]], source: str) -> Constraint:
    """The JSON Schema of objects with one shape (the same keys in every object); mixed shapes are refused, since a
    merged schema would let decoding mix keys the task never does."""
    from genson import SchemaBuilder

    shapes = {tuple(sorted(obj)) for obj in objects}
    if len(shapes) > 1:
        first, second = sorted(shapes)[:2]
        raise TunesmithError(f"Constrained decoding: the training answers are JSON objects of {len(shapes)} different "
                             f"shapes (e.g. keys {list(first)} and {list(second)}), so no one schema can be inferred.",
                             f"Give the schema: {HOW_TO_SET}.")
    builder = SchemaBuilder()
    for obj in objects:
        builder.add_object(obj)
    schema = {key: value for key, value in builder.to_schema().items() if key != "$schema"}
    return Constraint("json_schema", json.dumps(schema), source)


def recipe_constraint(recipe: Recipe, train_rows: list[Row]) -> Constraint:
    """The recipe's constraint: eval.choices, else eval.json_schema, else eval.regex, else inferred from the
    training answers (`train_rows`)."""
    section = recipe.eval
    if section.choices:
        return choices_constraint(section.choices, "eval.choices")
    if section.json_schema:
        return schema_file_constraint(recipe.resolve_path(section.json_schema), "eval.json_schema")
    if section.regex:
        return Constraint("regex", section.regex, "eval.regex")
    return infer_constraint(train_rows)


def option_constraint(json_schema: Path | None, choices: str | None) -> Constraint | None:
    """The constraint chat and compare's `--json-schema FILE` / `--choices a,b,c` ask for (None: neither)."""
    if json_schema is not None and choices is not None:
        raise TunesmithError("--json-schema and --choices were both given.", "Pass one of them.")
    if json_schema is not None:
        return schema_file_constraint(json_schema, "--json-schema")
    if choices is not None:
        return choices_constraint(choices.split(","), "--choices")
    return None
