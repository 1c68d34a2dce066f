"""Fold one adapter into its base: merge in fp32, check the logits, cast, save (sharded past a size).

The merge runs in fp32 whatever the training dtype. Before anything is written, the merged model's
logits are compared with base+adapter on a fixed prompt set: a merge that changes the outputs (a wrong
scale, a skipped layer) fails here instead of in a user's chat. Casting to fp16/bf16 happens after that
check, and its own (larger, expected) difference is measured and reported, not judged.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tunesmith.config import PROMPT_LEARNING_USE
from tunesmith.errors import TunesmithError
from tunesmith.merge.adapters import adapter_fits
from tunesmith.models.checkpoints import EMBEDDING_MODULES, tied_embeddings

# A fixed prompt set, so merge checks are comparable between runs and versions.
CHECK_PROMPTS = [
    [{"role": "user", "content": "Say hello in one short sentence."}],
    [{"role": "system", "content": "Reply in JSON."}, {"role": "user", "content": "2 large pizzas to 12 Main St."}],
    [{"role": "user", "content": "What is 17 times 3? Answer with the number only."}],
]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_SHARD_SIZE = "5GB"
# An fp32 merge reproduces base+adapter to ~1e-5 on real models; a wrong merge is off by far more than this.
DEFAULT_TOLERANCE = 1e-2


@dataclass(frozen=True)
class MergeCheck:
    """Merged model vs the reference it must reproduce, on CHECK_PROMPTS (every position's logits)."""

    prompts: int
    positions: int
    max_abs_logit_diff: float  # fp32 merged vs fp32 reference
    dtype: str
    max_abs_logit_diff_after_cast: float  # the saved dtype vs the fp32 reference
    top1_agreement_after_cast: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_shard_size(size: str) -> str:
    """`size` as save_pretrained reads it (a number and KB, MB, GB or TB, decimal units), or a clear error."""
    if not re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]B", size.strip(), flags=re.IGNORECASE):
        raise TunesmithError(f"Cannot read the shard size {size!r}.", "Write it like 5GB, 500MB or 2.5GB.")
    return size.strip()


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise TunesmithError(f"Unknown dtype {name!r}.", f"Use one of {', '.join(DTYPES)}.")
    return DTYPES[name]


def check_prompt_ids(model_dir: Path) -> list[torch.Tensor]:
    """CHECK_PROMPTS as token ids, through the chat template (plain text when the tokenizer has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not tokenizer.chat_template:
        return [tokenizer(m[-1]["content"], return_tensors="pt")["input_ids"] for m in CHECK_PROMPTS]
    return [tokenizer.apply_chat_template(m, add_generation_prompt=True, return_tensors="pt",
                                          return_dict=True)["input_ids"] for m in CHECK_PROMPTS]


def prompt_logits(model: Any, ids: list[torch.Tensor]) -> torch.Tensor:
    """Logits at every position of every prompt, as one fp32 (positions, vocab) tensor."""
    with torch.no_grad():
        return torch.cat([model(input_ids=x).logits[0].float() for x in ids])


def check_saved(folder: Path, ids: list[torch.Tensor], expected: torch.Tensor, merged_diff: float,
                dtype: str) -> MergeCheck:
    """Load the saved checkpoint as users will (in `dtype`) and measure what the cast costs against the fp32
    reference. A model cast in memory is not the same: `.to()` also casts RoPE's inv_freq buffer, which
    from_pretrained recomputes in fp32."""
    from tunesmith.models import load_model

    got = prompt_logits(load_model(folder, torch_dtype(dtype), "cpu").eval(), ids)
    return MergeCheck(prompts=len(ids), positions=int(expected.shape[0]), max_abs_logit_diff=merged_diff,
                      dtype=dtype, max_abs_logit_diff_after_cast=float((expected - got).abs().max()),
                      top1_agreement_after_cast=float((expected.argmax(-1) == got.argmax(-1)).float().mean()))


def merge_adapter_into_base(model_dir: Path, adapter_dir: Path, folder: Path, dtype: str = "fp32",
                            max_shard_size: str = DEFAULT_SHARD_SIZE,
                            tolerance: float = DEFAULT_TOLERANCE) -> MergeCheck:
    """Merge `adapter_dir` into the base in `model_dir`, check it, and save it into `folder`.

    `folder` is the caller's temporary directory (see runs.atomic_directory): nothing is renamed here.
    """
    from peft import PeftModel

    from tunesmith.models import load_model
    from tunesmith.models.templates import saved_chat_template

    torch_dtype(dtype), parse_shard_size(max_shard_size)  # a typo fails before the slow part
    with adapter_fits(adapter_dir, model_dir):
        peft_model = PeftModel.from_pretrained(load_model(model_dir, torch.float32, "cpu"), adapter_dir).eval()
    if peft_model.active_peft_config.is_prompt_learning:  # virtual tokens: nothing to fold into weights
        kind = peft_model.active_peft_config.peft_type.value.lower()
        raise TunesmithError(f"A {kind} adapter adds virtual tokens, not weight changes: it cannot be merged.",
                             PROMPT_LEARNING_USE)
    refuse_tied_embedding_lora(peft_model.active_peft_config, adapter_dir, model_dir)
    ids = check_prompt_ids(model_dir)
    expected = prompt_logits(peft_model, ids)
    merged = peft_model.merge_and_unload()
    diff = float((expected - prompt_logits(merged, ids)).abs().max())
    if diff > tolerance:
        raise TunesmithError(
            f"The merged model's logits differ from base+adapter by {diff:.3g} (tolerance {tolerance:g}); "
            "nothing was written.",
            "Check that the adapter was trained on this base model; report it if it was.")
    save_checkpoint(merged.to(torch_dtype(dtype)), model_dir, folder, max_shard_size,
                    chat_template=saved_chat_template(adapter_dir))
    del merged, peft_model
    return check_saved(folder, ids, expected, diff, dtype)  # the caller says it (merge's report, export's line)


def refuse_tied_embedding_lora(config: Any, adapter_dir: Path, model_dir: Path) -> None:
    """A LoRA on the embeddings of a model whose output head shares their matrix (tie_word_embeddings) changes the
    head too once merged, so the merged model answers otherwise than base + adapter (which tunesmith's training
    refuses to make: train.preflight.check_targets_fit_model). Raises TunesmithError saying so."""
    targets = config.target_modules
    names = sorted(targets) if isinstance(targets, (set, list, tuple)) else [str(targets or "")]
    on_embeddings = [name for name in names if name.split(".")[-1] in EMBEDDING_MODULES]
    if on_embeddings and tied_embeddings(model_dir):
        raise TunesmithError(f"{adapter_dir} puts LoRA on {', '.join(on_embeddings)} of a model whose output head "
                             "shares the embedding matrix (tie_word_embeddings: true): merged, the change would reach "
                             "the output head too, and the model would answer otherwise than base + adapter.",
                             "Use it as an adapter (chat, compare and transformers apply it as it is), or train one "
                             "without the embeddings in its targets.")


def stop_at_template_eos(model: Any, tokenizer: Any) -> None:
    """Make generation_config.json stop at the tokenizer's eos_token too, which a model.chat_template (chatml) closes
    every turn with: a base whose generation config names another token (SmolLM2's <|im_end|> beside its
    <|endoftext|>) would otherwise generate past every answer in plain transformers."""
    config = getattr(model, "generation_config", None)
    if config is None or tokenizer.eos_token_id is None:
        return
    current = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    if tokenizer.eos_token_id not in current:
        config.eos_token_id = [tokenizer.eos_token_id, *(i for i in current if i is not None)]


def save_checkpoint(model: Any, tokenizer_dir: Path, folder: Path, max_shard_size: str,
                    chat_template: str | None = None) -> Path:
    """safetensors (split into shards with model.safetensors.index.json past `max_shard_size`) + tokenizer (with
    `chat_template`, the one the adapter was trained with, in place of its own), every file with the ordinary
    permissions the umask gives (transformers writes the weights 0600, through a private temporary file: a merged
    model nobody else on the machine could read)."""
    from transformers import AutoTokenizer

    from tunesmith.runs import current_umask

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
        stop_at_template_eos(model, tokenizer)
    model.save_pretrained(folder, safe_serialization=True, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(folder)
    for file in Path(folder).iterdir():
        if file.is_file():
            file.chmod(0o666 & ~current_umask())
    return folder
