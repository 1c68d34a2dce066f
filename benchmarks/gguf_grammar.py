"""Does the exported `answers.gbnf` cost a closed task's score in llama.cpp? The run's GGUF answers its held-out rows
greedily, once free and once held to the grammar, in one process; both are scored by the run's own metrics.

A newcomer's 10-step model gave 1/12 exact match with the grammar against 3/12 without; this measures it on a
trained run (the quickstart's orders, JSON objects) and on any other run given.

    .venv/bin/python benchmarks/gguf_grammar.py RUN [--rows 80] [--max-tokens 160] [--out FILE.json]

RUN must hold exports/gguf/*.gguf and answers.gbnf beside it (`tunesmith export RUN --format gguf`). The prompt is
rendered by the run's tokenizer (`data.template.render`, as `serve` does) and given to llama.cpp as token ids.
Output: exact match, the run's other metrics and the share of valid JSON for each variant, the rows where the two
answers differ (first 10 shown), and the seconds each took.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tunesmith.data.template import prompt_turns, reference_answer, render
from tunesmith.models.tuned import run_tokenizer
from tunesmith.runs import open_run
from tunesmith.scoring import aggregate, recipe_scorer, score_answers


def decode(llm, prompts: list[list[int]], max_tokens: int, grammar) -> tuple[list[str], float]:
    started = time.perf_counter()
    answers = []
    for ids in prompts:
        llm.reset()
        out = llm.create_completion(prompt=ids, max_tokens=max_tokens, temperature=0.0, grammar=grammar)
        answers.append(out["choices"][0]["text"])
    return answers, round(time.perf_counter() - started, 1)


def valid_json_share(answers: list[str]) -> float:
    def parses(text: str) -> bool:
        try:
            json.loads(text)
            return True
        except ValueError:
            return False

    return round(sum(parses(a.strip()) for a in answers) / max(len(answers), 1), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--rows", type=int, default=80)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from llama_cpp import Llama, LlamaGrammar

    run = open_run(args.run)
    recipe = run.load_recipe()
    [gguf] = sorted((run.exports_dir / "gguf").glob("*.gguf"))[:1]
    grammar_text = (gguf.parent / "answers.gbnf").read_text(encoding="utf-8")
    tokenizer = run_tokenizer(run)
    rows = (run.eval_rows() or [])[: args.rows]
    prompts = [tokenizer(render(tokenizer, prompt_turns(row), generation_prompt=True),
                         add_special_tokens=False)["input_ids"] for row in rows]
    references = [reference_answer(row) or "" for row in rows]
    llm = Llama(model_path=str(gguf), n_ctx=2048, n_threads=2, verbose=False, seed=0)
    scorer = recipe_scorer(recipe)
    report = {"run": str(run.path), "gguf": gguf.name, "rows": len(rows), "grammar_text": grammar_text}
    answers = {}
    for name, grammar in (("free", None), ("grammar", LlamaGrammar.from_string(grammar_text, verbose=False))):
        answers[name], seconds = decode(llm, prompts, args.max_tokens, grammar)
        report[name] = {**aggregate(score_answers(scorer, answers[name], references)), "seconds": seconds,
                        "valid_json": valid_json_share(answers[name])}
    differing = [{"reference": ref, "free": free, "grammar": held}
                 for ref, free, held in zip(references, answers["free"], answers["grammar"], strict=True)
                 if free.strip() != held.strip()]
    report["differing"] = differing
    print(json.dumps({k: v for k, v in report.items() if k not in ("differing", "grammar_text")}, indent=2))
    print(f"{len(differing)} of {len(rows)} answers differ; the first 10:")
    for entry in differing[:10]:
        print(json.dumps(entry, ensure_ascii=False))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
