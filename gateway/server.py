"""Run the gateway application on uvloop until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import sys

from aiohttp import web

from gateway.app import build_app
from gateway.config import Config
from gateway.store.factory import describe

log = logging.getLogger("llmapi")


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The format names no process, thread or process name: skip looking them up for every
    # record (the access log writes one record per request).
    logging.logProcesses = logging.logThreads = logging.logMultiprocessing = False


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # Windows: the default loop works, only slower
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def serve(config: Config) -> int:
    configure_logging()
    install_uvloop()
    app = build_app(config)
    providers = ", ".join(f"{p.name} ({p.protocol})" for p in config.providers)
    host, port = config.server.host, config.server.port

    def announce(_: str) -> None:
        print(f"llmapi listening on http://{host}:{port} | providers: {providers} | "
              f"database: {describe(config)}", file=sys.stderr, flush=True)

    web.run_app(app, host=host, port=port, access_log=None, print=announce,
                handler_cancellation=True, shutdown_timeout=config.server.shutdown_grace)
    return 0
