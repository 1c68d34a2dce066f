"""Adapter kinds: map the recipe's `adapter` section onto PEFT configs, or onto which of the model's own
weights train, and save what training produced.

Two families, one entry point (`adapter_setup`) that every trainer calls after loading the model:
- PEFT kinds (lora, dora, rslora, pissa, olora, qlora, adalora, ia3, prompt_tuning, prefix_tuning,
  p_tuning) return a PEFT config for TRL to wrap the model with; the run saves a standard PEFT adapter
  in `adapter/` that `PeftModel.from_pretrained(base, path)` loads on the untouched base model.
- whole-model kinds (full, partial, hft) set `requires_grad` on the model's own weights and return no
  config; the run saves a whole model (safetensors + tokenizer) in `model/`.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata
from itertools import pairwise
from pathlib import Path
from typing import Any

from tunesmith.config import TARGET_PRESETS, WHOLE_MODEL_KINDS, LoraPlacement
from tunesmith.errors import RecipeError, TunesmithError
from tunesmith.runs import Run, atomic_directory
from tunesmith.train.throughput import weights_in

# PiSSA and OLoRA move part of each base weight into the adapter at init; the saved adapter is converted.
MUTATED_BASE_KINDS = frozenset({"pissa", "olora"})
# AdaLoRA's schedule needs the total step count, which only the trainer knows (epochs x batches); its
# callback sets the real value at train begin, before the first use. PEFT requires a positive value.
ADALORA_UNKNOWN_TOTAL = 1_000_000_000


def trains_whole_model(adapter: Any) -> bool:
    return adapter.kind in WHOLE_MODEL_KINDS


def trained_model_dir(run: Run) -> Path:
    """Where whole-model kinds save their result (DESIGN.md §2: `model/` for full fine-tunes)."""
    return run.path / "model"


def initial_adapter_dir(run: Run) -> Path:
    """PiSSA/OLoRA's adapter as initialised, kept to convert the trained one into a plain LoRA."""
    return run.checkpoints_dir / "initial-adapter"


def model_load_kwargs(adapter: Any, sharded: bool = False) -> dict[str, Any]:
    """Extra `load_model` arguments the adapter needs at load time (QLoRA quantizes while loading). `sharded`: the
    weights will be sharded (training.distributed fsdp / deepspeed-zero3), so 4-bit weights are stored in the dtype
    of the model's other weights (fp32, as tunesmith loads them), which FSDP can flatten with them
    (bitsandbytes docs, "FSDP-QLoRA": bnb_4bit_quant_storage)."""
    if adapter.kind != "qlora":
        return {}
    if importlib.util.find_spec("bitsandbytes") is None:
        raise TunesmithError(
            "adapter.kind=qlora needs bitsandbytes to load the base model in 4/8-bit, and it is not installed.",
            "pip install 'tunesmith[qlora]'. qlora needs a CUDA GPU or bitsandbytes' CPU backend (bitsandbytes>=0.50).")
    if not has_bitsandbytes_backend():
        raise TunesmithError(
            f"qlora needs a CUDA GPU or bitsandbytes' CPU backend (bitsandbytes>=0.50); this machine has no CUDA GPU "
            f"and bitsandbytes {metadata.version('bitsandbytes')}.",
            "pip install -U 'tunesmith[qlora]', or use kind: lora on this machine.")
    return {"quantization_config": bitsandbytes_config(adapter.bits, "float32" if sharded else None)}


def has_bitsandbytes_backend() -> bool:
    """CUDA, or a bitsandbytes recent enough to quantize on CPU (0.50 verified on the tiny test model)."""
    import torch

    if torch.cuda.is_available():
        return True
    major, minor = (int(part) for part in metadata.version("bitsandbytes").split(".")[:2])
    return (major, minor) >= (0, 50)


def bitsandbytes_config(bits: int, quant_storage: str | None = None):
    """QLoRA's quantization: 4-bit NF4 with double quantization (or 8-bit), computing in bf16 where native;
    `quant_storage`: the dtype the packed 4-bit weights are stored in (bitsandbytes' default: uint8)."""
    from transformers import BitsAndBytesConfig

    from tunesmith.models import pick_device, pick_dtype

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    storage = {"bnb_4bit_quant_storage": quant_storage} if quant_storage else {}
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=pick_dtype("auto", pick_device("auto")), **storage)


def adapter_setup(model: Any, adapter: Any, task: str = "CAUSAL_LM") -> tuple[Any, Any]:
    """Prepare `model` for the recipe's adapter; returns (model, peft_config or None).

    Every trainer goes through this one function, so each adapter kind is wired in one place: PEFT
    kinds return a config for TRL to wrap the model with; kinds that train the model's own weights
    (full, partial, hft) return None after setting `requires_grad` themselves. `task` is PEFT's task type:
    CAUSAL_LM, or SEQ_CLS for a reward model, whose new `score` head then trains too (PEFT adds it to
    `modules_to_save`; whole-model kinds switch it on here).
    """
    if trains_whole_model(adapter):
        select_trained_weights(model, adapter)
        if task == "SEQ_CLS":
            model.score.requires_grad_(True)
        return model, None
    if adapter.kind == "qlora":
        model = prepare_quantized(model)
    return model, peft_config(model, adapter, task)


def peft_config(model: Any, adapter: Any, task: str = "CAUSAL_LM"):
    from peft import IA3Config, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, TaskType

    task_type = TaskType(task)
    if adapter.kind == "adalora":
        return adalora_config(model, adapter)
    if adapter.kind == "ia3":
        return IA3Config(task_type=task_type)
    if adapter.kind == "prompt_tuning":
        return PromptTuningConfig(task_type=task_type, num_virtual_tokens=adapter.virtual_tokens)
    if adapter.kind == "prefix_tuning":
        return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=adapter.virtual_tokens)
    if adapter.kind == "p_tuning":
        return PromptEncoderConfig(task_type=task_type, num_virtual_tokens=adapter.virtual_tokens,
                                   encoder_hidden_size=adapter.encoder_hidden_size)
    return lora_config(adapter, model, task)


def lora_config(adapter: Any, model: Any = None, task: str = "CAUSAL_LM"):
    """A PEFT LoraConfig for `task` (PEFT's task type) from any kind of the LoRA family (lora, dora, rslora, ...)."""
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType(task),
        r=adapter.r,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        use_dora=adapter.kind == "dora",
        use_rslora=adapter.kind == "rslora",
        init_lora_weights=lora_init(adapter),
        **lora_placement(adapter, model),
    )


def lora_init(adapter: Any) -> bool | str:
    if adapter.kind == "pissa":
        return f"pissa_niter_{adapter.svd_iters}" if adapter.svd_iters else "pissa"
    if adapter.kind == "olora":
        return "olora"
    return True


def adalora_config(model: Any, adapter: Any):
    from peft import AdaLoraConfig, TaskType

    return AdaLoraConfig(
        task_type=TaskType.CAUSAL_LM, init_r=adapter.init_r, target_r=adapter.target_r,
        lora_alpha=adapter.alpha, lora_dropout=adapter.dropout, tinit=adapter.tinit, tfinal=adapter.tfinal,
        deltaT=adapter.delta_t, total_step=adapter.total_step or ADALORA_UNKNOWN_TOTAL,
        **lora_placement(adapter, model),
    )


def prepare_quantized(model: Any) -> Any:
    """PEFT's preparation of a k-bit base: freeze it, keep norms in fp32 (checkpointing is left to training); its 4-bit
    layers kept differentiable (`keep_4bit_layers_differentiable`)."""
    from peft import prepare_model_for_kbit_training

    return keep_4bit_layers_differentiable(prepare_model_for_kbit_training(model, use_gradient_checkpointing=False))


def keep_4bit_layers_differentiable(model: Any) -> Any:
    """Turn off bitsandbytes' CPU inference format on every 4-bit layer of `model`, for training.

    On a CPU with AVX512-BF16, a 4-bit layer's first forward pass in eval mode without gradients (the base answering
    the replay prompts, the null space reading their inputs) repacks its weight for a faster kernel and keeps it so
    (bitsandbytes 0.50 `Linear4bit.forward`, `_convert_weight_packed_for_cpu`). That kernel (`gemv_4bit`) has no
    backward: training then passes no gradient through the base's matmuls, and every LoRA before the last block
    learns from almost nothing (block 0's A: gradient norm 0.078 → 8e-5 on SmolLM2-135M, measured) while the loss
    still moves. Eval and merge put the adapter on the unquantized base (`models.tuned.say_unquantized_base`)."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def lora_placement(adapter: LoraPlacement, model: Any) -> dict[str, Any]:
    """PEFT's target_modules, and layers_to_transform/layers_pattern when only some blocks get adapters."""
    targets = TARGET_PRESETS[adapter.targets] if isinstance(adapter.targets, str) else adapter.targets
    if adapter.layers == "all":
        return {"target_modules": targets}
    blocks_path, blocks = transformer_blocks(model)
    if targets == "all-linear":  # PEFT refuses layer selection with a string target; name the layers instead
        targets = linear_module_names(blocks)
    return {"target_modules": targets, "layers_to_transform": block_indices(adapter.layers, len(blocks)),
            "layers_pattern": blocks_path.rsplit(".", 1)[-1]}


def block_indices(layers: str | list[int], count: int) -> list[int]:
    """The recipe's `layers` as block indices of a model with `count` blocks."""
    if layers == "first-half":
        return list(range(count // 2))
    if layers == "last-half":
        return list(range(count // 2, count))
    if layers == "all":
        return list(range(count))
    bad = [i for i in layers if i >= count]
    if bad:
        raise RecipeError(f"adapter.layers: block(s) {bad} do not exist; the model has {count} (0–{count - 1}).",
                          "Use indices below the model's num_hidden_layers, or first-half / last-half.")
    return sorted(set(layers))


def transformer_blocks(model: Any) -> tuple[str, Any]:
    """The dotted path and the ModuleList of the model's transformer blocks (e.g. 'model.layers')."""
    import torch

    count = getattr(model.config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return name, module
    raise TunesmithError(f"Cannot find the {count} transformer blocks of {type(model).__name__}.",
                         "Use a LoRA kind with layers: all, or kind: full.")


def linear_module_names(blocks: Any) -> list[str]:
    """Leaf names of the linear layers inside the blocks (what 'all-linear' means there)."""
    import torch

    return sorted({name.rsplit(".", 1)[-1] for name, module in blocks.named_modules()
                   if isinstance(module, torch.nn.Linear)})


def select_trained_weights(model: Any, adapter: Any) -> None:
    """Set requires_grad for full/partial/hft. HFT starts with every block trainable so the optimizer
    (which transformers builds from trainable weights only) holds them all; its callback then freezes
    one half per round."""
    _, blocks = transformer_blocks(model)
    model.requires_grad_(adapter.kind == "full")
    if adapter.kind == "hft":
        blocks.requires_grad_(True)
    if adapter.kind == "partial":
        if adapter.last_blocks > len(blocks):
            raise RecipeError(f"adapter.last_blocks={adapter.last_blocks}, but the model has {len(blocks)} blocks.",
                              f"Use at most {len(blocks)}, or kind: full.")
        blocks[len(blocks) - adapter.last_blocks:].requires_grad_(True)
        if adapter.train_norm:
            final_norm(model).requires_grad_(True)
        if adapter.train_lm_head:
            model.get_output_embeddings().requires_grad_(True)


def train_half_of_blocks(model: Any, round_index: int) -> None:
    """HFT round `round_index`: even blocks train in even rounds, odd blocks in odd rounds."""
    _, blocks = transformer_blocks(model)
    for index, block in enumerate(blocks):
        block.requires_grad_(index % 2 == round_index % 2)


def first_round_trainable(model: Any) -> int:
    """The weights HFT trains in its first round (`train_half_of_blocks` round 0): the trainable ones outside the
    blocks and those of the even-numbered blocks. The optimizer holds every block from the start, so the trainable
    count before training is all of them."""
    _, blocks = transformer_blocks(model)
    odd = {id(param) for index, block in enumerate(blocks) if index % 2 for param in block.parameters()}
    return sum(weights_in(param) for param in model.parameters() if param.requires_grad and id(param) not in odd)


def final_norm(model: Any) -> Any:
    """The norm after the last block (llama/qwen/mistral call it `norm`, gpt2 `ln_f`)."""
    decoder = model.get_decoder()
    for name in ("norm", "final_layernorm", "ln_f"):
        if hasattr(decoder, name):
            return getattr(decoder, name)
    raise TunesmithError(f"Cannot find the final norm of {type(model).__name__}.", "Set adapter.train_norm: false.")


def save_trained(model: Any, tokenizer: Any, run: Run, adapter: Any, state_dict: dict[str, Any] | None = None) -> Path:
    """Save what training produced, atomically: a whole model in model/, else a PEFT adapter in adapter/.
    `state_dict`: the weights gathered from the shards of a sharded multi-process run (None: the model's own).

    PiSSA/OLoRA adapters are saved converted (PEFT's `path_initial_model_for_weight_conversion`): the
    difference to their initial value as a plain LoRA of rank 2r, which applies to the original base, so
    eval, merge and export need no modified base weights.
    """
    target = trained_model_dir(run) if trains_whole_model(adapter) else run.adapter_dir
    conversion = {}
    if adapter.kind in MUTATED_BASE_KINDS:
        conversion = {"path_initial_model_for_weight_conversion": str(initial_adapter_dir(run))}
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, **conversion,
                              **({"state_dict": state_dict} if state_dict is not None else {}))
        tokenizer.save_pretrained(tmp)
    return target


def trainable_summary(model: Any) -> dict[str, Any]:
    """Trainable and total parameter counts, and which modules (in which blocks) carry the trainable ones."""
    trainable = total = 0
    blocks_of: dict[str, set[int]] = {}
    for name, param in model.named_parameters():
        count = weights_in(param)
        total += count
        if param.requires_grad:
            trainable += count
            blocks_of.setdefault(_module_kind(name), set()).update(_block_index(name))
    return {
        "trainable": trainable,
        "total": total,
        "percent": round(100 * trainable / max(total, 1), 4),
        "modules": [f"{kind} ({describe_blocks(sorted(blocks))})" if blocks else kind
                    for kind, blocks in sorted(blocks_of.items())],
    }


def _module_kind(name: str) -> str:
    """'base_model.model.layers.3.self_attn.q_proj.lora_A.default.weight' -> 'q_proj.lora_A'."""
    parts = [p for p in name.split(".") if not p.isdigit() and p not in {"default", "weight", "bias"}]
    return ".".join(parts[-2:])


BLOCK_LIST_NAMES = frozenset({"layers", "h", "blocks", "layer"})


def _block_index(name: str) -> set[int]:
    """{3} for '...layers.3.self_attn...', empty for weights outside the blocks."""
    parts = name.split(".")
    return {int(p) for prev, p in pairwise(parts) if prev in BLOCK_LIST_NAMES and p.isdigit()}


def describe_blocks(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> 'layers 0–2, 5'; [4] -> 'layer 4'."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and index == runs[-1][-1] + 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    text = ", ".join(f"{r[0]}–{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs)
    return f"layer {text}" if len(indices) == 1 else f"layers {text}"
