"""What eval measures beyond the held-out task: forgetting probes, an LLM judge, lm-eval harness tasks.

Each is set in the recipe's eval section and lands in results.json under its own key (`probes`,
`judge`, `lm_eval`). Everything that can be wrong with their settings (a missing probe or rubric
file, the harness not installed) is found by `prepare_add_ons`, before any model is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tunesmith.config import Recipe
from tunesmith.data.template import context_text, prompt_turns, reference_answer
from tunesmith.errors import TunesmithError, first_line
from tunesmith.eval.forgetting import NEAR_TIE_MARGIN
from tunesmith.results import AddOnBlock, Comparison, EvalResults, ProbesBlock


@dataclass(frozen=True)
class AddOns:
    """The add-ons a recipe asks for, read and checked: probe rows and text, the judge's rubric."""

    probes: list[dict[str, Any]] | None
    probe_file: dict[str, str] | None  # path and sha256 of the file the probes came from (`probe_source`)
    paragraphs: list[str]
    rubric: str | None
    harness_tasks: Any  # lm_eval_bridge.HarnessTasks, or None


def prepare_add_ons(recipe: Recipe) -> AddOns:
    from tunesmith.eval.decoding import progress
    from tunesmith.eval.forgetting import general_paragraphs, probe_source, recipe_probes
    from tunesmith.eval.judge import check_judge, key_variable, read_rubric
    from tunesmith.eval.lm_eval_bridge import prepare_tasks

    if recipe.eval.probe_file and not recipe.eval.probes:
        progress(f"note: eval.probe_file {recipe.eval.probe_file} is set but eval.probes is false, so no probes run "
                 "(--set eval.probes=true runs them)")
    probes = recipe_probes(recipe) if recipe.eval.probes else None
    rubric = read_rubric(recipe) if recipe.eval.judge is not None else None
    if recipe.eval.judge is not None:
        sent = key_variable(recipe.eval.judge.url, recipe.eval.judge.api_key_env)
        if sent and os.environ.get(sent):  # a recipe written by someone else names where a secret goes: say so
            progress(f"note: eval.judge sends the key in ${sent} to {urlsplit(recipe.eval.judge.url).hostname}")
        check_judge(recipe.eval.judge, recipe.eval.compare_base)
    return AddOns(probes, probe_source(recipe) if probes else None, general_paragraphs() if probes else [], rubric,
                  prepare_tasks(recipe) if recipe.eval.lm_eval is not None else None)


class AddOnFailedError(TunesmithError):
    """An add-on (the judge, lm-eval) failed after the answers were generated: results.json is saved with what
    did run, the failure recorded in `add_on_errors`; the command still exits 2, naming the fix."""


def refuse_failed_add_ons(errors: dict[str, dict[str, Any]] | None, path: Any) -> None:
    """After the results are saved: an add-on that failed (recorded in them) still ends the command with its fix."""
    if errors:
        name, failure = next(iter(errors.items()))
        raise AddOnFailedError(f"eval.{name} failed: {failure['error']} The other results are saved in {path} "
                               "(add_on_errors records the failure).", failure.get("hint"))


def guarded(name: str, run_block: Callable[[], dict[str, Any]],
            errors: dict[str, dict[str, str | None]]) -> dict[str, Any]:
    """`run_block()`'s blocks, or {} with the failure recorded in `errors` under `name` (and said) where the add-on
    fails after the answers were generated: an unreachable judge or an lm-eval task that needs the Hub offline
    would otherwise throw the whole eval away."""
    from tunesmith.eval.decoding import progress

    try:
        return run_block()
    except TunesmithError as exc:
        errors[name] = {"error": exc.message, "hint": exc.hint}
    except Exception as exc:  # the harness's own errors (a dataset that needs the Hub, offline)
        errors[name] = {"error": f"{type(exc).__name__}: {first_line(exc)}",
                        "hint": "The task's data must be on this machine (a local task folder, eval.lm_eval."
                                "include_path); tasks of lm-eval's own index download theirs from the Hub."}
    progress(f"{name} failed: {errors[name]['error']} (the other results are saved)")
    return {}


def run_add_ons(add_ons: AddOns, variants: dict[str, Any], tokenizer: Any, recipe: Recipe) -> dict[str, Any]:
    """The probes and harness blocks for results.json (the judge needs answers: see `judge_block`)."""
    from tunesmith.eval.decoding import progress

    blocks: dict[str, Any] = {}
    if add_ons.probes:
        from tunesmith.eval.forgetting import run_probes

        progress(f"forgetting probes: {len(add_ons.probes)} prompts and {len(add_ons.paragraphs)} paragraphs")
        blocks["probes"] = {**run_probes(variants, tokenizer, add_ons.probes, add_ons.paragraphs, recipe.eval),
                            "file": add_ons.probe_file}
    if add_ons.harness_tasks is not None:
        from tunesmith.eval.lm_eval_bridge import lm_eval_results

        progress(f"lm-eval tasks: {', '.join(recipe.eval.lm_eval.tasks)}")
        errors: dict[str, dict[str, str | None]] = {}
        blocks.update(guarded("lm_eval", lambda: {"lm_eval": lm_eval_results(variants, tokenizer, recipe,
                                                                             add_ons.harness_tasks)}, errors))
        if errors:
            blocks["add_on_errors"] = errors
    return blocks


def judge_block(add_ons: AddOns, recipe: Recipe, rows: list[dict], outputs: dict[str, list[str]]) -> dict[str, Any]:
    """The judge's grades of the generated answers, with its rubric; {} when the recipe has no judge; the judge's
    failure under `add_on_errors` where it fails (`guarded`)."""
    if add_ons.rubric is None:
        return {}
    from tunesmith.eval.decoding import progress
    from tunesmith.eval.judge import judge_outputs

    progress(f"judge: {recipe.eval.judge.model} at {recipe.eval.judge.url} ({recipe.eval.judge.mode})")
    prompts = [context_text(prompt_turns(row)) for row in rows]
    references = [reference_answer(row) for row in rows]  # None: the judge is shown no reference
    errors: dict[str, dict[str, str | None]] = {}
    block = guarded("judge", lambda: {"judge": {
        **judge_outputs(recipe.eval.judge, add_ons.rubric, prompts, references, outputs),
        "rubric": add_ons.rubric}}, errors)
    return block or {"add_on_errors": errors}


@dataclass(frozen=True)
class AddOnTable:
    """One add-on's figures for the terminal, the HTML report and the model card.

    Each row is (metric, base value, tuned value, its comparison or None).
    """

    title: str
    rows: list[tuple[str, Any, Any, Comparison | None]]
    note: str


def add_on_tables(results: EvalResults) -> list[AddOnTable]:
    """A table for each add-on block present in results.json, in the order rewards, probes, judge, lm-eval."""
    tables = []
    if results.rewards is not None:
        tables.append(rewards_table(results.rewards))
    if results.probes is not None:
        tables.append(probes_table(results.probes, results.against.name if results.against else "base"))
    if results.judge is not None:
        judge = results.judge.model_extra or {}
        note = (f"position consistency {judge['position_consistency']:.0%} (both orders agree); "
                f"answer A picked {judge['first_position_rate']:.0%} of the time" if judge["mode"] == "pairwise"
                else "scores 1-10")
        tables.append(AddOnTable(f"LLM judge {judge['model']} ({judge['mode']}, {judge['examples']} examples)",
                                 block_rows(results.judge, lambda key: key), note))
    if results.lm_eval is not None:
        block = results.lm_eval.model_extra or {}
        limit = f", first {block['limit']} documents" if block.get("limit") else ""
        tables.append(AddOnTable(f"lm-eval harness ({', '.join(block['tasks'])}{limit})",
                                 block_rows(results.lm_eval, lambda key: key), "tasks from " + block["include_path"]))
    return tables


def rewards_table(block: AddOnBlock) -> AddOnTable:
    """A GRPO run's rewards on held-out answers, with what `reward` sums and (where it happened) the warning that the
    tuned model gave one answer to most prompts."""
    from tunesmith.eval.grpo_rewards import same_answer_note

    extra = block.model_extra or {}
    summed = " + ".join(f"{weight:g} x {name.removeprefix('reward/')}" for name, weight in extra["weights"].items())
    note = f"reward: the weighted sum training maximised ({summed}), on these rows' answers"
    if extra.get("same_answer"):
        note = "WARNING: " + same_answer_note(extra["same_answer"]) + " " + note
    return AddOnTable("GRPO rewards on the held-out answers", block_rows(block, lambda key: key), note)


def probes_table(probes: ProbesBlock, base_name: str = "base") -> AddOnTable:
    names = {"accuracy": "probe_accuracy", "perplexity": "probe_perplexity"}
    rows = block_rows(probes, lambda key: names.get(key, f"probe/{key}"))
    asked = f", asked as {probes.asked_as!r}: no chat template" if probes.asked_as else ""
    source = f" of {Path(probes.file['path']).name}" if probes.file and not probes.file.get("bundled") else ""
    return AddOnTable(f"forgetting probes ({probes.count} prompts{source}{asked}; perplexity on general text)", rows,
                      probe_verdict(probes, base_name))


def probe_verdict(probes: ProbesBlock, base_name: str = "base") -> str:
    """One line: regression or not, and why; `base_name` is what played the base's part (the other run's name under
    `eval --against`)."""
    if probes.regression is None:
        return "no base to compare with"
    if probes.regression:
        return "REGRESSION: " + "; ".join(probes.reasons) + near_tie_note(probes.lost)
    return (f"no regression (accuracy within {probes.margin:g} of {base_name}, perplexity within "
            f"{probes.perplexity_margin:.0%})")


def near_tie_note(lost: list[dict[str, Any]]) -> str:
    """How many of the lost probes the base itself answered by a near-tie at the first token, named."""
    ties = [p["id"] for p in lost if p.get("near_tie")]
    if not ties:
        return ""
    return (f" ({len(ties)} of the {len(lost)} probes lost were near-ties in the base, its first answer token "
            f"under {NEAR_TIE_MARGIN:g} ahead of the next: {', '.join(ties)})")


NOT_SCORES = ("seconds", "judge_scored")  # an add-on block's counts beside its scores: not rows of the table


def block_rows(block: AddOnBlock,
               comparison_key: Callable[[str], str]) -> list[tuple[str, Any, Any, Comparison | None]]:
    keys = [key for key in block.tuned if key not in NOT_SCORES]
    return [(key, (block.base or {}).get(key), block.tuned[key], block.comparison.get(comparison_key(key)))
            for key in keys]
