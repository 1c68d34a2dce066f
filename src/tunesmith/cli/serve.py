"""`tunesmith serve`: a thin command over tunesmith.serve (registered on the app in cli/app.py)."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from tunesmith.cli.common import err
from tunesmith.errors import TunesmithError

Engine = Literal["llama", "vllm", "ollama"]
DEFAULT_PORT, OLLAMA_PORT, DEFAULT_CONTEXT = 8000, 11434, 4096


def serve(runs: Annotated[list[str], typer.Argument(
              metavar="RUN...", help="Run directories to serve, each as NAME=RUN or RUN (named after its folder). "
                                     "The base each LoRA run was trained on is served too, under its own name "
                                     "(whole-model, DoRA and other merged runs are served alone). A PEFT LoRA "
                                     "folder (served on the base its adapter_config.json names) or a model (alias, "
                                     "folder, e.g. a merge output) works as well.")],
          engine: Annotated[str, typer.Option(help="llama (llama.cpp, the default: CPU or GPU, one base, adapters "
                                                   "switched per request), vllm (GPUs) or ollama.")] = "llama",
          host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")]
          = "127.0.0.1",
          port: Annotated[int | None, typer.Option(
              min=1, max=65535, help="Port to listen on (default 8000; Ollama's own 11434 with --engine ollama).")]
          = None,
          api_key_env: Annotated[str | None, typer.Option(
              help="Name of an environment variable holding the API key clients must send as a Bearer token.")]
          = None,
          print_command: Annotated[bool, typer.Option(
              "--print-command", help="vllm/ollama: print the commands instead of starting them (ollama: after "
                                     "exporting the run's Modelfile and GGUF, which the commands load).")] = False,
          n_ctx: Annotated[int | None, typer.Option(
              min=16, help="Context length (prompt + completion), in tokens (default 4096; vLLM: the model's "
                           "own unless given, as --max-model-len).")] = None,
          quant: Annotated[str | None, typer.Option(
              help="GGUF type written when missing (F16, Q8_0, ...; default F16). Without it, a whole-model or "
                   "merged run is served from a GGUF it already exported, whatever its type.")] = None,
          max_tokens: Annotated[int, typer.Option(min=1, help="Most tokens one completion may generate.")] = 2048,
          max_n: Annotated[int, typer.Option(min=1, help="Most choices (n) one request may ask for.")] = 4,
          max_queue: Annotated[int, typer.Option(min=1, help="Requests in flight or waiting before 429.")] = 64,
          max_body_bytes: Annotated[int, typer.Option(min=1, help="Largest request body accepted.")]
          = 1_000_000) -> None:
    """Serve runs behind an OpenAI-compatible API: /v1/models, /v1/chat/completions, /v1/completions, /health,
    /metrics. Each request picks a run (or the base) by `model`.

    Example: tunesmith serve orders=runs/quickstart-20261201-101500 tickets=runs/tickets-20261201-113000

    Example: tunesmith serve combined=merged-adapters smollm2-135m-instruct
    """
    if engine not in ("llama", "vllm", "ollama"):
        raise TunesmithError(f"--engine {engine!r} is not one of llama, vllm, ollama.", "Pick one of those.")
    values = {"print_command": print_command, "quant": quant, "n_ctx": n_ctx, "max_tokens": max_tokens,
              "max_n": max_n, "max_queue": max_queue, "max_body_bytes": max_body_bytes, "api_key_env": api_key_env}
    defaults = {name: parameter.default for name, parameter in inspect.signature(serve).parameters.items()}
    refuse_options_the_engine_ignores(engine, {"--" + name.replace("_", "-"): value != defaults[name]
                                               for name, value in values.items()})  # set to other than its default
    api_key = read_api_key(api_key_env)
    if engine == "vllm":
        return serve_vllm(runs, host, port or DEFAULT_PORT, api_key_env, n_ctx, print_command)
    if engine == "ollama":
        return serve_ollama(runs, host, port or OLLAMA_PORT, print_command)
    from tunesmith.serve.api import Limits, is_loopback
    from tunesmith.serve.catalog import build_catalog
    from tunesmith.serve.server import check_can_listen, serve_llama

    check_can_listen(host, port or DEFAULT_PORT)  # before exporting and loading anything
    if api_key is None and not is_loopback(host):
        err.print(f"Note: listening on {host} without an API key: anyone who can reach port {port or DEFAULT_PORT} "
                  "of this machine can use the models. Add --api-key-env VAR to require a key.", soft_wrap=True,
                  markup=False)
    models = build_catalog(runs, quant)
    limits = Limits(max_body_bytes=max_body_bytes, max_tokens=max_tokens, max_n=max_n, max_queue=max_queue)
    serve_llama(models, host, port or DEFAULT_PORT, limits, api_key, n_ctx or DEFAULT_CONTEXT)


# What each engine does with the options: the llama engine runs in this process (no command to print); vLLM and
# Ollama take the model as exported and apply their own limits, context and keys (Ollama has none).
IGNORED_BY_ENGINE = {
    "llama": {"--print-command": "the llama engine runs in this process: there is no command to print"},
    "vllm": {option: "vLLM applies its own limits and serves the merged weights (no GGUF)"
             for option in ("--quant", "--max-tokens", "--max-n", "--max-queue", "--max-body-bytes")},
    "ollama": {**{option: "Ollama applies its own limits and context (the Modelfile's PARAMETER lines)"
                  for option in ("--n-ctx", "--max-tokens", "--max-n", "--max-queue", "--max-body-bytes")},
               "--quant": "Ollama loads the GGUF the recipe's export.quant writes",
               "--api-key-env": "Ollama has no API keys of its own"},
}
ENGINE_HINTS = {
    "llama": "Leave it out, or serve with --engine vllm or --engine ollama to print their commands.",
    "vllm": "Leave them out (add vLLM's own options, e.g. --max-num-seqs, to the command --print-command prints), "
            "or serve with --engine llama, which applies them.",
    "ollama": "Leave them out (set export.quant in the recipe, PARAMETER lines in the Modelfile), or serve with "
              "--engine llama, which applies them.",
}


def refuse_options_the_engine_ignores(engine: str, given: dict[str, bool]) -> None:
    """TunesmithError naming each option in `given` (option -> whether the user set it) that `engine` would ignore,
    and why: a flag that silently does nothing is worse than a refusal."""
    ignored = [(option, why) for option, why in IGNORED_BY_ENGINE[engine].items() if given.get(option)]
    if ignored:
        reasons = "; ".join(f"{option}: {why}" for option, why in ignored)
        raise TunesmithError(f"--engine {engine} would ignore {', '.join(o for o, _ in ignored)} ({reasons}).",
                             ENGINE_HINTS[engine])


def read_api_key(variable: str | None, role: str = "starting the server") -> str | None:
    """The key held by the environment variable `variable` (None without one); TunesmithError when it is unset.
    `role`: what the hint says the variable must be set before."""
    if variable is None:
        return None
    key = os.environ.get(variable)
    if not key:
        raise TunesmithError(f"--api-key-env {variable}: that environment variable is not set (or empty).",
                             f"export {variable}=... before {role}.")
    return key


def serve_vllm(runs: list[str], host: str, port: int, api_key_env: str | None, n_ctx: int | None,
               print_only: bool) -> None:
    from tunesmith.serve.catalog import build_catalog
    from tunesmith.serve.commands import installed, vllm_launch

    launch = vllm_launch(build_catalog(runs, export=False), host, port, api_key_env, max_model_len=n_ctx)
    if print_only or not installed("vllm"):
        key = f"VLLM_API_KEY=\"${api_key_env}\" " if api_key_env else ""
        print(key + launch.shell)
        print(f"# or in Docker:\n{launch.docker}")
        if not print_only:  # nothing is served: a supervisor must not read success
            raise TunesmithError("vLLM is not installed here, so nothing is served; the command above starts it where "
                                 "it is.", "pip install vllm (on a machine with a GPU), or add --print-command to "
                                 "print the command alone.", exit_code=1)
        return
    environment = {**os.environ, **({"VLLM_API_KEY": os.environ[api_key_env]} if api_key_env else {})}
    sys.exit(subprocess.call(launch.argv, env=environment))


def serve_ollama(runs: list[str], host: str, port: int, print_only: bool) -> None:
    from tunesmith.export.stage import export_formats
    from tunesmith.runs import open_run
    from tunesmith.serve.commands import installed, ollama_launch

    if len(runs) != 1:
        raise TunesmithError("--engine ollama serves one run per call.", "Run it once per run.")
    run = open_run(runs[0].rpartition("=")[2] if "=" in runs[0] else runs[0])
    recipe = run.load_recipe()
    modelfile = run.exports_dir / "ollama" / "Modelfile"
    if not modelfile.is_file():
        export_formats(recipe, run, ["ollama"])  # the one export entry point: recorded in run.json
    name = recipe.name.lower()  # as the export's `ollama create` names it
    address = f"{host}:{port}"
    serve_cmd, create_cmd = ollama_launch(modelfile.resolve(), name)
    if print_only or not installed("ollama"):
        prefix = f"OLLAMA_HOST={address} "
        print(f"{prefix}{serve_cmd.shell} &\nuntil {prefix}ollama list >/dev/null 2>&1; do sleep 1; done\n"
              f"{prefix}{create_cmd.shell}\n{prefix}ollama run {name}")
        if not print_only:  # nothing is served: a supervisor must not read success
            raise TunesmithError("ollama is not on PATH, so nothing is served; the commands above serve the export "
                                 "where it is.", "Install Ollama (https://ollama.com/download), or add "
                                 "--print-command to print the commands alone.", exit_code=1)
        return
    environment = {**os.environ, "OLLAMA_HOST": address}
    if ollama_answers(environment):  # a server already runs there (Ollama's app, a service): use it
        ollama_create(create_cmd.argv, modelfile, environment)
        err.print(f"The Ollama server already running at {address} now serves {name} (http://{address}/v1).")
        return
    server = subprocess.Popen(serve_cmd.argv, env=environment)
    try:
        wait_for_ollama(environment, server)
        ollama_create(create_cmd.argv, modelfile, environment)
        err.print(f"Ollama serves {name} at http://{address}/v1 (Ctrl-C to stop)")
        server.wait()
    finally:
        server.terminate()


def ollama_create(argv: list[str], modelfile: Path, environment: dict[str, str]) -> None:
    """Run `ollama create` on the exported Modelfile, its progress shown as it goes (a large model takes minutes);
    TunesmithError when it fails, after Ollama's own message."""
    code = run_showing_output(argv, modelfile.parent, environment)
    if code != 0:
        raise TunesmithError(f"`{' '.join(argv)}` failed on {modelfile} (exit code {code}; Ollama's message is above).",
                             "Run `tunesmith export RUN --check` to check the export, and `ollama --version` (an older "
                             "Ollama may not know the model's architecture).", exit_code=1)


def run_showing_output(argv: list[str], cwd: Path, environment: dict[str, str]) -> int:
    """Run `argv`, copying its stdout and stderr to this process's stderr as they come (through a pipe, so a
    redirected or captured stderr without a file descriptor gets them too); its exit code."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character split between two reads stays whole
    with subprocess.Popen(argv, cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as child:
        output = child.stdout
        for chunk in iter(lambda: output.read1(4096), b""):  # type: ignore[union-attr]
            sys.stderr.write(decoder.decode(chunk))
            sys.stderr.flush()
        sys.stderr.write(decoder.decode(b"", final=True))
        return child.wait()


def ollama_answers(environment: dict[str, str]) -> bool:
    """Whether an Ollama server answers at the environment's OLLAMA_HOST (`ollama list` succeeds)."""
    return subprocess.call(["ollama", "list"], env=environment, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL) == 0


def wait_for_ollama(environment: dict[str, str], server: subprocess.Popen, seconds: float = 30.0) -> None:
    """Until `ollama list` answers (the server `ollama serve` started is up), at most `seconds`."""
    import time

    deadline = time.monotonic() + seconds
    while not ollama_answers(environment):
        if server.poll() is not None or time.monotonic() > deadline:
            raise TunesmithError(f"ollama serve did not start on {environment['OLLAMA_HOST']}.",
                                 "Run `ollama serve` yourself to see why (a port in use?), then rerun.")
        time.sleep(0.5)
