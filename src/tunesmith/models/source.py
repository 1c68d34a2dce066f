"""Resolve a model source (embedded alias, local directory, .gguf file, Hub id) to a local folder.

The failures users hit most (gated repos, private repos, no network, a typo in a path) each get
one paragraph saying what happened and what to do.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from tunesmith.errors import ModelSourceError, first_line
from tunesmith.models.home import is_model_name, mark_in_use
from tunesmith.models.registry import (
    EMBEDDED,
    cached_model_dir,
    is_pulled,
    list_models,
    pull_model,
)


def resolve_model_source(source: str, revision: str | None = None, base_dir: Path | None = None,
                         weights: bool = True) -> Path:
    """Return a local directory holding config, weights and tokenizer for `source` (`weights` False: a Hub model
    not yet downloaded brings its config and tokenizer only, what a memory plan reads)."""
    if source in EMBEDDED:
        return mark_in_use(cached_model_dir(source) if is_pulled(source) else pull_model(source))
    if is_model_name(source) and (cached_model_dir(source) / "config.json").is_file():  # an imported model
        return mark_in_use(cached_model_dir(source))
    path = Path(source).expanduser()
    if not path.is_absolute() and base_dir is not None and (base_dir / path).exists():
        path = base_dir / path
    if path.suffix == ".gguf":
        return _import_gguf_source(path)
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1:
        return _local_directory(path)
    return download_from_hub(source, revision, weights)


def resolve_model_config(source: str, revision: str | None = None, base_dir: Path | None = None) -> Path:
    """A local directory with `source`'s config.json and tokenizer, without downloading a Hub model's weights."""
    return resolve_model_source(source, revision, base_dir, weights=False)


def _import_gguf_source(path: Path) -> Path:
    from tunesmith.models.gguf_import import import_gguf

    name = path.stem.lower()  # the whole stem: llama.Q4_K_M.gguf and llama.Q8_0.gguf are two different models
    if is_model_name(name) and (cached_model_dir(name) / "config.json").is_file():
        return mark_in_use(cached_model_dir(name))
    return mark_in_use(import_gguf(path, name=name))


def _local_directory(path: Path) -> Path:
    if not path.exists():
        raise ModelSourceError(
            f"Model directory not found: {path}. It is neither an embedded model "
            f"({', '.join(EMBEDDED)}) nor an existing folder.",
            "Check the path (a relative path in the recipe file is read from the recipe's folder; one given "
            "with --set, from the current folder), or use "
            "`tunesmith models list` to see what is available.",
        )
    if not (path / "config.json").is_file():
        raise ModelSourceError(
            f"{path} has no config.json, so it is not a transformers checkpoint.",
            "Point model.source at the folder that holds config.json and the weights, or import "
            "a GGUF with `tunesmith models import FILE.gguf`.",
        )
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # cut off mid-copy, or not JSON at all
        raise ModelSourceError(f"{path / 'config.json'} cannot be read as JSON ({exc}).",
                               "Copy the model folder again (a copy cut off leaves a truncated config.json).") from None
    if not isinstance(config, dict):
        raise ModelSourceError(f"{path / 'config.json'} holds {type(config).__name__}, not a model configuration.",
                               "Copy the model folder again, or point model.source at another folder.")
    return path.resolve()


def download_from_hub(repo_id: str, revision: str | None = None, weights: bool = True) -> Path:
    """Snapshot a Hub repository into the HF cache (without `weights`: config and tokenizer files only),
    translating access failures into advice."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    patterns = ["*.json", "*.model", "*.txt", "*.jinja", "tokenizer*", *(["*.safetensors"] if weights else [])]
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except HFValidationError as exc:
        raise ModelSourceError(
            f"Model {repo_id!r} is not an embedded or imported model, not a folder or .gguf file that exists, "
            f"and not a Hub id either ({first_line(exc)}).",
            did_you_mean(repo_id) or "Check the spelling; `tunesmith models list` shows the models on this machine.",
        ) from exc
    except GatedRepoError as exc:
        raise ModelSourceError(_gated_message(repo_id), _login_hint(repo_id)) from exc
    except RepositoryNotFoundError as exc:
        raise ModelSourceError(
            f"The Hub answered that {repo_id!r} does not exist or is private to you (401/404). "
            "A private repository looks the same as a missing one when you are not logged in.",
            "Check the spelling; for a private repo, run `hf auth login` with a token that can read it.",
        ) from exc
    except LocalEntryNotFoundError as exc:
        if "/" not in repo_id:  # Hub models are owner/name: a bare word is a misspelt alias or a missing folder
            raise ModelSourceError(
                f"Model {repo_id!r} is not an embedded or imported model ({', '.join(local_model_names())}), and no "
                "file or folder of that name exists; read as a Hub id it is not in the local cache, and the Hub "
                "cannot be reached (offline, or HF_HUB_OFFLINE is set).",
                did_you_mean(repo_id) or "Check the spelling; `tunesmith models list` shows the models on this "
                "machine. For a Hub model write owner/name (e.g. HuggingFaceTB/SmolLM2-135M-Instruct).",
            ) from exc
        folder = Path(repo_id).parent
        if folder.is_dir():  # `runs/nope`: a path whose folder exists reads as a misspelt folder, not a Hub id
            close = difflib.get_close_matches(Path(repo_id).name, [p.name for p in folder.iterdir()], n=1)
            raise ModelSourceError(
                f"No file or folder {repo_id} (its folder {folder}/ exists); read as a Hub id owner/name, it is not "
                "in the local cache and the Hub cannot be reached.",
                f"Did you mean {folder / close[0]}?" if close else f"Check the name (ls {folder}).") from exc
        raise ModelSourceError(
            f"Cannot reach the Hugging Face Hub to fetch {repo_id!r}, and it is not in the local "
            "cache (offline, or HF_HUB_OFFLINE is set).",
            "Connect to the network once to download it, copy the model folder here and point "
            "model.source at it, or use the embedded default `smollm2-135m-instruct`.",
        ) from exc
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise ModelSourceError(_gated_message(repo_id), _login_hint(repo_id)) from exc
        raise ModelSourceError(f"The Hub refused {repo_id!r}: {exc}", "Try again later.") from exc


def _gated_message(repo_id: str) -> str:
    return (
        f"{repo_id!r} is gated: being logged in is not enough, your account must also have "
        "accepted the model's licence and been granted access (HTTP 401/403)."
    )


def _login_hint(repo_id: str) -> str:
    return (
        f"Open https://huggingface.co/{repo_id}, accept the licence and wait for approval, then "
        "run `hf auth login` (or set HF_TOKEN) with a token of that account."
    )


def local_model_names() -> list[str]:
    """The names `model.source` takes without a path: embedded aliases and imported GGUFs."""
    return [str(row["name"]) for row in list_models()]


def did_you_mean(source: str) -> str | None:
    """`Did you mean 'smollm2-135m-instruct'?` when `source` is close to a model on this machine, else None."""
    import difflib

    close = difflib.get_close_matches(source.lower(), local_model_names(), n=1, cutoff=0.6)
    return f"Did you mean {close[0]!r}? (`tunesmith models list` shows the models on this machine.)" if close else None
