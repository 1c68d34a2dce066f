"""GRPO's rewards: score each sampled completion, as TRL's GRPOTrainer calls them.

Each reward is a per-completion score `(text, reference, token_ids, prompt) -> float`; `trl_reward` turns it
into the batch function TRL expects, named after the recipe's reward so TRL logs it as
`rewards/<name>/mean`. The weights go to TRL (`reward_weights`), which sums the weighted rewards
before normalising them within each group. The reference answer reaches rewards as the dataset
column `reference` (TRL passes every column but `prompt`/`completion` on to reward functions).

Built-ins reuse the evaluation metrics (`tunesmith/scoring.py`), so a reward means what the metric of the
same name measures; `reward_model` scores prompt + completion with a trained reward model
(`train/reward_model.py`). A user reward is a function named `module:function` or `path/file.py:function`
taking (completion, reference) and returning a float, the same shape as a user eval metric; one that also has a
parameter named `prompt` is given the prompt's text (`context_text`: the user's words for a one-turn prompt), so it
can check an answer against its question where the rows hold no answers (GRPO on prompts alone).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.config import RewardSpec
from tunesmith.data.template import context_text
from tunesmith.scoring import (
    SCORERS,
    call_user_function,
    final_answer,
    json_schema_scorer,
    json_valid_score,
    load_user_function,
    regex_scorer,
    reward_number,
    takes_prompt,
)

Score = Callable[[str, str, list[int], str], float]  # (completion text, reference, completion token ids, prompt text)
TrlReward = Callable[..., list[float]]


def build_rewards(specs: list[RewardSpec], base_dir: Path) -> tuple[list[TrlReward], list[float]]:
    """TRL reward functions and their weights for the recipe's `method.rewards`; bad files fail here, once."""
    rewards = [one_reward(name, spec, base_dir) for name, spec in zip(logged_names(specs), specs, strict=True)]
    return rewards, [spec.weight for spec in specs]


def one_reward(name: str, spec: RewardSpec, base_dir: Path) -> TrlReward:
    """A reward model scores the prompt with its completion; every other reward scores the completion alone."""
    if spec.name == "reward_model":
        path = Path(spec.path or "").expanduser()
        return reward_model_reward(name, path if path.is_absolute() else base_dir / path)
    return trl_reward(name, reward_score(spec, base_dir))


def reward_model_reward(name: str, path: Path) -> TrlReward:
    """A trained reward model (a `method.kind: reward` run), loaded once here, as TRL's batch reward function:
    each prompt + completion goes through the base's chat template, as in training, and scores one float."""
    from tunesmith.train.reward_model import load_reward_model

    scorer = load_reward_model(path)

    def reward(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        return scorer.score(prompts, completions)

    reward.__name__ = name
    return reward


def logged_names(specs: list[RewardSpec]) -> list[str]:
    """The name each reward is logged under: the built-in's, or a user function's own name; a repeated name
    gets a suffix (two regex rewards log as `regex` and `regex_2`)."""
    bases = [spec.name.rpartition(":")[2] for spec in specs]
    return [base if bases[:i].count(base) == 0 else f"{base}_{bases[:i].count(base) + 1}"
            for i, base in enumerate(bases)]


def reward_score(spec: RewardSpec, base_dir: Path) -> Score:
    """The per-completion score the spec names (files resolve from the recipe's folder)."""
    if spec.name in ("exact_match", "numeric_match", "tool_call_match"):  # the eval metrics of those names
        return from_metric(SCORERS[spec.name], spec.name)
    if spec.name == "json_valid":
        return from_metric(json_valid_score, "json_valid")
    if spec.name == "regex":
        return from_metric(regex_scorer(spec.pattern or ""), "regex")
    if spec.name == "json_schema":
        schema = Path(spec.json_schema or "").expanduser()
        return from_metric(json_schema_scorer(schema if schema.is_absolute() else base_dir / schema,
                                              "method.rewards (the json_schema reward's json_schema)"), "json_schema")
    if spec.name == "length_penalty":
        return length_penalty(spec.target or 1)
    return user_reward(spec.name, base_dir)


def from_metric(metric: Callable[[str, str], dict[str, Any]], key: str) -> Score:
    """An eval metric (1 right, 0 wrong) as a reward, on the answer after any reasoning (`scoring.final_answer`, as
    eval scores it)."""
    return lambda text, reference, ids, prompt: metric(final_answer(text), reference)[key]


def length_penalty(target: int) -> Score:
    """0 up to `target` tokens, then -1/target per extra token, floored at -1: nudges toward short answers
    without ever outweighing a correct one (weight it below the task reward)."""
    return lambda text, reference, ids, prompt: -min(1.0, max(0, len(ids) - target) / target)


def user_reward(spec: str, base_dir: Path) -> Score:
    """A user's function(completion, reference[, prompt]) -> float; anything else it returns stops training with its
    name."""
    function = load_user_function(spec, base_dir, "reward")
    asks_prompt = takes_prompt(function)

    def score(text: str, reference: str, ids: list[int], prompt: str) -> float:
        value = call_user_function(function, spec, "reward", text, reference, prompt if asks_prompt else None)
        return reward_number(value, spec, text)

    return score


def trl_reward(name: str, score: Score) -> TrlReward:
    """`score` as TRL's batch reward function; its `__name__` is the recipe's reward name, which TRL logs."""

    def reward(prompts: list[Any], completions: list[Any], completion_ids: list[list[int]],
               reference: list[str] | None = None, **_: Any) -> list[float]:
        references = reference or [""] * len(completions)
        return [score(completion_text(c), ref, ids, prompt_text(p))
                for c, ref, ids, p in zip(completions, references, completion_ids, prompts, strict=True)]

    reward.__name__ = name
    return reward


def prompt_text(prompt: str | list[dict[str, Any]]) -> str:
    """The prompt a completion answers, as a person reads it: a string, or (conversational prompts) `context_text`
    of its turns (the user's text alone for one user turn, a system turn aside)."""
    return prompt if isinstance(prompt, str) else context_text(prompt)


def completion_text(completion: str | list[dict[str, Any]]) -> str:
    """The text of a sampled completion: a string, or (conversational prompts) the assistant's message."""
    if isinstance(completion, str):
        return completion
    return "".join(str(message.get("content") or "") for message in completion if message.get("role") == "assistant")
