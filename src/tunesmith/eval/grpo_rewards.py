"""A GRPO run's own rewards on the held-out answers: did what training maximised go up on prompts it never saw?

Each variant's greedy answers (base, tuned) are scored by the recipe's `method.rewards`, built and called exactly
as GRPO called them while training (`train/rewards.py`: the same functions, the prompt as turns, the answer as an
assistant turn, its token ids, the row's reference answer or '' for a prompt without one). results.json `rewards`
holds each variant's mean of the weighted sum (`reward`, TRL's sum of `reward_weights` x rewards) and of each reward
by its logged name (`reward/<name>`), and tuned against base on every one with a paired bootstrap interval. It is
the measure of a run trained on prompts without answers, where no reference-based metric applies.

A reward can be earned without doing the task (reward hacking): a format reward by answering "1" to every prompt.
The block says when the tuned model gives one answer to most prompts where the base did not (`same_answer`), the
usual trace of it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from tunesmith.config import GRPOMethod, Recipe
from tunesmith.data.template import prompt_turns, reference_answer
from tunesmith.eval.stats import compare_metric


def rewards_block(recipe: Recipe, rows: list[dict[str, Any]], outputs: dict[str, list[str]],
                  tokenizer: Any) -> dict[str, Any]:
    """results.json's `rewards` block for a GRPO recipe (an empty dict for any other method): per variant in
    `outputs` (its answers to `rows`, in order) the mean scores, and tuned against base where both exist."""
    if not isinstance(recipe.method, GRPOMethod) or not rows:
        return {}
    from tunesmith.eval.decoding import progress
    from tunesmith.train.rewards import build_rewards, logged_names

    specs = recipe.method.rewards
    rewards, weights = build_rewards(specs, Path(recipe.base_dir))
    names = [f"reward/{name}" for name in logged_names(specs)]
    progress(f"rewards: the run's {len(specs)} GRPO reward(s) on {len(rows)} held-out answers per variant")
    prompts = [prompt_turns(row) for row in rows]
    references = [reference_answer(row) or "" for row in rows]
    columns = {variant: reward_columns(rewards, weights, names, prompts, references, answers, tokenizer)
               for variant, answers in outputs.items()}
    block: dict[str, Any] = {variant: {name: round(sum(values) / len(values), 4) for name, values in scores.items()}
                             for variant, scores in columns.items()}
    block["weights"] = dict(zip(names, weights, strict=True))
    repeated = same_answer(outputs.get("tuned", []), outputs.get("base"))
    if repeated:
        block["same_answer"] = repeated
        progress(f"warning: {same_answer_note(repeated)}")
    if "base" in columns and "tuned" in columns:
        block["comparison"] = {name: compare_metric(columns["base"][name], columns["tuned"][name])
                               for name in columns["tuned"]}
    return {"rewards": block}


SAME_ANSWER_SHARE = 0.5  # one answer to at least this share of the prompts reads as the model ignoring them


def same_answer(tuned: list[str], base: list[str] | None) -> dict[str, Any] | None:
    """The tuned model's most common answer where it answers at least SAME_ANSWER_SHARE of the prompts (at least 3)
    with it and the base (when scored) did not: {answer, count, of}; None otherwise."""
    counts = Counter(answer.strip() for answer in tuned)
    if not counts:
        return None
    answer, count = counts.most_common(1)[0]
    base_top = Counter(text.strip() for text in base).most_common(1)[0][1] if base else 0
    if count < 3 or count < SAME_ANSWER_SHARE * len(tuned) or base_top >= SAME_ANSWER_SHARE * len(tuned):
        return None
    return {"answer": answer, "count": count, "of": len(tuned)}


def same_answer_note(repeated: dict[str, Any]) -> str:
    return (f"the tuned model gave the same answer, {repeated['answer'][:40]!r}, to {repeated['count']} of the "
            f"{repeated['of']} held-out prompts: a reward that judges an answer's form alone can be earned without "
            "reading the prompt (reward hacking). Add a reward that checks the content: a function of yours that "
            "takes `prompt` (the question) or `reference` (rows with answers).")


def reward_columns(rewards: list[Any], weights: list[float], names: list[str], prompts: list[Any],
                   references: list[str], answers: list[str], tokenizer: Any) -> dict[str, list[float]]:
    """Per answer: each reward (by `names`) and their weighted sum (`reward`), as TRL's GRPOTrainer computes them."""
    completions = [[{"role": "assistant", "content": answer}] for answer in answers]
    ids = tokenizer(answers, add_special_tokens=False)["input_ids"] if answers else []
    scored = {name: [float(value) for value in reward(prompts=prompts, completions=completions, completion_ids=ids,
                                                      reference=references)]
              for name, reward in zip(names, rewards, strict=True)}
    total = [sum(weight * scored[name][index] for name, weight in zip(names, weights, strict=True))
             for index in range(len(answers))]
    return {"reward": total, **scored}
