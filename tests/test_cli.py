"""The command line: every command documents an example; user errors exit 2 with a hint, no traceback."""

import subprocess
import sys

import pytest

COMMANDS = [["quickstart"], ["train"], ["eval"], ["export"], ["models", "list"], ["models", "pull"],
            ["models", "import"], ["data", "inspect"], ["data", "prepare"], ["data", "preview"], ["sweep"],
            ["compare"], ["chat"], ["merge"], ["push"], ["plan"], ["doctor"], ["launch-script"]]


def tunesmith(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunesmith", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(command):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Example: tunesmith" in result.output


def test_bad_recipe_exits_2_with_key_line_and_hint(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  train: t.jsonl\ntraining:\n  ephocs: 2\n", encoding="utf-8")
    result = tunesmith("train", str(recipe))
    assert result.returncode == 2
    assert "training.ephocs (line 4): unknown key. Did you mean 'epochs'?" in result.stderr
    assert "Traceback" not in result.stderr


def test_not_a_run_directory_exits_2(tmp_path):
    result = tunesmith("eval", str(tmp_path))
    assert result.returncode == 2 and "not a tunesmith run directory" in result.stderr


def test_missing_dataset_names_the_file(tmp_path, tiny_model_dir):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model:\n  source: {tiny_model_dir}\ndata:\n  train: missing.jsonl\n", encoding="utf-8")
    result = tunesmith("train", str(recipe), "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 2
    assert "missing.jsonl" in result.stderr and "Hint:" in result.stderr


def help_examples() -> list[str]:
    """Every `Example: tunesmith ...` line of every command's docstring."""
    import typer

    from tunesmith.cli import app

    examples = []

    def walk(command) -> None:
        for line in (command.help or "").splitlines():
            if line.strip().startswith("Example: tunesmith "):
                examples.append(line.strip().removeprefix("Example: "))
        for child in getattr(command, "commands", {}).values():
            walk(child)

    walk(typer.main.get_command(app))
    return examples


@pytest.mark.parametrize("example", help_examples())
def test_every_help_example_parses_as_written(example):
    """A user copies the example: its arguments and options must be the command's (parsed, not run)."""
    import shlex

    import typer

    from tunesmith.cli import app

    command = typer.main.get_command(app)
    words = shlex.split(example)[1:]
    while hasattr(command, "commands") and words and words[0] in command.commands:
        command = command.commands[words.pop(0)]
    command.make_context(command.name, list(words))  # raises a click UsageError for an unknown option or argument
