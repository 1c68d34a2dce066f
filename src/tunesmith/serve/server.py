"""Run the llama.cpp engine behind the API with uvicorn, until Ctrl-C or SIGTERM (in-flight requests finish)."""

from __future__ import annotations

import errno
import socket
import sys
from typing import Any

from tunesmith.errors import TunesmithError
from tunesmith.serve.api import Limits, create_app, loopback_hosts
from tunesmith.serve.catalog import ServedModel
from tunesmith.serve.llama_engine import LlamaEngine

DRAIN_SECONDS = 30  # after SIGTERM: how long in-flight requests get to finish


def serve_llama(models: list[ServedModel], host: str, port: int, limits: Limits, api_key: str | None,
                n_ctx: int, announce: Any = None) -> None:
    """Load every model once, then serve until stopped. uvicorn handles SIGINT/SIGTERM: it stops accepting,
    lets in-flight requests finish (up to DRAIN_SECONDS), then returns."""
    import uvicorn

    engine = LlamaEngine(models, n_ctx=n_ctx)
    try:
        app = create_app(engine, limits, api_key, loopback_hosts(host, api_key))
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                timeout_graceful_shutdown=DRAIN_SECONDS)
        server = uvicorn.Server(config)
        (announce or default_announce)(models, host, port)
        server.run()
    finally:
        engine.close()


def check_can_listen(host: str, port: int) -> None:
    """Raise TunesmithError (a usage error) when `host` is not an address of this machine or `port` is taken there:
    checked before any export or model load, which would otherwise end in uvicorn's bind error. The probe sets
    SO_REUSEADDR as uvicorn does, so a port left in TIME_WAIT by a server just stopped still counts as free."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise TunesmithError(f"--host {host}: not an address this machine can listen on ({exc}).",
                             "Use 127.0.0.1 (this machine only, the default) or 0.0.0.0 (every interface).") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:  # the address, not the port
                raise TunesmithError(f"--host {host}: not an address of this machine ({exc.strerror}).",
                                     "Use 127.0.0.1 (this machine only, the default), 0.0.0.0 (every interface), or "
                                     "one of this machine's addresses (`hostname -I` lists them).") from None
            raise TunesmithError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}.",
                                 f"Pick another port (--port {port + 1 if port < 65535 else 8000}), or stop the "
                                 f"program that holds it (ss -ltnp 'sport = :{port}' names it).") from None


def default_announce(models: list[ServedModel], host: str, port: int) -> None:
    print(f"serving {', '.join(m.name for m in models)} at http://{host}:{port}/v1 (Ctrl-C to stop)",
          file=sys.stderr, flush=True)
    whole = [m.name for m in models if m.run is not None and m.lora is None]
    if whole:
        print(f"({', '.join(whole)}: served as whole models, so their base is not loaded beside them; name the "
              "base too to serve it, e.g. `tunesmith serve RUN smollm2-135m-instruct`)", file=sys.stderr, flush=True)
