"""GRPO: reinforcement learning from verifiable rewards with a LoRA adapter, through TRL's GRPOTrainer.

For each prompt the policy samples `num_generations` completions; the rewards (`train/rewards.py`) score
them and each completion's advantage is its reward against its group's mean, so no value model is
needed. Rows are the SFT shapes (prompt-completion or messages): the prompt is every turn but the last,
the last turn is the reference answer, given to rewards as the `reference` column.

With `beta > 0` the KL reference costs no memory: TRL scores it with the adapter switched off (TRL 1.16
sets `ref_model=None` for a PEFT model). Reads: load → rows → configure → train → save.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.config import GRPOMethod, Recipe
from tunesmith.data.formats import METHOD_SHAPES
from tunesmith.data.shapes import Row
from tunesmith.data.template import answer_text
from tunesmith.errors import DataError, RecipeError
from tunesmith.runs import Run
from tunesmith.train.callbacks import MetricsLogger
from tunesmith.train.common import common_arguments, fit_and_save, prepare_training
from tunesmith.train.rewards import build_rewards

PROMPT_SHAPES = METHOD_SHAPES["grpo"]


def run_grpo(recipe: Recipe, run: Run) -> Path:
    """Tune the adapter with GRPO on the recipe's prompts and rewards; returns the saved adapter directory."""
    from datasets import Dataset
    from trl import GRPOTrainer

    method = grpo_method(recipe)  # its group size fits the batch: the recipe's validation checked
    rewards, weights = build_rewards(method.rewards, Path(recipe.base_dir))  # a bad reward fails before loading
    setup = prepare_training(recipe, run, accept=PROMPT_SHAPES, purpose="GRPO (method.kind grpo)")
    tally = CompletionTally()
    trainer = GRPOTrainer(
        model=setup.model,
        reward_funcs=[tally.counting(rewards[0]), *rewards[1:]],
        args=grpo_config(method, weights, common_arguments(recipe, run, setup.device, setup.precision)),
        train_dataset=Dataset.from_list([prompt_and_reference(row) for row in setup.splits.train]),
        processing_class=setup.tokenizer,
        peft_config=setup.peft_config,
        callbacks=[MetricsLogger(run), *setup.adapter_callbacks],
    )
    trainer.generated_tokens = lambda: (trainer.state.num_input_tokens_seen, tally.tokens)  # for the throughput
    return fit_and_save(trainer, setup, recipe, run)


class CompletionTally:
    """The sampled completions' tokens, counted as the first reward sees them (each completion is scored once)."""

    def __init__(self) -> None:
        self.tokens = 0

    def counting(self, reward: Callable[..., list[float]]) -> Callable[..., list[float]]:
        """`reward`, counting the tokens of the completions it scores; TRL logs it under the same name."""

        def counted(*args: Any, completion_ids: list[list[int]], **kwargs: Any) -> list[float]:
            self.tokens += sum(len(ids) for ids in completion_ids)
            return reward(*args, completion_ids=completion_ids, **kwargs)

        counted.__name__ = reward.__name__
        return counted


def grpo_method(recipe: Recipe) -> GRPOMethod:
    if not isinstance(recipe.method, GRPOMethod):
        raise RecipeError(f"run_grpo was given method.kind {recipe.method.kind}.", "Use run_training(recipe, run).")
    return recipe.method


def prompt_and_reference(row: Row) -> Row:
    """A conversation as GRPO's prompt (every turn before the last) and the reference answer (the last turn)."""
    messages = row["messages"]
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise DataError(f"A GRPO row must end with the assistant's reference answer; got roles "
                        f"{[m['role'] for m in messages]}.",
                        "Write rows as {prompt, completion} where completion is the expected answer.")
    return {"prompt": messages[:-1], "reference": answer_text(messages[-1])}


def grpo_config(method: GRPOMethod, weights: list[float], common: dict[str, Any]):
    """GRPOConfig with the recipe's group, sampling and KL settings; the rest are TRL 1.16's defaults
    (loss_type dapo, rewards scaled per group, one policy update per generation batch)."""
    from trl import GRPOConfig

    return GRPOConfig(**common, num_generations=method.num_generations,
                      max_completion_length=method.max_completion_length, beta=method.beta,
                      temperature=method.temperature, reward_weights=weights)
