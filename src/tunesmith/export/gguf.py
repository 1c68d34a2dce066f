"""Write a transformers checkpoint as a GGUF file that llama.cpp and Ollama load, in pure Python.

No llama.cpp checkout: the `gguf` package (0.19) provides the writer, the HF→GGUF tensor names and
numpy quantizers for F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1. K-quants are made from an F16
file by llama.cpp's own quantizer (gguf_quantize.py), and a written file is checked in llama.cpp
against transformers when llama-cpp-python is installed (verify.py). Tensors are converted and written
one at a time (tensor infos first, data after), so memory stays near one tensor, and the file is
written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf
import numpy as np

from tunesmith.errors import TunesmithError
from tunesmith.export import gguf_entries, gguf_signature, update_export_manifest
from tunesmith.export.gguf_arch import ArchSpec, add_hyperparameters, arch_spec, llama3_rope_factors, prepare_weights
from tunesmith.export.gguf_quantize import K_QUANTS, quantize_with_llama_cpp, require_k_quant_support
from tunesmith.export.gguf_vocab import add_tokenizer
from tunesmith.export.verify import (
    Conversation,
    Verification,
    held_out_conversations,
    llama_cpp_available,
    require_llama_cpp,
    verify_gguf,
)
from tunesmith.models.checkpoints import checkpoint_shards
from tunesmith.runs import require_free_space

if TYPE_CHECKING:
    from tunesmith.config import Recipe
    from tunesmith.runs import Run

Q = gguf.GGMLQuantizationType
QUANT_TYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "F32": (Q.F32, gguf.LlamaFileType.ALL_F32),
    "F16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "BF16": (Q.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "Q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "Q4_0": (Q.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
    "Q4_1": (Q.Q4_1, gguf.LlamaFileType.MOSTLY_Q4_1),
    "Q5_0": (Q.Q5_0, gguf.LlamaFileType.MOSTLY_Q5_0),
    "Q5_1": (Q.Q5_1, gguf.LlamaFileType.MOSTLY_Q5_1),
}
LOW_BIT = {Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1}
SKIPPED_SUFFIXES = ("rotary_emb.inv_freq",)  # recomputed by llama.cpp, never serialised


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor of the output file: where it comes from, its GGUF name, shape (torch order) and type."""

    source: str | None  # checkpoint tensor name; None for tensors we compute (rope_freqs)
    name: str
    shape: tuple[int, ...]
    qtype: gguf.GGMLQuantizationType


def write_gguf(model_dir: Path, out_path: Path, quant: str = "F16", name: str | None = None) -> Path:
    """Convert the checkpoint in `model_dir` (safetensors + tokenizer) to a GGUF file at `out_path`."""
    from transformers import AutoConfig

    model_dir, out_path, quant = Path(model_dir), Path(out_path), parse_quant(quant)
    if quant in K_QUANTS:
        return write_k_quant(model_dir, out_path, quant, name)
    qtype, file_type = QUANT_TYPES[quant]
    config = AutoConfig.from_pretrained(model_dir)
    spec = arch_spec(config)
    shards = checkpoint_shards(model_dir)
    plan = plan_tensors(shards, config, spec, qtype)
    writer = gguf.GGUFWriter(None, spec.name)
    add_general_metadata(writer, name or model_dir.name, file_type)
    add_hyperparameters(writer, config)
    add_tokenizer(writer, model_dir, config.vocab_size)
    for planned in plan:
        add_tensor_info(writer, planned)
    require_free_space(out_path.parent, gguf_bytes(plan), out_path.name)
    with atomic_output(out_path) as tmp:
        write_file(writer, tmp, plan, shards, config, spec, label=f"writing {out_path.name}")
    return out_path


def write_k_quant(model_dir: Path, out_path: Path, quant: str, name: str | None) -> Path:
    """An F16 file from our writer, requantized by llama.cpp; the F16 lives next to the target until done."""
    with atomic_output(out_path) as tmp:
        f16 = tmp.with_name(tmp.name + ".F16")
        try:
            write_gguf(model_dir, f16, "F16", name or model_dir.name)
            quantize_with_llama_cpp(f16, tmp, quant)
        finally:
            f16.unlink(missing_ok=True)
    return out_path


def run_gguf_export(recipe: Recipe, run: Run, quant: str = "F16", verify: bool | None = None) -> Path:
    """The run's merged checkpoint (merged first if missing) as exports/gguf/<name>.<QUANT>.gguf.

    `verify` (default: when llama-cpp-python is installed) loads the file in llama.cpp and compares it
    with the merged checkpoint; a file below its type's agreement threshold is kept, flagged in the
    manifest, and the export fails.
    """
    from tunesmith.export.merged import export_merged, merged_is_current
    from tunesmith.models.tuned import is_adapter, run_base_model, say_unquantized_base

    quant = parse_quant(quant)  # a bad type fails before a slow merge
    if verify is None:
        verify = llama_cpp_available()
    elif verify:
        require_llama_cpp("--verify")
    artifact = run.trained_artifact()  # a run without a trained model fails here, naming the fix
    merged = artifact if not is_adapter(artifact) else run.exports_dir / "merged"  # whole models need no merge
    if merged != artifact and not merged_is_current(run, merged, artifact):
        say_unquantized_base(run, "merging")
        path, max_diff = export_merged(run_base_model(run), artifact, merged)
        record_merged(run, path, max_diff, artifact)
    target = run.exports_dir / "gguf" / f"{recipe.name}.{quant}.gguf"
    if not (verify and keeps_a_checked_file(run, quant, target)):
        write_gguf(merged, target, quant, name=recipe.name)
        verification = verify_gguf(target, merged, quant, run_conversations(run)) if verify else None
        record_in_manifest(run, quant, target, verification)
        if verification is not None:
            require_agreement(verification, target)
        return target
    return replace_checked_file(recipe, run, quant, merged, target)


def run_conversations(run: Run) -> list[Conversation]:
    """The run's own held-out conversations to verify a GGUF on (`held_out_conversations`); none, and said, where
    its saved rows cannot be read (left out of a shared copy, edited since): the fixed prompts still check it."""
    try:
        return held_out_conversations(run.eval_rows())
    except TunesmithError as exc:
        print(f"verifying on the fixed prompts only: {exc.message}", file=sys.stderr, flush=True)
        return []


def keeps_a_checked_file(run: Run, quant: str, target: Path) -> bool:
    """Whether `target` is there and exports/manifest.json records it as having passed its llama.cpp check: a new
    file then replaces it only once its own check passes (`replace_checked_file`)."""
    entry = gguf_entries(run).get(quant) or {}
    return (target.is_file() and entry.get("path") == run.relative(target)
            and (entry.get("verify") or {}).get("passed") is True)


def replace_checked_file(recipe: Recipe, run: Run, quant: str, merged: Path, target: Path) -> Path:
    """Write the new GGUF in exports/gguf/.unverified/ and check it in llama.cpp: it replaces the earlier file when it
    passes; when it fails, the earlier file stays (it is what serve and Ollama use) and the new one is kept in
    exports/gguf/.rejected/, recorded under the entry's `rejected` key. Both folders are hidden, so that nothing
    that lists the exports (push, the model card's llama.cpp command) takes either file for the export. Raises
    TunesmithError on a failure."""
    staged = target.parent / ".unverified" / target.name
    rejected = target.parent / ".rejected" / target.name
    try:
        write_gguf(merged, staged, quant, name=recipe.name)
        verification = verify_gguf(staged, merged, quant, run_conversations(run))
        if verification.passed:
            os.replace(staged, target)
            record_in_manifest(run, quant, target, verification)  # the entry no longer names a rejected file
            rejected.unlink(missing_ok=True)
            require_agreement(verification, target)
            return target
        rejected.parent.mkdir(exist_ok=True)
        os.replace(staged, rejected)
    finally:
        staged.unlink(missing_ok=True)
    entry = {**gguf_entries(run)[quant],
             "rejected": {"path": run.relative(rejected), "bytes": rejected.stat().st_size,
                          "verify": verification.as_dict()}}
    update_export_manifest(run, {quant: entry}, group="gguf")
    require_agreement(verification, rejected, kept=target)
    return target


def require_agreement(verification: Verification, target: Path, kept: Path | None = None) -> None:
    """Print the verification; below the type's threshold the export fails, the file staying for inspection
    (beside the earlier file `kept`, which a failed file never replaces)."""
    print(verification.summary(), file=sys.stderr)
    if verification.passed:
        return
    where = ("The file is kept and marked as failed (verify.passed: false) in exports/manifest.json." if kept is None
             else f"The earlier {kept.name}, which passed its check, is kept in its place (serve and Ollama use it); "
                  f"the new file is kept for inspection in exports/gguf/{target.parent.name}/ (`rejected` in "
                  "exports/manifest.json).")
    raise TunesmithError(
        f"{target.name} picks a different next token from the merged model at {1 - verification.agreement:.1%} of "
        f"positions in llama.cpp (a {verification.quant} file should agree on at least {verification.threshold:.0%}). "
        + where,
        "Export F16 to tell quantization loss from a conversion problem (F16 should agree on 99%+); "
        "--no-verify skips this check.")


def record_merged(run: Run, path: Path, max_diff: float, adapter_dir: Path) -> None:
    """The merged checkpoint a GGUF is converted from stays (later GGUF and Ollama exports reuse it): recorded in
    exports/manifest.json (and, by the export stage, run.json) as the `merged` format is, and said, with its size."""
    from tunesmith.export.merged import merged_entry
    from tunesmith.runs import tree_size

    update_export_manifest(run, {"merged": {**merged_entry(run, path, max_diff, adapter_dir), "written_for": "gguf"}})
    print(f"merged checkpoint kept at {path} ({tree_size(path) / 2**20:,.0f} MiB): the GGUF is converted from it, "
          "and later GGUF and Ollama exports reuse it; delete it when you need the space.", file=sys.stderr)


def record_in_manifest(run: Run, quant: str, path: Path, verification: Verification | None = None) -> None:
    """Add the GGUF (and its llama.cpp check) to exports/manifest.json next to the exports it already lists."""
    entry = {"path": run.relative(path), "bytes": path.stat().st_size, "signature": gguf_signature(path)}
    if verification is not None:
        entry["verify"] = verification.as_dict()
    update_export_manifest(run, {quant: entry}, group="gguf")


def parse_quant(quant: str) -> str:
    """The canonical name of a GGUF type; a K-quant without llama-cpp-python fails here, before slow steps."""
    key = quant.upper()
    if key in K_QUANTS:
        require_k_quant_support(key)
        return key
    if key in QUANT_TYPES:
        return key
    raise TunesmithError(f"Unknown GGUF quant type {quant!r}.", f"Use one of {', '.join([*QUANT_TYPES, *K_QUANTS])}.")


def add_general_metadata(writer: gguf.GGUFWriter, name: str, file_type: gguf.LlamaFileType) -> None:
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def plan_tensors(shards: dict[str, Path], config: Any, spec: ArchSpec,
                 qtype: gguf.GGMLQuantizationType) -> list[PlannedTensor]:
    """Every tensor the file will hold, named with gguf's own name map, with its output type."""
    name_map = gguf.get_tensor_name_map(spec.arch, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    plan = []
    for source in shards:
        if source.endswith(SKIPPED_SUFFIXES) or (tied and source == "lm_head.weight"):
            continue  # tied: llama.cpp reuses token_embd as the output head when output.weight is absent
        name = name_map.get_name(source, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise TunesmithError(f"No GGUF name for tensor {source!r} of a {spec.name} model.",
                                 "This checkpoint has layers llama.cpp's llama/qwen graphs do not use.")
        shape = tensor_shape(shards[source], source)
        head = name == "output.weight" or (tied and name == "token_embd.weight")
        plan.append(PlannedTensor(source, name, shape, tensor_qtype(shape, qtype, is_output_head=head)))
    if not tied and "lm_head.weight" not in shards:
        raise TunesmithError("The config says the output head is untied, but the checkpoint has no lm_head.weight.",
                             "Re-save the model with save_pretrained.")
    factors = llama3_rope_factors(config)
    if factors is not None:
        plan.append(PlannedTensor(None, gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                                  factors.shape, Q.F32))
    return plan


def tensor_shape(shard: Path, name: str) -> tuple[int, ...]:
    from safetensors import safe_open

    with safe_open(shard, framework="pt") as handle:
        return tuple(handle.get_slice(name).get_shape())


def tensor_qtype(shape: tuple[int, ...], requested: gguf.GGMLQuantizationType,
                 is_output_head: bool) -> gguf.GGMLQuantizationType:
    """The type one tensor is stored in, following llama.cpp's converter and quantizer.

    Norms and biases (1-D) stay F32. The output head is kept at Q8_0 under 4/5-bit types, as
    llama-quantize keeps it at a higher precision too. Rows that are not a whole number of quant
    blocks fall back to F16, as llama.cpp's converter does.
    """
    if len(shape) <= 1:
        return Q.F32
    if requested in LOW_BIT and is_output_head:
        requested = Q.Q8_0
    block_size, _ = gguf.GGML_QUANT_SIZES[requested]
    return requested if shape[-1] % block_size == 0 else Q.F16


def gguf_bytes(plan: list[PlannedTensor]) -> int:
    """The tensor data the planned file holds, in bytes (GGUF's header and vocabulary are a few MB more)."""
    return sum(int(np.prod(gguf.quants.quant_shape_to_byte_shape(p.shape, p.qtype))) for p in plan) + (8 << 20)


def add_tensor_info(writer: gguf.GGUFWriter, planned: PlannedTensor) -> None:
    """Declare a tensor before its data exists, so tensors can be converted one at a time later."""
    byte_shape = gguf.quants.quant_shape_to_byte_shape(planned.shape, planned.qtype)
    writer.add_tensor_info(planned.name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)),
                           raw_dtype=planned.qtype)


def write_file(writer: gguf.GGUFWriter, path: Path, plan: list[PlannedTensor], shards: dict[str, Path],
               config: Any, spec: ArchSpec, label: str) -> None:
    """Header, metadata and tensor table, then each tensor's data in plan order, with a progress bar."""
    from rich.console import Console
    from rich.progress import track

    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    try:
        for planned in track(plan, description=label, console=Console(file=sys.stderr), transient=True):
            weights = load_weights(planned, shards, config, spec)
            writer.write_tensor_data(gguf.quants.quantize(weights, planned.qtype))
    finally:
        writer.close()


def load_weights(planned: PlannedTensor, shards: dict[str, Path], config: Any, spec: ArchSpec) -> np.ndarray:
    """One tensor as float32 numpy in llama.cpp's layout (bf16/f16 checkpoints are widened first)."""
    from safetensors import safe_open

    if planned.source is None:
        return llama3_rope_factors(config)
    with safe_open(shards[planned.source], framework="pt") as handle:
        weights = handle.get_tensor(planned.source).float().numpy()
    return np.ascontiguousarray(prepare_weights(planned.source, weights, config, spec))


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path next to `path`, renamed onto it on success and removed on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    tmp.chmod(0o644)  # mkstemp makes it private; a model file is meant to be shared
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
