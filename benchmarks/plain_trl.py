"""One default epoch of a plain TRL script on a bundled task, scored as `tunesmith eval` scores it.

The reference point for "what the defaults reach": the script a knowledgeable user writes from TRL's and PEFT's
guides (`tunesmith.bench.trl_worker("trl-plain")`: SFTTrainer + LoraConfig r=16 on all linear layers, SFTConfig
defaults: lr 2e-5, batch 8, one epoch, loss on every token, bf16 autocast), then greedy answers to the task's
held-out rows (the chat template's generation prompt, `max_new_tokens` 16), scored with tunesmith's
exact_match and label_accuracy. Appends one entry per task to benchmarks/results/plain_trl.json.

    .venv/bin/python benchmarks/plain_trl.py --task routing
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = {"routing": "examples/data/routing", "tickets": "examples/data/tickets"}
RESULTS = ROOT / "benchmarks" / "results" / "plain_trl.json"


def score_heldout(model: object, tokenizer: object, rows: list[dict], max_new_tokens: int = 16) -> dict:
    from tunesmith.data.template import render
    from tunesmith.models.generation import generate_from_prompts
    from tunesmith.scoring import aggregate, build_scorer, score_answers

    prompts = [render(tokenizer, row["messages"][:-1], generation_prompt=True) for row in rows]
    model.eval()
    answers = generate_from_prompts(model, tokenizer, prompts, max_new_tokens, batch_size=16).answers
    scorer = build_scorer(["exact_match", "label_accuracy"], None, None, ROOT)
    scores = score_answers(scorer, answers, [row["messages"][-1]["content"] for row in rows])
    return {**aggregate(scores), "answers_sample": answers[:8]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), default="routing")
    args = parser.parse_args()

    from tunesmith.bench import read_rows, trl_worker
    from tunesmith.models import resolve_model_source
    from tunesmith.runs import environment_snapshot

    data = ROOT / TASKS[args.task]
    model_dir = resolve_model_source("smollm2-135m-instruct")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tunesmith-plain-trl-") as tmp:
        model, tokenizer, figures = trl_worker("trl-plain", model_dir, data / "train.jsonl", batch_size=8,
                                               max_length=1024, output_dir=Path(tmp))
    trained = time.monotonic() - started
    scores = score_heldout(model, tokenizer, read_rows(data / "eval.jsonl"))
    entry = {"task": args.task, "variant": "trl-plain, one default epoch", "train": figures,
             "train_minutes": round(trained / 60, 2), "minutes": round((time.monotonic() - started) / 60, 2),
             "heldout": scores, "environment": environment_snapshot()}
    results = [e for e in (json.loads(RESULTS.read_text()) if RESULTS.is_file() else []) if e["task"] != args.task]
    RESULTS.write_text(json.dumps([*results, entry], indent=2) + "\n", encoding="utf-8")
    print(f"{args.task}: plain TRL, one epoch ({figures['steps']} steps, {entry['train_minutes']} min): "
          f"exact_match {scores['exact_match']:.3f}, label_accuracy {scores.get('label_accuracy', 0):.3f}")


if __name__ == "__main__":
    main()
