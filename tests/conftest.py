"""Shared fixtures: a real BPE tokenizer trained on the fly and tiny llama models built from a config.

The tokenizer mirrors the embedded model's traps on purpose: a ChatML template with a default system
turn, and `pad_token == eos_token == "<|im_end|>"`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ORDERS = REPO / "examples" / "data" / "orders"


def pytest_configure(config: pytest.Config) -> None:
    """Tests keep their caches (serve GGUFs, replay rows, matmul peaks) in a home of their own under .pytest_cache,
    not in the user's ~/.cache/tunesmith; its `models` is the user's, so the embedded model is fetched once for both.
    Shared by the xdist workers and kept between runs, as the user's cache would be."""
    import contextlib
    import os

    from tunesmith.models.home import models_dir

    user_models = models_dir()
    cache = getattr(config, "cache", None)
    home = cache.mkdir("tunesmith-home") if cache is not None else Path(config.rootpath) / ".tunesmith-test-home"
    home.mkdir(parents=True, exist_ok=True)
    if home.resolve() != user_models.parent.resolve():
        user_models.mkdir(parents=True, exist_ok=True)
        link = home / "models"
        if link.is_symlink() and link.resolve() != user_models.resolve():  # TUNESMITH_HOME moved since
            link.unlink()
        with contextlib.suppress(FileExistsError):  # made by an earlier run or the other worker
            link.symlink_to(user_models, target_is_directory=True)
    os.environ["TUNESMITH_HOME"] = str(home)


def load_example_generator(name: str):
    """examples/data/`name`.py (a dataset generator, not a package module) loaded as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / "data" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def orders_texts() -> list[str]:
    texts = []
    for name in ("train.jsonl", "eval.jsonl"):
        for line in (ORDERS / name).read_text(encoding="utf-8").splitlines():
            texts += [m["content"] for m in json.loads(line)["messages"]]
    return [*texts, "You are a helpful assistant.", "Say hello in one short sentence.", "system user assistant"]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(orders_texts(), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tokenizer.chat_template = CHATML
    path = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(path)
    return path


def build_tiny_llama(tokenizer_dir: Path, target: Path, seed: int = 0, context: int = 512) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
                         tie_word_embeddings=True, initializer_range=0.3, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="session")
def tiny_model_dir(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tokenizer_dir, tmp_path_factory.mktemp("tiny-llama"))


QUICKSTART_SHORT = ["training.max_steps=4", "training.logging_steps=1", "eval.max_examples=10"]


@pytest.fixture(scope="session")
def smollm2_quickstart_run(tmp_path_factory: pytest.TempPathFactory):
    """A short quickstart (train, eval, export, card) on the real embedded SmolLM2, shared by the slow tests
    so that they train it once."""
    from tunesmith.quickstart import quickstart_recipe, run_pipeline

    return run_pipeline(quickstart_recipe(QUICKSTART_SHORT), runs_dir=tmp_path_factory.mktemp("smollm2-quickstart"))


TINY_RECIPE = """
name: tiny
model:
  source: {model_dir}
data:
  train: data/train.jsonl
  eval: data/eval.jsonl
  max_length: 128
  replay:
    ratio: 0  # tests/test_replay_budget.py covers replay; the base's answers would cost each tiny model seconds
adapter:
  r: 8
  alpha: 16
  dropout: 0.0
training:
  max_steps: 48
  lr: 3.0e-2
  batch_size: 8
  packing: false
  logging_steps: 4
  save_steps: 24
  warmup_ratio: 0.0
eval:
  max_new_tokens: 12
  batch_size: 6
  probes: false  # the 48 forgetting probes cost seconds per eval; tests/test_eval_probes.py turns them on
"""


def make_tiny_project(root: Path, model_dir: Path, train_rows: int = 64, eval_rows: int = 12) -> Path:
    """A recipe and a small slice of the bundled orders data under `root`; returns the recipe path."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    for name, count in (("train.jsonl", train_rows), ("eval.jsonl", eval_rows)):
        lines = (ORDERS / name).read_text(encoding="utf-8").splitlines()[:count]
        (root / "data" / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    recipe = root / "recipe.yaml"
    recipe.write_text(TINY_RECIPE.format(model_dir=model_dir), encoding="utf-8")
    return recipe


def lora_tiny(model_dir: Path, **config: object):
    """The tiny llama at `model_dir` under PEFT's LoRA (r 8, alpha 16, every linear; `config` over those), with a
    trained-looking B (N(0, 0.05), seed 0), so that A and the inputs below get gradients through it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    settings = {"r": 8, "lora_alpha": 16, "target_modules": "all-linear", **config}
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                           LoraConfig(**settings))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    return model
