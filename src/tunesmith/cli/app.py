"""The `tunesmith` command line: each command parses, calls one plain function, and prints.

Human text goes to stderr; `--json` puts one JSON document on stdout (on a failure before the command's own,
`{"error", "hint", "exit_code"}`). A TunesmithError exits 2 with its hint; anything else exits 1 (with a
traceback under --debug).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.main
from rich.markup import escape
from rich.table import Table

from tunesmith.cli.cache import cache_app
from tunesmith.cli.common import SHOW, SetOption, err, print_json, stdout_state, wide_console
from tunesmith.cli.data import data_app
from tunesmith.cli.doctor import doctor
from tunesmith.cli.launch import launch_script
from tunesmith.cli.merge import merge, push
from tunesmith.cli.plan import plan
from tunesmith.cli.runs import runs_app
from tunesmith.cli.serve import serve
from tunesmith.errors import TunesmithError, shell_arg
from tunesmith.results import COST_KEYS, Comparison, EvalResults, interval_text, read_results, score_text

app = typer.Typer(help="Fine-tune a model on your examples, evaluate it against its base, export it.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  context_settings={"help_option_names": ["-h", "--help"]})
models_app = typer.Typer(help="Embedded, imported and Hub models.", no_args_is_help=True)
app.add_typer(models_app, name="models")
bench_app = typer.Typer(help="Benchmarks measured on this machine, side by side in one run.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(data_app, name="data")
app.add_typer(runs_app, name="runs")
app.add_typer(cache_app, name="cache")
app.command()(merge)
app.command()(push)
app.command()(serve)
app.command()(doctor)
app.command()(plan)
app.command("launch-script")(launch_script)
state: dict[str, Any] = {"debug": False, "error": None}  # error: the message a failed command ended on

RunsDir = Annotated[Path | None, typer.Option(help="Where run directories are created (default: the recipe's "
                                                    "runs_dir, runs/ in the folder you run from).")]


@app.callback()
def _global(debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False) -> None:
    state["debug"] = debug


@bench_app.command("train")
def bench_train(
        datasets: Annotated[str, typer.Option(help="Comma-separated: quickstart, tickets, spread.")] =
        "quickstart,tickets,spread",
        variants: Annotated[str, typer.Option(help="Comma-separated: trl-plain, trl-expert, tunesmith, "
                                                          "tunesmith-no-replay, tunesmith-checkpointing.")] =
        "trl-plain,trl-expert,tunesmith",
        rows: Annotated[int, typer.Option(min=1, help="Training rows of quickstart and tickets (one epoch).")] = 64,
        spread_rows: Annotated[int, typer.Option(min=1, help="Training rows of the 40-1,000-token spread set.")] = 24,
        batch_size: Annotated[int, typer.Option(min=1, help="Rows per optimizer step, for every variant.")] = 8,
        max_length: Annotated[int, typer.Option(min=1, help="max_length (the spread set uses at least 1,024).")] = 512,
        model: Annotated[str, typer.Option(help="Model source.")] = "smollm2-135m-instruct",
        out: Annotated[Path | None, typer.Option(help="Write the figures as JSON here.")] = None) -> None:
    """Training speed, memory and quality of tunesmith's defaults against plain TRL scripts, on the same work.

    Run it on an otherwise idle machine: each variant trains in its own process, one after another.
    """
    from tunesmith.bench import DATASETS, EXTRA_VARIANTS, VARIANTS, markdown_table, run_benchmark

    chosen = {"--datasets": (datasets, DATASETS), "--variants": (variants, VARIANTS + EXTRA_VARIANTS)}
    for flag, (text, valid) in chosen.items():
        unknown = [item for item in text.split(",") if item not in valid]
        if unknown:
            raise TunesmithError(f"{flag}: unknown {', '.join(unknown)}.", f"Choose from {', '.join(valid)}.")
    results = run_benchmark(model, tuple(datasets.split(",")), tuple(variants.split(",")), rows, spread_rows,
                            batch_size, max_length, out, report=lambda line: err.print(escape(line), **SHOW))
    print(markdown_table(results))


@bench_app.command("all")
def bench_all(
        rows: Annotated[int, typer.Option(min=1, help="Training rows of quickstart and tickets (one epoch).")] = 64,
        prepare_rows: Annotated[int, typer.Option(min=1, help="Synthetic rows for `data prepare`.")] = 20_000,
        steps: Annotated[int, typer.Option(min=1, help="Training steps of the run whose eval and export are "
                                                      "timed.")] = 8,
        eval_examples: Annotated[int, typer.Option(min=1, help="Held-out rows that run's eval answers.")] = 32,
        model: Annotated[str, typer.Option(help="Model source.")] = "smollm2-135m-instruct",
        out: Annotated[Path | None, typer.Option(help="Write the figures as JSON here.")] = None) -> None:
    """Every stage's speed on this machine in one invocation: training against the TRL expert's script, data
    prepare rows/s, eval generation tokens/s (base and tuned), GGUF export seconds per GB and its llama.cpp check.

    Run it on an otherwise idle machine (about 7 minutes for SmolLM2-135M on 2 CPU cores).
    Example: tunesmith bench all --out bench.json
    """
    from tunesmith.bench_all import markdown_table, run_all

    results = run_all(model, rows, prepare_rows, pipeline_steps=steps, eval_examples=eval_examples, out=out,
                      report=lambda line: err.print(escape(line), **SHOW))
    print(markdown_table(results))


CONSTRAINT_HELP = "Hold every answer to this JSON Schema file (constrained decoding)."
CHOICES_HELP = "Hold every answer to one of these comma-separated labels (constrained decoding)."
JsonSchemaOption = Annotated[Path | None, typer.Option("--json-schema", metavar="FILE", help=CONSTRAINT_HELP)]
ChoicesOption = Annotated[str | None, typer.Option("--choices", metavar="A,B,...", help=CHOICES_HELP)]


@app.command()
def quickstart(set_: SetOption = None, runs_dir: RunsDir = None) -> None:
    """Fine-tune the embedded model on the bundled order-to-JSON data, evaluate, export.

    Example: tunesmith quickstart --set training.max_steps=10
    """
    from tunesmith.quickstart import quickstart_recipe, run_pipeline

    run = run_pipeline(quickstart_recipe(set_), runs_dir)
    if (run.eval_dir / "results.json").is_file():  # none where the run held no rows out (eval said why)
        _print_results(run.path)
    print_exports(run)
    err.print()
    print_run_directory(run.path)


@app.command()
def train(recipe: Path, set_: SetOption = None, runs_dir: RunsDir = None,
          evaluate: Annotated[bool, typer.Option(help="Evaluate and export after training.")] = False,
          resume: Annotated[str | None, typer.Option(
              metavar="RUN_DIR|latest", help="Continue an unfinished run in its own directory from its newest "
              "complete checkpoint (latest: the newest such run of this recipe). The recipe must be the one it "
              "started with.")] = None,
          init_from: Annotated[Path | None, typer.Option(
              metavar="RUN_DIR|ADAPTER", help="Start a new run whose adapter begins from a finished run's (or a "
              "PEFT adapter folder's) weights, with a new optimizer and schedule.")] = None,
          time_budget: Annotated[str | None, typer.Option(
              metavar="DURATION", help="Wall time for this training, e.g. 10m or 1h30m (training.time_budget): loading "
              "counts, and the steps are set to fill the rest.")] = None,
          force: Annotated[bool, typer.Option("--force", help="Train the recipe as written even when the memory "
                                                             "plan says it will not fit this device (no batch or "
                                                             "checkpointing changed to make it fit).")] = False,
          nproc: Annotated[int | None, typer.Option(
              "--nproc", min=1, rich_help_panel="Several processes",
              help="Processes on this machine (one per GPU; CPU: DDP over gloo), launched through `accelerate "
                   "launch` with a config written to the run's launch/ folder. training.distributed says how they "
                   "share the work (ddp when unset).")] = None,
          nnodes: Annotated[int, typer.Option("--nnodes", min=1, rich_help_panel="Several processes",
                                              help="Machines, each running this command with its --node-rank.")] = 1,
          node_rank: Annotated[int, typer.Option("--node-rank", min=0, rich_help_panel="Several processes",
                                                 help="This machine's number, 0 to nnodes - 1.")] = 0,
          main_address: Annotated[str, typer.Option("--main-address", rich_help_panel="Several processes",
                                                    help="Address of node 0, reachable from all nodes.")] = "127.0.0.1",
          main_port: Annotated[int, typer.Option("--main-port", min=1, max=65535, rich_help_panel="Several processes",
                                                 help="Port rank 0 listens on.")] = 29500,
          print_launch: Annotated[bool, typer.Option(
              "--print-launch", rich_help_panel="Several processes",
              help="Set up the run directory and its launch configs, print the launch command, start "
                   "nothing.")] = False,
          run_dir: Annotated[Path | None, typer.Option(
              "--run-dir", rich_help_panel="Several processes",
              help="Train in this directory (made if missing; an existing run of this recipe continues from its "
                   "newest checkpoint). Needed when a launcher starts every rank (torchrun, srun), and on several "
                   "nodes, which must share it.")] = None,
          launched: Annotated[bool, typer.Option("--launched", hidden=True,
                                                 help="A rank of `train --nproc`, which finishes the run.")] = False,
          ) -> None:
    """Train the adapter a recipe describes, in a new run directory (or, with --resume, in the one it stopped in).

    Example: tunesmith train recipes/quickstart.yaml --set training.lr=5e-4
    Example: tunesmith train my-recipe.yaml --time-budget 10m --evaluate
    Example: tunesmith train my-recipe.yaml --nproc 4 --set training.distributed=fsdp
    """
    from tunesmith.config import load_recipe
    from tunesmith.doctor import refuse_known_bad_versions
    from tunesmith.runs import create_run, removed_if_unstarted
    from tunesmith.train import run_training
    from tunesmith.train.distributed import this_rank

    if resume and init_from:
        raise TunesmithError("--resume and --init-from exclude each other.",
                             "--resume continues a stopped run; --init-from starts a new one from a finished run.")
    extra = [f"training.init_from={init_from.resolve()}"] if init_from else []
    extra += [f"training.time_budget={time_budget}"] if time_budget else []
    overrides = [*(set_ or []), *extra]
    loaded = load_recipe(recipe, overrides)
    refuse_known_bad_versions()  # before a launch too
    if nproc is not None:
        from tunesmith.cli.launch import LaunchOptions, launch
        run = launch(recipe, overrides, loaded, LaunchOptions(nproc, nnodes, node_rank, main_address, main_port,
                                                              print_launch, run_dir, resume, runs_dir, force))
        if run is not None and node_rank == 0:  # once, after every rank finished
            finish_run(run, evaluate)
        return
    from tunesmith.cli.launch import refuse_unlaunched

    refuse_unlaunched(loaded, run_dir, print_launch or nnodes > 1 or node_rank > 0, launched, resume)
    if run_dir is None and not launched and not this_rank().launched:  # one process started alone, as from Python
        from tunesmith import api

        sigterm_as_interrupt()
        run = api.train(loaded, resume=resume, runs_dir=runs_dir, fit=not force, evaluate=evaluate,
                        report=lambda note: err.print(note, **SHOW))
        report_finished(run, evaluate)
        return
    if not force:  # a launched rank (the launcher planned once and passes --force) or a --run-dir one: before
        from tunesmith.plan.fit import fit_recipe  # anything heavy loads, the model's config and the data tell

        loaded, note = fit_recipe(loaded)
        if note:
            err.print(note, **SHOW)
    sigterm_as_interrupt()
    run = resumed_run(loaded, resume, runs_dir) if resume else None
    if run_dir is not None:
        from tunesmith.train.launch import shared_run

        run = shared_run(loaded, run_dir)
    if run is None:
        with removed_if_unstarted(create_run(loaded, runs_dir)) as run, locked(run):
            run_training(loaded, run)
    else:
        with locked(run):
            run_training(loaded, run)
    if this_rank().is_main and not launched:  # started by torchrun/srun: rank 0 alone evaluates, writes the card
        finish_run(run, evaluate)


def locked(run: Any) -> Any:
    """The run's training lock (runs.training_lock), held by the main process alone: the other ranks of a
    distributed run train in the same directory."""
    from contextlib import nullcontext

    from tunesmith.runs import training_lock
    from tunesmith.train.distributed import this_rank

    return training_lock(run) if this_rank().is_main else nullcontext(run)


def sigterm_as_interrupt() -> None:
    """SIGTERM stops set-up as Ctrl-C does (a new run's directory is removed and it is said), instead of killing the
    process silently; during training, StopOnSignal takes both signals over and restores this after."""
    import contextlib
    import signal

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # not the main thread (tests calling the app in one)
        signal.signal(signal.SIGTERM, interrupt)


def print_exports(run: Any) -> None:
    """What export wrote (run.json `exports`), one line per format, with its size."""
    manifest = run.manifest()
    for name, record in sorted(((manifest.exports or {}) if manifest is not None else {}).items()):
        err.print(f"[bold]Exported[/bold] {name}: {escape(str(run.path / record.path))} "
                  f"({record.bytes / 2 ** 20:,.1f} MiB)", highlight=False, soft_wrap=True)


def finish_run(run: Any, evaluate: bool) -> None:
    """After training: eval and export with --evaluate (the model card either way), then the run directory."""
    from tunesmith.card import write_model_card

    if evaluate:
        from tunesmith.quickstart import evaluate_and_export

        evaluate_and_export(run.load_recipe(), run)
    else:
        write_model_card(run)
    report_finished(run, evaluate)


def report_finished(run: Any, evaluated: bool) -> None:
    """The results and exports of a run evaluated after training (`--evaluate`), then its directory."""
    if evaluated:
        if (run.eval_dir / "results.json").is_file():  # none where the run held no rows out (eval said why)
            _print_results(run.path)
        print_exports(run)
    print_run_directory(run.path)


def print_run_directory(path: Path) -> None:
    """The run directory, for the person (stderr) and, where stdout is not a terminal, alone on stdout too, so that
    `RUN=$(tunesmith train recipe.yaml)` holds it."""
    err.print(f"[bold]Run directory:[/bold] {escape(str(path))}", **SHOW)  # one line, whatever its length
    if sys.stdout is not None and not sys.stdout.isatty():  # None: stdout closed (`>&-`)
        with contextlib.suppress(BrokenPipeError):  # `| head -0`: the reader left; the run is done all the same
            print(path, flush=True)


def resumed_run(recipe: Any, target: str, runs_dir: Path | None) -> Any:
    """The run --resume names, checked against the recipe (train.resume.resumed_run)."""
    from tunesmith.train.resume import resumed_run as checked_run

    return checked_run(recipe, target, runs_dir)


@app.command()
def sweep(recipe: Path, grid: Annotated[list[str] | None, typer.Option(
              "--grid", metavar="KEY=V1,V2", help="A recipe key and the values to try (repeatable; every "
              "combination runs). Values parse like --set; lists in brackets: "
              "'adapter.targets=\\[q_proj,v_proj],qkvo'.")] = None,
          set_: SetOption = None, runs_dir: RunsDir = None,
          evaluate: Annotated[bool, typer.Option("--evaluate/--no-evaluate", "--eval/--no-eval", help="Evaluate "
                                                 "and export each run, as train --evaluate does.")] = True,
          as_json: Annotated[bool, typer.Option("--json", help="Print sweep.json.")] = False,
          resume: Annotated[str | None, typer.Option(
              "--resume", metavar="SWEEP_DIR|latest", help="Carry on a stopped sweep in its own directory, with its "
              "own grid: finished combinations are kept, the stopped one resumes, the rest run.")] = None) -> None:
    """Run every combination of --grid values as its own run, then compare them in one table (sweep.md, sweep.png).

    Example: tunesmith sweep recipes/quickstart.yaml --grid adapter.targets=qv,qkvo --grid adapter.layers=all,last-half
    """
    from tunesmith.sweep import SweepInterrupted, raise_if_any_failed, run_sweep, table_cells

    try:
        path = run_sweep(recipe, grid or [], set_, runs_dir, evaluate,
                         report=lambda line: err.print(escape(line), highlight=False, soft_wrap=True), resume=resume)
    except SweepInterrupted as stopped:  # the table of what ran, then the message
        rows = json.loads((stopped.sweep_dir / "sweep.json").read_text(encoding="utf-8"))["rows"]
        _print_sweep(table_cells(rows), f"sweep of {recipe.name} (stopped)")
        raise
    document = json.loads((path / "sweep.json").read_text(encoding="utf-8"))
    _print_sweep(table_cells(document["rows"]), f"sweep of {recipe.name}")
    err.print(f"[bold]Sweep directory:[/bold] {path}")
    if as_json:
        print_json(document)
    raise_if_any_failed(path)


def _print_sweep(table_text: tuple[list[str], list[list[str]]], title: str) -> None:
    """Numbers never wrap; in a log (not a terminal) the table gets room instead of rich's 80 columns."""
    columns, cells = table_text
    table = Table(title=title)
    for index, name in enumerate(columns):
        numeric = 0 < index < len(columns) - 1
        table.add_column(name, justify="right" if numeric else "left", no_wrap=numeric)
    for row in cells:
        table.add_row(escape(row[0].replace(",", " ")), *map(escape, row[1:]))
    wide_console(160).print(table)


@app.command("eval")
def eval_(run_dir: Path, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
          set_: SetOption = None,
          fail_if_worse: Annotated[list[str] | None, typer.Option(
              "--fail-if-worse", metavar="METRIC[:MARGIN]",
              help="Exit 3 when tuned is worse than base on METRIC by more than MARGIN (default 0; "
                   "for loss and perplexity worse is higher; a negative MARGIN demands an improvement of that size); "
                   "`probes` fails on a forgetting-probe regression. Repeatable.")] = None,
          against: Annotated[str, typer.Option(
              metavar="base|RUN_DIR", help="Compare with the base model (default), or with another run of the "
                                           "same base: its adapter takes base's place everywhere; results go to "
                                           "eval/against-<run>/.")] = "base",
          data: Annotated[Path | None, typer.Option(
              "--data", metavar="FILE", help="Score FILE's rows instead of the held-out rows saved in the run (same "
                                             "loaders, system prompt and fallbacks as training); results go to "
                                             "eval/data-<file name>/.")] = None,
          baselines: Annotated[str | None, typer.Option(
              "--baselines", metavar="NAME,...", help="Score cheaper alternatives beside base and tuned: zero_shot, "
                                                      "few_shot, constrained, few_shot_constrained, or all "
                                                      "(default: the recipe's eval.baselines).")] = None,
          checkpoints: Annotated[bool, typer.Option(
              "--checkpoints", help="Score every saved checkpoint (task metric and probes by step) and name the one "
                                    "to keep: the best task score whose probes stay within eval.probe_margin; "
                                    "writes eval/checkpoints.json and plots/checkpoints.png.")] = False,
          rollback: Annotated[bool, typer.Option(
              "--rollback", help="With --checkpoints: make the chosen checkpoint the run's adapter (the final one "
                                 "moves to adapter-final/), then evaluate it.")] = False) -> None:
    """Score the tuned model against its base on the held-out examples saved in the run; writes eval/results.json
    and report.html.

    Example: tunesmith eval runs/quickstart-20261123-101500 --json

    Example: tunesmith eval runs/quickstart-20261123-101500 --fail-if-worse exact_match:0.02 --fail-if-worse probes

    Example: tunesmith eval runs/quickstart-20261123-101500 --against runs/quickstart-20261120-093000

    Example: tunesmith eval runs/quickstart-20261123-101500 --data examples/data/orders/eval.jsonl

    Example: tunesmith eval runs/quickstart-20261123-101500 --baselines few_shot,constrained

    Example: tunesmith eval runs/quickstart-20261123-101500 --checkpoints --rollback
    """
    from tunesmith.card import write_model_card
    from tunesmith.eval import run_eval
    from tunesmith.eval.gate import check_gate, check_rule_names, parse_gate_rule, raise_if_worse
    from tunesmith.runs import open_run

    if rollback and not checkpoints:
        raise typer.BadParameter("--rollback picks among the checkpoints: add --checkpoints.", param_hint="--rollback")
    if checkpoints and (against != "base" or data is not None):
        raise typer.BadParameter("--checkpoints scores the run's own held-out rows against its base; leave out "
                                 "--against and --data.", param_hint="--checkpoints")
    rules = [parse_gate_rule(text) for text in fail_if_worse or []]
    if checkpoints and rules and not rollback:
        raise typer.BadParameter("--fail-if-worse gates the run's adapter, which --checkpoints alone leaves as it "
                                 "is: add --rollback to gate the checkpoint it chooses, or leave out --checkpoints.",
                                 param_hint="--fail-if-worse")
    run = open_run(run_dir)
    if not checkpoints or rollback:  # a stopped run's checkpoints can be scored; only rolling back needs an end
        run.trained_artifact()
    if rules:
        check_rule_names(rules, any(":" in metric for metric in run.load_recipe(set_).eval.metrics))
    if checkpoints:
        from tunesmith.eval.checkpoints import score_checkpoints

        report_file = score_checkpoints(run.load_recipe(set_), run, rollback)
        if as_json and not rollback:  # with --rollback, --json prints the new adapter's results below
            print_json(report_file.read_text(encoding="utf-8"))
        else:
            _print_checkpoints(report_file, run.plots_dir / "checkpoints.png")
        rolled = json.loads(report_file.read_text(encoding="utf-8")).get("rolled_back_to")
        if rolled is not None:  # the card stops describing the replaced adapter before the eval below starts
            write_model_card(run)
        if rollback and rolled is None:
            err.print("--rollback: the run's adapter stays as it is (no other checkpoint was chosen).",
                      highlight=False)
        if not rollback or (rolled is None and not rules):  # a gate still judges the adapter kept, below
            if as_json and rollback:  # nothing below prints: the checkpoints' report is the document
                print_json(report_file.read_text(encoding="utf-8"))
            return
    other = None if against == "base" else open_run(Path(against)).path
    if other is not None:
        open_run(other).trained_artifact()
    path = run_eval(run.load_recipe(set_), run, other, data, _baseline_names(baselines))
    if other is None and data is None:  # the card describes the run's own held-out rows
        write_model_card(run)
    if as_json:
        print_json(path.read_text(encoding="utf-8"))
    else:
        _print_results(run.path, path, data)
        if data is not None:
            err.print(f"Rows scored: {escape(str(data))} (not the run's held-out rows)", highlight=False,
                      soft_wrap=True)
        report = path.parent / "report.html"  # preference, CPT and reward evals write results.json only
        if report.is_file():
            err.print(f"Report: {report}", highlight=False, soft_wrap=True)
    if rules:
        verdicts = check_gate(read_results(path), rules)
        for verdict in verdicts:
            if verdict.passed:
                err.print(escape(verdict.message), highlight=False, soft_wrap=True)
        page = path.parent / "report.html"
        raise_if_worse(verdicts, str(page if page.is_file() else path))


def _print_checkpoints(report_file: Path, plot: Path) -> None:
    """The checkpoints' task score and probe accuracy by step, and the one chosen with why."""
    from rich.table import Table

    report = json.loads(report_file.read_text(encoding="utf-8"))
    table = Table(title="checkpoints", title_justify="left")
    for column in ("step", report["metric"] or "task", "probe accuracy", "probes failed (their ids)"):
        table.add_column(column)
    for point in report["points"]:
        mark = " (chosen)" if point["step"] == report["chosen_step"] else ""
        failed = point["probes_failed"]
        table.add_row(f"{point['step'] or 'base'}{mark}", _cell(point["task"]), _cell(point["probe_accuracy"]),
                      escape(f"{len(failed)}" + (f": {', '.join(failed[:6])}" + (" ..." if len(failed) > 6 else "")
                                                 if failed else "")))
    wide_console(140).print(table)
    chosen = "none" if report["chosen_step"] is None else f"step {report['chosen_step']}"
    err.print(escape(f"chosen: {chosen}: {report['why']}"), highlight=False, soft_wrap=True)
    err.print(f"Written: {report_file} and {plot}", highlight=False, soft_wrap=True)


@app.command()
def baseline(recipe_file: Annotated[Path, typer.Argument(metavar="RECIPE")], set_: SetOption = None,
             runs_dir: RunsDir = None,
             baselines: Annotated[str | None, typer.Option(
                 "--baselines", metavar="NAME,...", help="zero_shot, few_shot, constrained, few_shot_constrained "
                                                         "(default: eval.baselines, else all four).")] = None,
             as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Before any training: score prompting, few-shot and constrained decoding with the base model on the recipe's
    held-out rows, to learn in minutes whether fine-tuning is needed; writes RUN/baseline/results.json.

    Example: tunesmith baseline recipes/tickets.yaml

    Example: tunesmith baseline recipes/quickstart.yaml --baselines zero_shot,few_shot --set eval.few_shot_k=8
    """
    from tunesmith.config import load_recipe
    from tunesmith.eval.before_training import run_baselines_before_training

    recipe = load_recipe(recipe_file, set_)
    _, path = run_baselines_before_training(recipe, _baseline_names(baselines), runs_dir)
    results = json.loads(path.read_text(encoding="utf-8"))
    if as_json:
        print_json(results)
        return
    _print_baselines(results["baselines"], None, {}, results["metrics"], results["task_metric"],
                     results["examples"], results.get("verdict"))
    err.print(f"Results: {path}", highlight=False, soft_wrap=True)


@app.command()
def export(run_dir: Path, format_: Annotated[list[str] | None, typer.Option(
        "--format", help="adapter | merged | gguf | gguf-lora | ollama (repeatable; default: the recipe's "
                         "export.formats)")] = None,
        quant: Annotated[str | None, typer.Option(
            help="GGUF type: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, or a K-quant made by llama.cpp "
                 "(needs the gguf extra): Q2_K, Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K "
                 "(default: the recipe's export.quant).")
        ] = None,
        verify: Annotated[bool | None, typer.Option(
            "--verify/--no-verify", help="Load the GGUF in llama.cpp and check its next-token agreement with the "
                                         "merged model (default: on when llama-cpp-python is installed).")
        ] = None,
        ollama_adapter: Annotated[bool | None, typer.Option(
            "--ollama-adapter/--ollama-merged", help="Ollama: FROM the base GGUF + ADAPTER the LoRA as GGUF, or one "
                                                     "merged GGUF (default: the recipe's export.ollama_adapter).")
        ] = None,
        max_shard_size: Annotated[str | None, typer.Option(
            help="Split the merged safetensors into shards of at most this size (default: the recipe's "
                 "export.max_shard_size, 5GB).")] = None,
        out: Annotated[Path | None, typer.Option(
            "--out", metavar="DIR", help="Also copy what was exported into DIR, in the layout of the run's exports/ "
                                         "(adapter/, merged/, gguf/FILE.gguf, ollama/); the run keeps its copy. "
                                         "DIR is created if missing; nothing in it is overwritten: a name it already "
                                         "holds is an error, before anything is exported.")] = None,
        check: Annotated[bool, typer.Option(
            "--check", help="Write nothing: check the exports already there (each file as export wrote it, each "
                            "GGUF in llama.cpp again unless --no-verify, and the chat template as llama-cpp-python "
                            "and Ollama render it on the run's own held-out conversations); exits 1 when a check "
                            "fails.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="With --check: print every check as one JSON "
                                                              "document.")] = False) -> None:
    """Export a run's adapter, the adapter merged into its base, the merged model as GGUF, the adapter as a
    GGUF LoRA (llama.cpp --lora, Ollama ADAPTER), or for Ollama; or check what was exported (--check).

    Example: tunesmith export runs/quickstart-20261123-101500 --format merged

    Example: tunesmith export runs/quickstart-20261123-101500 --format gguf --quant Q8_0

    Example: tunesmith export runs/quickstart-20261123-101500 --format ollama --quant Q8_0

    Example: tunesmith export runs/quickstart-20261123-101500 --format gguf-lora

    Example: tunesmith export runs/quickstart-20261123-101500 --format ollama --ollama-adapter --quant Q8_0

    Example: tunesmith export runs/quickstart-20261123-101500 --format merged --format gguf --out ~/models/orders

    Example: tunesmith export runs/quickstart-20261123-101500 --check
    """
    from tunesmith.card import write_model_card
    from tunesmith.export import out_names, refuse_taken_out_names
    from tunesmith.export.stage import export_formats
    from tunesmith.runs import open_run

    run = open_run(run_dir)
    if check or as_json:
        _check_exports(run, verify, as_json, check, {"--format": format_, "--quant": quant, "--out": out,
                                                      "--max-shard-size": max_shard_size,
                                                      "--ollama-adapter/--ollama-merged": ollama_adapter})
        return
    run.trained_artifact()
    recipe = run.load_recipe()
    if max_shard_size:
        from tunesmith.merge.into_base import parse_shard_size

        shards = {"max_shard_size": parse_shard_size(max_shard_size)}
        recipe = recipe.model_copy(update={"export": recipe.export.model_copy(update=shards)})
    if quant and quant.upper() not in ("F16", "F32") and not {"gguf", "ollama"} & set(format_ or recipe.export.formats):
        err.print(f"note: --quant {quant} quantizes the gguf and ollama formats only; a GGUF LoRA is written in F16 "
                  "(F32 with --quant F32), which llama.cpp applies to a base of any quant.",
                  highlight=False, soft_wrap=True)
    formats, quant = format_ or list(recipe.export.formats), quant or recipe.export.quant
    names = out_names(formats, recipe.name, quant) if out else []
    if out:
        refuse_taken_out_names(out, names)
    outcome = export_formats(recipe, run, formats, quant, verify, ollama_adapter)
    write_model_card(run)  # it names the exports' answer grammar, when there is one
    if outcome.ollama is not None:
        _report_ollama(outcome.ollama)
    for name, path in outcome.written.items():
        err.print(f"Exported {name}: {path}", highlight=False, soft_wrap=True)
    if "gguf-lora" in outcome.written:
        from tunesmith.models.tuned import run_base_model

        err.print(f"llama.cpp applies it to a GGUF of the base ({run_base_model(run)}): llama-cli -m BASE.gguf --lora "
                  f"{outcome.written['gguf-lora']} (`tunesmith export RUN --format ollama --ollama-adapter` writes a "
                  "GGUF of the base into exports/ollama/; `tunesmith serve RUN` serves the base with the LoRA)",
                  highlight=False, soft_wrap=True)
    if out:
        _copy_out(run.exports_dir, out, names)
    if outcome.ollama is not None and outcome.ollama.created is False:  # the files are there; the model is not
        raise TunesmithError(f"The export's files are written, but `{outcome.ollama.create_command}` failed, so Ollama "
                             "does not have the model.", "Read Ollama's message above; `ollama --version` (an older "
                             "Ollama may not know the architecture), then run the command again.", exit_code=1)


def _check_exports(run: Any, verify: bool | None, as_json: bool, check: bool, export_options: dict[str, Any]) -> None:
    """--check: the exports' checks as doctor prints them (tunesmith.export.recheck); exit 1 when one fails."""
    from tunesmith.cli.doctor import print_report
    from tunesmith.export.recheck import check_exports

    if not check:
        raise TunesmithError("--json prints the checks of --check; an export prints no JSON.", "Add --check.")
    given = [name for name, value in export_options.items() if value]
    if given:
        raise TunesmithError(f"--check writes nothing, so {', '.join(given)} would do nothing.",
                             f"Check with `tunesmith export {shell_arg(run.path)} --check`, or export without --check.")
    report = check_exports(run, run.load_recipe(), verify=verify is not False)
    print_report(report)
    if as_json:
        print_json(report.model_dump())
    if report.failed:
        raise typer.Exit(1)


def _copy_out(exports_dir: Path, out: Path, names: list[str]) -> None:
    """--out: copy the exported names into DIR and say where each one is (the run keeps its own copy)."""
    from tunesmith.export import copy_exports

    for target in copy_exports(exports_dir, out, names):
        err.print(f"Copied to {target}", highlight=False, soft_wrap=True)


def _report_ollama(result: Any) -> Path:
    """Say whether `ollama create` ran, and the command to run when it could not (unwrapped, to copy)."""
    show = {"soft_wrap": True, "highlight": False}
    if result.created is None:
        err.print(f"Ollama is not installed here; to load the model run:\n  {escape(result.create_command)}", **show)
    elif result.created:
        err.print(f"Created the Ollama model {escape(result.model_name)}: ollama run {escape(result.model_name)}",
                  **show)
    else:
        err.print(f"[yellow]{escape(result.create_command)} failed:[/yellow] {escape(result.create_output)}", **show)
    for note in result.notes:
        err.print(f"[yellow]Note:[/yellow] {escape(note)}", **show)
    return result.folder


@models_app.command("list")
def models_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List embedded and imported models.

    Example: tunesmith models list
    """
    from tunesmith.models import list_models

    rows = list_models()
    if as_json:
        print_json(rows)
        return
    table = Table("name", "kind", "ready")
    table.add_column("path", overflow="fold")  # the one thing to copy: never cut to `.../models/sm…`
    for row in rows:
        table.add_row(str(row["name"]), str(row["kind"]), "yes" if row["pulled"] else "no", str(row["path"]))
    wide_console(160).print(table)


@models_app.command("pull")
def models_pull(alias: Annotated[str | None, typer.Argument(
                    help="The embedded model's alias (default smollm2-135m-instruct; `tunesmith models list`).")]
                = None,
                force: Annotated[bool, typer.Option(help="Fetch again even if cached.")] = False,
                alias_option: Annotated[str | None, typer.Option("--alias", hidden=True)] = None) -> None:
    """Fetch an embedded model into the cache as a trainable safetensors checkpoint.

    Example: tunesmith models pull smollm2-135m-instruct
    """
    from tunesmith.models import pull_model

    err.print(f"Ready: {pull_model(alias or alias_option or 'smollm2-135m-instruct', force=force)}")


@models_app.command("import")
def models_import(gguf_file: Path, name: Annotated[str | None, typer.Option(
                      help="Name in the cache (default: the file's name, lower case).")] = None,
                  force: Annotated[bool, typer.Option("--force", help="Replace a model imported under that name.")]
                  = False) -> None:
    """Import a llama-family GGUF file as a trainable safetensors checkpoint (a Hugging Face-format folder needs no
    import: name it in model.source).

    Example: tunesmith models import ./my-model.Q8_0.gguf --name my-model
    """
    from tunesmith.models.registry import import_model

    err.print(f"Ready: {import_model(gguf_file, name=name, force=force)}")


@app.command()
def compare(targets: Annotated[list[str], typer.Argument(metavar="RUN_OR_ADAPTER...",
                                                         help="Run directories or PEFT adapter folders (one base).")],
            prompts: Annotated[Path, typer.Option(help="JSONL (or any data file) of prompts, answers optional.")],
            base: Annotated[bool, typer.Option("--base", help="Add the base model as the first column.")] = False,
            metric: Annotated[list[str] | None, typer.Option(
                help="Metric name or module:function (repeatable; default: the metrics the runs' own eval "
                     "scored, where they are evaluated runs that agree; else exact_match and chrf).")] = None,
            reference_key: Annotated[str | None, typer.Option(help="Column holding the reference answer.")] = None,
            html: Annotated[Path | None, typer.Option("--html", help="Write a self-contained HTML page.")] = None,
            max_new_tokens: Annotated[int | None, typer.Option(min=1,
                help="Tokens generated per answer (default: from the reference answers' lengths, as eval's auto; "
                     "128 without references).")] = None,
            batch_size: Annotated[int, typer.Option(min=1, help="Prompts generated together.")] = 8,
            as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
            json_schema: JsonSchemaOption = None, choices: ChoicesOption = None,
            regex: Annotated[str | None, typer.Option(
                metavar="PATTERN", help="The pattern a whole answer must match, for --metric regex.")] = None) -> None:
    """Answer the same prompts with several adapters of one base (and the base), side by side.

    The base loads once and the adapters are switched on it.

    Example: tunesmith compare --prompts examples/data/orders/eval.jsonl runs/a-1 runs/b-1 --base --html cmp.html
    """
    from tunesmith.data.constraint import option_constraint
    from tunesmith.eval.compare import print_compare, run_compare, write_compare_html

    constraint = option_constraint(json_schema, choices)
    if html:
        from tunesmith.runs import check_output_file

        check_output_file(html, "--html")
    if regex is not None:
        from tunesmith.config import check_regex

        try:
            check_regex("--regex", regex)
        except ValueError as exc:
            raise TunesmithError(str(exc), "Fix the pattern (Python's `re` syntax).") from None
    results = run_compare(targets, prompts, base, metric, reference_key, max_new_tokens, batch_size,
                          constraint=constraint, regex=regex, schema_file=json_schema)
    print_compare(results, wide_console(200))
    if html:
        err.print(f"Wrote {write_compare_html(results, html)}")
    if as_json:
        print_json(results)


@app.command()
def chat(model_or_run: Annotated[str, typer.Argument(
             metavar="MODEL_OR_RUN", help="Model alias, folder or Hub id, a run directory, or a PEFT adapter folder "
                                          "(on the base its adapter_config.json names).")],
         adapter: Annotated[Path | None, typer.Option(help="A PEFT adapter folder to apply.")] = None,
         system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
         max_new_tokens: Annotated[int, typer.Option(min=1, help="Most tokens per reply.")] = 256,
         url: Annotated[str | None, typer.Option(
             help="Talk to a running OpenAI-compatible server instead (e.g. http://127.0.0.1:8000/v1); "
                  "MODEL_OR_RUN is then the served model's name.")] = None,
         api_key_env: Annotated[str | None, typer.Option(help="With --url: the variable holding the API key.")]
         = None, json_schema: JsonSchemaOption = None, choices: ChoicesOption = None,
         tools: Annotated[Path | None, typer.Option(
             help="A JSON file of function schemas to offer with every turn (OpenAI's or LLaMA-Factory's form); "
                  "the model's calls are shown, and /tool RESULT answers one.")] = None) -> None:
    """Chat in the terminal (greedy, streamed, history kept); /reset starts over, /exit or Ctrl-D quits.

    Example: tunesmith chat runs/quickstart-20261123-101500 --system "Answer in JSON."
    Example: tunesmith chat orders --url http://127.0.0.1:8000/v1

    Example: tunesmith chat runs/tickets-20261201-102337 --choices billing,bug_report,how_to

    Example: tunesmith chat runs/tool-calls-20261205-221000 --tools tools.json
    """
    from tunesmith.chat import (
        COMMANDS_HELP,
        TOOLS_HELP,
        ChatSession,
        RemoteChatSession,
        chat_loop,
        check_tools_reach_prompt,
        load_chat_model,
        load_tools_file,
    )
    from tunesmith.data.constraint import option_constraint

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def to_stderr(text: str) -> None:
        sys.stderr.write(text)
        sys.stderr.flush()

    offered = load_tools_file(tools) if tools is not None else None  # a bad file fails before the model loads
    if url:
        from tunesmith.chat import check_served_model
        from tunesmith.cli.serve import read_api_key
        from tunesmith.config import check_http_url

        try:
            check_http_url(url)
        except ValueError as exc:
            raise TunesmithError(f"--url: {exc}.", "Give the server's address with http:// or https://.") from None

        if adapter is not None:
            raise TunesmithError("--adapter applies a PEFT folder to a model loaded here; a server serves what it "
                                 "loaded.", "Serve the adapter (`tunesmith serve NAME=ADAPTER_FOLDER`) and chat with "
                                 "--url and its name, or chat without --url.")
        if choices is not None:
            raise TunesmithError("--choices holds a local model to bare labels; an OpenAI-compatible server constrains "
                                 "answers to JSON only (a label would come back quoted).",
                                 "Drop --choices, or chat with the model folder or run directly.")
        constraint = option_constraint(json_schema, None)  # a broken schema fails before anything is asked
        api_key = read_api_key(api_key_env, "chatting with the server (the key it was started with)")
        check_served_model(url, api_key, model_or_run)  # unreachable, no /v1, a refused key: said before any prompt
        response_format = ({"type": "json_schema", "json_schema": {"name": "answer", "schema": json.loads(
            constraint.spec)}} if constraint is not None else None)
        session: ChatSession = RemoteChatSession(model_or_run, None, system, max_new_tokens, url=url, api_key=api_key,
                                                 tools=offered, response_format=response_format)
    else:
        constraint = option_constraint(json_schema, choices)  # a broken schema fails before the model loads
        if constraint is not None and offered:
            raise TunesmithError("--tools cannot be combined with --json-schema or --choices: a tool call is neither.",
                                 "Drop one of them.")
        model, tokenizer = load_chat_model(model_or_run, adapter)
        render = None
        if (Path(model_or_run).expanduser() / "recipe.yaml").is_file():  # a run: prompt it as it was trained
            from tunesmith.chat import run_rendering

            trained_system, render = run_rendering(Path(model_or_run).expanduser())
            system = system if system is not None else trained_system
        if offered:
            check_tools_reach_prompt(tokenizer, offered, render, model_or_run)
        session = ChatSession(model, tokenizer, system, max_new_tokens, constraint=constraint, render=render,
                              tools=offered)
    err.print(COMMANDS_HELP + (f" {TOOLS_HELP}" if offered else ""), highlight=False)
    if sys.stdin.isatty():  # a person at the keyboard: prompts and labels beside the replies, as always
        chat_loop(session, input, write)
    else:  # piped: stdout holds the replies alone, the labels go to stderr
        chat_loop(session, lambda prompt: input(), write, say=to_stderr)


def _print_results(run_path: Path, results_file: Path | None = None, rows_from: Path | None = None) -> None:
    """The results table; `rows_from`: the file `eval --data` scored, named in the title instead of "held-out"."""
    results = read_results(results_file or run_path / "eval" / "results.json")
    other = results.against.name if results.against else None
    title = f"tuned vs {other}" if other else "base vs tuned" if results.base else "tuned"
    rows = f"examples of {rows_from.name}" if rows_from is not None else "held-out examples"
    table = Table(title=f"{title} on {results.examples} {rows}")
    table.add_column("metric")
    for variant in results.variants:
        table.add_column(other if other and variant == "base" else variant, justify="right")
    if results.comparison:
        for column in ("delta", "95% CI", "wins/losses/ties"):
            table.add_column(column, justify="right")
    for metric in sorted(results.tuned, key=lambda name: name in COST_KEYS):  # the scores, then what they cost
        table.add_row(results.metric_title(metric),
                      *[score_text(metric, results.scores(v).get(metric)) for v in results.variants],
                      *(_comparison_cells(results.comparison.get(metric)) if results.comparison else []))
    err.print(table)
    from tunesmith.eval.verdict import constrained_tuned_note

    constrained = constrained_tuned_note(results.model_dump())
    if constrained:
        err.print(escape(f"Note: {constrained}"), highlight=False, soft_wrap=True)
    from tunesmith.runs import Run

    manifest = Run(run_path).manifest()
    chosen = manifest.train.checkpoint_step if manifest and manifest.train else None
    if chosen is not None and rows_from is None and other is None:
        err.print(escape(f"Note: this adapter is checkpoint {chosen}, chosen (--checkpoints --rollback) on these "
                         "held-out rows, so its scores on them read a little high (the best of several tries). "
                         f"Rows it was not chosen on score it fairly: tunesmith eval {shell_arg(run_path)} --data "
                         "FILE."), highlight=False, soft_wrap=True)
    if results.base_note:  # reward runs: the base is scored with an untrained head
        err.print(escape(f"Note: {results.base_note}"), highlight=False, soft_wrap=True)
    if "reward_accuracy" in results.tuned:
        err.print(escape(f"preference_accuracy: pairs whose chosen answer the model finds more likely per token; "
                         f"reward_accuracy: pairs the tuned model moved towards the chosen answer against the "
                         f"{other or 'base'} (DPO's implicit reward, log π − log π_ref, with the {other or 'base'} "
                         "as π_ref whichever method trained; TRL logs it for DPO as rewards/accuracies)."),
                  highlight=False, soft_wrap=True)
    if "label_gap" in results.tuned:
        err.print(escape("label_gap: mean log-probability of the desirable answers minus that of the undesirable "
                         "ones (summed over each answer's tokens); signed_logp: each answer's log-probability, "
                         "negated for an undesirable one, averaged (higher is better); a row is won where the tuned "
                         f"model raised it above the {other or 'base'}'s (KTO's implied reward with the label's "
                         "sign)."), highlight=False, soft_wrap=True)
    reward_model = "mean_score_chosen" in results.tuned  # a reward head's scores: nothing generates or is likely
    if results.task_metric in ("preference_accuracy", "label_gap") and results.judge is None and not reward_model:
        err.print(escape("Note: these score how likely the held-out answers are to each model, not what it writes. "
                         "To read what the tuned model says beside the base: tunesmith compare --prompts "
                         f"PROMPTS.jsonl {run_path} --base (--html FILE writes them side by side)."),
                  highlight=False, soft_wrap=True)
    if results.baselines:
        _print_baselines(results.baselines, results.tuned, results.baseline_comparison, results.metrics,
                         results.task_metric, results.examples, results.verdict)
    _print_add_ons(results, other)


def _baseline_names(text: str | None) -> list[str] | None:
    """--baselines a,b (or `all`) as a list; unknown names are refused before anything loads."""
    from tunesmith.eval.baselines import BASELINES

    if text is None:
        return None
    names = list(BASELINES) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BASELINES]
    if unknown or not names:
        raise TunesmithError(f"--baselines: unknown {', '.join(map(repr, unknown)) or 'empty list'}.",
                             f"Choose from {', '.join(BASELINES)}, or all.")
    return names


def _print_baselines(baselines: dict[str, Any], tuned: dict[str, Any] | None, comparisons: dict[str, Any],
                     metrics: list[str], task_metric: str, examples: int, verdict: str | None) -> None:
    """The cheaper alternatives beside the tuned model, cheapest first, and the verdict under them."""
    from tunesmith.eval.verdict import option_rows

    head, rows = option_rows(baselines, tuned, comparisons, metrics, task_metric)
    table = Table(title=f"Do you need to fine-tune? {examples} held-out examples")
    for column in head:
        table.add_column(column, justify="left" if column == "option" else "right")
    for row in rows:
        table.add_row(*map(escape, row))
    console = wide_console(140)
    console.print(table)
    if verdict:
        console.print(escape(verdict), highlight=False, soft_wrap=True)


def _print_add_ons(results: EvalResults, other: str | None) -> None:
    """The forgetting probes, judge and lm-eval figures, a table each, with the probes' verdict under theirs."""
    from tunesmith.eval.add_ons import add_on_tables

    console = wide_console(120)
    for block in add_on_tables(results):
        table = Table(title=block.title)
        for column in ("metric", other or "base", "tuned", "delta", "95% CI", "wins/losses/ties"):
            table.add_column(column, justify="left" if column == "metric" else "right", no_wrap=column != "metric")
        for metric, base, tuned, entry in block.rows:
            table.add_row(escape(metric), "" if base is None else score_text(metric, base), score_text(metric, tuned),
                          *_comparison_cells(entry))
        console.print(table)
        console.print(escape(block.note), highlight=False, soft_wrap=True)


PEER_LOST = ("gloo", "NCCL", "Connection closed by peer", "Connection reset by peer", "Broken pipe")


def _peer_failure(exc: Exception) -> str | None:
    """What to say where this process is one rank of several (WORLD_SIZE > 1) and `exc` is its collective failing
    (torch.distributed's DistError, or gloo's / NCCL's RuntimeError) because another rank stopped: killed, out of
    memory, or stopped by the launcher after its own error. None for any other exception."""
    from tunesmith.errors import first_line

    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return None
    distributed = sys.modules.get("torch.distributed")
    text = f"{type(exc).__name__}: {exc}"
    if not (isinstance(exc, getattr(distributed, "DistError", ())) or any(mark in text for mark in PEER_LOST)):
        return None
    return (f"rank {os.environ.get('RANK', '?')} cannot go on: another process of the training group stopped "
            f"({first_line(exc)}). The launcher stops the others and names the run; the first error of the "
            "launch's output is the one that stopped it.")


def _comparison_cells(entry: Comparison | None) -> list[str]:
    """delta, 95% CI and the per-example tally of one metric; blank where the metric is not compared."""
    if entry is None:
        return ["", "", ""]
    extra = entry.model_extra or {}
    tally = "/".join(str(extra[k]) for k in ("wins", "losses", "ties")) if "wins" in extra else ""
    return [f"{entry.delta:+.4f}", interval_text({**extra, "ci95": entry.ci95}, "{:+.4f}".format), tally]


def _cell(value: Any) -> str:
    """A score in a table: 4 decimals, or "-" where it was not measured (probes off, no task metric)."""
    return "-" if value is None else score_text("", float(value)) if isinstance(value, int | float) else str(value)


def main() -> None:
    """Console entry point: run the app, turning errors into messages and exit codes."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _hide_library_notices()
    try:
        try:
            code = app(args=_debug_first(sys.argv[1:]), prog_name="tunesmith", standalone_mode=False)
        except (OSError, subprocess.CalledProcessError) as exc:
            fixable = None if state["debug"] else _environment_error(exc)  # --debug: the traceback, as asked
            if fixable is None:
                raise
            raise fixable from exc
    except TunesmithError as exc:
        state["error"] = {"message": exc.message, "hint": exc.hint}  # the sweep child reports it
        colour = "red" if exc.label == "Error" else "yellow"
        err.print(f"[bold {colour}]{exc.label}:[/bold {colour}] {escape(exc.message)}", highlight=False,
                  soft_wrap=True)
        if exc.hint:
            err.print(f"[bold]Hint:[/bold] {escape(exc.hint)}", highlight=False, soft_wrap=True)
        print_json_error(exc.exit_code)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("\n[bold yellow]Stopped:[/bold yellow] interrupted.", highlight=False)
        sys.exit(130)
    except _command_line_errors() as exc:
        code = _report_command_line_error(exc)
        print_json_error(code)
        sys.exit(code)
    except Exception as exc:  # the last resort: report, don't dump
        if state["debug"]:
            raise
        peer = _peer_failure(exc)
        if peer is not None:  # one rank of several: the others' stop ended its collective, not a bug of its own
            state["error"] = {"message": peer, "hint": None}
            err.print(f"[bold yellow]Stopped:[/bold yellow] {escape(peer)}", highlight=False, soft_wrap=True)
            print_json_error(1)
            sys.exit(1)
        state["error"] = {"message": f"Internal error: {type(exc).__name__}: {exc}", "hint": None}
        err.print(f"[bold red]Internal error:[/bold red] {escape(f'{type(exc).__name__}: {exc}')}", highlight=False)
        err.print("Run again with --debug for the traceback, and report it.")
        print_json_error(1)
        sys.exit(1)
    if isinstance(code, int) and code:  # outside standalone mode, typer returns a command's typer.Exit(n) as n
        sys.exit(code)


def _debug_first(args: list[str]) -> list[str]:
    """The command line with `--debug` moved before the command, where the app takes it: the message that suggests it
    is read after a command failed, and `tunesmith train r.yaml --debug` is what a user types."""
    options = args[:args.index("--")] if "--" in args else args  # after "--" every word is an argument
    if "--debug" not in options[1:]:
        return args
    index = options.index("--debug", 1)
    return ["--debug", *args[:index], *args[index + 1:]]


USER_FIXABLE_ERRNOS = {errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT, errno.ENAMETOOLONG}


def _environment_error(exc: BaseException) -> TunesmithError | None:
    """A full disk, a folder without write permission or a tool that failed, said as the user's to fix (exit 1)
    rather than as tunesmith's bug; None for anything else (reported as an internal error)."""
    if isinstance(exc, subprocess.CalledProcessError):
        command = exc.cmd if isinstance(exc.cmd, str) else " ".join(shell_arg(part) for part in exc.cmd)
        said = exc.stderr or exc.output or b""
        said = (said.decode(errors="replace") if isinstance(said, bytes) else said).strip()[-600:]
        return TunesmithError(f"`{command}` failed (exit code {exc.returncode}){': ' + said if said else '.'}",
                              "Run that command yourself to see its whole output.", exit_code=1)
    if isinstance(exc, OSError) and exc.errno in USER_FIXABLE_ERRNOS and exc.filename:  # a file: the user's to fix
        where = f" {exc.filename}"
        hints = {errno.ENOSPC: "Free disk space (`tunesmith cache list` shows what tunesmith keeps), or write "
                               "elsewhere (--runs-dir, --out).", errno.EDQUOT: "Free space within your disk quota, or "
                               "write elsewhere (--runs-dir, --out)."}
        return TunesmithError(f"Could not write or read{where}: {exc.strerror}.",
                              hints.get(exc.errno, "Check the folder's permissions, or write elsewhere (--runs-dir, "
                                                   "--out)."), exit_code=1)
    return None


def print_json_error(exit_code: int) -> None:
    """Under `--json`, a failed command still puts one JSON document on stdout, `{"error", "hint", "exit_code"}`,
    so a script that parses it reads why instead of an empty string (the message is on stderr as well)."""
    if "--json" in sys.argv[1:] and state["error"] and not stdout_state["json_printed"]:
        print(json.dumps({"error": state["error"]["message"], "hint": state["error"]["hint"], "exit_code": exit_code},
                         ensure_ascii=False))


def _hide_library_notices() -> None:
    """Drop bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community ..." line, DeepSpeed's
    "Setting accelerator to CPU" one and transformers' `is_gradient_checkpointing` deprecation.

    bitsandbytes 0.50.2 logs it when imported on a CPU with AVX512-BF16 but without the `kernels` package,
    and peft 0.21.2 imports bitsandbytes whenever it is installed: on `import peft` (peft/helpers.py, which
    transformers 5.24's trainer modules load) and again when it builds any LoRA layer (lora/model.py). So
    every command printed it, a recipe typo included, though only a qlora adapter uses bitsandbytes, and the
    import cannot be deferred without patching peft. The line names an optional faster 4-bit CPU kernel,
    nothing to act on, so only that message is filtered. It is set here, before anything loads peft, rather
    than in train/upstream.py: importing tunesmith.train loads TRL, then peft, then bitsandbytes.
    """
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
        lambda record: not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward"))
    # DeepSpeed's "Setting accelerator to CPU" is dropped where tunesmith/__init__.py sends its log to stderr.
    # And transformers 5's FutureWarning on `is_gradient_checkpointing`, which TRL and PEFT read when they train or
    # generate: eval, merge and export printed it too (train/upstream.py hides it for library use of train; importing
    # it here would load TRL for every command).
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    # PEFT 0.22 checks a loaded adapter's rank_pattern keys against module names, and an AdaLoRA adapter's are the
    # names of its lora_E vectors, which PEFT's own AdaLoRA applies after that check (the ranks load as trained):
    # the warning listed every one of them (210 on SmolLM2) at each eval and merge. Only that case is hidden.
    warnings.filterwarnings("ignore", message=r"The following rank_pattern keys did not match any targeted module "
                                              r"or parameter and were ignored: \[('[^']*\.lora_E'(, )?)+\]\.$",
                            category=RuntimeWarning)


def _command_line_errors() -> tuple[type[BaseException], ...]:
    """What typer raises for a bad command line (and Abort) when it is not in standalone mode.

    typer 0.29 vendors click as `typer._click`: its ClickException derives from typer.TyperException, not
    from click's, so a check for click's classes misses it (and a typo became an "Internal error"). An
    older typer (pyproject allows >=0.15) raises click's own classes; both are caught.
    """
    kinds: list[type[BaseException]] = [typer.Abort, typer.Exit]
    if hasattr(typer, "TyperException"):
        kinds.append(typer.TyperException)
    try:
        import click

        kinds += [click.exceptions.ClickException, click.exceptions.Abort, click.exceptions.Exit]
    except ImportError:
        pass
    return tuple(kinds)


def _report_command_line_error(exc: BaseException) -> int:
    """Print a command-line error the way users expect from a CLI; returns the exit code.

    A usage error (unknown option or command, missing argument, bad value) is the user's, never an
    internal error: the command's usage line, where to get help, the error with a did-you-mean, exit 2.
    """
    ctx = getattr(exc, "ctx", None)
    if ctx is None and hasattr(exc, "ctx"):  # click raises "Option '--quant' requires an argument" without one
        ctx = _context_of(sys.argv[1:])
    state["error"] = {"message": _usage_message(exc), "hint": "Check the command line (see --help)."}
    if ctx is not None and type(exc).__name__ != "NoArgsIsHelpError":  # that one's message is the help itself
        err.print(escape(ctx.get_usage()), highlight=False, soft_wrap=True)
        err.print(f"Try '{escape(ctx.command_path)} --help' for help.", highlight=False, soft_wrap=True)
        err.print(f"[bold red]Error:[/bold red] {escape(_usage_message(exc))}", highlight=False, soft_wrap=True)
    elif hasattr(exc, "show"):
        exc.show()
    elif not hasattr(exc, "exit_code"):  # Abort (Ctrl-D at a prompt)
        err.print("Aborted.")
    return getattr(exc, "exit_code", 1)


def _context_of(argv: list[str]) -> Any:
    """A context for the (sub)command that `argv` names, for its usage line: the words that name a group's
    command are followed down; options and other words are passed over."""
    command = typer.main.get_command(app)
    ctx = command.make_context("tunesmith", [], resilient_parsing=True)
    for word in argv:
        sub = command.get_command(ctx, word) if hasattr(command, "get_command") else None
        if sub is not None:
            command, ctx = sub, sub.make_context(word, [], parent=ctx, resilient_parsing=True)
    return ctx


def _usage_message(exc: BaseException) -> str:
    """The error, with a did-you-mean for an unknown option; click offers its close matches as
    `possibilities` and words them "(Possible options: ...)". (typer already suggests unknown commands.)"""
    close = getattr(exc, "possibilities", None)
    if close:
        return f"{str(getattr(exc, 'message', exc)).rstrip('.')}. Did you mean {' or '.join(sorted(close))}?"
    return exc.format_message() if hasattr(exc, "format_message") else str(exc)
