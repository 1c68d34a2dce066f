"""The run's README.md: a model card saying what was trained, how, and how it scored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.models.templates import template_label
from tunesmith.models.tuned import is_adapter
from tunesmith.results import COST_KEYS, Comparison, EvalResults, read_results
from tunesmith.runs import Run, atomic_write_text


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_model_card(run: Run) -> Path:
    recipe = run.load_recipe()
    train = _load(run.path / "train.json")
    data = _load(run.path / "data.json")
    results_file = run.eval_dir / "results.json"
    results = read_results(results_file) if results_file.is_file() else None
    trained = run.trained_artifact()
    whole = not is_adapter(trained)
    artifact = "Fine-tuned model" if whole else f"{recipe.adapter.kind} adapter"
    lines = [
        f"# {recipe.name}",
        "",
        f"{artifact} for `{recipe.model.source}`, trained with tunesmith ({recipe.method.kind}).",
        "",
        "## Training",
        f"- data: {data.get('train_rows', '?')} train rows, {data.get('eval_rows', '?')} held out "
        f"(sha256 of the saved train rows, data/train.jsonl: `{train_rows_sha256(run, data)[:16]}…`)",
        f"- adapter: {adapter_line(recipe.adapter)}",
        f"- steps: {train.get('steps', '?')}{budget_stop(train)}, lr {trained_lr(train, recipe)}, "
        f"{batch_line(recipe.training)}",
        *progress_lines(train, run),
        *rollback_lines(run),
        *trained_lines(data, train),
        "",
        *chosen_lines(train.get("chosen")),
        *template_lines(data.get("template_contract"), recipe.model.chat_template),
        "## Results on held-out examples, base vs tuned",
        *results_table(results),
        "",
        *baseline_lines(results),
        *add_on_lines(results),
        *(["![base vs tuned](plots/base_vs_tuned.png)", ""] if (run.plots_dir / "base_vs_tuned.png").is_file() else []),
        "## Use",
        *(reward_usage_lines(trained, whole) if recipe.method.kind == "reward" else usage_lines(trained, whole)),
        *grammar_lines(run),
        *export_lines(run),
    ]
    return atomic_write_text(run.path / "README.md", "\n".join(lines) + "\n")


def progress_lines(train: dict[str, Any], run: Run) -> list[str]:
    """How training went: the loss, first → last; for GRPO, whose loss is a policy-gradient surrogate near zero that
    says nothing, the mean reward of the sampled completions (train.json's first and final logged metrics), with
    what the logged metrics say about the signal it learnt from (`learning_signal_warnings`: a run that learnt
    nothing must not read as progress)."""
    resumed = (f" (stopped, then resumed from step {train['resumed_from_step']})" if train.get("resumed_from_step")
               else "")
    if train.get("method") == "grpo":
        from tunesmith.config import GRPOMethod
        from tunesmith.train.grpo import learning_signal_warnings

        method, metrics = run.load_recipe().method, run.read_metrics()
        warnings = learning_signal_warnings(metrics, method) if isinstance(method, GRPOMethod) else []
        return [f"- mean reward of the sampled completions, {reward_trend(metrics, train)} in "
                f"{train.get('wall_time_s', '?')} s of training{resumed}",
                *(f"- **warning**: {warning}" for warning in warnings), "- reward curves: `plots/rewards.png`"]
    return [f"- loss: {rounded(train.get('first_loss'))} → {rounded(train.get('final_loss'))} in "
            f"{train.get('wall_time_s', '?')} s of training{resumed}",
            *(f"- **warning**: {warning}" for warning in train.get("warnings") or []),
            "- loss curve: ![loss curve](plots/loss.png)"]


def reward_trend(metrics: list[dict[str, Any]], train: dict[str, Any]) -> str:
    """GRPO's mean reward early and late: over the first and the last quarter of the logged steps (one step's mean
    over a few prompts is noise), or train.json's first and final logged step where metrics.jsonl has none."""
    rewards = [record["reward"] for record in metrics if isinstance(record.get("reward"), int | float)]
    if not rewards:
        first, final = ((train.get(key) or {}).get("reward") for key in ("first_metrics", "final_metrics"))
        return f"first and last logged step: {rounded(first)} → {rounded(final)}"
    quarter = max(1, len(rewards) // 4)
    early, late = (sum(part) / len(part) for part in (rewards[:quarter], rewards[-quarter:]))
    span = "step" if quarter == 1 else f"{quarter} steps"
    return f"first and last {span} of {len(rewards)} logged: {rounded(early)} → {rounded(late)}"


def budget_stop(train: dict[str, Any]) -> str:
    """", stopped by the time budget at step N of M planned" where training.time_budget ended the run early."""
    budget = train.get("time_budget") or {}
    if budget.get("stopped_at_step") is None:
        return ""
    planned = f" of {budget['planned_steps']} planned" if budget.get("planned_steps") else ""
    return f" (the time budget stopped training at step {budget['stopped_at_step']}{planned})"


def rollback_lines(run: Run) -> list[str]:
    """Which checkpoint the adapter is, when `tunesmith eval --checkpoints --rollback` chose an earlier one."""
    manifest = run.manifest()
    step = manifest.train.checkpoint_step if manifest and manifest.train else None
    if step is None:
        return []
    return [f"- this adapter is the checkpoint at step {step}, chosen by `tunesmith eval --checkpoints --rollback` "
            "(the best task score whose probes stay within the margin: `eval/checkpoints.json`, "
            "`plots/checkpoints.png`); the adapter training ended with is in `adapter-final/`. It was chosen on the "
            "held-out rows its scores below come from, so they read a little high (the best of several tries); "
            "rows it was not chosen on score it fairly (`tunesmith eval RUN --data FILE`)"]


def batch_line(training: Any) -> str:
    """Rows per optimizer step, with the micro-batches they trained in where those were several."""
    rows = training.batch_size * training.grad_accum
    return f"batch {rows}" + (f" ({training.grad_accum} micro-batches of {training.batch_size})"
                              if training.grad_accum > 1 else "")


def rounded(value: Any) -> str:
    """A logged loss to 4 significant digits ('?' when it was not recorded)."""
    return f"{value:.4g}" if isinstance(value, int | float) else "?"


def trained_lines(data: dict[str, Any], train: dict[str, Any]) -> list[str]:
    """What carries loss (data.json `trained`: the rows, their tokens, the rows left out by reason) and how much of it
    training went through (train.json's `throughput.loss_tokens`, counted on the batches each step trained on): a
    run stopped by max_steps half-way through an epoch says so."""
    trained = (data.get("trained") or {}).get("train")
    if not trained:
        return packed_lines((train.get("chosen") or {}).get("max_length") or {}, train)
    dropped = ", ".join(f"{count} {reason}" for reason, count in trained["dropped"].items()) or "none"
    seen = (train.get("throughput") or {}).get("loss_tokens")
    went = (f"; training went through {seen:,} loss tokens, {seen / trained['loss_tokens']:.2f} epochs"
            if isinstance(seen, int) and trained["loss_tokens"] else "")
    return [f"- rows that carry loss: {trained['trained_rows']} of {trained['rows']}, {trained['loss_tokens']:,} loss "
            f"tokens of {trained['tokens']:,}{went}; rows left out: {dropped}; answer tokens cut by max_length: "
            f"{trained['answer_tokens_cut']}"]


def packed_lines(max_length: dict[str, Any], train: dict[str, Any]) -> list[str]:
    """Raw text packed into blocks (CPT): how many tokens and blocks the training text is (train.json's chosen
    max_length) and how much of it training went through, every token carrying loss."""
    tokens, seen = max_length.get("tokens"), (train.get("throughput") or {}).get("loss_tokens")
    if not tokens:
        return []
    went = (f"; training went through {seen:,} loss tokens, {seen / tokens:.2f} epochs" if isinstance(seen, int)
            else "")
    return [f"- text trained on: {tokens:,} tokens in {max_length['blocks']:,} blocks of up to "
            f"{max_length['value']} (every token carries loss){went}"]


def chosen_lines(chosen: dict[str, Any] | None) -> list[str]:
    """train.json `chosen`: each setting training used, with where it came from (the recipe or a default's rule)."""
    if not chosen:
        return []
    lines = ["### Settings and why", "", "| setting | value | why |", "|---|---|---|"]
    for key, entry in chosen.items():
        value = entry.get("value", "on" if entry.get("on") else "off" if "on" in entry else "")
        lines.append(f"| {key} | {value} | {str(entry.get('why', '')).replace('|', '/')} |")
    return [*lines, ""]


def template_lines(contract: dict[str, Any] | None, template_key: str | None = None) -> list[str]:
    """The chat-template contract as checked before training (data/contract.py), with its warnings; which template
    it was, where the recipe's model.chat_template (`template_key`) replaced the model's own."""
    if not contract:
        return []
    own = ([f"- template: model.chat_template `{template_label(template_key)}` in "
            "place of the model's own (saved as chat_template.jinja in the run and with the adapter; eval, merge, "
            "export and serve render with it)"] if template_key else [])
    lines = ["## Chat template contract", "", *own,
             f"- system role: {contract['system_role']}; generation prompt: {contract['generation_prompt']}; "
             f"EOS after answers: {'yes' if contract['eos_after_assistant'] else 'no'}; assistant turns: "
             f"{contract['assistant_turns']}; tools: {contract['tools']}"]
    if contract.get("training_template"):  # data.template.training_template: not the model's own rendering
        lines.append(f"- conversations rendered for training with {contract['training_template']} (the model's own "
                     "template is not prefix-stable, or drops reasoning); served with the model's own")
    lines += reasoning_lines(contract)
    lines += [f"- warning: {warning}" for warning in contract.get("warnings", [])]
    return [*lines, ""]


def reasoning_lines(contract: dict[str, Any]) -> list[str]:
    """How the answers' reasoning trained (data.template.ReasoningRendering), where rows had any or the template
    prompts a <think> block."""
    lines = []
    if contract.get("reasoning_rows"):
        how = ("the template's reasoning field" if contract.get("reasoning") == "fields"
               else "a <think> block before the answer")
        lines.append(f"- reasoning: {contract['reasoning_rows']} row(s) with reasoning (training and held-out), "
                     f"rendered through {how}; eval scores the answer after </think>")
    if contract.get("empty_reasoning_block"):
        lines.append("- answers without reasoning trained after an empty <think> block: the template's generation "
                     "prompt opens one")
    return lines


def train_rows_sha256(run: Run, data: dict[str, Any]) -> str:
    """The hash run.json records for the saved training rows (data/train.jsonl's bytes: what `runs diff` compares and
    resume checks), so one run shows one train-rows hash; data.json's row fingerprint for a run without run.json."""
    manifest = run.manifest()
    if manifest is not None and manifest.data is not None:
        return manifest.data.train.sha256
    return str(data.get("train_sha256", "?"))


def adapter_line(adapter: Any) -> str:
    """The adapter's settings as the recipe states them (kind first)."""
    settings = adapter.model_dump(exclude={"kind"})
    return adapter.kind + ": " + ", ".join(f"{key}={value}" for key, value in settings.items())


def usage_lines(trained: Path, whole: bool) -> list[str]:
    """Loading code with the artifact's path relative to the run (where this card is), so a moved run's card, a
    sweep's card written before the sweep moved the run into place, and a copied run's card stay right."""
    loader = ("from transformers import AutoModelForCausalLM", "AutoModelForCausalLM") if whole else (
        "from peft import AutoPeftModelForCausalLM", "AutoPeftModelForCausalLM")
    return ["From this run's folder (the one this file is in):", "", "```python", loader[0],
            f'model = {loader[1]}.from_pretrained("{trained.name}")', "```",
            *([] if whole or not (trained.parent / "exports" / "merged").is_dir()
              else ["The merged checkpoint (`exports/merged/`) loads the same way with AutoModelForCausalLM."])]


def export_lines(run: Run) -> list[str]:
    """The exports run.json records (each format's newest file, and earlier files still there): path, size and, for
    GGUF, llama.cpp's agreement with the merged model where the export checked it."""
    manifest = run.manifest()
    exports = (manifest.exports if manifest else None) or {}
    lines = []
    for name, record in exports.items():
        check = record.verification or {}
        verdict = {False: " (BELOW its threshold)", None: " (reported only: no threshold for this type)"}
        agreement = (f"; llama.cpp picks the merged model's next token at {check['agreement']:.1%} of positions"
                     f"{verdict.get(check.get('passed', True), '')}" if "agreement" in check
                     else "; not checked in llama.cpp" if name.partition(":")[0] == "gguf" else "")
        lines.append(f"- {name}: `{record.path}` ({record.bytes / 2**20:,.1f} MB{agreement})")
    return ["", "## Exports", "", *lines] if lines else []


def grammar_lines(run: Run) -> list[str]:
    """How to hold the exported model's answers to the task's closed set (run.json exports' `grammar`): one line
    per grammar file, with the llama.cpp command for the GGUF files beside it (`llama_cli_command`)."""
    from tunesmith.export.grammar import llama_cli_command

    manifest = run.manifest()
    exports = (manifest.exports if manifest else None) or {}
    grammars = dict.fromkeys(Path(record.grammar) for record in exports.values() if record.grammar)
    lines = [f"- `{llama_cli_command(run.path / grammar, run.path)}` (or `grammar` in a llama-server request; Ollama "
             "takes no grammar file)" for grammar in grammars if (run.path / grammar).is_file()]
    if not lines:
        return []
    return ["", "Constrained answers: the task's answers are a closed set; llama.cpp decodes only those with", *lines]


def reward_usage_lines(trained: Path, whole: bool) -> list[str]:
    """A reward model loads with its score head, and scores GRPO completions as reward `reward_model` (paths
    relative to the run, as in `usage_lines`)."""
    loader = ("from transformers import AutoModelForSequenceClassification",
              f'model = AutoModelForSequenceClassification.from_pretrained("{trained.name}")') if whole else (
        "from peft import AutoPeftModelForSequenceClassification",
        f'model = AutoPeftModelForSequenceClassification.from_pretrained("{trained.name}", num_labels=1)')
    return ["From this run's folder (the one this file is in):", "", "```python", *loader, "```",
            "As a GRPO reward: `method.rewards: [{name: reward_model, path: RUN}]`, RUN being this run's folder."]


def results_table(results: EvalResults | None) -> list[str]:
    if results is None:
        return ["(not evaluated yet: run `tunesmith eval`)"]
    metrics = [k for k in results.tuned if k not in COST_KEYS]
    if not metrics and results.rewards is not None:  # prompts without answers: the rewards below score them
        return ["The held-out rows are prompts without answers: the run's GRPO rewards score the answers (below)."]
    extra = ["delta (95% CI)"] if results.comparison else []
    variants = results.variants
    rows = ["| metric | " + " | ".join([*variants, *extra]) + " |", "|---" * (len(variants) + len(extra) + 1) + "|"]
    rows += [f"| {results.metric_title(m)} | " + " | ".join([*(str(results.scores(v).get(m, "")) for v in variants),
                                       *([delta_cell(results.comparison.get(m))] if results.comparison else [])])
             + " |" for m in metrics]
    if results.base_note:  # reward runs: what `base` means there
        rows += ["", f"Note: {results.base_note}"]
    return rows


def baseline_lines(results: EvalResults | None) -> list[str]:
    """The cheaper alternatives measured beside the tuned model (eval.baselines), with the verdict; a tuned model
    decoded constrained says what it is held to, since serving it needs the same constraint to match."""
    from tunesmith.eval.verdict import constraint_phrase, option_rows

    lines: list[str] = []
    if results is not None and results.tuned_constrained and results.constraint:
        lines += [f"The tuned model's answers above were decoded constrained to "
                  f"{constraint_phrase(results.constraint)}; serve it with the same constraint to get them.", ""]
    if results is None or not results.baselines:
        return lines
    head, rows = option_rows(results.baselines, results.tuned, results.baseline_comparison, results.metrics,
                             results.task_metric)
    lines += ["### Do you need to fine-tune?", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, "", *([results.verdict, ""] if results.verdict else [])]


def delta_cell(entry: Comparison | None) -> str:
    """tuned − base, with its paired-bootstrap interval where there is one."""
    if entry is None:
        return ""
    ci = entry.ci95
    return f"{entry.delta:+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "")


def add_on_lines(results: EvalResults | None) -> list[str]:
    """A section per add-on in results.json (forgetting probes, judge, lm-eval): base → tuned and the delta."""
    from tunesmith.eval.add_ons import add_on_tables

    lines: list[str] = []
    for block in add_on_tables(results) if results is not None else []:
        lines += [f"### {block.title[:1].upper()}{block.title[1:]}", "",
                  "| metric | base | tuned | delta (95% CI) |", "|---|---|---|---|"]
        lines += [f"| {metric} | {'' if base is None else base} | {tuned} | {delta_cell(entry)} |"
                  for metric, base, tuned, entry in block.rows]
        lines += ["", f"{'**' + block.note + '**' if block.note.startswith('REGRESSION') else block.note}", ""]
    return lines


def trained_lr(train: dict[str, Any], recipe: Any) -> Any:
    """The learning rate training used: train.json's resolved value (training.lr may say auto)."""
    return train.get("chosen", {}).get("lr", {}).get("value", recipe.training.lr)
