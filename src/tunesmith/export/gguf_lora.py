"""Write a PEFT LoRA adapter as a GGUF LoRA file, which llama.cpp (`--lora`) and Ollama (`ADAPTER`) apply
on top of the base model's GGUF.

The layout follows llama.cpp's `convert_lora_to_gguf.py` and its loader (`llama-adapter.cpp`):
`general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha` (float32), and for each adapted
weight `<gguf name>.lora_a` (torch shape r x in) and `<gguf name>.lora_b` (out x r), named with the same
HF->GGUF map the base writer uses. llama.cpp computes W x + (alpha / r) * B (A x); for llama-family
models the base Q and K rows are permuted for adjacent-pair RoPE (gguf_arch.py), so B's rows of q_proj
and k_proj get the same permutation (B A permuted = (permuted B) A). Only plain LoRA maps onto this: DoRA's
magnitude vectors, IA3's scales and prompt-learning's virtual tokens have no place in it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf
import numpy as np

from tunesmith.config import PROMPT_LEARNING_KINDS, PROMPT_LEARNING_USE
from tunesmith.errors import TunesmithError
from tunesmith.export import gguf_signature, update_export_manifest
from tunesmith.export.gguf import atomic_output
from tunesmith.export.gguf_arch import ArchSpec, arch_spec, prepare_weights

if TYPE_CHECKING:
    from tunesmith.config import Recipe
    from tunesmith.runs import Run

LORA_TYPES = {"F32": (np.float32, gguf.LlamaFileType.ALL_F32), "F16": (np.float16, gguf.LlamaFileType.MOSTLY_F16)}
PREFIX = "base_model.model."
MERGED_HINT = "Export the merged model as GGUF instead: tunesmith export RUN --format gguf (or ollama)."


# A LoRA on a tied embedding matrix: no GGUF LoRA holds it, and merged it would change the output head too (merge
# refuses it: merge.into_base.refuse_tied_embedding_lora), so neither llama.cpp route serves it.
TIED_HINT = ("Use it with transformers or PEFT, which apply it as trained: `tunesmith chat BASE --adapter FOLDER`, "
             "`tunesmith compare`; or train an adapter without the embeddings in its targets.")


class NotAGgufLora(TunesmithError):
    """An adapter llama.cpp's LoRA format cannot hold (another PEFT kind, DoRA, biases, new tokens, a tied head):
    its merged model serves it instead (serve.catalog falls back to that)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, MERGED_HINT)


def write_gguf_lora(adapter_dir: Path, base_dir: Path, out_path: Path, quant: str = "F16",
                    name: str | None = None) -> Path:
    """Convert the PEFT adapter in `adapter_dir`, trained on `base_dir`, to a GGUF LoRA at `out_path`."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    dtype, file_type = lora_type(quant)
    config = lora_settings(Path(adapter_dir))
    base_config = AutoConfig.from_pretrained(base_dir)
    spec = arch_spec(base_config)
    alpha = gguf_alpha(config)
    writer = gguf.GGUFWriter(None, spec.name)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(name or Path(adapter_dir).name)
    writer.add_file_type(file_type)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    weights = {k: v.float().numpy() for k, v in load_file(Path(adapter_dir) / "adapter_model.safetensors").items()}
    for base_name, (a, b) in lora_pairs(without_saved_embeddings(weights, base_config)).items():
        gguf_name = tensor_name(base_name, base_config, spec)
        a, b = llama_cpp_layout(base_name, gguf_name, a, b, base_config, spec)
        b = b * scale_correction(config, alpha, rank=a.shape[0] if gguf_name != "token_embd.weight" else a.shape[1])
        writer.add_tensor(f"{gguf_name}.lora_a", np.ascontiguousarray(a, dtype=dtype))
        writer.add_tensor(f"{gguf_name}.lora_b", np.ascontiguousarray(b, dtype=dtype))
    with atomic_output(Path(out_path)) as tmp:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(out_path)


def lora_type(quant: str) -> tuple[type, gguf.LlamaFileType]:
    key = quant.upper()
    if key not in LORA_TYPES:
        raise TunesmithError(f"A GGUF LoRA is written as F16 or F32, not {quant}.",
                             "Adapters are small; keep them unquantized (Ollama recommends it) and quantize the base.")
    return LORA_TYPES[key]


def lora_settings(adapter_dir: Path) -> dict[str, Any]:
    """adapter_config.json, refused with a reason when llama.cpp's LoRA format cannot express it."""
    path = adapter_dir / "adapter_config.json"
    if not path.is_file():
        raise TunesmithError(f"{adapter_dir} has no adapter_config.json: it is not a PEFT adapter.",
                             "Pass a run trained with a LoRA adapter (adapter.kind: lora).")
    config = json.loads(path.read_text(encoding="utf-8"))
    kind = str(config.get("peft_type", "?")).lower()
    if kind in PROMPT_LEARNING_KINDS:  # no GGUF of any kind holds virtual tokens: merging would not help either
        raise TunesmithError(f"{adapter_dir} is a {kind} adapter: its virtual tokens go into no GGUF file, LoRA or "
                             "merged.", PROMPT_LEARNING_USE)
    if kind != "lora":
        article = "an" if kind[:1].lower() in "aeio" else "a"
        raise NotAGgufLora(f"This is {article} {kind} adapter; a GGUF LoRA file can only hold a plain LoRA.")
    refusals = {"use_dora": "DoRA's magnitude vectors have no place in a GGUF LoRA file",
                "modules_to_save": "the adapter carries whole modules (modules_to_save), not only LoRA factors",
                "alpha_pattern": "per-module alpha (alpha_pattern) is not supported by this export"}
    for key, reason in refusals.items():
        if config.get(key):
            raise NotAGgufLora(f"Cannot write {adapter_dir} as a GGUF LoRA: {reason}.")
    if config.get("bias", "none") != "none":
        raise NotAGgufLora(f"Cannot write {adapter_dir} as a GGUF LoRA: it trains biases (bias="
                           f"{config['bias']!r}), which llama.cpp adapters do not carry.")
    return config


def gguf_alpha(config: dict[str, Any]) -> float:
    """llama.cpp scales by alpha / r; rsLoRA (PEFT) scales by alpha / sqrt(r), i.e. alpha*sqrt(r) / r."""
    alpha = float(config["lora_alpha"])
    return alpha * math.sqrt(config["r"]) if config.get("use_rslora") else alpha


def scale_correction(config: dict[str, Any], gguf_alpha_value: float, rank: int) -> float:
    """Factor folded into B where PEFT's scale for a layer of this rank differs from llama.cpp's alpha / rank
    (rsLoRA layers whose rank_pattern rank differs from r); 1 otherwise."""
    alpha = float(config["lora_alpha"])
    peft_scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    return peft_scale / (gguf_alpha_value / rank)


def without_saved_embeddings(weights: dict[str, np.ndarray], base_config: Any) -> dict[str, np.ndarray]:
    """PEFT saves the embedding matrix next to an embedding LoRA (`...base_layer.weight`). Unchanged (the base
    vocabulary size) it is the base GGUF's own and is left out; a resized one means new tokens: refused."""
    kept = {}
    for key, value in weights.items():
        if not key.endswith(".base_layer.weight"):
            kept[key] = value
        elif value.shape[0] != base_config.vocab_size:
            raise NotAGgufLora(f"The adapter resized {key.removesuffix('.base_layer.weight')} to {value.shape[0]} "
                               f"tokens (base: {base_config.vocab_size}); a GGUF LoRA cannot add tokens to the "
                               "base.")
    return kept


def lora_pairs(weights: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{base weight name: (A, B)} from PEFT's tensor names; anything but LoRA factors is refused."""
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in weights.items():
        name = key.removeprefix(PREFIX)
        for marker, side in ((".lora_A.weight", "A"), (".lora_B.weight", "B"),
                             (".lora_embedding_A", "A"), (".lora_embedding_B", "B")):
            if name.endswith(marker):
                pairs.setdefault(name.removesuffix(marker) + ".weight", {})[side] = value
                break
        else:
            raise NotAGgufLora(f"The adapter holds {key}, which is not a LoRA factor (new tokens or trained "
                               "whole layers?); a GGUF LoRA file cannot carry it.")
    incomplete = [name for name, sides in pairs.items() if set(sides) != {"A", "B"}]
    if incomplete:
        raise TunesmithError(f"The adapter has only one LoRA factor for {incomplete[0]}.", "Re-save the adapter.")
    return {name: (sides["A"], sides["B"]) for name, sides in pairs.items()}


def tensor_name(base_name: str, base_config: Any, spec: ArchSpec) -> str:
    """The base model's GGUF tensor name for an HF weight name (the base writer's own map)."""
    tied = bool(getattr(base_config, "tie_word_embeddings", False))
    if tied and base_name == "lm_head.weight":
        raise TunesmithError("The adapter adapts lm_head, but the base ties it to the embeddings: llama.cpp has no "
                             "separate output tensor to apply it to.", TIED_HINT)
    if tied and base_name.endswith("embed_tokens.weight"):
        # llama.cpp (llama-cpp-python 0.3.36) runs the tied output head through the same tensor and applies
        # the embedding LoRA there too, with the embedding's transposed layout: it aborts on a shape assert.
        raise TunesmithError("The adapter adapts the token embeddings of a model whose output head is tied to them; "
                             "llama.cpp would apply it to the output head too, and fails.", TIED_HINT)
    name_map = gguf.get_tensor_name_map(spec.arch, base_config.num_hidden_layers)
    name = name_map.get_name(base_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise NotAGgufLora(f"No GGUF name for the adapted weight {base_name!r} of a {spec.name} model.")
    return name


def llama_cpp_layout(base_name: str, gguf_name: str, a: np.ndarray, b: np.ndarray, base_config: Any,
                     spec: ArchSpec) -> tuple[np.ndarray, np.ndarray]:
    """A and B as llama.cpp applies them: Q/K rows of B permuted like the base's; for the token embedding,
    A transposed to (vocab, r), because llama.cpp looks up rows of A (`llm_build_inp_embd`)."""
    if gguf_name == "token_embd.weight":
        return a.T, b
    return a, prepare_weights(base_name, b, base_config, spec)


def run_gguf_lora_export(recipe: Recipe, run: Run, quant: str = "F16") -> Path:
    """The run's adapter as exports/gguf/<name>-lora-<QUANT>.gguf, recorded in exports/manifest.json."""
    from tunesmith.models.tuned import run_base_model

    lora_type(quant)
    if not (run.adapter_dir / "adapter_config.json").is_file():
        raise NotAGgufLora(f"{run.path} has no trained adapter (adapter/): a whole-model run has no LoRA to "
                           "export.")
    base_dir = run_base_model(run)
    target = run.exports_dir / "gguf" / f"{recipe.name}-lora-{quant.upper()}.gguf"
    write_gguf_lora(run.adapter_dir, base_dir, target, quant, name=f"{recipe.name}-lora")
    update_export_manifest(run, {quant.upper(): {"path": run.relative(target), "bytes": target.stat().st_size,
                                                 "signature": gguf_signature(target), "base": str(base_dir)}},
                           group="gguf_lora")
    return target


def lora_type_for(quant: str) -> str:
    """The adapter's type next to a base of type `quant`: F32 with an F32 base, F16 otherwise (unquantized)."""
    return "F32" if quant.upper() == "F32" else "F16"


def run_base_and_lora_export(recipe: Recipe, run: Run, quant: str = "F16") -> tuple[Path, Path]:
    """The untouched base as exports/gguf/base.<QUANT>.gguf and the run's LoRA as a GGUF adapter beside it:
    what Ollama's `FROM base` + `ADAPTER lora` (or llama.cpp's `-m base --lora lora`) load."""
    from tunesmith.export.gguf import parse_quant, write_gguf
    from tunesmith.models.tuned import run_base_model

    quant = parse_quant(quant)
    lora = run_gguf_lora_export(recipe, run, lora_type_for(quant))  # fails first, and fast, for non-LoRA runs
    base_dir = run_base_model(run)
    base = write_gguf(base_dir, run.exports_dir / "gguf" / f"base.{quant}.gguf", quant, name=base_dir.name)
    update_export_manifest(run, {quant: {"path": run.relative(base), "bytes": base.stat().st_size,
                                         "signature": gguf_signature(base)}}, group="gguf_base")
    return base, lora
