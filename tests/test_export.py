"""Merged checkpoints give the same logits as base + adapter."""

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from tunesmith.export import export_merged


def test_merged_logits_equal_base_plus_adapter(tmp_path, tiny_model_dir):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(tmp_path / "adapter")

    merged_dir, reported = export_merged(tiny_model_dir, tmp_path / "adapter", tmp_path / "merged")

    ids = torch.randint(0, 500, (2, 17))
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "adapter")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        expected, got, untouched = (m(input_ids=ids).logits for m in (reference, merged, plain))
    assert (expected - got).abs().max() < 1e-4
    assert reported < 1e-4
    assert (expected - untouched).abs().max() > 1e-2  # the adapter really changes the model
    assert merged.config.tie_word_embeddings
    assert (merged_dir / "chat_template.jinja").is_file() or "chat_template" in (
        merged_dir / "tokenizer_config.json").read_text()
