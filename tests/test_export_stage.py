"""One export entry point: every format a recipe names is written by whoever runs the pipeline
(`train --evaluate`, the quickstart, sweeps), and impossible format/adapter pairs fail at validation."""

from __future__ import annotations

import json

import gguf
import pytest

from tests.conftest import make_tiny_project
from tunesmith.config import load_recipe
from tunesmith.errors import RecipeError
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


@pytest.mark.parametrize("adapter", ["{kind: dora}", "{kind: full}", "{kind: ia3}"])
def test_a_gguf_lora_of_an_adapter_it_cannot_hold_is_refused_before_training(tmp_path, tiny_model_dir, adapter):
    project = make_tiny_project(tmp_path, tiny_model_dir)
    with pytest.raises(RecipeError, match="needs a plain LoRA adapter"):
        load_recipe(project, [f"adapter={adapter}", "export.formats=[gguf-lora]"])
    with pytest.raises(RecipeError, match=r"export\.ollama_adapter: true needs a plain LoRA"):
        load_recipe(project, [f"adapter={adapter}", "export.formats=[ollama]", "export.ollama_adapter=true"])
    load_recipe(project, [f"adapter={adapter}", "export.formats=[gguf]"])  # the merged model exports fine
