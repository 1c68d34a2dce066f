"""A run's trained model and its base, loaded through the run manifest (DESIGN.md §1: the run is the contract).

Every later stage (eval, compare, chat, merge, export) asks these functions instead of resolving the recipe's
`model.source` again or guessing `adapter/` vs `model/`: `run_base_model` is the base run.json recorded
(resolved from the recipe only for a run older than run.json), and `tuned_variants` loads what training
saved, an adapter on that base or a whole model, as (model, context) pairs. Entering a pair's context makes
that variant the active one, so one loaded base serves base and tuned (and other adapters) in turn.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from tunesmith.errors import TunesmithError
from tunesmith.models.home import mark_in_use
from tunesmith.models.loading import load_model, load_tokenizer
from tunesmith.models.source import resolve_model_source
from tunesmith.models.templates import saved_chat_template
from tunesmith.runs import Run

Variant = tuple[Any, Callable[[], AbstractContextManager]]


def run_base_model(run: Run) -> Path:
    """The local folder of the base model `run` trained on: run.json's record, checked against the weights recorded
    with it. Where the recorded folder is gone from this machine, the recorded source is resolved again (at its
    recorded Hub commit); for a run written before run.json, the recipe's model.source."""

    def resolve(source: str, revision: str | None) -> Path:
        return resolve_model_source(source, revision, Path(run.load_recipe().base_dir))

    manifest = run.manifest_file
    key = (run.path.resolve(), manifest.stat().st_mtime_ns if manifest.is_file() else None)
    if key not in _bases:  # a command asks several times: resolved (and a gone folder said) once
        _bases[key] = mark_in_use(run.base_model(resolve).resolve())  # `cache clean` leaves it while this runs
    return _bases[key]


_bases: dict[tuple[Path, int | None], Path] = {}


def require_language_model(run: Run, action: str) -> None:
    """Refuse `action` (chat, merge, compare: they need an LM head) on a reward run, whose artifact is a one-score
    sequence classifier; without this the LM-head loader would silently give it a random head."""
    manifest = run.manifest()
    method = manifest.train.method if manifest and manifest.train else run.load_recipe().method.kind
    if method == "reward":
        raise TunesmithError(f"{run.path} is a reward model (method.kind: reward): it scores answers with a one-score "
                             f"head and has no language-model head to {action}.",
                             "Use it to score pairs (`tunesmith eval RUN`) or as a GRPO reward (reward_model), or "
                             f"{action} a language-model run instead.")


def adapter_base(adapter_dir: Path) -> Path:
    """The base a PEFT adapter folder names in adapter_config.json (`base_model_name_or_path`: a local folder, an
    alias or a Hub id), resolved. Raises TunesmithError where the file cannot be read or names no base."""
    from tunesmith.runs import read_adapter_config

    name = read_adapter_config(adapter_dir).get("base_model_name_or_path") or ""
    if not isinstance(name, str) or not name:
        raise TunesmithError(f"{adapter_dir}/adapter_config.json does not say which base model it was trained on.",
                             "Use the run directory the adapter was trained in (its recipe names the base), or "
                             "add the base's id or folder to adapter_config.json as base_model_name_or_path.")
    return mark_in_use((Path(name) if Path(name).is_dir() else resolve_model_source(name)).resolve())


def is_adapter(artifact: Path) -> bool:
    """A PEFT adapter folder (adapter_config.json) rather than a whole model (config.json)."""
    return (artifact / "adapter_config.json").is_file()


def load_tuned(run: Run, device: str = "cpu") -> tuple[Any, Any]:
    """(tokenizer, model in eval mode) of what `run` trained: its adapter on its base, or its whole model."""
    variants = tuned_variants(run, device, with_base=False)
    return run_tokenizer(run), variants["tuned"][0]


def run_tokenizer(run: Run) -> Any:
    """The tokenizer `run` trained with: its base's, with the chat template training saved beside its artifact, the
    one chat, compare, merge, the GGUF and serve render with too (so a base whose own template was edited since
    changes none of them); before the artifact exists, the recipe's model.chat_template as training read it
    (`run.chat_template_file`), or the base's own."""
    template = saved_chat_template(run.adapter_dir) or saved_chat_template(run.path / "model")
    if template is None and run.chat_template_file.is_file():
        template = run.chat_template_file.read_text(encoding="utf-8")
    return load_tokenizer(run_base_model(run), chat_template=template)


def say_unquantized_base(run: Run, use: str) -> None:
    """A QLoRA run's adapter trained on the base quantized to 4 or 8 bits; eval and merge put it on the base's full
    weights (fp32), the model `export` ships, as QLoRA merges (Dettmers et al. 2023). Said, with `use`: what is
    done with it, since that model differs from the quantized one it trained on by the quantization error."""
    if run.recipe_file.is_file() and run.load_recipe().adapter.kind == "qlora":
        print(f"qlora: {use} the adapter on the base's full fp32 weights, not the quantized ones it trained on "
              "(what a merged or GGUF export ships; the two differ by the quantization error).", file=sys.stderr,
              flush=True)


def tuned_variants(run: Run, device: str, with_base: bool) -> dict[str, Variant]:
    """`tuned` (and, `with_base`, `base`) as (model, context) pairs, both fp32 on `device`.

    An adapter run loads its base once: `base` disables the adapter, `tuned` folds it into the weights while it
    is active (faster decoding; prompt-learning and (IA)3 adapters stay unfolded, `adapter_active`). A whole-model
    run (full, partial, hft)
    loads its model/ and, for `base`, the base beside it.
    """
    artifact = run.trained_artifact()
    base_dir = run_base_model(run)
    if not is_adapter(artifact):
        tuned = load_model(artifact, torch.float32, device).eval()
        base = {"base": (load_model(base_dir, torch.float32, device).eval(), nullcontext)} if with_base else {}
        return {**base, "tuned": (tuned, nullcontext)}
    from peft import PeftModel

    say_unquantized_base(run, "scoring")
    model = PeftModel.from_pretrained(load_model(base_dir, torch.float32, device), artifact).eval()
    variants: dict[str, Variant] = {"tuned": (model, lambda: adapter_active(model))}
    return {"base": (model, model.disable_adapter), **variants} if with_base else variants


@contextmanager
def adapter_active(model: Any, adapter_name: str | None = None) -> Iterator[None]:
    """Make `adapter_name` (default: the current one) the active adapter of a PeftModel, folded into the weights
    while it is used when it can be: not for prompt-learning adapters, which add virtual tokens, nor for (IA)3,
    whose unmerge divides the weights by its scales again (PEFT warns it "can be inaccurate"), so the base scored
    after it would not be the base."""
    if adapter_name is not None:
        model.set_adapter(adapter_name)
    if model.active_peft_config.is_prompt_learning or model.active_peft_config.peft_type == "IA3":
        yield
        return
    model.merge_adapter()
    try:
        yield
    finally:
        model.unmerge_adapter()
