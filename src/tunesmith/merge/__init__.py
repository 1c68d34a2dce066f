"""Merge stage: one adapter into its base, several adapters into one, or several whole models into one.

`run_merge` looks at what it was given and picks the merge:
- one adapter           -> the adapter folded into its base (fp32, logits checked, cast to --dtype);
- several adapters      -> one PEFT adapter (add_weighted_adapter), or with --into-base that adapter merged;
- several whole models  -> one checkpoint (linear, slerp or a task-vector method against the base).
The output folder is built under a temporary name and renamed, with a merge.json that records the
method, the inputs, the weights and the verification numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError
from tunesmith.merge.adapters import ADAPTER_METHODS, combine_adapters
from tunesmith.merge.inputs import MergeInput, one_kind, resolve_input, shared_base
from tunesmith.merge.into_base import (
    DEFAULT_SHARD_SIZE,
    DEFAULT_TOLERANCE,
    DTYPES,
    merge_adapter_into_base,
    parse_shard_size,
    torch_dtype,
)
from tunesmith.merge.models import BASE_METHODS, MODEL_METHODS, agreement_with_inputs, merge_models
from tunesmith.runs import atomic_directory, atomic_write_json, check_replaceable_output

DENSITY_METHODS = frozenset({"ties", "dare_linear", "dare_ties", "magnitude_prune"})

__all__ = ["ADAPTER_METHODS", "DTYPES", "MODEL_METHODS", "merge_adapter_into_base", "run_merge"]


def run_merge(targets: list[str | Path], out: Path, method: str | None = None, weights: list[float] | None = None,
              density: float | None = None, dtype: str = "fp32", base: str | None = None, into_base: bool = False,
              max_shard_size: str = DEFAULT_SHARD_SIZE, seed: int = 0,
              tolerance: float = DEFAULT_TOLERANCE) -> Path:
    """Merge `targets` into `out` (written atomically, with merge.json); returns `out`.

    `out` must be new, empty or an earlier merge's output (`check_replaceable_output`)."""
    from tunesmith.models import resolve_model_source

    check_replaceable_output(Path(out), "merge.json")

    torch_dtype(dtype), parse_shard_size(max_shard_size)
    base_dir = resolve_model_source(base).resolve() if base else None
    inputs = [resolve_input(target, base_dir) for target in targets]
    kind = one_kind(inputs)
    weights = checked_weights(weights, len(inputs))
    record: dict[str, Any] = {"inputs": [item.describe() for item in inputs], "weights": weights,
                              "density": density, "seed": seed, "dtype": dtype}
    with atomic_directory(Path(out)) as tmp:
        if kind == "adapter":
            record |= merge_adapter_inputs(inputs, tmp, method, weights, density, dtype, into_base,
                                           max_shard_size, seed, tolerance)
        else:
            record |= merge_model_inputs(inputs, tmp, method, weights, density, dtype, into_base,
                                         max_shard_size, seed)
        atomic_write_json(tmp / "merge.json", record)
    return Path(out)


def merge_adapter_inputs(inputs: list[MergeInput], folder: Path, method: str | None, weights: list[float],
                         density: float | None, dtype: str, into_base: bool, max_shard_size: str, seed: int,
                         tolerance: float) -> dict[str, Any]:
    base = shared_base(inputs, required=True)
    assert base is not None
    if len(inputs) == 1:
        if method is not None or density is not None:
            raise TunesmithError("--method and --density combine several inputs; one adapter is merged into its "
                                 "base as it is.", "Leave them out, or pass more adapters.")
        check = merge_adapter_into_base(base, inputs[0].path, folder, dtype, max_shard_size, tolerance)
        return {"kind": "adapter into base", "method": None, "base": str(base), "verification": check.as_dict()}
    method = checked_method(method or "cat", ADAPTER_METHODS, density)  # cat: the exact weighted sum
    if dtype != "fp32" and not into_base:
        raise TunesmithError("--dtype applies to merged models; a combined adapter is saved in fp32.",
                             "Add --into-base to merge the combined adapter into the base, or leave --dtype out.")
    adapter_folder = folder / "adapter" if into_base else folder
    numbers = combine_adapters([item.path for item in inputs], base, method, weights, density, adapter_folder, seed)
    record = {"kind": "adapters", "method": method, "base": str(base), "verification": numbers}
    if into_base:
        check = merge_adapter_into_base(base, adapter_folder, folder, dtype, max_shard_size, tolerance)
        record |= {"kind": "adapters into base", "verification": numbers | {"into_base": check.as_dict()}}
    return record


def merge_model_inputs(inputs: list[MergeInput], folder: Path, method: str | None, weights: list[float],
                       density: float | None, dtype: str, into_base: bool, max_shard_size: str,
                       seed: int) -> dict[str, Any]:
    if len(inputs) == 1 and method is None:  # one whole model: there is nothing to merge it with or into
        raise TunesmithError(f"{inputs[0].path} is a whole model (a full, partial or hft run's model/): it has no "
                             "adapter to merge into a base, and merging whole models takes two or more.",
                             "It is a model already: `tunesmith export RUN --format merged` (safetensors), "
                             "`--format gguf` or `--format ollama`; or pass another fine-tune of its base to merge "
                             "the two (--method linear, slerp, task_arithmetic, ties, dare_ties, ...).")
    method = checked_method(method or "linear", MODEL_METHODS, density)
    if len(inputs) < 2 or (method == "slerp" and len(inputs) != 2):
        raise TunesmithError(f"{method} needs {'exactly two' if method == 'slerp' else 'two or more'} models; "
                             f"got {len(inputs)}.", "Pass more checkpoints, or an adapter to merge into its base.")
    if into_base:
        raise TunesmithError("--into-base applies to adapters; these inputs are whole models.", "Leave it out.")
    if method in ("linear", "slerp") and (min(weights) < 0 or sum(weights) <= 0):
        raise TunesmithError(f"{method} interpolates between models: weights must be non-negative, not all 0.",
                             "Use task_arithmetic for negative weights (subtracting a fine-tune).")
    base = shared_base(inputs, required=method in BASE_METHODS)
    paths = [item.path for item in inputs]
    merge_models(paths, method, weights, density, base, folder, torch_dtype(dtype), max_shard_size, seed)
    return {"kind": "models", "method": method, "base": str(base) if base else None,
            "verification": {"agreement_with_inputs": agreement_with_inputs(folder, paths)}}


def checked_weights(weights: list[float] | None, count: int) -> list[float]:
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise TunesmithError(f"--weights has {len(weights)} value(s) for {count} input(s).",
                             "Give one weight per input, in the same order, e.g. --weights 0.7,0.3.")
    return list(weights)


def checked_method(method: str, valid: tuple[str, ...], density: float | None) -> str:
    """The method if it applies to these inputs, with --density given exactly when it uses one."""
    if method not in valid:
        other, what = ((MODEL_METHODS, "whole models (fine-tuned checkpoints)") if valid == ADAPTER_METHODS
                       else (ADAPTER_METHODS, "adapters"))
        if method in other:  # a documented method, for the other kind of input
            fold = (" (merge each adapter into its base first: tunesmith merge ADAPTER --out DIR)"
                    if valid == ADAPTER_METHODS else "")
            raise TunesmithError(f"{method} merges {what}, and these inputs are "
                                 f"{'adapters' if valid == ADAPTER_METHODS else 'whole models'}.",
                                 f"For these inputs use one of {', '.join(valid)}; or give {method} {what}{fold}.")
        raise TunesmithError(f"Unknown merge method {method!r} for these inputs.", f"Use one of {', '.join(valid)}.")
    if method in DENSITY_METHODS and density is None:
        raise TunesmithError(f"{method} keeps a fraction of each change and needs --density.",
                             "For example --density 0.7 keeps 70% of the entries.")
    if method not in DENSITY_METHODS and density is not None:
        raise TunesmithError(f"--density does not apply to {method}.",
                             f"Leave it out, or use one of {', '.join(sorted(DENSITY_METHODS))}.")
    if density is not None and not 0.0 < density <= 1.0:
        raise TunesmithError(f"--density must be in (0, 1]; got {density}.", "For example --density 0.7.")
    return method
