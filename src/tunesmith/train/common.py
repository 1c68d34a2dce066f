"""What every trainer shares: load → adapter → arguments → train → save, so each method module only
says what is its own (the data shape it needs, its TRL config, its trainer class).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tunesmith.config import BASE_PRESERVING_KINDS, Recipe
from tunesmith.data import Splits, fingerprint, load_splits
from tunesmith.data.answers import bare_input_warnings, check_metrics_fit_answers, classify_answers
from tunesmith.data.constraint import recipe_constraint
from tunesmith.data.contract import check_template_contract
from tunesmith.data.lengths import resolve_max_length
from tunesmith.data.prepare import CLEANING_REASONS
from tunesmith.data.preview import plain_prompt_warnings
from tunesmith.data.shapes import preference_warnings, tool_warnings
from tunesmith.errors import DataError
from tunesmith.manifest import RowsFile
from tunesmith.models import load_model, load_tokenizer, pick_device, pick_dtype
from tunesmith.models.loading import context_length
from tunesmith.models.templates import recipe_chat_template
from tunesmith.plan.devices import matmul_peak
from tunesmith.plan.precision import best_known_peak, frozen_copy_refusal, frozen_matmul_choice
from tunesmith.runs import Run, atomic_write_json, atomic_write_text, record_data_stage, record_train_stage
from tunesmith.scoring import load_user_function
from tunesmith.train.adapter_callbacks import adapter_callbacks
from tunesmith.train.adapters import (
    adapter_setup,
    first_round_trainable,
    model_load_kwargs,
    save_trained,
    trainable_summary,
)
from tunesmith.train.budget import (
    KeepToBudget,
    LearningRateSchedule,
    apply_time_budget,
    count_warmup_in_whole_steps,
    use_schedule,
    warmup_steps,
)
from tunesmith.train.defaults import print_chosen, resolve_epochs, resolve_lr, settings_chosen, steps_choice
from tunesmith.train.distributed import (
    check_process_group,
    group_by_global_batch,
    is_main_process,
    sharded_state_dict,
    this_rank,
    wait_for_everyone,
)
from tunesmith.train.frozen_matmuls import FrozenCast, bf16_copy_bytes, cast_frozen_linears
from tunesmith.train.planned import planned_against_measured, planned_line
from tunesmith.train.plots import plot_loss_curve, plot_reward_curve
from tunesmith.train.preflight import check_targets_fit_model
from tunesmith.train.resume import base_the_run_started_on, initial_weights, load_initial_adapter, resume_hint
from tunesmith.train.survival import (
    BatchRecorder,
    NumericsGuard,
    StopOnSignal,
    TrainingInterrupted,
    checkpoint_state,
    checkpoint_step,
    install_atomic_checkpoints,
    newest_complete_checkpoint,
)
from tunesmith.train.throughput import (
    TokenCounter,
    count_trained_batches,
    frozen_linear_flops,
    mfu,
    mixed_peak,
    model_shape,
    training_flops,
)
from tunesmith.train.upstream import (
    check_trainer_internals,
    hide_trl_checkpointing_deprecation,
    keep_freed_blocks_for_reuse,
    precision_flags,
    return_freed_blocks_to_the_system,
    score_only_labelled_positions,
)

# Logged keys that describe how a method is doing beyond its loss (DPO's reward margin, KTO's KL, GRPO's
# mean reward `reward` and per-reward `rewards/<name>/mean`, ...).
METHOD_METRIC_PREFIXES = ("reward", "logps/", "kl", "nll_loss", "log_odds", "completions/mean_length",
                          "accuracy", "margin", "mean_reward")  # the last three: reward-model training


class Encoded(Protocol):
    """What a method's encoder returns: its datasets, and the counts of what carries loss, per split."""

    counts: dict[str, dict[str, Any]]


Encoder = Callable[[Splits, Any], Encoded]


@dataclass
class TrainingSetup:
    """Everything loaded before a trainer is built: the model already has its adapter config beside it."""

    model_dir: Path
    tokenizer: Any
    splits: Splits
    device: str
    precision: str
    model: Any
    peft_config: Any
    adapter_callbacks: list[Any]  # what the adapter kind needs during training (HFT rounds, AdaLoRA budget)
    encoded: Any = None  # what `encode` returned (the SFT datasets), built before the model loaded
    init_from: Path | None = None  # the trained adapter this run starts from (training.init_from)
    replay_file: RowsFile | None = None  # data/replay.jsonl: general rows trained beside the task's (data.replay)
    chosen: dict[str, Any] = field(default_factory=dict)  # what `auto` settings resolved to, and why (train.json)
    began: float = field(default_factory=time.monotonic)  # when preparing began: training.time_budget counts from it


def prepare_training(recipe: Recipe, run: Run, accept: tuple[str, ...], purpose: str,
                     task: str = "CAUSAL_LM", encode: Encoder | None = None) -> TrainingSetup:
    """Load data first (a wrong shape fails in a second, not after loading the model), check the chat template
    and the adapter against them, encode (`encode`: the method's own tokenization, whose counts data.json
    records), then load the model (`task` SEQ_CLS: with a one-score head, for reward models)."""
    began = time.monotonic()
    hide_trl_checkpointing_deprecation()
    score_only_labelled_positions()
    import torch

    torch.manual_seed(recipe.training.seed)
    init_from = initial_weights(recipe)
    model_dir = base_the_run_started_on(run, recipe)  # resolved from model.source, or where a resume began
    chat_template = recipe_chat_template(recipe)  # a missing template file fails before the data loads
    splits = load_splits(recipe, accept=accept, purpose=purpose)
    for spec in (m for m in recipe.eval.metrics or [] if ":" in m):  # a user metric's file: found and loadable now
        load_user_function(spec, Path(recipe.base_dir))
    answers = classify_answers(splits.train) if splits.shape == "messages" else None
    if answers is not None:  # eval's metrics must fit the answers: refuse now, not after training
        check_metrics_fit_answers(recipe.eval, answers)
        if recipe.eval.wants_constraint:  # so must the constraint eval decodes under
            recipe_constraint(recipe, splits.train)
    check_targets_fit_model(recipe.adapter, model_dir, recipe.model.source)
    from tunesmith.plan.workload import check_targets_exist, names_layers_or_blocks

    if names_layers_or_blocks(recipe.adapter):
        from tunesmith.plan.architecture import read_architecture  # from the config alone: no weights load

        check_targets_exist(recipe.adapter, read_architecture(model_dir), recipe.model.source)
    tokenizer = load_tokenizer(model_dir, chat_template=chat_template)
    record = fingerprint(splits)
    if uses_chat_template(splits.train + splits.eval):
        record["template_contract"] = check_template_contract(tokenizer, splits.train + splits.eval,
                                                              recipe.model.source, recipe.model.chat_template)
        print_warnings(record["template_contract"]["warnings"])
    print_warnings(splits.warnings + cleaning_warnings(splits) +
                   small_split_warnings(len(splits.train), len(splits.eval), splits.shape) +
                   plain_prompt_warnings(tokenizer, splits.train, recipe.model.source) +
                   preference_warnings(splits.train) + tool_warnings(splits.train) +
                   (bare_input_warnings(splits.train, answers) if answers is not None else []))
    # data.max_length: auto becomes the length that cuts no row, before anything is encoded at it
    length_choice = resolve_max_length(recipe.data, splits.train + splits.eval, splits.shape, tokenizer,
                                       context_length(model_dir), packed=recipe.training.packing in (True, "auto"))
    encoded = encode(splits, tokenizer) if encode else None
    if encoded is not None:
        record.update(trained_counts(encoded.counts))
        print_warnings(drop_warnings(encoded.counts, recipe.data.max_length))
    if is_main_process():  # with several processes, rank 0 alone writes the run directory
        atomic_write_json(run.path / "data.json", record)
        if chat_template is not None:  # what eval, merge, export and serve render with (models.tuned.run_tokenizer)
            atomic_write_text(run.chat_template_file, chat_template)
        # run.json: the rows themselves, so eval scores exactly these rows even if the source files change later
        record_data_stage(run, recipe.data, splits.train, splits.eval, splits.shape, splits.source)
    device = pick_device(recipe.training.device)
    precision = resolve_precision(recipe.training.precision, device)
    if device == "cpu":  # glibc's malloc: give memory back between recomputed blocks, or keep it for the next step
        (return_freed_blocks_to_the_system if recipe.training.gradient_checkpointing else keep_freed_blocks_for_reuse)()
    load_kwargs = model_load_kwargs(recipe.adapter, sharded=recipe.training.distributed.shards_weights)
    dtype = frozen_base_dtype(recipe.adapter.kind, precision, device, recipe.training.distributed.strategy)
    model = load_model(model_dir, dtype=dtype, device=device, task=task, **load_kwargs)
    model, peft_config = adapter_setup(model, recipe.adapter, task)
    chosen = {"lr": resolve_lr(recipe.training, recipe.adapter.kind, model), "max_length": length_choice}
    epochs = resolve_epochs(recipe.training, recipe.method.kind, record.get("train_rows", len(splits.train)))
    if epochs:
        chosen["epochs"] = epochs
    return TrainingSetup(model_dir, tokenizer, splits, device, precision, model, peft_config,
                         adapter_callbacks(recipe.adapter, run), encoded, init_from, chosen=chosen, began=began)


def cleaning_warnings(splits: Splits) -> list[str]:
    """One line naming the training rows that data.clean removed, by reason, and those dropped because an eval row
    holds the same text (leakage), so a run that trains on fewer rows than its file holds says so before training."""
    reasons = [f"{step['removed']} {CLEANING_REASONS.get(step['step'], step['step'])}"
               for step in splits.cleaning.get("train") or [] if step.get("removed")]
    overlap = splits.cleaning.get("train_eval_overlap") or {}
    if overlap.get("removed"):
        near = f", {overlap['near']} of them near copies" if overlap.get("near") else ""
        reasons.append(f"{overlap['removed']} also in the eval set{near} (they would leak its answers into the score)")
    warnings = [pii_warning(step) for step in splits.cleaning.get("train") or []
                if step.get("step") == "pii_found" and step.get("rows_with_pii")]
    if not reasons:
        return warnings
    return [f"Training on {len(splits.train)} rows of {splits.source['train']}: removed {', '.join(reasons)}. "
            "`tunesmith data inspect RECIPE` shows them; data.clean.dedup: off keeps duplicates.", *warnings]


def pii_warning(details: dict[str, Any]) -> str:
    """The personal data data.clean.pii (off) leaves in the training rows, as the data stage's scan counted it (its
    `pii_found` step in data.json's cleaning report)."""
    kinds = ", ".join(f"{count} {kind}" for kind, count in details["found_by_kind"].items())
    return (f"{details['rows_with_pii']} of the first {details['rows_scanned']:,} training rows hold personal data "
            f"({kinds}) and data.clean.pii is off, so the model trains on it as written. data.clean.pii: redact "
            "replaces each with its kind (<EMAIL>), drop leaves those rows out; `tunesmith data inspect RECIPE` "
            "shows them.")


SMALL_EVAL_ROWS = 30


DIVERGED_RISE = 1.25  # the last logged losses this many times the first: the run got worse as it trained
DIVERGED_NATS = 0.5  # ... and this much higher, so that one easy first batch does not read as a rise


def loss_warnings(metrics: list[dict[str, Any]], method: str, lr: float) -> list[str]:
    """What the logged training loss says went wrong, for train.json `warnings`, the model card and the sweep table:
    a loss that ended above where it began (the mean of the last two logged values over the first one, by
    `DIVERGED_RISE` and `DIVERGED_NATS`: an update too large for the model, most often the learning rate), and a
    gradient that stayed 0 over the last three logged steps while the loss did not (the weights stopped changing).
    GRPO's loss is a policy-gradient surrogate near 0 whatever happens: its signal is the reward
    (grpo.learning_signal_warnings)."""
    if method == "grpo":
        return []
    logged = [row for row in metrics if isinstance(row.get("loss"), int | float) and "step" in row]
    if len(logged) < 4:
        return []
    first = logged[0]["loss"]  # before any update had a say (a spike at step 2 must not hide a rise after it)
    last = sum(row["loss"] for row in logged[-2:]) / 2
    warnings = []
    if last > first * DIVERGED_RISE and last - first > DIVERGED_NATS:
        warnings.append(f"the training loss rose from {first:.4g} (first logged step) to {last:.4g} (last two): "
                        f"training diverged, and the tuned model is likely worse than its base. Lower training.lr "
                        f"({lr:g}), e.g. to a tenth.")
    grads = [row.get("grad_norm") for row in logged[-3:]]
    if all(grad == 0 for grad in grads) and last > 0.01:
        warnings.append(f"the gradient was 0 for the last {len(grads)} logged steps while the loss stayed at "
                        f"{last:.4g}: the weights stopped changing (a saturated or broken model; see plots/loss.png).")
    return warnings


def small_split_warnings(train_rows: int, eval_rows: int, shape: str = "") -> list[str]:
    """A held-out split so small that one row is several points of every metric (1/n each; the 95% interval of a
    proportion near 0.5 is about ±1/sqrt(n), Wilson 1927), said before training rather than read into afterwards.
    Raw text (`shape` "text") is scored by its perplexity over all held-out tokens, not per row: said as such."""
    if eval_rows == 0:
        return [f"No held-out rows (and {train_rows} to train on): `tunesmith eval` will have nothing of this data "
                "to score base and tuned on. Hold out rows with data.eval (a file) or a larger data.eval_fraction."]
    if eval_rows >= SMALL_EVAL_ROWS:
        return []
    if shape == "text":
        return [f"Only {eval_rows} held-out text row(s) (and {train_rows} to train on): the held-out perplexity "
                "rests on these few texts, so a small change between base and tuned may be theirs alone. Hold out "
                f"{SMALL_EVAL_ROWS} or more (data.eval, or a larger data.eval_fraction) for a perplexity that tells "
                "settings apart."]
    return [f"Only {eval_rows} held-out row(s) (and {train_rows} to train on): each is {100 / eval_rows:.0f} points of "
            f"every eval metric, and a difference under about {100 / eval_rows ** 0.5:.0f} points between base and "
            f"tuned is noise. Hold out {SMALL_EVAL_ROWS} or more (data.eval, or a larger data.eval_fraction) for "
            "scores that tell settings apart."]


def uses_chat_template(rows: list[dict[str, Any]]) -> bool:
    """Conversational rows render through the chat template; raw text and plain-string prompts do not."""
    return any("messages" in row or isinstance(row.get("prompt"), list) for row in rows)


def trained_counts(counts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """data.json's `train_rows` becomes the rows that carry loss; `trained` keeps, per split, the tokens and the
    rows left out by reason (eval's generation still scores every held-out row: `eval_rows` stays)."""
    train = counts["train"]
    if not train["trained_rows"]:
        raise DataError(f"No training row has an answer token inside data.max_length: all {train['rows']} rows were "
                        "dropped (answer_past_max_length).", "Raise data.max_length (or leave it out: auto fits every "
                        "row the model's context can hold), or shorten the prompts.")
    return {"train_rows": train["trained_rows"], "trained": counts}


def drop_warnings(counts: dict[str, dict[str, Any]], max_length: int) -> list[str]:
    """One line per split that lost rows, with the reasons, and one for answer tokens cut by max_length in rows that
    still train, for the terminal."""
    warnings = []
    for split, split_counts in counts.items():
        dropped = sum(split_counts["dropped"].values())
        if dropped:
            reasons = ", ".join(f"{n} {reason}" for reason, n in split_counts["dropped"].items())
            warnings.append(f"{dropped} of {split_counts['rows']} {split} rows are left out: {reasons} "
                            f"(data.max_length {max_length}). Raise data.max_length, or leave it out (auto), "
                            "to keep them; `tunesmith data inspect RECIPE` names them by file and line.")
        if split == "train" and split_counts.get("answer_tokens_cut"):  # rows that train, but not to their end
            warnings.append(f"{split_counts['answer_tokens_cut']:,} answer tokens of the training rows lie past "
                            f"data.max_length {max_length} and are never trained (the end of those answers, and "
                            "the stop after them). Raise data.max_length, or leave it out (auto); `tunesmith data "
                            "preview RECIPE` shows which rows.")
    return warnings


def print_warnings(warnings: list[str]) -> None:
    """Each warning once on stderr (with several processes: rank 0's)."""
    if not is_main_process():
        return
    from rich.console import Console
    from rich.markup import escape

    console = Console(file=sys.stderr, emoji=False)
    for warning in warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)


def activation_checkpointing_argument(on: bool) -> dict[str, bool]:
    """TrainingArguments' switch for activation checkpointing under the name the installed transformers knows:
    `activation_checkpointing` from 5.2x (where `gradient_checkpointing` is a deprecated alias that warns), only
    `gradient_checkpointing` up to 5.17 at least (passing the new name there is a TypeError)."""
    from transformers import TrainingArguments

    known = TrainingArguments.__dataclass_fields__
    return {"activation_checkpointing" if "activation_checkpointing" in known else "gradient_checkpointing": on}


def common_arguments(recipe: Recipe, run: Run, device: str, precision: str) -> dict[str, Any]:
    """TrainingArguments every TRL config gets, all stated: TRL's own defaults differ per trainer
    (gradient checkpointing on, bf16 on, lr 1e-6), so none is left to them."""
    t = recipe.training
    return {
        "output_dir": str(run.checkpoints_dir),
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps,
        "learning_rate": t.lr,
        "per_device_train_batch_size": t.batch_size,
        "per_device_eval_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "lr_scheduler_type": t.scheduler,
        "warmup_steps": t.warmup_ratio,  # a float below 1 is a ratio of the total steps (transformers 5)
        "weight_decay": t.weight_decay,
        **activation_checkpointing_argument(t.gradient_checkpointing),
        "logging_steps": t.logging_steps,
        "logging_first_step": True,
        "save_strategy": "steps",
        "save_steps": t.save_steps,
        "save_total_limit": None,  # survival.install_atomic_checkpoints keeps the newest complete ones
        **held_out_loss_arguments(t.eval_steps),
        "report_to": "none",
        "seed": t.seed,
        "dataloader_num_workers": 0,
        **precision_flags(precision, device),
        **process_group_arguments(device),
    }


def held_out_loss_arguments(eval_steps: int | None) -> dict[str, Any]:
    """transformers' evaluation during training: the eval split's loss every `eval_steps` optimizer steps
    (training.eval_steps, SFT's trainer alone is given the split), or none."""
    if not eval_steps:
        return {"eval_strategy": "no"}
    return {"eval_strategy": "steps", "eval_steps": eval_steps}


def process_group_arguments(device: str) -> dict[str, Any]:
    """With several processes: gloo on a CPU (transformers would try MPI or oneCCL first where installed), and no
    search for unused parameters (every trained parameter gets a gradient each step; the search also breaks
    activation checkpointing under DDP: peft#899, accelerate#2017). {} for one process."""
    if not this_rank().distributed:
        return {}
    return {"ddp_find_unused_parameters": False, **({"ddp_backend": "gloo"} if device == "cpu" else {})}


def fit_and_save(trainer: Any, setup: TrainingSetup, recipe: Recipe, run: Run,
                 choices: dict[str, Any] | None = None) -> Path:
    """Train (resuming from the run's newest complete checkpoint when it has one), then write the adapter,
    train.json (with `choices`: what the method chose and why, and the measured throughput) and the loss curve.

    Raises TrainingInterrupted after SIGINT/SIGTERM (a checkpoint was written), and TunesmithError when
    training.max_bad_steps updates in a row were non-finite.
    """
    check_trainer_internals(trainer)
    check_process_group(trainer)
    group_by_global_batch(trainer)
    frozen_cast = half_frozen_matmuls(trainer, setup, recipe, resumed_choice(run))
    fused = fused_lora_layers(trainer, setup, recipe)
    main = is_main_process()  # with several processes, rank 0 alone prints and writes
    summary = trainable_summary(trainer.model)
    if recipe.adapter.kind == "hft":  # every block is trainable to the optimizer; a round trains half of them
        summary["first_round"] = first_round_trainable(trainer.model)
    if main:
        print_trainable(summary)
    counter = TokenCounter()  # counts what each batch trained on holds, on the batches themselves
    guard, stopper = survival_callbacks(trainer, setup, recipe, run, counter)
    resume_from = start_point(trainer, setup, run, guard, counter)
    count_warmup_in_whole_steps(trainer, recipe.training.warmup_ratio)  # a time budget's schedule replaces it
    budget = time_budget(trainer, recipe, run, resume_from is not None, setup.began)
    chosen = settings_chosen(recipe, {**setup.chosen, **(choices or {}), "device": setup.device},
                             row_lengths(trainer.train_dataset),
                             budget.get("time_budget"))
    if main:
        print_chosen(chosen)
    no_step_past_max_steps(trainer)
    count_trained_batches(trainer, counter)  # after the budget's measurement, which must not count
    counter.start_clock()
    with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints each step's log dict: progress, for people
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = counter.seconds()  # a resumed run's too: the earlier processes' training time is in the checkpoint
    generated = getattr(trainer, "generated_tokens", None)  # GRPO: what it sampled and trained on (grpo.py)
    if generated is not None:
        counter.count_generated(*generated())
    if budget.get("time_budget", {}).get("revisions"):  # the table printed before training shows the first plan
        chosen["steps"] = steps_choice(recipe.training, budget["time_budget"])
    # Mixed precision wraps the model's forward in autocast; unwrapped, the trained model computes in fp32 again
    # for whoever uses it in this process (the saved weights are fp32 either way).
    trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    frozen_bf16 = frozen_cast is not None and frozen_cast.count > 0
    if frozen_cast is not None:  # likewise the frozen base: its fp32 weights again
        frozen_cast.restore()
    if fused is not None:  # and PEFT's own LoRA layers
        fused.restore()
    if stopper.signum is not None:
        raise interrupted(stopper.signum, trainer.state.global_step, run)
    if guard.stopped_at is not None:
        raise guard.failure(run)
    counter = counter.all_ranks()  # several processes: the tokens all of them trained on
    speed = throughput(counter, seconds, trainer.model, setup.device, setup.precision, frozen_bf16=frozen_bf16)
    if frozen_bf16:
        speed["frozen_matmuls"] = "bf16"  # their FLOPs count against the bf16 peak (`mixed_peak`)
    if main:
        print_throughput(speed)
    state_dict = sharded_state_dict(trainer, recipe.training.distributed)  # every rank takes part in gathering
    if not main:
        wait_for_everyone()  # rank 0 saves and writes the run directory
        return run.adapter_dir
    adapter = save_trained(trainer.model, setup.tokenizer, run, recipe.adapter, state_dict)  # adapter/, or model/
    # run.json: what later stages load
    record_train_stage(run, recipe, adapter, setup.model_dir, setup.init_from, setup.replay_file)
    trained = train_report(trainer, summary, setup.model_dir, counter)
    planned = planned_against_measured(recipe, speed, trained["steps"], trainer.train_dataset, setup.model_dir,
                                       this_rank().world_size)
    if planned_line(planned):
        print(planned_line(planned), file=sys.stderr, flush=True)
    report = {"method": recipe.method.kind, **trained,
              "precision": setup.precision, "processes": this_rank().world_size,  # throughput: all ranks' tokens
              "chosen": chosen, **(choices or {}), "throughput": speed, "planned": planned,
              **budget,
              "resumed_from_step": checkpoint_step(resume_from) if resume_from else None,
              "skipped_updates": guard.skipped,
              "warnings": loss_warnings(run.read_metrics(), recipe.method.kind, recipe.training.lr)}
    print_warnings(report["warnings"])
    atomic_write_json(run.path / "train.json", report)
    plot_loss_curve(run.read_metrics(), run.plots_dir / "loss.png", f"{recipe.name}: {recipe.method.kind} loss",
                    recipe.method.kind)
    plot_reward_curve(run.read_metrics(), run.plots_dir / "rewards.png", f"{recipe.name}: {recipe.method.kind} rewards")
    wait_for_everyone()
    return adapter


def row_lengths(dataset: Any) -> list[int]:
    """Each training row's length in tokens, where the dataset holds token ids (SFT); [] otherwise."""
    columns = getattr(dataset, "column_names", None) or []
    return [len(ids) for ids in dataset["input_ids"]] if "input_ids" in columns else []


def time_budget(trainer: Any, recipe: Recipe, run: Run, resumed: bool, began: float) -> dict[str, Any]:
    """training.time_budget, counted from `began` (time.monotonic() when this command started preparing): the steps
    it chose (train.json `time_budget`), saved as budget.json so that a resumed run keeps the same step count and
    schedule (revised from the steps' own times in a fresh run, not in a resumed one); {} without a budget."""
    seconds = recipe.training.time_budget_seconds
    if seconds is None:
        return {}
    saved = run.path / "budget.json"
    if resumed and saved.is_file():
        plan = json.loads(saved.read_text(encoding="utf-8"))
        if plan.get("steps"):
            trainer.args.max_steps = plan["steps"]
    else:
        chosen = apply_time_budget(trainer, seconds, recipe.training.steps_keys, began)
        plan = chosen.as_dict() if chosen else {"budget_s": seconds, "steps": None,
                                                "why": "training.max_steps/epochs given: the budget only stops"}
        if chosen:
            plan["warmup_steps"] = warmup_steps(recipe.training.warmup_ratio, chosen.steps)
        if is_main_process():
            atomic_write_json(saved, plan)
    schedule = None
    if plan.get("steps"):
        warmup = plan.get("warmup_steps", warmup_steps(recipe.training.warmup_ratio, plan["steps"]))
        schedule = LearningRateSchedule(recipe.training.scheduler, warmup, plan["steps"])
        use_schedule(trainer, schedule)
    keeper = KeepToBudget(seconds, plan, began, schedule, revise=not resumed, saved=saved,
                          first_pass_steps=plan.get("first_pass_steps", 0),
                          reference=getattr(trainer, "base_reference", None),
                          callbacks=trainer.callback_handler.callbacks)
    trainer.callback_handler.callbacks.insert(0, keeper)  # before the progress bar reads the planned steps
    return {"time_budget": plan}


def survival_callbacks(trainer: Any, setup: TrainingSetup, recipe: Recipe, run: Run,
                       counter: TokenCounter) -> tuple[NumericsGuard, StopOnSignal]:
    """Guard the numerics, stop cleanly on signals, and make checkpoints complete-or-absent (survival.py); each
    checkpoint keeps the guard's state, the counter's (tokens and seconds so far) and the frozen-matmul choice."""
    recorder = BatchRecorder(getattr(setup.encoded, "rows_by_ids", None))
    recorder.attach(trainer.model)
    guard, stopper = NumericsGuard(recipe.training.max_bad_steps, recorder), StopOnSignal(resume_hint(run))
    trainer.add_callback(guard)
    trainer.add_callback(stopper)

    def checkpoint_extras() -> dict[str, Any]:
        return {"numerics": guard.state(), "throughput": counter.state(),
                "frozen_matmuls": setup.chosen.get("frozen_matmuls"),
                # TRL's count behind the `num_tokens` it logs: not in its checkpoints, so a resumed run restarted it
                "trl_num_tokens": getattr(trainer, "_total_train_tokens", None)}

    install_atomic_checkpoints(trainer, run, recipe.training.keep_checkpoints, checkpoint_extras,
                               [c for c in setup.adapter_callbacks if hasattr(c, "save_extra")])
    return guard, stopper


def start_point(trainer: Any, setup: TrainingSetup, run: Run, guard: NumericsGuard,
                counter: TokenCounter) -> Path | None:
    """The checkpoint to resume from (the CLI checked it against the recipe), or None for a fresh start, which
    loads training.init_from's adapter. On resume, metrics logged after the checkpoint are dropped (those
    steps run again), and the guard's count of bad steps and the counter's tokens and seconds continue."""
    checkpoint = newest_complete_checkpoint(run)
    if checkpoint is None:
        if setup.init_from is not None:
            load_initial_adapter(trainer.model, setup.init_from)
            print(f"starting from the adapter in {setup.init_from}", file=sys.stderr, flush=True)
        return None
    step = checkpoint_step(checkpoint) or 0
    main = is_main_process()  # with several processes, rank 0 alone writes and says it
    if main:
        run.keep_metrics_through(step)
    for callback in setup.adapter_callbacks:  # adapter state beyond weights and optimizer (AdaLoRA's budget)
        if hasattr(callback, "resume_from"):
            callback.resume_from = checkpoint
    state = checkpoint_state(checkpoint)
    guard.restore(state.get("numerics", {}))
    counter.restore(state.get("throughput", {}))
    if state.get("trl_num_tokens") is not None and hasattr(trainer, "_total_train_tokens"):
        trainer._total_train_tokens = state["trl_num_tokens"]  # metrics.jsonl's num_tokens goes on from there
    if main:
        print(f"resuming {run.path.name} from step {step} ({checkpoint})", file=sys.stderr, flush=True)
    return checkpoint


def no_step_past_max_steps(trainer: Any) -> None:
    """A run stopped and checkpointed at its last step (max_steps) in the middle of an epoch resumes with nothing left
    to train: transformers' loop fetches the epoch's next batch and trains on it before it checks the step count,
    which trained one step past max_steps (at learning rate 0) and reported it. Here the fetch comes back empty and
    the loop stops."""
    fetch = trainer.get_batch_samples

    def get_batch_samples(epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list[Any], Any]:
        if 0 < trainer.state.max_steps <= trainer.state.global_step:
            trainer.control.should_training_stop = True
            return [], None
        return fetch(epoch_iterator, num_batches, device)

    trainer.get_batch_samples = get_batch_samples


def interrupted(signum: int, step: int, run: Run) -> TrainingInterrupted:
    import signal

    checkpoint = newest_complete_checkpoint(run)
    return TrainingInterrupted(
        f"Training stopped by {signal.Signals(signum).name} after step {step}; checkpoint: {checkpoint}.",
        resume_hint(run), signum)


RESUMED_CHOICE = "as before the resume: "


def resumed_choice(run: Run) -> dict[str, Any] | None:
    """The frozen-matmul choice the checkpoint a resume starts from was trained under; None for a fresh start (or a
    checkpoint written before tunesmith kept it)."""
    checkpoint = newest_complete_checkpoint(run)
    return checkpoint_state(checkpoint).get("frozen_matmuls") if checkpoint is not None else None


def half_frozen_matmuls(trainer: Any, setup: TrainingSetup, recipe: Recipe,
                        earlier: dict[str, Any] | None = None) -> FrozenCast | None:
    """The frozen base's linear layers in bf16 where `frozen_matmul_choice` says so (a LoRA under SFT, CPT or a
    preference method but GRPO, on a CPU with fast bf16, training.precision auto) and their bf16 copy fits the free
    memory (`frozen_copy_refusal`), once the trainer has added the adapter and before its steps: the base answered
    the replay prompts, and the null space (with the anchor's base log-probabilities it reads) was measured, in fp32,
    the base that eval compares with. A resumed run keeps the `earlier` choice (its checkpoint's), so that it
    continues in the dtype it started in. The choice joins setup.chosen (the printed table, train.json's `chosen`);
    the cast, whose `restore` puts the fp32 weights back after training, or None."""
    from tunesmith.doctor.accelerator import available_memory

    model = trainer.accelerator.unwrap_model(trainer.model)
    if earlier:
        choice = {key: value for key, value in earlier.items() if key != "linears"}
        choice["why"] = RESUMED_CHOICE + choice["why"].removeprefix(RESUMED_CHOICE)
    else:
        choice = frozen_matmul_choice(recipe.training.precision, setup.device, recipe.adapter.kind,
                                      recipe.method.kind, recipe.training.distributed.strategy)
    cast = None
    if choice["dtype"] == "bf16":
        refusal = frozen_copy_refusal(bf16_copy_bytes(model), available_memory())
        if refusal:
            choice = {"dtype": "fp32", "why": refusal}
        else:
            cast = cast_frozen_linears(model)
            choice["linears"] = cast.count
    setup.chosen["frozen_matmuls"] = choice
    return cast


def fused_lora_layers(trainer: Any, setup: TrainingSetup, recipe: Recipe) -> Any:
    """PEFT's LoRA layers of the trained model made FusedLoraLinear (train/fused_lora.py) unless training.fused_lora
    is false; the choice joins setup.chosen where any layer was switched. The switch (its `restore` puts PEFT's class
    back after training), or None."""
    from tunesmith.train.fused_lora import fuse_lora_linears  # imports peft

    if not recipe.training.fused_lora:
        return None
    fused = fuse_lora_linears(trainer.accelerator.unwrap_model(trainer.model))
    if fused.count:
        setup.chosen["fused_lora"] = {"layers": fused.count}
    return fused


def known_peak(dtype: Any, hardware: str) -> float:
    """The matmul peak MFU is read against: measured now, and on a CPU the machine's kept peak where that is higher
    (`plan.precision.best_known_peak`: what `plan` times steps by)."""
    import torch

    measured = matmul_peak(dtype, device=hardware)
    if hardware != "cpu" or dtype not in (torch.float32, torch.bfloat16):
        return measured
    return best_known_peak("fp32" if dtype == torch.float32 else "bf16", measured)


def throughput(counter: TokenCounter, seconds: float, model: Any, device: str, precision: str,
               frozen_bf16: bool = False) -> dict[str, Any]:
    """Tokens per second (all, not padding, carrying loss) and MFU against this machine's matmul peak in the
    dtype the matmuls ran in (`precision`); with `frozen_bf16` (the frozen linears in bf16 under fp32 training,
    train/frozen_matmuls.py) their FLOPs count against the bf16 peak and the rest against fp32's (`mixed_peak`).
    `bf16_tflops`: that bf16 part, so that a benchmark can weigh it against peaks of its own. `peak_rss_bytes` /
    `peak_cuda_bytes`: this process's peak memory so far (what `tunesmith plan` estimates), None where unused."""
    import torch

    shape = model_shape(model)
    flops = training_flops(counter, shape)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    hardware = "cuda" if device == "cuda" else "cpu"
    peak = known_peak(dtype, hardware)
    bf16_flops = frozen_linear_flops(counter, shape) if frozen_bf16 and dtype == torch.float32 else 0.0
    if bf16_flops:
        peak = mixed_peak(flops, bf16_flops, peak, known_peak(torch.bfloat16, hardware))
    from tunesmith.plan.devices import own_peaks
    from tunesmith.train.distributed import summed_over_ranks, this_rank

    peak = summed_over_ranks([peak])[0]  # several processes: each measured the share of the machine it ran on

    peaks = own_peaks()  # so far: loading, training and the step before saving (what `plan` estimates)
    return {**counter.figures(seconds), "seconds": round(seconds, 1), "model_tflops": round(flops / 1e12, 3),
            "peak_rss_bytes": int(peaks["rss_bytes"] or 0),
            "peak_cuda_bytes": None if peaks["cuda_bytes"] is None else int(peaks["cuda_bytes"]),
            "bf16_tflops": round(bf16_flops / 1e12, 3),
            "dtype": precision if precision in ("bf16", "fp16") else "fp32", "peak_gflops": round(peak / 1e9, 1),
            "mfu": None if peak_below_achieved(flops, seconds, peak) else mfu(flops, seconds, peak),
            "achieved_gflops": round(flops / seconds / 1e9, 1) if seconds > 0 else 0.0,
            "processes": this_rank().world_size}


def peak_below_achieved(flops: float, seconds: float, peak: float) -> bool:
    """Whether training did more FLOP/s than the matmul peak it is read against: then the peak was measured while
    another process held the cores (a shared CPU), and an MFU over 100% would say nothing; it is left out."""
    return seconds > 0 and peak > 0 and flops / seconds > peak


def print_throughput(speed: dict[str, Any]) -> None:
    cuda = speed.get("peak_cuda_bytes")
    memory = (f"; peak memory {speed['peak_rss_bytes'] / 2**30:,.2f} GiB resident"
              + (f", {cuda / 2**30:,.2f} GiB CUDA allocated" if cuda else "") if speed.get("peak_rss_bytes") else "")
    with_loss = f"{speed['loss_tokens']:,} with loss, " if speed["loss_tokens"] else ""  # none: a reward model's score
    peak = (f"{peak_owner(speed.get('processes', 1))} {speed['peak_gflops']:,} GFLOP/s "
            + ("matmul peak for this mix (the frozen base's matmuls in bf16, the rest fp32)"
               if speed.get("frozen_matmuls") == "bf16" else f"{speed['dtype']} matmul peak"))
    utilisation = (f"MFU {speed['mfu']:.0%} of {peak}" if speed.get("mfu") is not None else
                   f"{speed.get('achieved_gflops', 0):,} GFLOP/s, MFU left out: {peak} was measured lower than that, "
                   "while another process held the cores")
    print(f"throughput: {speed['real_tokens']:,} tokens ({with_loss}"
          f"{speed['padding_share']:.0%} padding) in {speed['seconds']} s: {speed['real_tokens_per_s']:,} tokens/s, "
          f"{utilisation}{memory}", file=sys.stderr, flush=True)


def peak_owner(processes: int) -> str:
    """Whose matmul peak MFU is read against: the machine's, or (several processes) the sum of each one's."""
    return "this machine's" if processes <= 1 else f"the {processes} processes' summed"


def frozen_base_dtype(adapter_kind: str, precision: str, device: str, strategy: str = "none") -> Any:
    """The dtype the base model's weights load in for training: fp32, except on a GPU under bf16/fp16 mixed
    precision with an adapter that leaves the base untouched (`BASE_PRESERVING_KINDS`), which loads the frozen base
    in that half dtype, as PEFT's and TRL's guides do. Autocast runs those matmuls in the half dtype anyway, so an
    fp32 copy only doubles the weights' memory and adds a cast per matmul; the adapter's own weights stay fp32
    (PEFT's `autocast_adapter_dtype`), and so do the optimizer's. Full, partial and hft training (their weights are
    the trained ones), PiSSA/OLoRA/LoftQ (they rewrite base weights at init), CPUs (see `resolve_precision`) and
    FSDP/DeepSpeed (they flatten one dtype) keep fp32."""
    import torch

    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if half is None or device == "cpu" or adapter_kind not in BASE_PRESERVING_KINDS or strategy not in ("none", "ddp"):
        return torch.float32
    return half


def resolve_precision(precision: str, device: str) -> str:
    """training.precision, with `auto` resolved: bf16 mixed precision on CUDA GPUs that support it, fp32 elsewhere.

    On a CPU, fp32 even where bf16 is native (AVX512-BF16): there bf16 mixed precision ran a SmolLM2 LoRA
    step 1.9x faster, but the quickstart's held-out loss was 0.058 instead of 0.042 and its exact match 0.31
    instead of 0.59 (same rows, same seed). `training.precision: bf16` trades that quality for the speed. Under
    auto, a LoRA's frozen base linears still multiply in bf16 there (`half_frozen_matmuls`), the rest in fp32.
    """
    if precision != "auto":
        return precision
    import torch

    return "bf16" if device != "cpu" and pick_dtype("auto", device) == torch.bfloat16 else "fp32"


def train_report(trainer: Any, summary: dict, model_dir: Path, counter: TokenCounter) -> dict[str, Any]:
    """Steps, first and last logged loss (a resumed run's log history holds the steps before the resume too) and
    the wall time of training, the processes before a resume included."""
    history = [h for h in trainer.state.log_history if "loss" in h]
    report = {
        "base_model": str(model_dir),
        "trainable": summary,
        "steps": trainer.state.global_step,
        "first_loss": history[0]["loss"] if history else None,
        "final_loss": history[-1]["loss"] if history else None,
        "wall_time_s": round(counter.seconds(), 1),
    }
    final = method_metrics(history[-1]) if history else {}
    if final:
        report["final_metrics"] = final
        report["first_metrics"] = method_metrics(history[0])
    return report


def method_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """The method's own logged figures (reward margins, accuracies, KL...) from one log record."""
    return {key: value for key, value in record.items() if key.startswith(METHOD_METRIC_PREFIXES)}


def print_trainable(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Trainable parameters")
    for column in ("trainable", "total", "percent", "modules"):
        table.add_column(column)
    table.add_row(f"{summary['trainable']:,}", f"{summary['total']:,}", f"{summary['percent']:.3f}%",
                  ", ".join(summary["modules"]))
    Console(file=sys.stderr, emoji=False).print(table)
    if "first_round" in summary:
        print(f"hft: the blocks train in alternating halves, a round (adapter.round_steps) each: "
              f"{summary['first_round']:,} parameters in the first round, the rest of the blocks in the next.",
              file=sys.stderr, flush=True)
