"""What `tunesmith merge` was given: each input is a run directory, a PEFT adapter folder or a full
checkpoint folder, resolved to an adapter (with the base it was trained on) or a whole model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tunesmith.errors import TunesmithError, shell_arg


@dataclass(frozen=True)
class MergeInput:
    """One input: an adapter folder and its base, or a full checkpoint folder (base known from a run's recipe)."""

    kind: Literal["adapter", "model"]
    path: Path
    base: Path | None
    source: str  # what the user typed, for messages and merge.json

    def describe(self) -> dict[str, str | None]:
        return {"source": self.source, "kind": self.kind, "path": str(self.path),
                "base": str(self.base) if self.base else None}


def resolve_input(target: str | Path, base_override: Path | None = None) -> MergeInput:
    """A run directory (adapter/ or model/ plus its recipe's base), an adapter folder or a checkpoint folder."""
    from tunesmith.runs import Run

    path = Path(target).expanduser()
    run = Run(path)
    if run.recipe_file.is_file():
        from tunesmith.models.tuned import is_adapter, require_language_model, run_base_model

        require_language_model(run, "merge")
        artifact = run.trained_artifact()
        base = base_override or run_base_model(run)
        return MergeInput("adapter" if is_adapter(artifact) else "model", artifact, base, str(target))
    if (path / "adapter_config.json").is_file():
        from tunesmith.models.tuned import adapter_base
        from tunesmith.runs import require_weights

        require_weights(path, "adapter_config.json")
        return MergeInput("adapter", path, base_override or adapter_base(path), str(target))
    if (path / "config.json").is_file():
        return MergeInput("model", path, base_override, str(target))
    if not path.exists():
        raise TunesmithError(f"{path} does not exist.", "Pass run directories, adapter folders or checkpoint folders "
                             "(`tunesmith runs list` shows the runs).")
    raise TunesmithError(f"{path} is not a run directory (recipe.yaml), a PEFT adapter (adapter_config.json) "
                         "or a model checkpoint (config.json).",
                         "Pass run directories, adapter folders or checkpoint folders.")


def one_kind(inputs: list[MergeInput]) -> Literal["adapter", "model"]:
    """All adapters or all whole models: an adapter must be merged into its base before a model merge."""
    kinds = {item.kind for item in inputs}
    if len(kinds) > 1:
        adapters = [item.source for item in inputs if item.kind == "adapter"]
        raise TunesmithError(
            f"Cannot merge adapters ({', '.join(adapters)}) with whole models in one step.",
            f"Merge the adapter into its base first (tunesmith merge {shell_arg(adapters[0])} --out merged-1), "
            "then merge the resulting checkpoints.")
    return kinds.pop()


def shared_base(inputs: list[MergeInput], required: bool) -> Path | None:
    """The one base every input was trained from (None when none says and it is not `required`)."""
    bases = {item.base for item in inputs if item.base is not None}
    if len(bases) > 1:
        listing = "; ".join(f"{item.source}: {item.base or 'unknown'}" for item in inputs)
        raise TunesmithError(f"The inputs were trained on different base models ({listing}).",
                             "Merge only adapters or fine-tunes of one base model; if these are the same model "
                             "under two names, say which with --base MODEL.")
    base = bases.pop() if bases else None
    if base is None and required:
        raise TunesmithError("This merge method works on differences from the base model, and the inputs do not "
                             "say which base they were fine-tuned from.",
                             "Pass it with --base MODEL (a folder, an embedded alias or a Hub id).")
    return base
