"""`tunesmith serve`: a thin command over tunesmith.serve (registered on the app in cli/app.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Annotated, Literal

import typer

from tunesmith.cli.common import err
from tunesmith.errors import TunesmithError

Engine = Literal["llama", "vllm", "ollama"]


def serve(runs: Annotated[list[str], typer.Argument(
              metavar="RUN...", help="Run directories to serve, each as NAME=RUN or RUN (named after its folder). "
                                     "The base each was trained on is served too, under its own name.")],
          engine: Annotated[str, typer.Option(help="llama (llama.cpp, the default: CPU or GPU, one base, adapters "
                                                   "switched per request), vllm (GPUs) or ollama.")] = "llama",
          host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")]
          = "127.0.0.1",
          port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
          api_key_env: Annotated[str | None, typer.Option(
              help="Name of an environment variable holding the API key clients must send as a Bearer token.")]
          = None,
          print_command: Annotated[bool, typer.Option(
              "--print-command", help="vllm/ollama: print the commands instead of starting them.")] = False,
          n_ctx: Annotated[int, typer.Option(help="Context length (prompt + completion), in tokens.")] = 4096,
          quant: Annotated[str, typer.Option(help="GGUF type written for the base when missing (F16, Q8_0, ...).")]
          = "F16",
          max_tokens: Annotated[int, typer.Option(help="Most tokens one completion may generate.")] = 2048,
          max_n: Annotated[int, typer.Option(help="Most choices (n) one request may ask for.")] = 4,
          max_queue: Annotated[int, typer.Option(help="Requests in flight or waiting before 429.")] = 64,
          max_body_bytes: Annotated[int, typer.Option(help="Largest request body accepted.")] = 1_000_000) -> None:
    """Serve runs behind an OpenAI-compatible API: /v1/models, /v1/chat/completions, /v1/completions, /health,
    /metrics. Each request picks a run (or the base) by `model`.

    Example: tunesmith serve orders=runs/quickstart-20261201-101500 tickets=runs/tickets-20261201-113000
    """
    if engine not in ("llama", "vllm", "ollama"):
        raise TunesmithError(f"--engine {engine!r} is not one of llama, vllm, ollama.", "Pick one of those.")
    api_key = read_api_key(api_key_env)
    if engine == "vllm":
        return serve_vllm(runs, host, port, api_key_env, print_command)
    if engine == "ollama":
        return serve_ollama(runs, print_command)
    from tunesmith.serve.api import Limits
    from tunesmith.serve.catalog import build_catalog
    from tunesmith.serve.server import serve_llama

    models = build_catalog(runs, quant)
    limits = Limits(max_body_bytes=max_body_bytes, max_tokens=max_tokens, max_n=max_n, max_queue=max_queue)
    serve_llama(models, host, port, limits, api_key, n_ctx)


def read_api_key(variable: str | None) -> str | None:
    if variable is None:
        return None
    key = os.environ.get(variable)
    if not key:
        raise TunesmithError(f"--api-key-env {variable}: that environment variable is not set (or empty).",
                             f"export {variable}=... before starting the server.")
    return key


def serve_vllm(runs: list[str], host: str, port: int, api_key_env: str | None, print_only: bool) -> None:
    from tunesmith.serve.catalog import build_catalog
    from tunesmith.serve.commands import installed, vllm_launch

    launch = vllm_launch(build_catalog(runs, export=False), host, port, api_key_env)
    if print_only or not installed("vllm"):
        if not print_only:
            err.print("vLLM is not installed here (pip install vllm, on a machine with a GPU); the command is:")
        key = f"VLLM_API_KEY=\"${api_key_env}\" " if api_key_env else ""
        print(key + launch.shell)
        print(f"# or in Docker:\n{launch.docker}")
        return
    environment = {**os.environ, **({"VLLM_API_KEY": os.environ[api_key_env]} if api_key_env else {})}
    sys.exit(subprocess.call(launch.argv, env=environment))


def serve_ollama(runs: list[str], print_only: bool) -> None:
    from tunesmith.export.ollama import run_ollama_export
    from tunesmith.runs import open_run
    from tunesmith.serve.commands import installed, ollama_launch

    if len(runs) != 1:
        raise TunesmithError("--engine ollama serves one run per call.", "Run it once per run.")
    run = open_run(runs[0].rpartition("=")[2] if "=" in runs[0] else runs[0])
    recipe = run.load_recipe()
    modelfile = run.exports_dir / "ollama" / "Modelfile"
    if not modelfile.is_file():
        run_ollama_export(recipe, run)
    name = recipe.name.lower()  # as the export's `ollama create` names it
    serve_cmd, create_cmd = ollama_launch(modelfile, name)
    if print_only or not installed("ollama"):
        if not print_only:
            err.print("ollama is not on PATH (https://ollama.com/download); the commands are:")
        print(f"{serve_cmd.shell} &\n{create_cmd.shell}\nollama run {name}")
        return
    server = subprocess.Popen(serve_cmd.argv)
    try:
        subprocess.check_call(create_cmd.argv, cwd=modelfile.parent)
        err.print(f"Ollama serves {name} at http://127.0.0.1:11434/v1 (Ctrl-C to stop)")
        server.wait()
    finally:
        server.terminate()
