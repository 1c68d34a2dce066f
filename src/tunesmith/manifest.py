"""The run manifest, `run.json`: what each stage of a run wrote and from what (DESIGN.md §1, the contract).

Later stages read these records through `tunesmith.runs.Run` instead of re-deriving them from the recipe and the
file system, so a run directory carries its own inputs. Paths to things inside the run are relative to the run
(a moved run still works); paths to things outside it (source files, the base model) are absolute, as they were
resolved when the stage ran. `version` changes when a field changes meaning, so an old tunesmith refuses a newer
manifest instead of misreading it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from tunesmith.errors import TunesmithError

MANIFEST_VERSION = 1
ModelT = TypeVar("ModelT", bound=BaseModel)


class Record(BaseModel):
    """A manifest record: unknown keys are errors, so a misspelt field fails where it is written."""

    model_config = ConfigDict(extra="forbid")


def inside_run(path: str) -> str:
    """A path inside the run must be relative and stay inside it, or moving the run would break it."""
    parts = PurePosixPath(path).parts
    if PurePosixPath(path).is_absolute() or ".." in parts or not parts:
        raise ValueError(f"{path!r} must be a path relative to the run directory, inside it")
    return path


RunPath = Annotated[str, AfterValidator(inside_run)]


class RowsFile(Record):
    """Canonical rows saved in the run, one JSON object per line."""

    path: RunPath = Field(description="Relative to the run, e.g. data/eval.jsonl.")
    rows: int = Field(ge=0)
    sha256: str = Field(description="Of the file's bytes: checked when the rows are read back.")


class SourceFile(Record):
    """A data file the recipe named, as the data stage read it."""

    path: str = Field(description="As the recipe wrote it (data.train / data.eval).")
    resolved: str = Field(description="The absolute path it resolved to, or the Hub dataset id.")
    sha256: str | None = Field(None, description="Of its content at training time; None for a Hub dataset.")


class DataRecord(Record):
    """The data stage: the train and eval rows after loading, cleaning, system prompt and fallbacks."""

    shape: str = Field(description="Row shape: messages, preference, unpaired_preference, text, ...")
    train: RowsFile
    eval: RowsFile
    sources: dict[Literal["train", "eval"], SourceFile]
    max_length: int | None = Field(None, description="data.max_length the rows were encoded at (auto resolved).")
    eval_from: Literal["train", "eval"] = Field(
        description="Which source the eval rows came from: `eval` (data.eval), or `train` (held out by hash).")


class BaseModelRecord(Record):
    """The model training started from: as written, and where it was found."""

    source: str = Field(description="model.source as the recipe wrote it (alias, Hub id, path, .gguf).")
    revision: str | None = Field(None, description="model.revision as written.")
    path: str = Field(description="The resolved local directory, absolute.")
    commit: str | None = Field(None, description="The Hub commit, when the directory is a Hub cache snapshot.")
    weights: str | None = Field(None, description="`weights_signature` of the folder's weight files as training "
                                                  "recorded them; None for a run written before it was recorded.")


class TrainRecord(Record):
    """The train stage: what it saved and on top of what."""

    artifact: Literal["adapter", "model"] = Field(description="A PEFT adapter, or a whole model (full/partial/hft).")
    path: RunPath = Field(description="The artifact folder, relative to the run.")
    method: str = Field(description="method.kind: sft, dpo, orpo, kto, simpo, grpo, cpt, reward.")
    adapter: str = Field(description="adapter.kind: lora, qlora, full, partial, ...")
    base_model: BaseModelRecord
    init_from: str | None = Field(None, description="The adapter folder the weights started from "
                                                    "(training.init_from), absolute; None: a fresh adapter.")
    replay: RowsFile | None = Field(None, description="General rows trained beside the task's (data.replay), as "
                                                      "trained: data/replay.jsonl; None: no replay.")
    checkpoint_step: int | None = Field(None, description="The checkpoint the adapter was rolled back to "
                                                          "(`tunesmith eval --checkpoints --rollback`); None: the "
                                                          "adapter training ended with.")


class EvalRecord(Record):
    """The eval stage: each results.json it wrote, by what it scored (`held_out`: the run's saved eval rows;
    `against-<run>`, `data-<file>`: the other comparisons), typed by `tunesmith.results.EvalResults`."""

    results: dict[str, RunPath] = Field(default_factory=dict)
    checkpoints: RunPath | None = Field(None, description="eval/checkpoints.json: each saved checkpoint's task score "
                                                          "and probe accuracy (`tunesmith eval --checkpoints`).")


class ExportRecord(Record):
    """One exported format: where it is inside the run, its size, and the export's own check when it ran one."""

    path: RunPath
    bytes: int = Field(ge=0, description="The file's size, or the sum of a folder's files.")
    verification: dict[str, Any] | None = Field(None, description="GGUF: llama.cpp agreement with the merged model.")
    grammar: RunPath | None = Field(None, description="GGUF and Ollama of a closed task: the llama.cpp grammar of "
                                                      "its answers (answers.gbnf) beside the export.")


class RunManifest(Record):
    """run.json. One optional section per stage; a stage that has not run has none."""

    version: Literal[1] = MANIFEST_VERSION
    data: DataRecord | None = None
    train: TrainRecord | None = None
    eval: EvalRecord | None = None
    exports: dict[str, ExportRecord] | None = Field(None, description="By format: adapter, merged, gguf, ...")


def content_sha256(path: Path) -> str | None:
    """sha256 of a file's bytes, or of a folder's files (a saved `datasets` folder); None when it is gone."""
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{item.relative_to(path).as_posix()}\0{file_sha256(item)}\n".encode())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_file(written: str, resolved: str) -> SourceFile:
    """A source as the recipe wrote it and as it resolved; a Hub dataset id (no local file) gets no hash."""
    local = Path(resolved)
    return SourceFile(path=written, resolved=resolved, sha256=content_sha256(local) if local.exists() else None)


SIGNATURE_BLOCKS = 16  # blocks read from each .bin weight file, evenly spread
SIGNATURE_BLOCK_BYTES = 1 << 16
SIGNATURE_TENSOR_BYTES = 1 << 12  # leading bytes read from each tensor of a safetensors folder


def weights_signature(model_dir: Path) -> str | None:
    """A sha256 over the weights transformers loads from `model_dir`, None where it has no weight file. For
    safetensors (what tunesmith and the Hub write): every tensor's name, dtype and shape and its first 4 KiB of
    data, found through the files' headers, so the same tensors sharded otherwise, in another order or with other
    metadata sign the same; for *.bin files (where no safetensors is): each file's name, size and 16 blocks of
    64 KiB spread through it. Other files (a pytorch_model.bin another tool downloads beside the safetensors later,
    a tokenizer, a lock) do not count.

    A sample, not a full hash, so a 140 GB model costs a few MiB of reads: weights written again from another merge,
    fine-tune or dtype differ in every tensor they change, and its first rows change with it."""
    files = sorted(f for f in model_dir.glob("*.safetensors") if f.is_file()) or sorted(
        f for f in model_dir.glob("*.bin") if f.is_file() and f.name != "training_args.bin")
    if not files:
        return None
    key = (str(model_dir.resolve()), tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if key not in _signatures:  # a command asks several times (eval: tokenizer, model, each add-on): read once
        _signatures[key] = tensors_sha256(files) if files[0].suffix == ".safetensors" else sampled_sha256(files)
    return _signatures[key]


_signatures: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}


def safetensors_tensors(file: Path) -> dict[str, tuple[str, list[int], int, int]]:
    """Each tensor of a safetensors file: dtype, shape and the byte range of its data in the file (the format's
    header: 8 bytes of length, then JSON; https://github.com/huggingface/safetensors#format)."""
    with file.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
    start = 8 + length
    return {name: (info["dtype"], info["shape"], start + info["data_offsets"][0], start + info["data_offsets"][1])
            for name, info in header.items() if name != "__metadata__"}


def tensors_sha256(files: list[Path]) -> str:
    """`weights_signature`'s digest of safetensors `files`, tensor by tensor in name order."""
    tensors = {name: (file, *entry) for file in files for name, entry in safetensors_tensors(file).items()}
    digest = hashlib.sha256()
    handles: dict[Path, Any] = {}
    try:
        for name in sorted(tensors):
            file, dtype, shape, begin, end = tensors[name]
            handle = handles.setdefault(file, file.open("rb"))
            handle.seek(begin)
            digest.update(f"{name}\0{dtype}\0{shape}\n".encode())
            digest.update(handle.read(min(end - begin, SIGNATURE_TENSOR_BYTES)))
    finally:
        for handle in handles.values():
            handle.close()
    return digest.hexdigest()


def sampled_sha256(files: list[Path]) -> str:
    """`weights_signature`'s digest of *.bin `files`: each one's name, size and SIGNATURE_BLOCKS + 1 evenly spread
    blocks."""
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.name}\0{size}\n".encode())
        with file.open("rb") as handle:
            for index in range(SIGNATURE_BLOCKS + 1):
                handle.seek(index * max(size - SIGNATURE_BLOCK_BYTES, 0) // SIGNATURE_BLOCKS)
                digest.update(handle.read(SIGNATURE_BLOCK_BYTES))
    return digest.hexdigest()


def hub_commit(model_dir: Path) -> str | None:
    """The commit of a Hugging Face cache snapshot (`.../snapshots/<commit>`), None for any other folder."""
    return model_dir.name if model_dir.parent.name == "snapshots" else None


def validated_versioned(model: type[ModelT], raw: Any, path: Path, version: int, what: str, hint: str) -> ModelT:
    """`raw` (read from `path`) as `model`, refusing another `version` of the file and a file that does not fit,
    each with `hint` (what the user does about it). `what` names the file kind in messages."""
    if isinstance(raw, dict) and raw.get("version", version) != version:
        raise TunesmithError(f"{path} has {what} version {raw.get('version')!r}; this tunesmith reads version "
                             f"{version}.", hint)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise TunesmithError(f"{path} is not a valid {what}: {exc}", hint) from None
