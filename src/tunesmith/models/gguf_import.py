"""Turn a llama-family GGUF into an ordinary, trainable safetensors checkpoint.

transformers dequantizes a GGUF on load but flags the model as quantized, so it refuses
`save_pretrained` and training. Building a fresh model from the same config without the
quantization entry and loading the state dict into it gives a plain model that saves normally.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tunesmith.errors import ModelSourceError
from tunesmith.models.home import is_model_name, models_dir

GGUF_MAGIC = b"GGUF"  # the first four bytes of every GGUF file (ggml's gguf.md, "File Structure")



QUANT_SUFFIX = re.compile(r"[.\-_](?:b?f16|f32|q\d(?:_[a-z0-9]+)*|iq\d(?:_[a-z0-9]+)*)$", re.IGNORECASE)


def gguf_model_name(gguf_path: Path) -> str:
    """The cache name a GGUF file is imported under: its stem in lower case, without the quant type its name ends in
    (`my-model.Q8_0.gguf` -> `my-model`, `tinyllama-Q4_K_M.gguf` -> `tinyllama`): the dequantized model is not
    that type."""
    stem = gguf_path.stem.lower()
    return QUANT_SUFFIX.sub("", stem) or stem

def import_gguf(gguf_path: Path, name: str | None = None) -> Path:
    """Dequantize `gguf_path` and save it (weights, tokenizer, chat template) into the model cache."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tunesmith.runs import atomic_directory

    gguf_path = Path(gguf_path).resolve()
    if gguf_path.is_dir():
        hint = ("A Hugging Face-format folder needs no import: name it in model.source (`--set model.source="
                f"{gguf_path}`)." if (gguf_path / "config.json").is_file() else "Name the .gguf file itself.")
        raise ModelSourceError(f"{gguf_path} is a folder; `models import` takes one .gguf file.", hint)
    if not gguf_path.is_file():
        raise ModelSourceError(f"GGUF file not found: {gguf_path}", "Check the path.")
    with gguf_path.open("rb") as file:
        if file.read(4) != GGUF_MAGIC:
            raise ModelSourceError(f"{gguf_path} is not a GGUF file (it does not start with the GGUF magic bytes).",
                                   "Name a .gguf file (llama.cpp's format), as `tunesmith export --format gguf` "
                                   "or llama.cpp's convert_hf_to_gguf.py writes it.")
    name = name or gguf_model_name(gguf_path)
    if not is_model_name(name):
        raise ModelSourceError(f"--name {name!r} cannot name a model in the cache: use letters, digits, '.', '_' and "
                               "'-', starting with a letter or digit (it becomes a folder under "
                               f"{models_dir()}).", "Pass a plain --name, e.g. --name my-model.")
    target = models_dir() / name
    print(f"Dequantizing {gguf_path.name} into {target} ...", file=sys.stderr)
    folder, filename = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ModelSourceError(
            f"transformers could not read {gguf_path.name}: {exc}",
            "Only llama-family GGUFs that transformers' GGUF loader supports can be imported.",
        ) from exc
    config = AutoConfig.for_model(**_plain_config(loaded.config))
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    with atomic_directory(target) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def _plain_config(config: object) -> dict:
    """The config as a dict, minus the GGUF quantization entry and the source file's label."""
    data = config.to_dict()
    data.pop("quantization_config", None)
    data.pop("_name_or_path", None)
    data.pop("_model_name_or_path", None)
    data.pop("transformers_version", None)
    return data
