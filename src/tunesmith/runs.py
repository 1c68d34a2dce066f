"""The run directory: everything one experiment produced, in one place, written atomically.

Every file goes to a temporary name first and is renamed into place, so a crash never leaves half a
file; directories (adapters, merged checkpoints) are built in a temporary sibling and renamed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from tunesmith.config import DataSection, Recipe, recipe_to_yaml
from tunesmith.errors import TunesmithError, first_line, shell_arg
from tunesmith.manifest import (
    MANIFEST_VERSION,
    BaseModelRecord,
    DataRecord,
    EvalRecord,
    ExportRecord,
    RowsFile,
    RunManifest,
    SourceFile,
    TrainRecord,
    content_sha256,
    hub_commit,
    source_file,
    validated_versioned,
    weights_signature,
)

Row = dict[str, Any]


def check_output_file(path: Path, option: str) -> None:
    """An output file a user names (`--html FILE`, `-o FILE`) must not be a folder: said before the work that
    fills it, not after. Its folder is made when missing (`atomic_write_bytes`)."""
    if path.expanduser().is_dir():
        raise TunesmithError(f"{option} {path} is a folder; it names the file to write.",
                             f"Name a file, e.g. {path / 'out.html'}." if option == "--html" else
                             f"Name a file inside it, e.g. {path / 'out'}.")


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same directory and a rename (its folder made when
    missing); a link at `path` is replaced, never written through. A stream a user names is written into instead of
    being replaced by a file: this process's own stdout or stderr (`-o /dev/stdout`, which may be a file the shell
    redirected it into, kept whole), a character device (`/dev/full`), a pipe with a reader. Raises TunesmithError
    where `path` is a folder; OSError where the disk or the stream refuses (ENOSPC; ENXIO: a pipe nobody reads)."""
    check_output_file(path, "output")
    try:
        descriptor = own_stream(path)
        if descriptor is not None or is_stream(path):
            write_stream(path, descriptor, data)
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; users expect ordinary permissions
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        if exc.filename is None or ".tmp" in str(exc.filename):  # say the file the user named, not our temporary one
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    return path


def own_stream(path: Path) -> int | None:
    """The descriptor `path` names when it is one of this process's own (/dev/stdout, /dev/stderr, /dev/fd/N,
    /proc/self/fd/N), else None."""
    text = os.path.normpath(str(path))
    named = {"/dev/stdout": 1, "/dev/stderr": 2}.get(text)
    for prefix in ("/dev/fd/", "/proc/self/fd/", f"/proc/{os.getpid()}/fd/"):
        if text.startswith(prefix) and text[len(prefix):].isdigit():
            named = int(text[len(prefix):])
    return named


def is_stream(path: Path) -> bool:
    """A character device, pipe or socket at `path` (links followed): written into, not replaced."""
    import stat

    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def write_stream(path: Path, descriptor: int | None, data: bytes) -> None:
    """`data` into this process's descriptor, or into the device or pipe at `path` (a pipe opened without waiting:
    ENXIO where nobody reads it, rather than a hang)."""
    if descriptor is None:
        descriptor = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.set_blocking(descriptor, True)  # opened: now write it all, at the reader's pace
        owned = True
    else:
        owned = False
        for stream in (sys.stdout, sys.stderr):  # what Python holds back goes first, in order
            with contextlib.suppress(OSError, ValueError, AttributeError):  # a stream without a descriptor
                if stream.fileno() == descriptor:
                    stream.flush()
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view):]
    finally:
        if owned:
            os.close(descriptor)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def check_replaceable_output(path: Path, marker: str, written: Collection[str] | None = None) -> None:
    """Refuse an output folder that writing there would destroy: `atomic_directory` replaces the whole folder.

    `path` may be new, empty, or an earlier output of the same command (it holds `marker`, e.g. `data_report.json`,
    and, where the command names what it writes (`written`), nothing else: a file a user added to an earlier output
    would be deleted with it). The current folder, a folder above it, the home folder and any other non-empty folder
    are refused. Raises TunesmithError (exit 2) naming the folder and what to do.
    """
    target = path.expanduser().resolve()
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if target in (cwd, home) or target in cwd.parents:
        raise TunesmithError(f"Output folder {path} is the current folder, a folder above it or your home folder: "
                             "tunesmith writes an output folder by replacing it whole.",
                             "Name a new folder for the output, e.g. --out NEW_FOLDER/.")
    if target.exists() and not target.is_dir():
        raise TunesmithError(f"Output folder {path} is a file.", "Name a new folder for the output.")
    if target.is_dir() and any(target.iterdir()) and not (target / marker).is_file():
        raise TunesmithError(f"Output folder {path} already holds files that tunesmith did not write there (no "
                             f"{marker}); writing the output would replace the folder and delete them.",
                             "Name a new or empty folder, or move those files away first.")
    added = sorted(entry.name for entry in target.iterdir() if entry.name not in {marker, *written}) if (
        written is not None and target.is_dir()) else []
    if added:
        raise TunesmithError(f"Output folder {path} is an earlier output, but also holds {', '.join(added)}, which "
                             "tunesmith did not write there; writing the output would replace the folder and delete "
                             f"{'it' if len(added) == 1 else 'them'}.",
                             "Move those files away first, or name a new folder.")


@contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `path` (all of it), on failure it is removed.

    The earlier folder is renamed aside before the new one takes its name and deleted only after, so that an
    interruption at any point leaves either the old folder or the new one whole at `path` (a rename is atomic on
    one filesystem; deleting a folder is not). Where a user names `path`, call `check_replaceable_output` first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(tmp, 0o777 & ~current_umask())
    aside = tmp.with_name(tmp.name + ".old")
    try:
        yield tmp
        if path.exists():
            os.replace(path, aside)
        os.replace(tmp, path)
    finally:
        if aside.exists() and not path.exists():  # interrupted between the two renames: the old folder goes back
            os.replace(aside, path)
        for leftover in (tmp, aside):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TunesmithError(f"Missing file: {path}", "Run the stage that writes it first.") from None


@dataclass(frozen=True)
class Run:
    """A run directory and the names of what lives in it (DESIGN.md §2)."""

    path: Path

    @property
    def recipe_file(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def chat_template_file(self) -> Path:
        """The chat template the recipe's model.chat_template named, as training read it (absent: the model's own)."""
        return self.path / "chat_template.jinja"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def plots_dir(self) -> Path:
        return self.path / "plots"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    def relative(self, path: Path) -> str:
        """`path` relative to the run directory (POSIX), as the run's manifests name what is inside the run; a path
        outside it (a base model folder) stays absolute."""
        try:
            return path.resolve().relative_to(self.path.resolve()).as_posix()
        except ValueError:
            return str(path.resolve())

    @property
    def exports_dir(self) -> Path:
        return self.path / "exports"

    def trained_artifact(self) -> Path:
        """What training saved: `adapter/` (a PEFT adapter) or `model/` (full, partial, hft).

        Raises TunesmithError when neither is complete, so eval, export and merge say so instead of failing
        inside PEFT or transformers on a missing file.
        """
        for folder, marker in ((self.adapter_dir, "adapter_config.json"), (self.path / "model", "config.json")):
            if (folder / marker).is_file():
                require_weights(folder, marker)
                return folder
        if (self.path / "baseline" / "results.json").is_file() and not self.checkpoints_dir.is_dir():
            raise TunesmithError(f"{self.path} holds the baselines `tunesmith baseline` scored before any training; "
                                 "it has no trained model.",
                                 f"Train the recipe (`tunesmith train {shell_arg(self.recipe_file)} --evaluate`): its "
                                 "eval compares the tuned model with the base and these baselines.")
        if training_process(self) is not None:  # still training in another process: not "did not finish"
            raise run_being_trained(self, waiting="Wait for it to finish; its adapter or model is saved at the end.")
        if any(self.checkpoints_dir.glob("checkpoint-*")):  # stopped with a checkpoint: resuming is the way on
            hint = (f"Finish it: `tunesmith train {shell_arg(self.recipe_file)} --resume {shell_arg(self.path)}` goes "
                    f"on from its last checkpoint (`tunesmith eval {shell_arg(self.path)} --checkpoints` scores the "
                    "checkpoints it has); or pass a run directory whose training finished.")
        else:
            hint = (f"Train it again with `tunesmith train {shell_arg(self.recipe_file)}`, or pass a run directory "
                    "whose training finished.")
        raise TunesmithError(
            f"{self.path} has no trained model: neither adapter/adapter_config.json nor model/config.json exists "
            "(training did not finish, or the folder was moved or deleted).", hint)

    @property
    def manifest_file(self) -> Path:
        return self.path / "run.json"

    def manifest(self) -> RunManifest | None:
        """run.json, validated; None for a run written before run.json existed."""
        if not self.manifest_file.is_file():
            return None
        return validated_versioned(RunManifest, read_json(self.manifest_file), self.manifest_file, MANIFEST_VERSION,
                                   "run manifest", "Use the tunesmith version that wrote the run, or train it again; "
                                   "run.json is written by tunesmith, not by hand.")

    def eval_rows(self) -> list[Row] | None:
        """The held-out rows the data stage saved in the run, exactly as training split and cleaned them; None for
        a run written before the rows were saved (the caller then rebuilds them from the recipe's files)."""
        manifest = self.manifest()
        return self.read_rows(manifest.data.eval) if manifest and manifest.data else None

    def train_rows(self) -> list[Row] | None:
        """The training rows the data stage saved in the run; None for a run written before they were saved."""
        manifest = self.manifest()
        return self.read_rows(manifest.data.train) if manifest and manifest.data else None

    def read_rows(self, saved: RowsFile) -> list[Row]:
        """Rows saved in the run, checked against their recorded sha256: edited rows are refused, not scored."""
        path = self.path / saved.path
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise TunesmithError(f"{path} is missing, but run.json records it.",
                                 "Copy the whole run directory, data/ included.") from None
        if hashlib.sha256(data).hexdigest() != saved.sha256:
            raise TunesmithError(f"{path} was changed after training (its sha256 differs from run.json's).",
                                 "Restore the file, or score other rows explicitly: `tunesmith eval RUN --data FILE`.")
        return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]

    def changed_eval_source(self) -> SourceFile | None:
        """The source file the eval rows came from, when its content differs from training time or it is gone
        (so eval can say it scores the saved rows, not the file); None when unchanged, unhashed (Hub) or unknown."""
        manifest = self.manifest()
        if manifest is None or manifest.data is None:
            return None
        source = manifest.data.sources.get(manifest.data.eval_from)
        if source is None or source.sha256 is None:
            return None
        return None if content_sha256(Path(source.resolved)) == source.sha256 else source

    def base_model(self, resolve: Callable[[str, str | None], Path] | None = None) -> Path:
        """The local folder of the base model this run trained on, as run.json recorded it, checked against the
        weights signature recorded with it (a folder rewritten with other weights since is refused, not used).

        `resolve(source, revision)` finds a model source on this machine; resolving belongs to `tunesmith.models`,
        a layer above this one. It is called where the recorded folder is gone (a run copied to another machine,
        a cleaned cache): with the recorded source at the recorded Hub commit, the result checked against the
        record; and for a run written before run.json, with the recipe's model.source. Raises TunesmithError where
        no folder holds the recorded weights."""
        manifest = self.manifest()
        record = manifest.train.base_model if manifest and manifest.train else None
        if record is None:
            if resolve is None:
                raise TunesmithError(f"{self.path}: run.json records no trained model.", "Train the run first.")
            recipe = self.load_recipe()
            return resolve(recipe.model.source, recipe.model.revision)
        recorded = Path(record.path)
        if recorded.is_dir():
            return self.checked_base(recorded, record)
        if resolve is None:
            raise TunesmithError(f"{self.path}: the recorded base model {recorded} is gone.",
                                 "Restore the base model folder, or train the run again.")
        found = resolve(record.source, record.commit or record.revision)
        print(f"{self.path.name}: the base model folder run.json records ({recorded}) is gone; using {found}, "
              f"resolved from {record.source}" + (f" at commit {record.commit}" if record.commit else ""),
              file=sys.stderr, flush=True)
        if record.commit and hub_commit(found) != record.commit:
            raise TunesmithError(f"{self.path.name} trained on {record.source} at commit {record.commit}; "
                                 f"{found} is commit {hub_commit(found) or 'unknown'}.",
                                 f"Download the commit it trained on: `hf download {record.source} --revision "
                                 f"{record.commit}`.")
        return self.checked_base(found, record)

    def checked_base(self, folder: Path, record: BaseModelRecord) -> Path:
        """`folder`, where its weights are the ones `record` was made from (`weights_signature`); older records
        carry no signature and are taken as they are."""
        if record.weights is not None and weights_signature(folder) != record.weights:
            raise TunesmithError(f"The base model in {folder} is not the one {self.path.name} trained on: its weight "
                                 "files differ from the signature run.json recorded at training time, so the run's "
                                 "adapter on it would give other answers than it was trained and scored to give.",
                                 f"Put back the model the run trained on (model.source: {record.source}), or train "
                                 "a new run on this one.")
        return folder

    def load_recipe(self, overrides: list[str] | None = None) -> Recipe:
        """The recipe the run was made from (with `--set` `overrides`), with `data.max_length: auto` as training
        resolved it (run.json's data stage), so later stages encode at the length training did."""
        from tunesmith.config import load_recipe

        refuse_overrides_of_what_was_trained(overrides or [])
        recipe = load_recipe(self.recipe_file, overrides)
        manifest = self.manifest()
        if recipe.data.max_length == "auto" and manifest and manifest.data and manifest.data.max_length:
            recipe.data.max_length = manifest.data.max_length
        return recipe

    def append_metrics(self, records: list[dict[str, Any]]) -> None:
        """Rewrite metrics.jsonl with new records appended (small file; keeps the write atomic)."""
        old = self.metrics_file.read_text(encoding="utf-8") if self.metrics_file.exists() else ""
        new = "".join(json.dumps(r) + "\n" for r in records)
        atomic_write_text(self.metrics_file, old + new)

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.exists():
            return []
        lines = self.metrics_file.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def keep_metrics_through(self, step: int) -> None:
        """Drop the records logged after `step` (a resume from that step logs them again), and the trainer's
        end-of-training summary of the stopped process (`train_runtime`, `train_loss`: only the resumed run's
        summary is the run's)."""
        kept = [record for record in self.read_metrics()
                if record.get("step", 0) <= step and "train_runtime" not in record]
        atomic_write_text(self.metrics_file, "".join(json.dumps(r) + "\n" for r in kept))


MANIFEST_LOCK = ".run.json.lock"
_manifest_locks: dict[Path, Any] = {}


@contextmanager
def manifest_lock(run: Run) -> Iterator[None]:
    """Held while a command reads, merges and writes run.json (or exports/manifest.json): two commands finishing
    together (an eval beside an export) would otherwise each write their own merge and lose the other's record. An
    OS file lock (filelock), reentrant within a process, so a recorder may call record_stage inside it."""
    from filelock import FileLock

    path = (run.path / MANIFEST_LOCK).resolve()
    lock = _manifest_locks.setdefault(path, FileLock(path))
    with lock.acquire(timeout=120):
        yield


def record_stage(run: Run, name: str, section: BaseModel | dict[str, Any]) -> RunManifest:
    """Merge one stage's section into run.json, atomically and under `manifest_lock`; the other stages' sections stay
    as they are.

    The whole manifest is validated before it is written, so an unknown stage name or a bad field fails here.
    """
    with manifest_lock(run):
        return merged_stage(run, name, section)


def merged_stage(run: Run, name: str, section: BaseModel | dict[str, Any]) -> RunManifest:
    current = run.manifest() or RunManifest()
    value = section.model_dump(mode="json") if isinstance(section, BaseModel) else section
    try:
        manifest = RunManifest.model_validate({**current.model_dump(mode="json"), name: value})
    except ValidationError as exc:
        raise TunesmithError(f"Cannot record stage {name!r} in {run.manifest_file}: {exc}",
                             "This is a bug in the stage that records it; please report it.") from None
    atomic_write_json(run.manifest_file, manifest.model_dump(mode="json"))
    return manifest


def record_eval_results(run: Run, results_file: Path) -> None:
    """Add one results.json to run.json's eval section, keyed by what it scored (`held_out` for eval/ itself)."""
    folder = results_file.parent.relative_to(run.eval_dir).as_posix()
    with manifest_lock(run):
        current = run.manifest() or RunManifest()
        results = {**(current.eval.results if current.eval else {}),
                   "held_out" if folder == "." else folder: results_file.relative_to(run.path).as_posix()}
        checkpoints = current.eval.checkpoints if current.eval else None
        record_stage(run, "eval", EvalRecord(results=results, checkpoints=checkpoints))


def record_checkpoint_scores(run: Run, report_file: Path) -> None:
    """Name eval/checkpoints.json in run.json's eval section (the results files stay as they are)."""
    with manifest_lock(run):
        current = run.manifest() or RunManifest()
        results = current.eval.results if current.eval else {}
        record_stage(run, "eval", EvalRecord(results=results,
                                             checkpoints=report_file.relative_to(run.path).as_posix()))


WEIGHT_FILES = ("*.safetensors", "*.bin")  # PEFT's adapter_model.*, transformers' model*.* and their shards


def require_weights(folder: Path, marker: str) -> None:
    """A trained folder holds weights beside its `marker` (adapter_config.json, config.json): one copied half-way,
    or made by hand, is refused here, naming what is missing, rather than failing inside PEFT or transformers."""
    if not any(any(folder.glob(pattern)) for pattern in WEIGHT_FILES):
        raise TunesmithError(f"{folder} has {marker} but no weights (no .safetensors or .bin file): it was copied "
                             "half-way, or its weights were deleted.",
                             "Copy the folder again whole, or train the run again.")


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    """A PEFT adapter's adapter_config.json as a dict. Raises TunesmithError naming the file where it cannot be read,
    is not JSON, or is not an object."""
    return read_json_object(adapter_dir / "adapter_config.json", "", "an adapter configuration",
                            "It is written by PEFT's save_pretrained: copy the adapter folder again whole.")


def read_json_object(path: Path, label: str, what: str, fix: str) -> dict[str, Any]:
    """A JSON file holding an object (`what` names it). Raises TunesmithError, its message starting with `label`
    (the recipe key or option that gave the file, and ': '), where the file is missing, a folder, unreadable, not
    UTF-8, not JSON or not an object; `fix` is the hint."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TunesmithError(f"{label}no such file {path}.", fix) from None
    except IsADirectoryError:
        raise TunesmithError(f"{label}{path} is a folder.", fix) from None
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON
        raise TunesmithError(f"{label}{path} cannot be read as JSON ({first_line(exc)}).", fix) from None
    if not isinstance(value, dict):
        raise TunesmithError(f"{label}{path} holds a JSON {type(value).__name__}, not {what}.", fix)
    return value


def record_exports(run: Run, written: dict[str, Path], verification: dict[str, dict[str, Any]],
                   grammars: dict[str, Path] | None = None) -> None:
    """Add the formats just written to run.json's exports section (paths relative to the run, sizes in bytes), with
    the answer grammar written beside a format (`grammars`). A format's newest file is recorded under its name; an
    earlier file of it that is still there (a GGUF of another quantization) stays, under `name:file`."""
    with manifest_lock(run):
        merge_exports(run, written, verification, grammars or {})


def merge_exports(run: Run, written: dict[str, Path], verification: dict[str, dict[str, Any]],
                  grammars: dict[str, Path]) -> None:
    current = run.manifest() or RunManifest()
    exports = dict(current.exports or {})

    for name, path in written.items():
        earlier = exports.get(name)
        if earlier is not None and earlier.path != run.relative(path) and (run.path / earlier.path).exists():
            exports[f"{name}:{Path(earlier.path).name}"] = earlier  # another file of the format (a GGUF's other quant)
        grammar = grammars.get(name)
        exports[name] = ExportRecord(path=run.relative(path), bytes=tree_size(path),
                                     verification=verification.get(name),
                                     grammar=run.relative(grammar) if grammar else None)
    record_stage(run, "exports", {name: record.model_dump(mode="json") for name, record in exports.items()})


def tree_size(path: Path) -> int:
    """A file's size, or the total of a folder's files, in bytes."""
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


SPACE_MARGIN = 1.2  # free space wanted before a write, as a multiple of its expected size


def free_bytes(path: Path) -> int:
    """Free space on the filesystem holding `path` (its nearest existing parent), in bytes."""
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def require_free_space(folder: Path, needed: int, what: str) -> None:
    """Stop before writing `what` (about `needed` bytes) into `folder` when it will not fit with SPACE_MARGIN,
    naming both numbers; a write that starts is one that can finish."""
    free = free_bytes(folder)
    wanted = int(needed * SPACE_MARGIN)
    if free < wanted:
        raise TunesmithError(
            f"Not enough disk space for {what}: about {needed / 1e6:,.1f} MB expected ({wanted / 1e6:,.1f} MB with "
            f"margin), {free / 1e6:,.1f} MB free on the disk holding {folder}.",
            "Free some space (old run directories, or their checkpoints/ folders), or point runs_dir to a bigger disk.")


def save_rows(run: Run, split: str, rows: list[Row]) -> RowsFile:
    """Write canonical rows into the run as data/<split>.jsonl; returns the file's record (path relative)."""
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    relative = f"data/{split}.jsonl"
    atomic_write_bytes(run.path / relative, data)
    return RowsFile(path=relative, rows=len(rows), sha256=hashlib.sha256(data).hexdigest())


def record_data_stage(run: Run, data: DataSection, train: list[Row], held_out: list[Row], shape: str,
                      resolved: dict[str, str]) -> DataRecord:
    """Save the rows training uses and record them in run.json with their sources (`resolved`: the data stage's
    split → resolved path or Hub id), so eval scores these rows, not whatever the source files hold later."""
    written = {"train": data.train, **({"eval": data.eval} if data.eval else {})}
    record = DataRecord(shape=shape, train=save_rows(run, "train", train), eval=save_rows(run, "eval", held_out),
                        sources={split: source_file(path, resolved[split]) for split, path in written.items()},
                        eval_from="eval" if data.eval else "train",
                        max_length=data.max_length if isinstance(data.max_length, int) else None)
    record_stage(run, "data", record)
    return record


TRAINED_KEYS = ("model", "adapter", "method.kind", "data.train", "data.eval", "data.max_length", "training")
SCORING_KEYS = ("training.device", "training.seed")  # under a trained section, but how the scoring runs


def refuse_overrides_of_what_was_trained(overrides: list[str]) -> None:
    """Refuse a later stage's `--set` of a key training already acted on (the base, the adapter, the method, the
    data and its length, the training settings): the run's artifact would not change, and the stage would score
    or describe it as something it is not (e.g. `--set data.eval=other.jsonl` still scoring the saved rows)."""
    for override in overrides:
        key = override.partition("=")[0].strip()
        if key in SCORING_KEYS or not any(key == k or key.startswith(k + ".") for k in TRAINED_KEYS):
            continue
        rows = key in ("data.train", "data.eval")
        raise TunesmithError(f"--set {key}: the run was trained with the {key} its recipe.yaml records, and "
                             "setting it now would not change what was trained.",
                             "Score other rows with `tunesmith eval RUN --data FILE`." if rows else
                             f"Train a new run with `--set {override}` to change it.")


def record_train_stage(run: Run, recipe: Recipe, artifact: Path, model_dir: Path,
                       init_from: Path | None = None, replay: RowsFile | None = None) -> TrainRecord:
    """Record what training saved (`artifact`, inside the run), the base it started from (`model_dir`, as
    resolved) and the adapter its weights began as (`init_from`), so later stages load these from run.json
    instead of resolving the recipe's source again."""
    kind = "adapter" if (artifact / "adapter_config.json").is_file() else "model"
    base = BaseModelRecord(source=recipe.model.source, revision=recipe.model.revision,
                           path=str(model_dir.resolve()), commit=hub_commit(model_dir),
                           weights=weights_signature(model_dir))
    record = TrainRecord(artifact=kind, path=artifact.relative_to(run.path).as_posix(), method=recipe.method.kind,
                         adapter=recipe.adapter.kind, base_model=base,
                         init_from=str(init_from.resolve()) if init_from else None, replay=replay)
    record_stage(run, "train", record)
    return record


def runs_root(recipe: Recipe, runs_dir: Path | None) -> Path:
    """The folder runs are made in (`--runs-dir`, else the recipe's runs_dir), relative to where the user runs it;
    a file of that name is a user error naming both ways to fix it."""
    root = Path(runs_dir or recipe.runs_dir).expanduser()
    for folder in (root, *root.parents):
        if folder.exists() and not folder.is_dir():
            raise TunesmithError(f"Runs cannot be made in {root}: {folder} is a file, not a folder.",
                                 "Pass another folder with --runs-dir (or the recipe's runs_dir), or move the file.")
    return root


def create_run(recipe: Recipe, runs_dir: Path | None = None) -> Run:
    """Make a fresh run directory and snapshot the resolved recipe and environment into it."""
    root = runs_root(recipe, runs_dir)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    root.mkdir(parents=True, exist_ok=True)
    path, suffix = root / f"{recipe.name}-{stamp}", 1
    while True:  # made here, not looked for: two runs started in the same second never share a folder
        try:
            path.mkdir()
            break
        except FileExistsError:
            suffix += 1
            path = root / f"{recipe.name}-{stamp}-{suffix}"
    return create_run_at(recipe, path)


class InterruptedBeforeTraining(TunesmithError):
    """Ctrl-C (or SIGTERM) while a new run was still setting up: nothing to resume, so its directory was removed."""

    label = "Stopped"
    exit_code = 130


@contextmanager
def removed_if_unstarted(run: Run) -> Iterator[Run]:
    """Remove a new run's directory when its training (or `baseline`'s scoring) stops before the first step was
    logged, on a user's mistake, a full disk, running out of memory or an interruption (KeyboardInterrupt): it would
    hold only the set-up (recipe, environment, data), nothing to resume or read, and `runs` would list it. A run
    with a logged step or a checkpoint is kept. Re-raises the error; an interruption as InterruptedBeforeTraining,
    which says so."""
    try:
        yield run
    except BaseException as exc:
        checkpoints = run.checkpoints_dir.is_dir() and any(run.checkpoints_dir.iterdir())
        trained = run.adapter_dir.exists() or (run.path / "model").exists()
        started = run.metrics_file.exists() or checkpoints or trained
        if not started:
            shutil.rmtree(run.path, ignore_errors=True)
        if isinstance(exc, KeyboardInterrupt) and not started:
            raise InterruptedBeforeTraining(f"Interrupted before training started; there is nothing to resume, so "
                                            f"{run.path} was removed.", "Start it again when ready.") from None
        raise


TRAINING_LOCK = ".training.lock"
LAUNCH_DIR = "launch"  # inside the run directory: accelerate.yaml, deepspeed.json, command.sh (train.launch)
TRAINING_OWNER = ".training.json"


@contextmanager
def training_lock(run: Run) -> Iterator[Run]:
    """Held by the process training in `run` (an OS file lock through the filelock library: released when the
    process ends, `kill -9` included), so that a second `--resume` of a run still training is refused instead of
    writing into it alongside. `.training.json` says which process holds it (pid, host, since)."""
    from filelock import FileLock, Timeout

    lock = FileLock(run.path / TRAINING_LOCK)
    try:
        lock.acquire(timeout=2)  # a `runs list` peeking at the lock holds it for a moment
    except Timeout:
        raise run_being_trained(run) from None
    owner = run.path / TRAINING_OWNER
    try:
        atomic_write_json(owner, {"pid": os.getpid(), "host": platform.node(),
                                  "since": datetime.now().isoformat(timespec="seconds")})
        yield run
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def training_process(run: Run) -> dict[str, Any] | None:
    """The process training in `run` now, as `.training.json` describes it (pid, host, since; {} when unreadable),
    or None when none holds the run's training lock."""
    from filelock import FileLock, Timeout

    if not (run.path / TRAINING_LOCK).exists():
        return None
    lock = FileLock(run.path / TRAINING_LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            return dict(json.loads((run.path / TRAINING_OWNER).read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return {}
    lock.release()
    return None


def run_being_trained(run: Run, waiting: str | None = None) -> TunesmithError:
    """The error for touching a run another process is training in; `waiting`: the hint where the command only
    needs the training to end (else: let it finish, or stop it and resume)."""
    owner = training_process(run) or {}
    who = (f" (process {owner['pid']} on {owner.get('host', '?')}, since {owner.get('since', '?')})"
           if owner.get("pid") else "")
    return TunesmithError(f"{run.path} is being trained by another process{who}.",
                          waiting or "Let it finish, or stop it (Ctrl-C in its terminal, or `kill PID`: it writes a "
                                     "checkpoint first), then resume it.")


def create_run_at(recipe: Recipe, path: Path) -> Run:
    """A run in `path` (made if missing, and empty): the resolved recipe and environment snapshot; the recipe goes
    in last, so that a run directory with recipe.yaml is one whose set-up is complete."""
    path.mkdir(parents=True, exist_ok=True)
    run = Run(path)
    atomic_write_json(path / "env.json", environment_snapshot())
    atomic_write_text(run.recipe_file, recipe_to_yaml(recipe))
    return run


def merge_output_hint(folder: Path, shown: str) -> str:
    """What to do with a `tunesmith merge` output instead, as what it is: a combined adapter (score it with
    `compare`, fold it into its base) or a whole model (chat with it, use it as a run's base)."""
    quoted = shell_arg(shown)
    if (folder / "adapter_config.json").is_file():  # several adapters combined into one
        return (f"Score it on held-out rows with `tunesmith compare --prompts eval.jsonl {quoted}`. It is a combined "
                f"adapter: fold it into its base for a whole model (`tunesmith merge {quoted} --out "
                f"{shell_arg(shown + '-model')}`), or train on from it (`training.init_from: {shown}`); "
                f"`tunesmith serve {quoted}` serves it, `tunesmith push {quoted} USER/NAME` uploads it as it is.")
    return (f"It is a whole model: try it with `tunesmith chat {quoted}` or `tunesmith serve {quoted}`, or fine-tune, "
            "evaluate and export it through "
            f"a run with `model.source: {shown}` in a recipe; `tunesmith push {quoted} USER/NAME` uploads it as it is.")


def open_run(path: str | Path) -> Run:
    run = Run(Path(path))
    if not run.path.exists():
        raise TunesmithError(f"{path} does not exist.", "Pass a run directory that `tunesmith train` printed, e.g. "
                                                        "runs/quickstart-20261123-101500 (`tunesmith runs list runs` "
                                                        "lists them).")
    if (run.path / "merge.json").is_file() and not run.recipe_file.is_file():
        raise TunesmithError(f"{path} was written by `tunesmith merge`; this command takes a run directory.",
                             merge_output_hint(run.path, str(path)))
    if not run.recipe_file.is_file():
        raise TunesmithError(
            f"{path} is not a tunesmith run directory (no recipe.yaml).",
            "Pass the directory that `tunesmith train` printed, e.g. runs/quickstart-20261123-101500.",
        )
    return run


PACKAGES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "safetensors", "gguf")


def tunesmith_source() -> dict[str, Any] | None:
    """For tunesmith run from a git checkout (an editable install), the commit and whether the checkout had changes
    beside it (tracked files only): two runs of one version number can come from different code. None for an
    installed wheel, or where git cannot tell."""
    import subprocess

    package = Path(__file__).resolve().parent
    checkout = package.parents[1]  # src/tunesmith/ inside the checkout: not a user's repository a wheel sits in
    if package.parent.name != "src" or not (checkout / ".git").exists() or not (checkout / "pyproject.toml").is_file():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        changes = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "modified": bool(changes)}


def environment_snapshot() -> dict[str, Any]:
    """Versions and hardware, so a result can be traced to the stack that produced it."""
    import torch

    versions = {}
    for name in ("tunesmith", *PACKAGES):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cuda = torch.cuda.is_available()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
        "tunesmith_source": tunesmith_source(),
        "cuda": torch.version.cuda if cuda else None,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "created": datetime.now().isoformat(timespec="seconds"),
    }


def diff_runs(first: Run, second: Run) -> dict[str, dict[str, tuple[Any, Any]]]:
    """What differs between two runs, by what decides a result: recipe keys, the data they trained and were
    scored on (sha256 of the saved rows), package versions and hardware (env.json); then what came of it
    (`outcomes`: status, steps, final loss or reward, headline eval score, as `runs list` shows them). Each entry
    maps a key to (first's value, second's value); an empty section means no difference found."""
    from tunesmith.config import flat_keys, recipe_differences

    def data(run: Run) -> dict[str, Any]:
        manifest = run.manifest()
        if manifest is None or manifest.data is None:
            return {}
        return {"train rows sha256": manifest.data.train.sha256, "eval rows sha256": manifest.data.eval.sha256,
                "train rows": manifest.data.train.rows, "eval rows": manifest.data.eval.rows}

    def env(run: Run) -> dict[str, Any]:
        path = run.path / "env.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def differing(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        return {key: (a.get(key), b.get(key)) for key in sorted(a.keys() | b.keys()) if a.get(key) != b.get(key)}

    hardware = ("python", "platform", "cpu_count", "cuda", "gpu")
    env_a, env_b = env(first), env(second)
    return {
        "recipe": recipe_differences(first.load_recipe(), second.load_recipe()),
        "data": differing(data(first), data(second)),
        "packages": differing(*(flat_keys({**env.get("packages", {}), "tunesmith_source": env.get("tunesmith_source")})
                                for env in (env_a, env_b))),
        "hardware": differing({k: env_a.get(k) for k in hardware}, {k: env_b.get(k) for k in hardware}),
        "outcomes": differing(*({**{key: value for key, value in run_summary(run).items()
                                    if key not in ("run", "method")}, "eval_loss": held_out_loss(run),
                                 "resumed_from_step": resumed_from_step(run)}
                                for run in (first, second))),
    }


def held_out_loss(run: Run) -> float | None:
    """The tuned model's loss on the held-out answers (eval/results.json), None before eval."""
    from tunesmith.results import read_results

    path = run.eval_dir / "results.json"
    try:
        return read_results(path).tuned.get("loss") if path.is_file() else None
    except TunesmithError:
        return None


def list_runs(runs_dir: Path) -> list[dict[str, Any]]:
    """`tunesmith runs list`: one summary (`run_summary`) for each run directory under `runs_dir`, and in each sweep
    folder there (`sweep-*` with its sweep.json), oldest first (by the start stamp in the folder's name,
    `NAME-YYYYMMDD-HHMMSS`; a folder named otherwise by its recipe.yaml's modification time)."""
    folders = sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []
    sweeps = [folder for folder in folders if (folder / "sweep.json").is_file() or folder.name.startswith("sweep-")]
    candidates = folders + [path for sweep in sweeps if sweep.is_dir() for path in sorted(sweep.iterdir())]
    runs = [Run(path) for path in candidates if (path / "recipe.yaml").is_file()]
    return [run_summary(run) for run in sorted(runs, key=lambda run: (started_at(run), run.path.name))]


def started_at(run: Run) -> str:
    """The start stamp in the run folder's name, else in its sweep folder's (a combination's folder is named after
    its settings), else its recipe.yaml's modification time."""
    for name in (run.path.name, run.path.parent.name):
        stamp = re.search(r"-(\d{8}-\d{6})(?:-\d+)?$", name)
        if stamp:
            return stamp[1]
    return datetime.fromtimestamp(run.recipe_file.stat().st_mtime).strftime("%Y%m%d-%H%M%S")


def run_summary(run: Run) -> dict[str, Any]:
    """What a run is and how far it got: its recipe's method and adapter, `status` (trained, stopped at a checkpoint,
    or not trained), the steps and final training loss (train.json), the headline eval score of base and tuned and
    the forgetting probes' accuracy and regression verdict (eval/results.json), None where a stage has not run."""
    from tunesmith.results import read_results

    try:
        recipe = run.load_recipe()
        what = f"{recipe.method.kind} {recipe.adapter.kind}"
    except TunesmithError:
        what = "?"  # a recipe this version no longer reads
    train = read_json(run.path / "train.json") if (run.path / "train.json").is_file() else {}
    steps = sorted(int(p.name.split("-")[1]) for p in run.checkpoints_dir.glob("checkpoint-*")
                   if p.name.split("-")[1].isdigit()) if run.checkpoints_dir.is_dir() else []
    try:
        manifest = run.manifest()
    except TunesmithError:  # a run.json this version does not read: said as not trained, not a crash of the list
        manifest = None
    process = training_process(run)
    rolled_back = manifest.train.checkpoint_step if manifest is not None and manifest.train is not None else None
    budget = train.get("time_budget") or {}
    status = (("trained (loss diverged)" if train.get("warnings") else "trained")
              + (f", the time budget stopped it at step {budget['stopped_at_step']}"
                 + (f" of {budget['planned_steps']}" if budget.get("planned_steps") else "")
                 if budget.get("stopped_at_step") is not None else "")
              + (f", adapter rolled back to step {rolled_back}" if rolled_back is not None else "")
              if manifest is not None and manifest.train is not None else
              f"training (process {process.get('pid', '?')})" if process is not None else
              f"stopped (checkpoint at step {steps[-1]})" if steps else
              "baselines only" if (run.path / "baseline" / "results.json").is_file() else "not trained")
    if not train:  # stopped or still training: how far its log (or its newest checkpoint) got
        train = logged_progress(run, what.split(" ")[0])
        if steps and steps[-1] > (train.get("steps") or 0):
            train["steps"] = steps[-1]
    summary = {"run": str(run.path), "method": what, "status": status, "steps": train.get("steps"),
               "final_loss": fit_loss(train), "metric": None, "base": None, "tuned": None,
               "final_reward": final_reward(train), "probe_accuracy": None, "regression": None}
    results_file = run.eval_dir / "results.json"
    if results_file.is_file():
        try:
            results = read_results(results_file)
        except TunesmithError:
            return summary
        metric = results.headline_metric() or ("perplexity" if "perplexity" in results.tuned else None)  # CPT's
        if metric is not None and results.rewards is None:
            summary.update(metric=metric, tuned=results.tuned.get(metric),
                           base=(results.base or {}).get(metric))
        elif results.rewards is not None:  # GRPO: the rewards it maximised are its score (a metric may see none)
            summary.update(metric="reward", tuned=results.rewards.tuned.get("reward"),
                           base=(results.rewards.base or {}).get("reward"))
        if results.probes is not None:  # the forgetting probes: what the tuning cost
            summary.update(probe_accuracy=results.probes.tuned.get("accuracy"), regression=results.probes.regression)
    return summary


def resumed_from_step(run: Run) -> int | None:
    """The checkpoint step a finished run was last resumed from (train.json), None when it ran uninterrupted."""
    path = run.path / "train.json"
    return read_json(path).get("resumed_from_step") if path.is_file() else None


def run_details(run: Run) -> dict[str, Any]:
    """One run in full, for `tunesmith runs show`: `run_summary`'s fields, then the base model, the rows it trained
    on and held out, its speed (train.json throughput), every eval score of base and tuned, what it exported (path
    inside the run, bytes), the files a person reads, and the tunesmith that trained it (env.json)."""
    from tunesmith.results import read_results

    details = run_summary(run)
    try:
        manifest = run.manifest()
    except TunesmithError:
        manifest = None
    train = read_json(run.path / "train.json") if (run.path / "train.json").is_file() else {}
    env = read_json(run.path / "env.json") if (run.path / "env.json").is_file() else {}
    speed = train.get("throughput") or {}
    details.update({
        "base_model": (manifest.train.base_model.source if manifest is not None and manifest.train is not None
                       else None),
        "rows": ({"shape": manifest.data.shape, "train": manifest.data.train.rows, "eval": manifest.data.eval.rows}
                 if manifest is not None and manifest.data is not None else None),
        "tokens_per_s": speed.get("real_tokens_per_s"), "mfu": speed.get("mfu"),
        "wall_time_s": train.get("wall_time_s"), "scores": None,
        "exports": {name: {"path": record.path, "bytes": record.bytes}
                    for name, record in sorted(((manifest.exports or {}) if manifest is not None else {}).items())},
        "files": [name for name in ("README.md", "eval/report.html", "plots/loss.png", "eval/results.json")
                  if (run.path / name).is_file()],
        "tunesmith": {"version": (env.get("packages") or {}).get("tunesmith"), "source": env.get("tunesmith_source")},
    })
    results_file = run.eval_dir / "results.json"
    if results_file.is_file():
        try:
            results = read_results(results_file)
            details["scores"] = {"base": dict(results.base or {}), "tuned": dict(results.tuned)}
        except TunesmithError:
            pass
    return details


def logged_progress(run: Run, method: str) -> dict[str, Any]:
    """For a run without train.json: the last step metrics.jsonl logged and its loss (GRPO: its reward), in
    train.json's keys; a line cut short by a kill is passed over."""
    progress: dict[str, Any] = {"method": method}
    if not run.metrics_file.is_file():
        return progress
    for line in run.metrics_file.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "loss" in record and "step" in record:
            progress.update(steps=record["step"], final_loss=record["loss"],
                            final_metrics={"reward": record.get("reward")})
    return progress


def final_reward(train: dict[str, Any]) -> float | None:
    """train.json's final mean reward of a GRPO run (`final_metrics.reward`); None for other methods."""
    return (train.get("final_metrics") or {}).get("reward") if train.get("method") == "grpo" else None


def fit_loss(train: dict[str, Any]) -> float | None:
    """train.json's final training loss where it measures the fit; None for GRPO, whose loss is a policy-gradient
    surrogate near 0 by construction (its progress is the reward, `final_metrics.reward`)."""
    return None if train.get("method") == "grpo" else train.get("final_loss")
