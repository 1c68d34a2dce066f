"""Load a tokenizer and a causal LM for training or evaluation, with the checks users need.

The pad token matters: when it equals EOS (SmolLM2 does this), masking labels by pad id would hide
every end-of-turn token and the tuned model would never stop. tunesmith builds labels from masks,
never from token ids, and only fills a missing pad token here.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tunesmith.errors import ModelSourceError, first_line


def pick_device(requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def pick_dtype(precision: str, device: str) -> torch.dtype:
    """fp32 on CPU (bf16 is emulated and slow there); bf16 on GPUs that support it."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(model_dir: Path, fill_pad: bool = True, chat_template: str | None = None):
    """Load the tokenizer, with `chat_template` (Jinja text: the recipe's model.chat_template) in place of its own,
    and (unless told not to) fill a missing pad from EOS. A tokenizer without a chat template loads (raw text needs
    none); rendering conversations is refused by the template contract (data/contract.py)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:  # no tokenizer files (a bare model.save_pretrained), a broken one
        raise ModelSourceError(f"{model_dir}: its tokenizer does not load ({first_line(exc)}).",
                               "A model folder needs the tokenizer beside config.json and the weights "
                               "(tokenizer.json or tokenizer.model, tokenizer_config.json): save it there with "
                               "`tokenizer.save_pretrained(folder)`, or copy it from the model it was made from."
                               ) from None
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    if fill_pad and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def stop_token_ids(tokenizer: Any, generation_eos: Any = None) -> list[int]:
    """The token ids generation stops at: the tokenizer's eos_token_id and the model's generation config
    `eos_token_id` (`generation_eos`: an id or a list; Llama-3 and Gemma end a turn with a token of their own there,
    not the tokenizer's EOS). When None, read from generation_config.json beside the tokenizer, if any."""
    if generation_eos is None:
        config = Path(str(getattr(tokenizer, "name_or_path", "") or "")) / "generation_config.json"
        try:
            generation_eos = json.loads(config.read_text(encoding="utf-8")).get("eos_token_id")
        except (OSError, ValueError):
            generation_eos = None
    extra = generation_eos if isinstance(generation_eos, list) else [generation_eos]
    ids = [tokenizer.eos_token_id, *extra]
    return list(dict.fromkeys(i for i in ids if isinstance(i, int)))


def context_length(model_dir: Path) -> int | None:
    """The longest sequence the model's position embeddings cover (config `max_position_embeddings`, of the text
    model in a multimodal config); None when the config does not say."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
    return int(value) if value else None


@contextlib.contextmanager
def expected_missing_head(task: str) -> Iterator[None]:
    """For a reward model built from a causal LM, quiet transformers' load report, which calls the new score head
    MISSING and advises training it: that is what a reward run is about to do (other warnings stay)."""
    if task != "SEQ_CLS":
        yield
        return
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def load_model(model_dir: Path, dtype: torch.dtype = torch.float32, device: str = "cpu",
               quantization_config: Any = None, task: str = "CAUSAL_LM"):
    """Load a causal LM (or, with task SEQ_CLS, a one-score reward model) from a local checkpoint directory.

    A `quantization_config` (transformers' BitsAndBytesConfig, for QLoRA) quantizes the weights while they
    load; quantized models cannot be moved with `.to()`, so they are placed on `device` by a device map.
    A reward model built from a causal LM gets a new `score` head (random, from torch's current seed) and
    drops the LM head; the caller sets `config.pad_token_id` to its tokenizer's, which the head pools by.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    placement = {} if quantization_config is None else {"quantization_config": quantization_config,
                                                         "device_map": {"": device}}
    auto, head = (AutoModelForSequenceClassification, {"num_labels": 1}) if task == "SEQ_CLS" else (
        AutoModelForCausalLM, {})
    with warnings.catch_warnings(), expected_missing_head(task):
        warnings.simplefilter("ignore", category=UserWarning)
        try:
            model = auto.from_pretrained(model_dir, dtype=dtype, **placement, **head)
        except OSError as exc:  # no weights, a truncated or unreadable file
            raise ModelSourceError(f"{model_dir}: the model's weights do not load ({first_line(exc)}).",
                                   "Check the folder holds the weights config.json describes (model.safetensors, "
                                   "or its shards and their index), copied whole.") from None
    if getattr(model, "hf_quantizer", None) is not None and "gguf" in str(model.hf_quantizer).lower():
        raise ModelSourceError(
            f"{model_dir} loads as a GGUF-quantized model, which cannot be trained or saved.",
            "Import it first: `tunesmith models import FILE.gguf`.",
        )
    return model if quantization_config is not None else model.to(device)
