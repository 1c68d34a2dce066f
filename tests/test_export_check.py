"""`tunesmith export RUN --check`: the exports as they are now, checked again without writing anything; and what
each consumer (llama.cpp's embedded template, llama.cpp's tokenizer, Ollama's TEMPLATE) makes of the run's own
held-out conversations against the prompt eval gave the model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import make_tiny_project
from tests.test_ollama_export import S, U, chat, family_tokenizer, go_render, go_renderer  # noqa: F401
from tunesmith.cli import app
from tunesmith.config import load_recipe
from tunesmith.export.ollama_templates import translate_chat_template
from tunesmith.export.recheck import Prompt, agreement_check


def checks_of(result) -> dict[tuple[str, str], dict]:
    """The --json report's checks by (section, name)."""
    return {(check["section"], check["name"]): check for check in json.loads(result.stdout)["checks"]}


def failed_names(result) -> set[str]:
    return {name for (_, name), check in checks_of(result).items() if check["status"] == "fail"}


def test_a_fresh_export_passes_and_each_change_since_is_named(tmp_path, tiny_model_dir):
    pytest.importorskip("llama_cpp")
    from tunesmith.export.gguf import write_gguf
    from tunesmith.quickstart import run_pipeline

    recipe = load_recipe(make_tiny_project(tmp_path, tiny_model_dir, train_rows=16, eval_rows=4),
                         ["training.max_steps=1", "export.formats=[gguf, ollama]", "export.quant=F32",
                          "eval.max_examples=2"])
    run = run_pipeline(recipe, runs_dir=tmp_path / "runs")
    fresh = CliRunner().invoke(app, ["export", str(run.path), "--check", "--json"])
    assert fresh.exit_code == 0, fresh.output
    checks = checks_of(fresh)
    assert {check["status"] for check in checks.values()} == {"pass"}, fresh.stdout
    assert {name for _, name in checks} == {"merged checkpoint", "gguf F32", "ollama", "gguf F32: next tokens",
                                            "gguf F32: template", "gguf F32: tokens", "ollama: template"}
    assert "4/4 conversations" in checks["chat template on the run's own conversations", "gguf F32: template"][
        "detail"]

    gguf_file = run.exports_dir / "gguf" / "tiny.F32.gguf"
    other = tmp_path / "other-template"  # the same weights converted again with another generation prompt
    shutil.copytree(run.exports_dir / "merged", other)
    template_file = other / "chat_template.jinja"
    template_file.write_text(template_file.read_text(encoding="utf-8")
                             + "{% if add_generation_prompt %}<think>{% endif %}", encoding="utf-8")
    write_gguf(other, gguf_file, "F32", name="tiny")
    modelfile = run.exports_dir / "ollama" / "Modelfile"
    modelfile.write_text(modelfile.read_text(encoding="utf-8").replace('assistant\n"""', 'assistant\n\n"""'),
                         encoding="utf-8")
    changed = CliRunner().invoke(app, ["export", str(run.path), "--check", "--json", "--no-verify"])
    assert changed.exit_code == 1, changed.output
    assert failed_names(changed) == {"gguf F32", "gguf F32: template", "ollama: template"}
    checks = checks_of(changed)
    assert "not the file export wrote" in checks["exported files", "gguf F32"]["detail"]
    template = checks["chat template on the run's own conversations", "gguf F32: template"]["detail"]
    assert "on 4/4 conversations" in template and "this gives '<think>'" in template
    ollama = checks["chat template on the run's own conversations", "ollama: template"]
    assert "is not the one export wrote (edited since)" in ollama["detail"]
    assert ollama["fix"].endswith("--format ollama --quant F32")  # the export that writes this Modelfile again
    assert not any(name.endswith("next tokens") for _, name in checks)  # --no-verify: llama.cpp not run again

    with gguf_file.open("r+b") as handle:  # an interrupted copy over the file: cut short
        handle.truncate(gguf_file.stat().st_size // 2)
    cut = CliRunner().invoke(app, ["export", str(run.path), "--check", "--json"])
    assert cut.exit_code == 1 and "no longer a readable GGUF" in checks_of(cut)["exported files", "gguf F32"]["detail"]
    assert "llama.cpp cannot load" in checks_of(cut)["llama.cpp agreement", "gguf F32: next tokens"]["detail"]

    (run.exports_dir / "ollama" / "model-F32.gguf").unlink()
    gone = CliRunner().invoke(app, ["export", str(run.path), "--check", "--json", "--no-verify"])
    assert "model-F32.gguf, which is not in" in checks_of(gone)["exported files", "ollama"]["detail"]

    refused = CliRunner().invoke(app, ["export", str(run.path), "--check", "--format", "gguf"])
    assert refused.exit_code != 0 and "--check writes nothing, so --format would do nothing" in str(refused.exception)


def test_the_ollama_check_finds_content_a_go_template_cannot_trim(tokenizer_dir, go_renderer, tmp_path):  # noqa: F811
    """Llama 3's template trims each message; Go templates cannot, so the export-time probes (no padding) pass while
    a run whose rows carry leading or trailing whitespace is prompted otherwise by Ollama: the check says so."""
    tokenizer = family_tokenizer(tokenizer_dir, "llama3")
    translation = translate_chat_template(tokenizer, adds_bos=False)  # the export-time probes pass
    conversations = [chat((U, "Plain question")), chat((S, "Be brief."), (U, "  padded question\n"))]
    prompts = [Prompt(c, None, tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True), [])
               for c in conversations]
    go = go_render(go_renderer, translation.go_template, conversations, tmp_path)
    assert go == [translation.mirror(c) for c in conversations]  # the mirror is what Ollama renders
    assert go[0] == prompts[0].text and go[1] != prompts[1].text

    check = agreement_check("ollama: template", "the Modelfile's llama3 TEMPLATE", prompts, go, "export again")
    assert check.status == "fail"
    assert "on 1/2 conversations; held-out conversation 2" in check.detail and "'  padded question\\n" in check.detail
    assert agreement_check("ollama: template", "the TEMPLATE", prompts[:1], go[:1], "x").status == "pass"


def test_a_gguf_lora_is_run_on_the_base_gguf_and_one_applied_wrong_fails(tmp_path, tiny_model_dir):
    """Ollama's ADAPTER (and `llama-cli --lora`) apply the GGUF LoRA to the base GGUF: --check runs that pair in
    llama.cpp against the merged checkpoint. A LoRA written with its B matrices negated (a sign error in a
    conversion) is named twice: as a file export did not write, and by its next tokens."""
    pytest.importorskip("llama_cpp")
    from safetensors.torch import load_file, save_file

    from tunesmith.export.gguf_lora import write_gguf_lora
    from tunesmith.models.tuned import run_base_model
    from tunesmith.quickstart import run_pipeline

    recipe = load_recipe(make_tiny_project(tmp_path, tiny_model_dir, train_rows=16, eval_rows=4),
                         ["training.max_steps=1", "export.formats=[merged, ollama]", "export.ollama_adapter=true",
                          "export.quant=F32", "eval.max_examples=2"])
    run = run_pipeline(recipe, runs_dir=tmp_path / "runs")
    fresh = CliRunner().invoke(app, ["export", str(run.path), "--check", "--json"])
    assert fresh.exit_code == 0, fresh.output
    lora = checks_of(fresh)["llama.cpp agreement", "gguf-lora F32: next tokens"]
    assert lora["status"] == "pass" and lora["detail"].startswith("on base.F32.gguf: ")

    negated = Path(shutil.copytree(run.adapter_dir, tmp_path / "negated"))
    weights = negated / "adapter_model.safetensors"
    save_file({name: -tensor if "lora_B" in name else tensor for name, tensor in load_file(weights).items()}, weights)
    write_gguf_lora(negated, run_base_model(run), run.exports_dir / "gguf" / "tiny-lora-F32.gguf", "F32",
                    name="tiny-lora")
    wrong = CliRunner().invoke(app, ["export", str(run.path), "--check", "--json"])
    assert wrong.exit_code == 1
    assert {"gguf-lora F32", "gguf-lora F32: next tokens"} <= failed_names(wrong)
