"""Upload to the Hugging Face Hub: a run's adapter, merged model or GGUF files, or any folder.

One commit per push (the files of the folder, plus the run's model card as README.md when the folder
has none). The failures people hit (no token, offline, a bad or read-only token, no network) each end in
one message naming the fix: `hf auth login` or HF_TOKEN.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from tunesmith.errors import TunesmithError, first_line, shell_arg

LOGIN_HINT = "Run `hf auth login` with a token that has write access, or set HF_TOKEN to one."
WHAT = ("adapter", "merged", "gguf")
NETWORK_ERRORS = frozenset({"TransportError", "NetworkError", "ConnectError", "TimeoutException"})


def push_to_hub(source: Path, repo_id: str, private: bool = False, what: str | None = None) -> str:
    """Create `repo_id` if needed and upload the folder `source` stands for; returns the repository's URL.
    What can be checked here is, before the token and the network: the id, the folder, offline mode."""
    from huggingface_hub import HfApi, constants, get_token

    folder, card, base_id = checked_upload(source, repo_id, what)
    if constants.HF_HUB_OFFLINE:
        raise offline_refusal()
    token = get_token()
    if token is None:
        raise TunesmithError("You are not logged in to the Hugging Face Hub (no token found), so nothing can be "
                             "uploaded.", LOGIN_HINT)
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.create_commit(repo_id, upload_operations(folder, card, base_id), commit_message="Upload with tunesmith",
                          repo_type="model")
    except Exception as exc:  # translated into advice below, or re-raised as it is
        raise hub_error(exc, repo_id) from exc
    return str(url)


def offline_refusal() -> TunesmithError:
    return TunesmithError("HF_HUB_OFFLINE is set, so nothing can be uploaded to the Hugging Face Hub.",
                          "Unset HF_HUB_OFFLINE and run again (logged in: `hf auth login` or HF_TOKEN).")


def checked_upload(source: Path, repo_id: str, what: str | None) -> tuple[Path, Path | None, HubBase | None]:
    """What a push of `source` uploads, checked before any token or network: the repository id, the folder (not
    empty) and the run's card; and the Hub id its adapter names as base (`hub_base_id`)."""
    check_repo_id(repo_id)
    folder, card = folder_to_upload(Path(source), what)
    require_files(folder, card)
    return folder, card, hub_base_id(Path(source))


def check_repo_id(repo_id: str) -> None:
    """The Hub's own rule for a repository id (`huggingface_hub.utils.validate_repo_id`: `name` or `owner/name`,
    letters, digits, '-', '_', '.'), checked before anything is read or sent."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise TunesmithError(f"{repo_id!r} is not a Hub repository id: {first_line(exc)}",
                             "Write it as owner/name (your user or organisation, then the repository's name), "
                             "e.g. me/orders-lora; not a URL.") from None


def require_files(folder: Path, card: Path | None) -> None:
    if not upload_operations(folder, card):
        raise TunesmithError(f"{folder} holds no files to upload (hidden files are left out).",
                             "Name the folder that holds the model or adapter files.")


def upload_plan(source: Path, repo_id: str, what: str | None = None) -> dict[str, Any]:
    """What `push_to_hub` would upload (`push --dry-run`): the repository id, the folder, and each file with its
    path in the repository and its size in bytes; nothing is sent and no token is needed."""
    folder, card, base_id = checked_upload(source, repo_id, what)
    files = [{"path_in_repo": op.path_in_repo,
              "from": str(op.path_or_fileobj) if not isinstance(op.path_or_fileobj, bytes)
              else f"{folder / op.path_in_repo}, its base named {base_id.id}"
              + (f" at {base_id.revision}" if base_id and base_id.revision else ""),
              "bytes": len(op.path_or_fileobj) if isinstance(op.path_or_fileobj, bytes)
              else Path(op.path_or_fileobj).stat().st_size} for op in upload_operations(folder, card, base_id)]
    return {"repo_id": repo_id, "folder": str(folder), "files": files, "bytes": sum(f["bytes"] for f in files)}


def folder_to_upload(source: Path, what: str | None) -> tuple[Path, Path | None]:
    """The folder to upload and the model card to add: from a run, what `what` names; else `source` itself."""
    from tunesmith.runs import Run

    run = Run(source)
    if not run.recipe_file.is_file():
        if what is not None:
            raise TunesmithError(f"--what applies to run directories; {source} is not one (no recipe.yaml).",
                                 "Leave --what out to upload the folder as it is.")
        if not source.is_dir():
            raise TunesmithError(f"{source} is not a folder.", "Pass a run directory or a folder to upload.")
        return source, None
    what = what or "adapter"
    if what not in WHAT:
        raise TunesmithError(f"--what {what!r} is not one of {', '.join(WHAT)}.", "For example --what merged.")
    card = run.path / "README.md"
    candidates = {"adapter": [run.exports_dir / "adapter", run.adapter_dir],
                  "merged": [run.exports_dir / "merged"], "gguf": [run.exports_dir / "gguf"]}[what]
    marker = {"adapter": "adapter_config.json", "merged": "config.json", "gguf": "*.gguf"}[what]
    for folder in candidates:
        if folder.is_dir() and any(folder.glob(marker)):
            return folder, card if card.is_file() else None
    fmt = {"adapter": "adapter", "merged": "merged", "gguf": "gguf"}[what]
    raise TunesmithError(f"{run.path} has no exported {what} to upload ({candidates[0]} is missing or empty).",
                         f"Export it first: tunesmith export {shell_arg(run.path)} --format {fmt}")


def upload_operations(folder: Path, card: Path | None, base_id: HubBase | None = None) -> list:
    """Every file under `folder` (hidden temporary files skipped); a run's model card goes up as README.md in place
    of the folder's own (PEFT's save_pretrained writes an empty template card there, naming the base by its local
    path). With `base_id` (the Hub id the run's recipe trained on), an adapter's adapter_config.json goes up naming
    that id as its base, not the snapshot folder on this machine, so `AutoPeftModelForCausalLM.from_pretrained` of
    the repository finds the base anywhere."""
    from huggingface_hub import CommitOperationAdd

    files = [p for p in sorted(folder.rglob("*")) if p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)
             and not (card is not None and p == folder / "README.md")]
    operations = [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(),
                                     path_or_fileobj=config_naming(p, base_id) if p == folder / "adapter_config.json"
                                     and base_id else str(p))
                  for p in files]
    if card is not None:
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card)))
    return operations


class HubBase(NamedTuple):
    """A base model on the Hub: its id and the commit a run trained on (None: not known)."""

    id: str
    revision: str | None


def config_naming(config_file: Path, base: HubBase) -> bytes:
    """adapter_config.json with `base_model_name_or_path` set to the base's Hub id and PEFT's `revision` to the
    commit the run trained on, so `AutoPeftModelForCausalLM.from_pretrained` loads that base, not a newer one; as
    bytes to upload (the file here stays as it is)."""
    from tunesmith.runs import read_adapter_config

    config = {**read_adapter_config(config_file.parent), "base_model_name_or_path": base.id}
    if base.revision is not None:
        config["revision"] = base.revision
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8")


def hub_base_id(source: Path) -> HubBase | None:
    """The Hub model a run trained on, as run.json recorded it (a base downloaded from the Hub, at its commit); None
    for an embedded model, a local folder, a GGUF, any folder that is no run. A run older than run.json: its
    recipe's model.source where it looks like `owner/name` and no folder of that name is beside the recipe."""
    from tunesmith.runs import Run

    run = Run(source)
    if not run.recipe_file.is_file():
        return None
    try:
        manifest = run.manifest()
        if manifest is not None and manifest.train is not None:
            record = manifest.train.base_model
            return HubBase(record.source, record.commit) if record.commit else None
        recipe = run.load_recipe()
    except TunesmithError:  # a run of another version: the files go up as they are
        return None
    model = recipe.model.source
    looks_like_id = model.count("/") == 1 and not model.startswith((".", "/", "~")) and not (
        Path(recipe.base_dir) / model).exists()
    return HubBase(model, recipe.model.revision) if looks_like_id else None


def hub_error(exc: Exception, repo_id: str) -> Exception:
    """A TunesmithError naming the fix for the failures users can fix; anything else as it is."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return offline_refusal()
    if isinstance(exc, ConnectionError | TimeoutError) or NETWORK_ERRORS & {c.__name__ for c in type(exc).__mro__}:
        return TunesmithError(f"Cannot reach the Hugging Face Hub at {constants.ENDPOINT} ({exc}).",
                              "Check the network (and HF_ENDPOINT if you set it), then run again; "
                              "uploading also needs a login: `hf auth login` or HF_TOKEN.")
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, HfHubHTTPError) and status == 401:
        return TunesmithError("The Hugging Face Hub rejected the token (401 Unauthorized).", LOGIN_HINT)
    if isinstance(exc, HfHubHTTPError) and status in (403, 404):
        return TunesmithError(f"The token has no write access to {repo_id!r} (HTTP {status}).",
                              f"{LOGIN_HINT} For an organisation's repository, your account must be allowed to "
                              "write to it.")
    return exc
