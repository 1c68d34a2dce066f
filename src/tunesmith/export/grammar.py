"""A llama.cpp grammar for a closed task's answers, written beside the GGUF and Ollama exports as `answers.gbnf`.

When the training answers are a small closed label set or JSON objects of one shape (the same constraint eval's
`constrained` baseline and `eval.constrain_tuned` decode under, `tunesmith.data.constraint`), llama.cpp can hold
the exported model's answers to it: `llama-cli -m MODEL.gguf --grammar-file answers.gbnf`, or `grammar` in a
llama-server request. The grammar format is llama.cpp's GBNF (grammars/README.md in llama.cpp); JSON Schemas are
converted with llama-cpp-python's `json_schema_to_gbnf`, so that form needs llama-cpp-python installed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tunesmith.config import Recipe
from tunesmith.data.answers import classify_answers
from tunesmith.data.constraint import Constraint, recipe_constraint
from tunesmith.errors import TunesmithError, shell_arg
from tunesmith.runs import Run, atomic_write_text

GRAMMAR_FILE = "answers.gbnf"


def choices_gbnf(choices: list[str]) -> str:
    """`root ::= "a" | "b" ...`: one literal per choice (quotes, backslashes and line ends escaped)."""
    return "root ::= " + " | ".join(json.dumps(choice, ensure_ascii=False) for choice in choices) + "\n"


def schema_gbnf(schema: dict[str, Any]) -> str:
    """The GBNF of a JSON Schema. llama-cpp-python's converter lets strings hold raw control characters, which JSON
    forbids (RFC 8259 §7) and json.loads rejects; its string rule is narrowed as llama.cpp's own converter writes
    it."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return json_schema_to_gbnf(json.dumps(schema)).replace(r'[^"\\]', r'[^"\\\x7F\x00-\x1F]')


def constraint_gbnf(constraint: Constraint) -> str | None:
    """The grammar of a choices or JSON Schema constraint; None for a regex (llama.cpp has no regex grammars) or a
    schema without llama-cpp-python to convert it."""
    if constraint.kind == "choices":
        return choices_gbnf(json.loads(constraint.spec))
    if constraint.kind == "json_schema":
        try:
            return schema_gbnf(json.loads(constraint.spec))
        except ImportError:
            print("no answer grammar: turning the answers' JSON Schema into a llama.cpp grammar needs "
                  "llama-cpp-python (pip install 'tunesmith[gguf]')", file=sys.stderr)
            return None
    return None


def closed_answers_constraint(recipe: Recipe, run: Run) -> Constraint | None:
    """The constraint of a closed task (eval.choices / eval.json_schema, else the training answers' labels or
    JSON shape); None for free-text answers or a run without saved training rows."""
    rows = run.train_rows() or []
    if not (recipe.eval.choices or recipe.eval.json_schema):
        answers = classify_answers(rows)
        if answers.kind not in ("labels", "json"):
            return None
        if answers.kind == "labels" and answers.numbers == answers.rows:  # counts 2-9 seen: 10 is not ruled out
            print(f"no answer grammar: the answers are numbers ({', '.join(answers.labels)}), and a grammar of those "
                  "seen would rule out every other; set eval.choices to make them a closed set", file=sys.stderr)
            return None
    try:
        return recipe_constraint(recipe, rows)
    except TunesmithError as problem:  # mixed JSON shapes: no one grammar; the export itself still stands
        print(f"no answer grammar: {problem}", file=sys.stderr)
        return None


def write_answer_grammar(recipe: Recipe, run: Run, folder: Path) -> Path | None:
    """`folder`/answers.gbnf for a closed task (None, nothing written, otherwise)."""
    constraint = closed_answers_constraint(recipe, run)
    grammar = constraint_gbnf(constraint) if constraint is not None else None
    if grammar is None:
        return None
    target = atomic_write_text(folder / GRAMMAR_FILE, grammar)
    print(f"answer grammar: {target} ({constraint.kind}, {constraint.source}); llama.cpp decodes only those "
          f"answers with `{llama_cli_command(target)}`", file=sys.stderr)
    return target


def llama_cli_command(grammar: Path, relative_to: Path | None = None) -> str:
    """The llama.cpp command that decodes with `grammar` and the GGUF export beside it: the newest model file, or an
    Ollama export's base with its LoRA (`base-*.gguf`, `adapter-*.gguf`); MODEL.gguf where the folder holds none.
    Ollama takes no grammar file: the command is llama.cpp's either way. Paths relative to `relative_to` if given."""
    files = sorted(grammar.parent.glob("*.gguf"), key=lambda path: path.stat().st_mtime)
    bases = [path for path in files if path.name.startswith("base-")]
    adapters = [path for path in files if path.name.startswith("adapter-")]
    models = [path for path in files if path not in adapters and "-lora-" not in path.name]

    def shown(path: Path) -> str:
        return shell_arg(path.relative_to(relative_to) if relative_to is not None else path)

    if bases and adapters:
        return f"llama-cli -m {shown(bases[-1])} --lora {shown(adapters[-1])} --grammar-file {shown(grammar)}"
    return f"llama-cli -m {shown(models[-1]) if models else 'MODEL.gguf'} --grammar-file {shown(grammar)}"
