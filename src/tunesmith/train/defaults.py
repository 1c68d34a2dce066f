"""Defaults chosen for the run's model and data where the recipe leaves them to tunesmith (`auto`).

Each choice comes with its reason, printed before training and kept in train.json `chosen`.

Learning rate (`training.lr: auto`), by adapter kind and base size:
- LoRA and its variants on a base under 1B parameters: 1e-3. Our measurement on SmolLM2-135M
  (benchmarks/results/forgetting_settings.json): the quickstart reaches field accuracy 0.90 at 1e-3 against
  0.78 at 3e-4 in the same 28 steps.
- LoRA on 1B-20B: 2e-4, and above 20B: 1e-4 (QLoRA, Dettmers et al. 2023, arXiv:2305.14314, Appendix B.2:
  2e-4 for 7B and 13B, 1e-4 for 33B and 65B).
- IA3: 3e-3 (T-Few, Liu et al. 2022, arXiv:2205.05638, §3.3).
- Prompt, prefix and p-tuning: 3e-2 (PEFT's prompt-tuning guide for causal language models).
- Whole-model kinds (full, partial, hft): 2e-5 (Stanford Alpaca's full fine-tune of LLaMA-7B; Taori et al. 2023).

Epochs, when the recipe gives none of `training.epochs`, `max_steps` or `time_budget`: one, or as many whole
epochs as reach MIN_AUTO_STEPS optimizer steps on a small dataset, at most MAX_AUTO_EPOCHS. Our measurement
(README, "Keeping what the base could do"; routing checkpoints every 10 steps at lr 1e-3): exact match 0.33,
0.51, 0.78, 0.86, 0.89 at steps 10, 20, 30, 40, 49, so a run of 15 steps (120 rows at batch 8) stops while
the task is half learnt. The cap is the time budget's (train/budget.py: more passes mostly memorise).
"""

from __future__ import annotations

import math
import sys
from typing import Any

from tunesmith.config import PROMPT_LEARNING_KINDS, WHOLE_MODEL_KINDS
from tunesmith.plan.fit import CPU_MICRO_TOKENS
from tunesmith.train.budget import MAX_BUDGET_EPOCHS, steps_per_epoch
from tunesmith.train.throughput import weights_in

MIN_AUTO_STEPS = 50
MAX_AUTO_EPOCHS = MAX_BUDGET_EPOCHS
ROW_METHODS = ("sft", "dpo", "orpo", "simpo", "kto")  # an epoch is the rows / batch (not CPT's packed blocks)


def auto_lr(adapter_kind: str, parameters: int) -> tuple[float, str]:
    """The learning rate for `adapter_kind` on a base of `parameters` weights, and why (see the module doc)."""
    billions = parameters / 1e9
    if adapter_kind in WHOLE_MODEL_KINDS:
        return 2e-5, "whole-model training (Alpaca's full fine-tune)"
    if adapter_kind in PROMPT_LEARNING_KINDS:
        return 3e-2, "virtual tokens learn from scratch (PEFT's prompt-tuning guide)"
    if adapter_kind == "ia3":
        return 3e-3, "IA3 scaling vectors (T-Few)"
    if billions < 1:
        return 1e-3, f"LoRA on a {billions * 1000:.0f}M-parameter base (our SmolLM2-135M measurements)"
    if billions < 20:
        return 2e-4, f"LoRA on a {billions:.1f}B-parameter base (QLoRA's 7B/13B setting)"
    return 1e-4, f"LoRA on a {billions:.0f}B-parameter base (QLoRA's 33B/65B setting)"


def resolve_lr(training: Any, adapter_kind: str, model: Any) -> dict[str, Any]:
    """Fill `training.lr` when it is `auto` (in place: the trainers read it next) and say what it is and why."""
    if training.lr != "auto":
        return {"value": training.lr, "why": "training.lr in the recipe"}
    parameters = sum(weights_in(p) for p in model.parameters())
    training.lr, why = auto_lr(adapter_kind, parameters)
    print(f"lr: {training.lr:g} (auto: {why})", file=sys.stderr, flush=True)
    return {"value": training.lr, "why": f"auto: {why}"}


def resolve_epochs(training: Any, method_kind: str, rows: int) -> dict[str, Any] | None:
    """Fill `training.epochs` (in place) for a small dataset of `rows` training rows when the recipe says nothing
    of how long to train (see the module doc); what was chosen and why, or None where the recipe decides."""
    if training.steps_given or training.time_budget is not None or method_kind not in ROW_METHODS:
        return None
    per_epoch = steps_per_epoch(rows, training.batch_size, training.grad_accum)
    epochs = min(MAX_AUTO_EPOCHS, max(1, math.ceil(MIN_AUTO_STEPS / per_epoch)))
    if epochs == 1:
        return {"value": "1 epoch", "why": f"default: 1 epoch ({per_epoch} steps reach the {MIN_AUTO_STEPS} a task "
                                          "needs: our routing checkpoints)"}
    training.epochs = float(epochs)
    return {"value": f"{epochs} epochs ({epochs * per_epoch} steps)",
            "why": f"auto: a small dataset ({rows} rows: {per_epoch} steps an epoch); {MIN_AUTO_STEPS} steps learn a "
                   f"task at this lr (our routing checkpoints), at most {MAX_AUTO_EPOCHS} epochs"}


def settings_chosen(recipe: Any, chosen: dict[str, Any], lengths: list[int],
                    budget: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """What this run trains with and why, one entry per setting (train.json `chosen`, printed as a table by
    `print_chosen`): `chosen` (what `auto` settings resolved to: lr, packing, replay) plus the steps, schedule,
    batch, adapter and max_length, each said to come from the recipe or from tunesmith's default and its source.
    `lengths`: the encoded training rows' lengths in tokens; `budget`: train.json's time_budget block."""
    training, adapter = recipe.training, recipe.adapter
    given = training.model_fields_set

    def source(key: str, default_why: str) -> str:
        return f"training.{key} in the recipe" if key in given else default_why

    table = {"lr": chosen["lr"]}
    table["steps"] = chosen.get("epochs") or steps_choice(training, budget)
    table["schedule"] = {"value": f"{training.scheduler}, warm-up {training.warmup_ratio:g}",
                         "why": "training.scheduler/warmup_ratio in the recipe"
                         if {"scheduler", "warmup_ratio"} & given else
                         "default: cosine decay after a 3% warm-up (Stanford Alpaca's fine-tuning schedule)"}
    table["batch_size"] = batch_choice(training, chosen.get("device"), max(lengths, default=0))
    if hasattr(adapter, "r"):
        dropout = f"dropout={adapter.dropout:g} " if hasattr(adapter, "dropout") else ""
        table["adapter"] = {"value": f"{adapter.kind} r={adapter.r} alpha={adapter.alpha:g} {dropout}"
                                     f"targets={adapter.targets}",
                            "why": "adapter in the recipe" if adapter.model_fields_set - {"kind"} else
                            "default: r 16 on every linear layer (QLoRA: all linear layers are needed to match full "
                            "fine-tuning; arXiv:2305.14314 §4), no dropout (PEFT's default; on a CPU dropout's "
                            "random masks cost a quarter of the step)"}
    blocks = recipe.method.kind == "cpt" and training.packing in (True, "auto")  # cpt.py's wrapped packing
    table["max_length"] = max_length_choice(recipe.data.max_length, lengths, chosen.get("max_length", {}).get(
        "why", "data.max_length in the recipe"), packed_blocks=blocks)
    if "packing" in chosen:
        table["packing"] = {"value": "on" if chosen["packing"]["on"] else "off", "why": chosen["packing"]["why"]}
    if chosen.get("frozen_matmuls", {}).get("dtype") == "bf16":
        table["frozen_matmuls"] = {"value": "bf16", "why": chosen["frozen_matmuls"]["why"]}
    if "micro_batch_tokens" in chosen:
        table["micro_batch_merge"] = {"value": f"up to {chosen['micro_batch_tokens']:,} tokens a pass",
                                      "why": "auto on a CPU: each step's micro-batches, sized by the longest row, "
                                             "merged by length into fewer passes of at most the tokens one was "
                                             "sized for (train/micro_batches.py)"}
    if "fused_lora" in chosen:
        table["lora_forward"] = {"value": f"fused ({chosen['fused_lora']['layers']} layers)",
                                 "why": "default (training.fused_lora): each LoRA update added into its frozen "
                                        "linear's output in one autograd step, PEFT's gradients with less memory "
                                        "(train/fused_lora.py)"}
    if "replay" in chosen:
        table["replay"] = replay_choice(recipe.data, chosen["replay"], recipe.method.kind)
        if "null_space" in chosen["replay"]:
            table["null_space"] = null_space_choice(chosen["replay"]["null_space"],
                                                    "null_space" in recipe.data.replay.model_fields_set)
    return table


def batch_choice(training: Any, device: str | None, longest: int) -> dict[str, Any]:
    """Rows per optimizer step, and the micro-batches they train in where those are more than one, with the rule
    that split them (plan/fit.py: on a CPU, micro-batches within CPU_MICRO_TOKENS; else the memory they need).
    `longest`: the longest training row, in tokens."""
    given = training.model_fields_set
    why = ("training.batch_size in the recipe" if "batch_size" in given else
           "default: 8 rows per step (the transformers Trainer default)")
    if training.grad_accum == 1:
        return {"value": training.batch_size, "why": why}
    rows = training.batch_size * training.grad_accum
    if "grad_accum" in given:
        split = "micro-batches from training.grad_accum in the recipe"
    elif device == "cpu" and training.batch_size * longest <= CPU_MICRO_TOKENS < rows * longest:
        split = (f"split into micro-batches by the plan: on a CPU, micro-batches of up to {CPU_MICRO_TOKENS:,} tokens "
                 f"(rows x the longest row, {longest:,}) train faster and in less memory")
    else:
        split = "split into micro-batches by the plan: the whole batch would not fit this device's memory"
    return {"value": f"{rows} ({training.grad_accum} micro-batches of {training.batch_size})", "why": f"{why}; {split}"}


def replay_choice(data: Any, report: dict[str, Any], method_kind: str) -> dict[str, Any]:
    """The replay row of the chosen table, from train.json's replay report; the default's source is the benchmark
    that measured it for `method_kind` (SFT: forgetting_settings, the preference methods and CPT: method_replay)."""
    if "skipped" in report:
        return {"value": "off", "why": report["skipped"]}
    cut = f" on the first {report['anchor_answer_tokens']} answer tokens" if report.get("anchor_answer_tokens") else ""
    how = (f"KL anchor{cut}, weight {report['weight']:g}" if report.get("loss") == "kl" else "trained as SFT rows")
    measured = "forgetting_settings" if method_kind == "sft" else "method_replay"
    return {"value": f"{report.get('rows', 0)} general rows, {how}",
            "why": "data.replay in the recipe" if "replay" in data.model_fields_set else
            f"default for {method_kind.upper()}: keeps the base's general answers (probes) within the margin; "
            f"benchmarks/results/{measured}.json"}


def null_space_choice(report: dict[str, Any], given: bool) -> dict[str, Any]:
    """The null space's row of the chosen table, from train.json's replay.null_space report (`given`: the recipe set
    data.replay.null_space)."""
    if "skipped" in report:
        return {"value": "off", "why": report["skipped"]}
    source = ("data.replay.null_space in the recipe" if given else
              "default for SFT with a LoRA and the KL anchor (kept the probes on quickstart and routing; "
              "benchmarks/results/defaults.json)")
    return {"value": f"{report['energy']:.0%}",
            "why": f"{source}: each LoRA A kept off the directions holding this share of the replay rows' inputs "
                   f"({report['closed_share_median']:.0%} of a layer's input dimensions, median), so the adapter "
                   "leaves general prompts alone"}


def steps_choice(training: Any, budget: dict[str, Any] | None) -> dict[str, Any]:
    if budget and budget.get("steps"):
        return {"value": f"{budget['steps']} ({budget['epochs']:g} epochs)",
                "why": f"training.time_budget {budget['budget_s']:.0f} s: {budget['why']}"}
    if training.max_steps > 0:
        return {"value": str(training.max_steps), "why": "training.max_steps in the recipe"}
    return {"value": f"{training.epochs:g} epoch{'' if training.epochs == 1 else 's'}", "why": "training.epochs" + (
        " in the recipe" if "epochs" in training.model_fields_set else ": default 1")}


def max_length_choice(max_length: int, lengths: list[int], source: str, packed_blocks: bool = False) -> dict[str, Any]:
    """data.max_length (`source`: where it came from, the recipe or `auto`'s reason, which says what it cuts)
    against the training rows' lengths in tokens (`lengths`, as encoded; [] where the method's dataset holds no
    token ids): how long the rows are and, for a length from the recipe, whether any is cut. `packed_blocks`: the
    documents were joined and cut into blocks of max_length (CPT's packing), so no text is lost to the length."""
    if not lengths:
        return {"value": max_length, "why": source}
    if packed_blocks:
        return {"value": max_length, "blocks": len(lengths), "tokens": sum(lengths),
                "why": f"{source}; the documents are joined into {len(lengths):,} blocks of up to max_length tokens, "
                       "so none is cut (one may run on into the next)"}
    ordered = sorted(lengths)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    if source.startswith("auto"):
        return {"value": max_length, "longest": ordered[-1], "p99": p99, "why": f"{source}; {p99} tokens at p99"}
    cut = sum(length >= max_length for length in ordered)
    if cut:  # the lengths are the encoded rows', already cut: their longest says nothing of the text's
        return {"value": max_length, "longest": ordered[-1], "p99": p99,
                "why": f"{source}; {cut} of {len(ordered)} rows reach max_length and are cut there (the tokens past "
                       "it never train; `tunesmith plan RECIPE` gives the rows' full lengths)"}
    return {"value": max_length, "longest": ordered[-1], "p99": p99,
            "why": f"{source}; rows are {p99} tokens at p99, {ordered[-1]} at most: none is cut"}


def print_chosen(table: dict[str, dict[str, Any]]) -> None:
    """The settings as a table on stderr, each with its reason."""
    from rich.console import Console
    from rich.table import Table

    shown = Table(title="chosen for your data", title_justify="left", show_header=True, header_style="bold")
    for column in ("setting", "value", "why"):
        shown.add_column(column, overflow="fold")
    for key, entry in table.items():
        shown.add_row(key, summary_value(entry), str(entry.get("why", "")))
    Console(stderr=True, width=140, emoji=False).print(shown)


def summary_value(entry: dict[str, Any]) -> str:
    return f"{entry['value']:g}" if isinstance(entry.get("value"), float) else str(entry.get("value"))
