"""`tunesmith data inspect|prepare|preview`: thin commands over tunesmith.data.workflow."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from tunesmith.cli.common import SetOption, err, print_json
from tunesmith.errors import DataError

data_app = typer.Typer(help="Inspect, clean and preview datasets before training.", no_args_is_help=True)

Target = Annotated[Path, typer.Argument(help="A recipe (.yaml) or a data file/folder (JSONL, JSON, CSV, ...).")]
ModelOption = Annotated[str | None, typer.Option(
    "--model", help="Model whose tokenizer and chat template to use (default: the recipe's, or the embedded one).")]
ShapeOption = Annotated[str | None, typer.Option(
    "--format", help="Force the shape: messages, sharegpt, alpaca, prompt_completion, preference, "
                     "unpaired_preference, text, prompt (prompts without answers, for GRPO).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


@data_app.command()
def inspect(target: Target, model: ModelOption = None, format_: ShapeOption = None, set_: SetOption = None,
            examples: Annotated[int, typer.Option("--examples", "-n", min=0, help="Rendered examples to show.")] = 3,
            as_json: JsonOption = False) -> None:
    """Show the detected shape, counts, every problem and a few rendered rows; writes nothing.

    Like a linter, it exits 1 when it found a problem row (after printing the whole report, or the JSON
    with --json), so a CI step can gate on it: one that cannot be used, or one whose answer starts past
    data.max_length (training would leave it out); 0 when every row is usable; 2 when the file or recipe
    itself cannot be used.

    Example: tunesmith data inspect examples/data/orders/train.jsonl
    """
    from tunesmith.data.workflow import RECIPE_SUFFIXES, data_recipe, inspect_data

    recipe = data_recipe(target, model, format_, set_)
    report = inspect_data(recipe, examples, method_chosen=target.suffix.lower() in RECIPE_SUFFIXES
                          or "method" in recipe.model_fields_set)
    if as_json:
        print_json(report)
    else:
        print_inspect_report(report, from_recipe=target.suffix.lower() in RECIPE_SUFFIXES)
    raise_if_problems(report, recipe.data.skip_invalid)


class ProblemsFoundError(DataError):
    """`data inspect` found rows it cannot use: exit 1, like a linter, so that a CI step can gate on it."""

    exit_code = 1


def raise_if_problems(report: dict[str, Any], skip_invalid: bool = False) -> None:
    """After the report is out, fail when any split has a problem row (each is named, with its line, above);
    the hint says whether training would skip them (`data.skip_invalid`)."""
    refused = [info["method_refusal"] for info in report["files"].values() if info.get("method_refusal")]
    if refused:  # train stops on it before anything else is read: the rows' own problems come after
        raise ProblemsFoundError(refused[0]["error"], refused[0]["hint"])
    template = report.get("template_contract", {}).get("problems", [])
    if template:
        raise ProblemsFoundError("The chat template cannot train this data right:\n- " + "\n- ".join(template))
    counts = {split: len(info["problems"]) for split, info in report["files"].items() if info["problems"]}
    left_out = {split: sum((info.get("length_fit") or {}).get("left_out", {}).values())
                for split, info in report["files"].items()}
    if any(left_out.values()) and not counts:
        found = ", ".join(f"{count} in {split}" for split, count in left_out.items() if count)
        raise ProblemsFoundError(f"{sum(left_out.values())} row(s) would be left out of training by data.max_length "
                                 f"({found}): their answers start past it.",
                                 "Raise data.max_length, or leave it out (auto, from the rows' own lengths); "
                                 "`tunesmith data preview` shows each row as training cuts it.")
    if counts:
        found = ", ".join(f"{count} in {split} ({report['files'][split]['source']})" for split, count in counts.items())
        hint = ("data.skip_invalid is on, so training skips these rows; fix them to train on them." if skip_invalid
                else "Fix the rows named above, or set data.skip_invalid: true to train without them.")
        mixed = {split: info["other_layouts"] for split, info in report["files"].items() if info.get("other_layouts")}
        if mixed:  # most "problems" are rows of another shape: skipping them is rarely what the user wants
            hint = ("The file mixes row shapes (" + "; ".join(
                f"{split}: {info['layout']} and " + ", ".join(f"{n} {name}" for name, n in mixed[split].items())
                for split, info in report["files"].items() if split in mixed) + "): put each shape in a file of its "
                "own and train on one, or convert the rows to one shape. " + hint)
        raise ProblemsFoundError(f"Found {sum(counts.values())} problem row(s): {found}.", hint)


def print_inspect_report(report: dict[str, Any], from_recipe: bool = True) -> None:
    """`data inspect`'s report on stderr; `from_recipe`: a recipe was inspected (else a bare data file)."""
    pii_off = ("the recipe leaves it off" if from_recipe else "off unless a recipe sets it") + (
        ": the personal data counted in pii_redact trains as written")
    for split, info in report["files"].items():
        err.rule(f"{split}: {info['source']}")
        err.print(f"format {info['file_format']} · layout {info['layout']} → shape [bold]{info['shape']}[/bold] · "
                  f"{info['stats']['rows']} usable rows · skipped {sum(info['skipped'].values())}")
        print_stats(info["stats"])
        if info.get("packed") and info["stats"]["over_max_length"]:
            err.print(f"note: {info['stats']['over_max_length']} document(s) are longer than max_length "
                      f"{info['stats']['max_length']}: packing runs them on into the next block, none is cut.",
                      highlight=False, soft_wrap=True)
        if info.get("method_refusal"):
            err.print(f"[red]problem:[/red] {escape(info['method_refusal']['error'])}", highlight=False, soft_wrap=True)
        elif info.get("method_assumed"):
            err.print(f"note: {info['shape']} rows train only with method.kind {info['method_assumed']}: the counts "
                      "above are the ones it trains with (a recipe's method section chooses the method).",
                      highlight=False, soft_wrap=True)
        elif info.get("methods_taking"):
            err.print(f"note: {info['shape']} rows train with method.kind {' or '.join(info['methods_taking'])} "
                      "(a recipe's method section; the counts above assume sft, the default).", highlight=False,
                      soft_wrap=True)
        if info.get("kto_rows"):
            err.print(f"note: KTO trains each pair as two rows, its chosen answer desirable and its rejected one "
                      f"undesirable: {info['kto_rows']} rows from the {info['stats']['rows']} pair(s).",
                      highlight=False, soft_wrap=True)
        print_steps(info["cleaning_dry_run"], "what `prepare` would do" if report.get("pii") != "off" else
                    f"what `prepare` would do, with data.clean.pii: redact ({pii_off})")
        print_unused_keys(info.get("unused_columns") or [], info["layout"])
        print_length_fit(info.get("length_fit") or {}, info["stats"]["max_length"])
        for warning in info.get("warnings", []):
            err.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)
        for problem in info["problems"][:50]:
            err.print(f"[red]problem:[/red] {escape(problem)}", highlight=False, soft_wrap=True)
        if len(info["problems"]) > 50:
            err.print(f"… and {len(info['problems']) - 50} more (see --json).")
        for text in info["examples"]:
            err.rule("example", style="dim")
            err.print(escape(shortened_example(text)), highlight=False)
    print_contract(report.get("template_contract", {}))
    if report.get("train_eval_overlap"):
        err.print(f"[yellow]note:[/yellow] {report['train_eval_overlap']} train row(s) are the same as an eval row "
                  "(or, under data.clean.dedup: near, near copies of one): "
                  "prepare and train remove them from training (their answers would be in the score).",
                  highlight=False, soft_wrap=True)


EXAMPLE_CHARACTERS = 2_000  # of a rendered example shown in the terminal (about 500 tokens); --json has it whole


def shortened_example(text: str) -> str:
    """A long rendered row (a CPT document, a long conversation) cut to its start and end, saying how much is left
    out: three whole documents would scroll the report's findings away."""
    if len(text) <= EXAMPLE_CHARACTERS:
        return text
    half = EXAMPLE_CHARACTERS // 2
    return (f"{text[:half]}\n[… {len(text) - 2 * half:,} characters left out here; `tunesmith data preview` shows "
            f"the row whole …]\n{text[-half:]}")


def print_length_fit(fit: dict[str, Any], max_length: int) -> None:
    """Rows data.max_length leaves out (a problem: they never train) and answer tokens it cuts (a warning)."""
    left_out = sum(fit.get("left_out", {}).values())
    if left_out:
        reasons = ", ".join(f"{count} {reason}" for reason, count in fit["left_out"].items())
        err.print(f"[red]problem:[/red] {left_out} row(s) would be left out by data.max_length {max_length} "
                  f"({reasons}): no answer token lies inside it.", highlight=False, soft_wrap=True)
        for where in fit.get("left_out_at", []):
            err.print(f"  left out: {escape(where)}", highlight=False, soft_wrap=True)
        if left_out > len(fit.get("left_out_at", [])) > 0:
            err.print(f"  … and {left_out - len(fit['left_out_at'])} more", highlight=False)
    if fit.get("answer_tokens_cut"):
        err.print(f"[yellow]warning:[/yellow] {fit['answer_tokens_cut']:,} answer tokens lie past data.max_length "
                  f"{max_length} and would never train.", highlight=False, soft_wrap=True)


def print_contract(contract: dict[str, Any]) -> None:
    """The template-contract verdicts in one line, then its warnings (problems end the command)."""
    if not contract:
        return
    err.rule("chat template contract")
    if contract.get("template_error"):  # nothing rendered: the verdicts below would describe no template
        err.print(f"not rendered: {escape(contract['template_error'])}", highlight=False, soft_wrap=True)
        return
    err.print(f"system role {contract['system_role']} · generation prompt {contract['generation_prompt']} · EOS in "
              f"answers {'yes' if contract['eos_after_assistant'] else 'no'} · assistant turns "
              f"{contract['assistant_turns']} · tools {contract['tools']}"
              f"{' (data.tool_format: hermes writes them as text)' if contract.get('tool_format') == 'hermes' else ''}",
              highlight=False)
    for warning in contract["warnings"]:
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)


@data_app.command()
def prepare(target: Target, out: Annotated[Path | None, typer.Option(
        help="Output folder (default: prepared/NAME).")] = None, model: ModelOption = None,
        format_: ShapeOption = None, set_: SetOption = None, as_json: JsonOption = False) -> None:
    """Clean, deduplicate and split; write train/eval JSONL, data_report.json, report.html and a histogram.

    Example: tunesmith data prepare recipe.yaml --set data.clean.dedup=near --set data.clean.pii=redact
    """
    from tunesmith.data.workflow import data_recipe, prepare_data

    recipe = data_recipe(target, model, format_, set_)
    out = out or Path("prepared") / recipe.name
    report = prepare_data(recipe, out)
    if as_json:
        print_json(report)
        return
    for split, stats in report["splits"].items():
        err.rule(f"{split}: {stats['rows']} rows")
        print_stats(stats)
    for split, steps in report["cleaning"].items():
        if isinstance(steps, list):
            print_steps(steps, f"cleaning ({split})")
    overlap = report["cleaning"].get("train_eval_overlap", {}).get("removed", 0)
    if overlap:
        err.print(f"Removed {overlap} train rows that duplicate an eval row.")
    err.print(f"[bold]Wrote[/bold] {out}/ (train.jsonl, eval.jsonl, data_report.json, report.html, "
              "token_lengths.png)")


@data_app.command()
def preview(target: Target, n: Annotated[int, typer.Option("-n", "--examples", min=1, help="Rows to render.")] = 3,
            skip: Annotated[int, typer.Option(min=0, help="Start after this many rows.")] = 0,
            html: Annotated[Path | None, typer.Option(help="Also write the view as an HTML file.")] = None,
            model: ModelOption = None, format_: ShapeOption = None, set_: SetOption = None,
            as_json: JsonOption = False) -> None:
    """Render rows through the chat template as training will; tokens that carry loss are highlighted.
    Exits 1 when train would refuse the data (the template contract's problems, rows it cannot use), after printing
    them and the rows asked for (numbered among the usable rows); `data inspect` lists every such row. A file that
    cannot be read at all exits 2.

    Example: tunesmith data preview recipes/quickstart.yaml -n 2 --html preview.html
    """
    from tunesmith.data.preview import preview_html, print_preview
    from tunesmith.data.workflow import data_recipe, preview_data
    from tunesmith.runs import atomic_write_text, check_output_file

    if html:
        check_output_file(html, "--html")
    recipe = data_recipe(target, model, format_, set_)
    result = preview_data(recipe, n, skip)
    if html:
        atomic_write_text(html, preview_html(result, f"{recipe.name}: what the loss sees"))
    if as_json:
        print_json(result.as_dict())
    else:
        print_preview(result, err)
        if recipe.method.kind in METHOD_PREVIEW_NOTES:
            err.print(f"note: {METHOD_PREVIEW_NOTES[recipe.method.kind]}", highlight=False, soft_wrap=True)
        if html:
            err.print(f"Wrote {html}")
    if result.problems:
        raise ProblemsFoundError(f"train would refuse this data ({len(result.problems)} problem(s), listed above).",
                                 "Apply the fix each problem names (a data.* key or another model).")


# Methods whose loss is not on the answers the preview marks: what they train on instead.
METHOD_PREVIEW_NOTES = {
    "grpo": "GRPO never trains on these answers: it samples method.num_generations completions of each prompt and "
            "learns from their rewards; the marked answer is the reference the rewards compare against (a prompt "
            "without one ends at the generation prompt: the rewards judge each sampled answer alone).",
    "cpt": "continued pre-training puts the loss on every token of the text; rows are packed into blocks of "
           "data.max_length (training.packing, on by default for CPT), so a long document runs on into the next "
           "block rather than being cut.",
}


def print_unused_keys(unused: list[str], layout: str) -> None:
    """The columns, and the keys inside turns (`messages[].rationale`), that the rows leave out."""
    columns = [key for key in unused if "[]." not in key]
    in_turns = [key for key in unused if "[]." in key]
    if columns:
        err.print(f"[yellow]note:[/yellow] columns {columns} are not read by {layout} rows and are left out "
                  "(data.columns maps one onto a name the shape reads).", highlight=False, soft_wrap=True)
    if in_turns:
        err.print(f"[yellow]note:[/yellow] turn keys {in_turns} are not read and are left out: a turn is read from "
                  "role and content (ShareGPT: from and value), an answer's reasoning from reasoning_content, "
                  "reasoning or thinking, and tool_calls, weight (0: context only), tool_call_id and name. Rename "
                  "a key to one of these where it should train (reasoning under another name, for one).",
                  highlight=False, soft_wrap=True)


def print_stats(stats: dict[str, Any]) -> None:
    tokens = stats.get("tokens") or {}
    turns = stats.get("turns") or {}
    table = Table("rows", "tokens min/median/p90/max", f"over max_length {stats['max_length']}", "turns mean",
                  "roles")
    table.add_row(str(stats["rows"]),
                  "/".join(str(tokens.get(k, "-")) for k in ("min", "p50", "p90", "max")),
                  str(stats["over_max_length"]), str(turns.get("mean", "-")),
                  ", ".join(f"{k} {v}" for k, v in stats["roles"].items()))
    err.print(table)
    if stats.get("reasoning_rows"):
        err.print(f"reasoning: {stats['reasoning_rows']} row(s) answer after their reasoning (read from "
                  "reasoning_content, reasoning, thinking or a <think> block; trained as the template reads it)",
                  highlight=False)
    if stats.get("labels"):  # KTO's rows: the labels as read (true/yes/1 desirable, false/no/0 undesirable)
        err.print(f"labels: {stats['labels']['desirable']} desirable (true), {stats['labels']['undesirable']} "
                  "undesirable (false)", highlight=False)


def print_steps(steps: list[dict[str, Any]], title: str) -> None:
    from tunesmith.data.report import fmt_details

    if not steps:
        return
    table = Table("step", "removed", "changed", "details", title=title)
    for step in steps:
        details = {k: v for k, v in step.items() if k not in ("step", "removed", "changed", "examples")}
        table.add_row(step["step"], str(step["removed"]), str(step["changed"]), escape(fmt_details(details, "")))
    err.print(table)
