"""The commands that serve runs on vLLM and Ollama: built from the catalog, printed, or started.

vLLM (`vllm serve`, https://docs.vllm.ai/en/latest/features/lora.html): the base model folder with
`--enable-lora`, one `--lora-modules name=path` per adapter run (PEFT folders, as trained), `--max-lora-rank`
from the adapters (vLLM accepts only certain values: the smallest one that fits), and the chat template the
runs were trained with. Ollama: the run's exported Modelfile (`tunesmith export --format ollama`), then
`ollama create` and `ollama serve`.
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import TunesmithError, shell_arg
from tunesmith.models.templates import TEMPLATE_FILE
from tunesmith.serve.catalog import ServedModel

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm/config/lora.py MaxLoRARanks
VLLM_IMAGE = "vllm/vllm-openai:latest"


@dataclass(frozen=True)
class Launch:
    """A command to run (argv) and the same as a shell line, with a `docker run` variant where one exists."""

    argv: list[str]
    environment: dict[str, str]  # names of variables the command reads, with what they hold
    docker: str | None = None

    @property
    def shell(self) -> str:
        return shlex.join(self.argv)


def vllm_launch(models: list[ServedModel], host: str, port: int, api_key_env: str | None,
                max_model_len: int | None = None) -> Launch:
    """`vllm serve` for `models`: adapters of one base on that base, or one whole-model run on its own. Every path
    is absolute, so that the command (and its `docker run` variant, whose mounts need absolute paths) works from
    any folder."""
    runs = [m for m in models if m.run is not None]
    if not runs and len(models) > 1:
        raise TunesmithError(f"vLLM serves one model per process; {', '.join(m.name for m in models)} are "
                             "separate models.", "Start one server per model, or serve them with the llama.cpp "
                                                 "engine.")
    whole = [m for m in runs if m.peft_dir is None or m.lora is None] or ([] if runs else models)
    adapters = [m for m in runs if m not in whole]
    if whole and (len(runs) > 1):
        raise TunesmithError(f"vLLM serves one model per process; {whole[0].name} is a whole model (or an adapter "
                             "kind vLLM's LoRA support does not load), so it cannot share a server with other runs.",
                             "Serve it on its own, or serve the runs with the llama.cpp engine.")
    bases = {m.gguf for m in adapters}
    if len(bases) > 1:
        raise TunesmithError("These adapters were trained on different bases; one vLLM server loads one base.",
                             "Start one server per base.")
    if whole:
        model_dir, name = whole[0].tokenizer_dir, whole[0].name
        if whole[0].peft_dir is not None:  # an adapter kind vLLM cannot apply: its merged model
            model_dir = whole[0].run / "exports" / "merged"  # type: ignore[operator]
            if not (model_dir / "config.json").is_file():
                raise TunesmithError(f"{name} needs its merged model for vLLM, and {model_dir} is not there.",
                                     f"tunesmith export {shell_arg(whole[0].run)} --format merged")
    else:
        base = next(m for m in models if m.run is None and m.gguf in bases)
        model_dir, name = base.tokenizer_dir, base.name
    argv = ["vllm", "serve", str(model_dir.resolve()), "--served-model-name", name, "--host", host, "--port",
            str(port)]
    if max_model_len is not None:
        argv += ["--max-model-len", str(max_model_len)]
    if adapters:
        rank = max(m.lora_rank or 1 for m in adapters)
        fitting = next((r for r in VLLM_LORA_RANKS if r >= rank), None)
        if fitting is None:
            widest = max(adapters, key=lambda m: m.lora_rank or 1)
            raise TunesmithError(f"{widest.name} has LoRA rank {rank}; vLLM loads LoRA ranks up to "
                                 f"{VLLM_LORA_RANKS[-1]}.",
                                 f"Serve it merged ({merged_steps(widest.run)}), or with the llama.cpp engine (no "
                                 "--engine).")
        argv += ["--enable-lora", "--max-loras", str(len(adapters)), "--max-lora-rank", str(fitting),
                 "--lora-modules", *(f"{m.name}={m.peft_dir.resolve()}" for m in adapters)]  # type: ignore[union-attr]
        template = one_chat_template(adapters, model_dir)
        if template is not None:
            argv += ["--chat-template", str(template.resolve())]
    environment = {"VLLM_API_KEY": f"the key in ${api_key_env}"} if api_key_env else {}
    return Launch(argv, environment, docker_variant(argv, port, api_key_env))


def one_chat_template(adapters: list[ServedModel], base_dir: Path) -> Path | None:
    """The chat template file the adapters were trained with (saved beside each; an adapter folder without one
    renders with the base's own, as compare has it), which vLLM applies to every request whatever its adapter;
    adapters trained with different templates are refused, since one of them would be prompted in a format it never
    saw."""
    from tunesmith.models import load_tokenizer

    templates = {m.name: m.peft_dir / TEMPLATE_FILE for m in adapters if m.peft_dir is not None}
    texts = {name: path.read_text(encoding="utf-8") if path.is_file() else None for name, path in templates.items()}
    if None in texts.values() and len(set(texts.values())) > 1:
        base_template = load_tokenizer(base_dir).chat_template
        texts = {name: text if text is not None else base_template for name, text in texts.items()}
    if len(set(texts.values())) > 1:
        raise TunesmithError(f"{', '.join(texts)} were trained with different chat templates, and vLLM renders every "
                             "request with one (--chat-template).",
                             "Serve the runs of one template together, one vLLM server per template, or serve them "
                             "with the llama.cpp engine (no --engine), which renders each with its own.")
    return next((path for path in templates.values() if path.is_file()), None)


def merged_steps(source: Path | None) -> str:
    """The commands that make a whole model of a run's (or an adapter folder's) adapter and serve it with vLLM."""
    if source is not None and not (source / "recipe.yaml").is_file():  # an adapter folder: folded into its base
        merged = shell_arg(f"{source}-merged")
        return f"`tunesmith merge {shell_arg(source)} --out {merged}`, then `tunesmith serve --engine vllm {merged}`"
    if source is None:
        return "`tunesmith export RUN --format merged`, then `tunesmith serve --engine vllm RUN/exports/merged`"
    return (f"`tunesmith export {shell_arg(source)} --format merged`, then `tunesmith serve --engine vllm "
            f"{shell_arg(source / 'exports' / 'merged')}`")


def docker_variant(argv: list[str], port: int, api_key_env: str | None) -> str:
    """The same server in vLLM's official image: every local folder mounted read-only at the same path."""
    folders = sorted({arg.split("=", 1)[-1] for arg in argv if "/" in arg and Path(arg.split("=", 1)[-1]).exists()})
    mounts = [f"-v {shlex.quote(f)}:{shlex.quote(f)}:ro" for f in folders]
    key = [f'-e VLLM_API_KEY="${api_key_env}"'] if api_key_env else []
    inner = [a if a != "127.0.0.1" else "0.0.0.0" for a in argv[2:]]  # inside the container: listen on all
    return " ".join(["docker run --gpus all --ipc=host", f"-p 127.0.0.1:{port}:{port}", *mounts, *key, VLLM_IMAGE,
                     shlex.join(inner)])


def ollama_launch(modelfile: Path, name: str) -> list[Launch]:
    """`ollama serve`, then `ollama create NAME -f Modelfile` (create talks to the running server)."""
    return [Launch(["ollama", "serve"], {}), Launch(["ollama", "create", name, "-f", str(modelfile)], {})]


def installed(program: str) -> bool:
    return shutil.which(program) is not None
