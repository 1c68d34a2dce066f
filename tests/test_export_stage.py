"""One export entry point: every format a recipe names is written by whoever runs the pipeline
(`train --evaluate`, the quickstart, sweeps), and impossible format/adapter pairs fail at validation."""

from __future__ import annotations

import importlib.util
import json
import shutil

import gguf
import pytest

from tests.conftest import make_tiny_project
from tunesmith.config import load_recipe
from tunesmith.errors import RecipeError
from tunesmith.manifest import weights_signature
from tunesmith.quickstart import run_pipeline


def test_the_pipeline_writes_every_recipe_format_gguf_included(tmp_path, tiny_model_dir):
    recipe = load_recipe(make_tiny_project(tmp_path, tiny_model_dir, train_rows=16, eval_rows=4),
                         ["training.max_steps=2", "export.formats=[adapter, gguf, gguf-lora]", "export.quant=F32",
                          "eval.max_examples=2"])
    run = run_pipeline(recipe, runs_dir=tmp_path / "runs")
    manifest = json.loads((run.exports_dir / "manifest.json").read_text(encoding="utf-8"))
    assert (run.exports_dir / "adapter" / "adapter_config.json").is_file()
    merged_gguf = run.exports_dir / "gguf" / "tiny.F32.gguf"
    lora_gguf = run.exports_dir / "gguf" / "tiny-lora-F32.gguf"
    assert gguf.GGUFReader(merged_gguf).fields["general.architecture"] is not None
    assert gguf.GGUFReader(lora_gguf).fields["adapter.type"] is not None
    assert set(manifest) >= {"adapter", "gguf", "gguf_lora", "template_contract"}
    # the merged checkpoint the GGUF was converted from stays: recorded (a newcomer found 540 MB nobody named)
    assert manifest["merged"]["written_for"] == "gguf" and manifest["merged"]["path"] == "exports/merged"
    assert run.manifest().exports["merged"].path == "exports/merged"
    # the orders answers are JSON objects of one shape: llama.cpp can hold the GGUF's answers to their schema,
    # converted to a grammar by llama-cpp-python (the gguf extra); without it there is no grammar, and no claim
    record = run.manifest().exports["gguf"]
    from tunesmith.card import write_model_card

    card = write_model_card(run).read_text(encoding="utf-8").split("## Exports")[1]  # what was exported, and checked
    assert "- gguf: `exports/gguf/tiny.F32.gguf`" in card and "- gguf-lora: `exports/gguf/tiny-lora-F32.gguf`" in card
    verified = importlib.util.find_spec("llama_cpp") is not None  # the export checks the file where it can
    assert ("llama.cpp picks the merged model's next token at" in card) == verified
    from typer.testing import CliRunner

    from tunesmith.cli import app

    again = CliRunner().invoke(app, ["export", str(run.path), "--format", "adapter", "--quant", "Q8_0"])
    assert again.exit_code == 0, again.output  # a quant the format does not take is said to be ignored
    assert "--quant Q8_0 quantizes the gguf and ollama formats only" in " ".join(again.stderr.split())
    other = CliRunner().invoke(app, ["export", str(run.path), "--format", "gguf", "--quant", "F16", "--no-verify"])
    assert other.exit_code == 0, other.output  # a second quantization: both files stay recorded
    assert "merging again" not in other.stderr  # the kept merge is the adapter's, as recorded: reused
    merged_weights = json.loads((run.exports_dir / "manifest.json").read_text())["merged"]["weights"]
    shutil.copy(next(tiny_model_dir.glob("*.safetensors")), run.exports_dir / "merged" / "model.safetensors")
    stale = CliRunner().invoke(app, ["export", str(run.path), "--format", "gguf", "--quant", "F16", "--no-verify"])
    assert stale.exit_code == 0, stale.output  # the base copied over the kept merge: merged again, not converted
    assert "is not the merge of" in stale.stderr and "merging again" in " ".join(stale.stderr.split())
    assert weights_signature(run.exports_dir / "merged") == merged_weights
    exports = run.manifest().exports
    assert exports["gguf"].path == "exports/gguf/tiny.F16.gguf"
    assert exports["gguf:tiny.F32.gguf"].path == "exports/gguf/tiny.F32.gguf"
    card = write_model_card(run).read_text(encoding="utf-8")
    assert "`exports/gguf/tiny.F16.gguf`" in card and "`exports/gguf/tiny.F32.gguf`" in card
    if importlib.util.find_spec("llama_cpp") is None:
        assert record.grammar is None and not (run.exports_dir / "gguf" / "answers.gbnf").exists()
        return
    assert record.grammar == "exports/gguf/answers.gbnf"
    copied = CliRunner().invoke(app, ["export", str(run.path), "--format", "gguf", "--quant", "F16", "--no-verify",
                                      "--out", str(run.path.parent / "shipped")])
    assert copied.exit_code == 0, copied.output  # the GGUF goes out with the grammar its llama-cli command names
    assert (run.path.parent / "shipped" / "gguf" / "answers.gbnf").is_file()
    grammar = (run.path / record.grammar).read_text(encoding="utf-8")
    assert all(key in grammar for key in ("item", "qty", "size", "color", "when"))
    llama_cpp = pytest.importorskip("llama_cpp")
    from llama_cpp.llama_grammar import LlamaGrammar

    LlamaGrammar.from_string(grammar, verbose=False)  # llama.cpp parses it
    from tunesmith.export.grammar import choices_gbnf

    # and decodes under such a grammar: the untrained tiny model can only say one of the labels
    llm = llama_cpp.Llama(model_path=str(merged_gguf), n_ctx=128, verbose=False, seed=0)
    labels = ["billing", "refund_request", "how_to"]
    said = llm("Ticket: where is my money?\nQueue:", max_tokens=16, temperature=0,
               grammar=LlamaGrammar.from_string(choices_gbnf(labels), verbose=False))["choices"][0]["text"]
    llm.close()
    assert said in labels
    card = write_model_card(run).read_text(encoding="utf-8")  # two GGUF exports share one grammar: said once
    assert card.count("--grammar-file exports/gguf/answers.gbnf") == 1
    assert "llama-cli -m exports/gguf/tiny.F16.gguf --grammar-file" in card  # the newest of the two


def test_a_label_grammar_names_each_label_literally():
    from tunesmith.export.grammar import choices_gbnf

    grammar = choices_gbnf(["billing", 'say "hi"', "a\\b"])
    assert grammar == 'root ::= "billing" | "say \\"hi\\"" | "a\\\\b"\n'
    llama_grammar = pytest.importorskip("llama_cpp.llama_grammar")
    llama_grammar.LlamaGrammar.from_string(grammar, verbose=False)


@pytest.mark.parametrize("adapter", ["{kind: dora}", "{kind: full}", "{kind: ia3}"])
def test_a_gguf_lora_of_an_adapter_it_cannot_hold_is_refused_before_training(tmp_path, tiny_model_dir, adapter):
    project = make_tiny_project(tmp_path, tiny_model_dir)
    with pytest.raises(RecipeError, match="needs a plain LoRA adapter"):
        load_recipe(project, [f"adapter={adapter}", "export.formats=[gguf-lora]"])
    with pytest.raises(RecipeError, match=r"export\.ollama_adapter: true needs a plain LoRA"):
        load_recipe(project, [f"adapter={adapter}", "export.formats=[ollama]", "export.ollama_adapter=true"])
    load_recipe(project, [f"adapter={adapter}", "export.formats=[gguf]"])  # the merged model exports fine


def test_answers_that_are_a_few_repeated_numbers_get_no_grammar_of_the_values_seen(tmp_path, capsys, monkeypatch):
    from tunesmith.config import validate_recipe
    from tunesmith.export.grammar import closed_answers_constraint
    from tunesmith.runs import Run

    def saved(answers: list[str]) -> None:  # the training rows the run's data stage saved
        rows = [{"messages": [{"role": "user", "content": "How many?"}, {"role": "assistant", "content": answer}]}
                for answer in answers]
        monkeypatch.setattr(Run, "train_rows", lambda self: rows)

    recipe, run = validate_recipe({"data": {"train": "t.jsonl"}}), Run(tmp_path)
    saved([str(2 + n % 8) for n in range(40)])  # counts 2-9: a label set by its repeats
    assert closed_answers_constraint(recipe, run) is None
    assert "the answers are numbers (2, 3, 4, 5, 6, 7, 8, 9)" in capsys.readouterr().err
    saved([["billing", "refund", "login"][n % 3] for n in range(30)])  # words: the closed set holds
    assert closed_answers_constraint(recipe, run).kind == "choices"
    chosen = validate_recipe({"data": {"train": "t.jsonl"}, "eval": {"choices": ["1", "2", "3"]}})
    saved([str(1 + n % 3) for n in range(30)])  # eval.choices says the numbers are the set
    assert closed_answers_constraint(chosen, run).kind == "choices"


def test_the_grammar_command_names_the_gguf_files_beside_it(tmp_path):
    """An Ollama export with --ollama-adapter holds a base and a LoRA: `-m *.gguf` loaded the LoRA as the model."""
    from tunesmith.export.grammar import llama_cli_command

    ollama = tmp_path / "exports" / "ollama"
    ollama.mkdir(parents=True)
    for name in ("base-Q8_0.gguf", "adapter-F16.gguf", "answers.gbnf"):
        (ollama / name).write_text("x")
    assert llama_cli_command(ollama / "answers.gbnf", tmp_path) == (
        "llama-cli -m exports/ollama/base-Q8_0.gguf --lora exports/ollama/adapter-F16.gguf "
        "--grammar-file exports/ollama/answers.gbnf")
    gguf = tmp_path / "exports" / "gguf"
    gguf.mkdir()
    for name in ("run.F16.gguf", "run-lora-F16.gguf", "answers.gbnf"):
        (gguf / name).write_text("x")
    assert llama_cli_command(gguf / "answers.gbnf", tmp_path) == (
        "llama-cli -m exports/gguf/run.F16.gguf --grammar-file exports/gguf/answers.gbnf")
