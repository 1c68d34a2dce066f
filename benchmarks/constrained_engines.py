"""Which structured-generation library tunesmith's constrained decoding uses on CPU: xgrammar, llguidance or outlines.

All three plug into transformers' `generate` as a logits processor. This script runs each one on the embedded model
(SmolLM2-135M-Instruct, fp32, CPU) with the two constraints tunesmith infers from training answers:

- `labels`: the tickets task's 8 queue names (a regex alternation);
- `json`: the quickstart task's order object (the JSON Schema genson infers from the training answers).

For each library and constraint it reports the one-off costs (tokenizer set-up, grammar compile, and the first
answer, which pays each library's lazy initialisation), then the generation time for the same prompts (greedy,
batched with left padding, side by side with unconstrained generation in the same process), and the share of
outputs that satisfy the constraint.

    .venv/bin/python benchmarks/constrained_engines.py [--rows 20] [--out benchmarks/results/constrained_engines.json]

Needs `pip install xgrammar llguidance outlines genson` (only llguidance is a tunesmith dependency).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]


def read_rows(path: Path, limit: int) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()[:limit]]


def labels_regex(labels: list[str]) -> str:
    return "(" + "|".join(re.escape(label) for label in labels) + ")"


def engine_factories(model, tokenizer, vocab_size: int) -> dict:
    """name -> (setup seconds, make(kind, spec) -> a fresh logits processor per generate call)."""
    factories = {}
    started = time.perf_counter()
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
    compiler = xgr.GrammarCompiler(info)

    def xgrammar_make(kind: str, spec: str):
        compiled = (compiler.compile_json_schema(spec, any_whitespace=False) if kind == "json"
                    else compiler.compile_regex(spec))
        return lambda: xgr.contrib.hf.LogitsProcessor(compiled)

    factories["xgrammar"] = (time.perf_counter() - started, xgrammar_make)

    started = time.perf_counter()
    from tunesmith.data.constraint import Constraint
    from tunesmith.eval.constrained import guidance_tokenizer, logits_processor

    guidance_tokenizer(tokenizer, vocab_size)

    def llguidance_make(kind: str, spec: str):  # as tunesmith runs it: eval/constrained.py
        if kind == "json":
            constraint = Constraint("json_schema", spec, "benchmark")
        else:
            constraint = Constraint("regex", spec, "benchmark")
        logits_processor(constraint, tokenizer, vocab_size)
        return lambda: logits_processor(constraint, tokenizer, vocab_size)

    factories["llguidance"] = (time.perf_counter() - started, llguidance_make)

    started = time.perf_counter()
    import outlines
    from outlines.backends import get_json_schema_logits_processor, get_regex_logits_processor

    steerable = outlines.from_transformers(model, tokenizer)

    def outlines_make(kind: str, spec: str):
        processor = (get_json_schema_logits_processor("outlines_core", steerable, spec) if kind == "json"
                     else get_regex_logits_processor("outlines_core", steerable, spec))

        def fresh():
            processor.reset()
            return processor

        return fresh

    factories["outlines"] = (time.perf_counter() - started, outlines_make)
    return factories


def generate(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int, make=None) -> list[str]:
    tokenizer.padding_side = "left"
    answers = []
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        extra = {"logits_processor": transformers.LogitsProcessorList([make()])} if make else {}
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **extra)
        answers += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return [a.strip() for a in answers]


def satisfies(kind: str, spec: str, answer: str) -> bool:
    if kind == "labels":
        return re.fullmatch(spec, answer) is not None
    import jsonschema

    try:
        jsonschema.validate(json.loads(answer), json.loads(spec))
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/constrained_engines.json")
    args = parser.parse_args()
    from genson import SchemaBuilder

    from tunesmith.models.source import resolve_model_source

    torch.manual_seed(0)
    model_dir = resolve_model_source("smollm2-135m-instruct")
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    vocab_size = model.config.vocab_size
    tasks = {}
    tickets = read_rows(ROOT / "examples/data/tickets/train.jsonl", 1000)
    labels = sorted({r["messages"][-1]["content"] for r in tickets})
    tasks["labels"] = (labels_regex(labels), read_rows(ROOT / "examples/data/tickets/eval.jsonl", args.rows), 12)
    builder = SchemaBuilder()
    for row in read_rows(ROOT / "examples/data/orders/train.jsonl", 1000):
        builder.add_object(json.loads(row["messages"][-1]["content"]))
    schema = {k: v for k, v in builder.to_schema().items() if k != "$schema"}  # llguidance would fetch the URL
    tasks["json"] = (json.dumps(schema), read_rows(ROOT / "examples/data/orders/eval.jsonl", args.rows), 64)

    factories = engine_factories(model, tokenizer, vocab_size)
    report = {"model": "smollm2-135m-instruct", "rows": args.rows, "threads": torch.get_num_threads(),
              "setup_seconds": {name: round(s, 2) for name, (s, _) in factories.items()}, "tasks": {}}
    for kind, (spec, rows, max_new) in tasks.items():
        prompts = [tokenizer.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True)
                   for r in rows]
        started = time.perf_counter()
        free = generate(model, tokenizer, prompts, 10, max_new)
        entry = {"unconstrained": {"seconds": round(time.perf_counter() - started, 2),
                                   "valid": sum(satisfies(kind, spec, a) for a in free) / len(free)}}
        for name, (_, make_for) in factories.items():
            started = time.perf_counter()
            make = make_for(kind, spec)
            compile_s = time.perf_counter() - started
            started = time.perf_counter()
            generate(model, tokenizer, prompts[:1], 1, max_new, make)  # one-off lazy set-up, reported apart
            first_s = time.perf_counter() - started
            started = time.perf_counter()
            answers = generate(model, tokenizer, prompts, 10, max_new, make)
            entry[name] = {"compile_seconds": round(compile_s, 3), "first_answer_seconds": round(first_s, 2),
                           "seconds": round(time.perf_counter() - started, 2),
                           "valid": sum(satisfies(kind, spec, a) for a in answers) / len(answers),
                           "example": answers[0]}
            print(kind, name, entry[name], flush=True)
        report["tasks"][kind] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
