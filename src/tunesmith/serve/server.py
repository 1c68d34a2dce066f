"""Run the llama.cpp engine behind the API with uvicorn, until Ctrl-C or SIGTERM (in-flight requests finish)."""

from __future__ import annotations

import sys
from typing import Any

from tunesmith.serve.api import Limits, create_app
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
        app = create_app(engine, limits, api_key)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                timeout_graceful_shutdown=DRAIN_SECONDS)
        server = uvicorn.Server(config)
        (announce or default_announce)(models, host, port)
        server.run()
    finally:
        engine.close()


def default_announce(models: list[ServedModel], host: str, port: int) -> None:
    print(f"serving {', '.join(m.name for m in models)} at http://{host}:{port}/v1 (Ctrl-C to stop)",
          file=sys.stderr, flush=True)
