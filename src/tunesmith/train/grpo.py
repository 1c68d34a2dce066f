"""GRPO: reinforcement learning from verifiable rewards with a LoRA adapter, through TRL's GRPOTrainer.

For each prompt the policy samples `num_generations` completions; the rewards (`train/rewards.py`) score
them and each completion's advantage is its reward against its group's mean, so no value model is
needed. Rows are the SFT shapes (prompt-completion or messages): the prompt is every turn but the last,
the last turn is the reference answer, given to rewards as the `reference` column; or prompts without answers
(TRL's prompt-only rows), for rewards that judge a completion alone (regex, json_schema, a reward model, ...).

With `beta > 0` the KL reference costs no memory: TRL scores it with the adapter switched off (TRL 1.16
sets `ref_model=None` for a PEFT model). Reads: load → rows → configure → train → save.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.config import GRPOMethod, Recipe
from tunesmith.data import load_splits
from tunesmith.data.answers import check_prompts_fit_scoring
from tunesmith.data.formats import METHOD_SHAPES
from tunesmith.data.shapes import Row
from tunesmith.data.template import answer_text
from tunesmith.errors import DataError, RecipeError
from tunesmith.runs import Run
from tunesmith.scoring import try_user_reward
from tunesmith.train.callbacks import MetricsLogger
from tunesmith.train.common import common_arguments, fit_and_save, prepare_training
from tunesmith.train.distributed import is_main_process
from tunesmith.train.rewards import build_rewards, prompt_text

PROMPT_SHAPES = METHOD_SHAPES["grpo"]


def run_grpo(recipe: Recipe, run: Run) -> Path:
    """Tune the adapter with GRPO on the recipe's prompts and rewards; returns the saved adapter directory."""
    from datasets import Dataset
    from trl import GRPOTrainer

    method = grpo_method(recipe)  # its group size fits the batch: the recipe's validation checked
    rewards, weights = build_rewards(method.rewards, Path(recipe.base_dir))  # a bad reward fails before loading
    splits = load_splits(recipe, accept=PROMPT_SHAPES, purpose="GRPO (method.kind grpo)")
    check_prompts_fit_scoring(recipe, splits.train, splits.eval, splits.source["train"])  # prompts without answers
    try_user_rewards_on_a_reference(method, Path(recipe.base_dir), prompt_and_reference(splits.train[0]))
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
    # for the throughput: TRL sums num_input_tokens_seen over the ranks (it gathers the lengths), so rank 0 alone adds
    # it; each rank's completions are its own tally, which `TokenCounter.all_ranks` sums
    trainer.generated_tokens = lambda: (trainer.state.num_input_tokens_seen if is_main_process() else 0, tally.tokens)
    saved = fit_and_save(trainer, setup, recipe, run)
    for warning in learning_signal_warnings(run.read_metrics(), method):
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    return saved


UNIFORM_GROUPS = 0.75  # mean share of groups whose completions all got one reward, above which GRPO is warned of


def learning_signal_warnings(metrics: list[dict[str, Any]], method: GRPOMethod) -> list[str]:
    """What TRL's logged GRPO metrics say about the signal the run learned from: groups whose completions all got
    the same reward (`frac_reward_zero_std`: their advantages are 0, so they teach nothing) and completions all cut
    at max_completion_length (`completions/clipped_ratio`)."""
    logged = [row for row in metrics if "frac_reward_zero_std" in row]
    if not logged:
        return []
    warnings = []
    if all(row.get("grad_norm") == 0 for row in logged):
        warnings.append(f"every one of the {len(logged)} logged steps had a zero gradient (grad_norm in "
                        "metrics.jsonl): the adapter did not change, the tuned model is the base, and the reward's "
                        "rise or fall between steps is sampling noise.")
    uniform = sum(row["frac_reward_zero_std"] for row in logged) / len(logged)
    if uniform >= UNIFORM_GROUPS:
        warnings.append(f"{uniform:.0%} of the sampled groups (mean over {len(logged)} logged steps) gave every "
                        "completion the same reward, so GRPO had nothing to learn from them (frac_reward_zero_std in "
                        "metrics.jsonl). Give partial credit (a format reward such as regex, at a lower weight), "
                        "raise method.temperature, or method.num_generations.")
    clipped = [row["completions/clipped_ratio"] for row in logged if "completions/clipped_ratio" in row]
    cut = sum(clipped) / len(clipped) if clipped else 0.0
    if cut >= UNIFORM_GROUPS:
        warnings.append(f"{cut:.0%} of the completions were cut at method.max_completion_length "
                        f"({method.max_completion_length} tokens) before they ended: raise it, or reward shorter "
                        "answers (length_penalty).")
    return warnings


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


def try_user_rewards_on_a_reference(method: GRPOMethod, base_dir: Path, row: Row) -> None:
    """Call each user reward (`module:function`) once on the first row's reference as the completion, before the
    model loads (scoring.try_user_reward, which `doctor` runs too): a function that raises on it, or returns no finite
    number, is named now, not at the first generation after the model has loaded. Prompts without answers give
    nothing to try it on."""
    if "reference" not in row:
        return
    for spec in method.rewards:
        if ":" in spec.name:
            try_user_reward(spec.name, base_dir, row["reference"], prompt_text(row["prompt"]))


def prompt_and_reference(row: Row) -> Row:
    """A conversation as GRPO's prompt (every turn before the last) and the reference answer (the last turn); a
    prompt-only row as its prompt alone."""
    if "messages" not in row:
        return {"prompt": row["prompt"]}
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
