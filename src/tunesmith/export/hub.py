"""Upload to the Hugging Face Hub: a run's adapter, merged model or GGUF files, or any folder.

One commit per push (the files of the folder, plus the run's model card as README.md when the folder
has none). The failures people hit (no token, offline, a bad or read-only token, no network) each end in
one message naming the fix: `hf auth login` or HF_TOKEN.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.errors import TunesmithError

LOGIN_HINT = "Run `hf auth login` with a token that has write access, or set HF_TOKEN to one."
WHAT = ("adapter", "merged", "gguf")
NETWORK_ERRORS = frozenset({"TransportError", "NetworkError", "ConnectError", "TimeoutException"})


def push_to_hub(source: Path, repo_id: str, private: bool = False, what: str | None = None) -> str:
    """Create `repo_id` if needed and upload the folder `source` stands for; returns the repository's URL."""
    from huggingface_hub import HfApi, get_token

    folder, card = folder_to_upload(Path(source), what)
    token = get_token()
    if token is None:
        raise TunesmithError("You are not logged in to the Hugging Face Hub (no token found), so nothing can be "
                             "uploaded.", LOGIN_HINT)
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.create_commit(repo_id, upload_operations(folder, card), commit_message="Upload with tunesmith",
                          repo_type="model")
    except Exception as exc:  # translated into advice below, or re-raised as it is
        raise hub_error(exc, repo_id) from exc
    return str(url)


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
                         f"Export it first: tunesmith export {run.path} --format {fmt}")


def upload_operations(folder: Path, card: Path | None) -> list:
    """Every file under `folder` (hidden temporary files skipped), and the card as README.md if it has none."""
    from huggingface_hub import CommitOperationAdd

    files = [p for p in sorted(folder.rglob("*")) if p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    operations = [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p))
                  for p in files]
    if card is not None and not (folder / "README.md").is_file():
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card)))
    return operations


def hub_error(exc: Exception, repo_id: str) -> Exception:
    """A TunesmithError naming the fix for the failures users can fix; anything else as it is."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return TunesmithError("HF_HUB_OFFLINE is set, so nothing can be uploaded to the Hugging Face Hub.",
                              "Unset HF_HUB_OFFLINE and run again (logged in: `hf auth login` or HF_TOKEN).")
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
