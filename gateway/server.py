"""Run the gateway application on uvloop until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import sqlite3
import sys

from aiohttp import web

from gateway import http_server
from gateway.app import build_app
from gateway.billing.alipay import read_keys
from gateway.config import CONFIG, Config, ConfigError
from gateway.inflight import CUT_MARGIN
from gateway.lifecycle import LIFECYCLE
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


EXIT_USAGE = 2


class StartupError(Exception):
    """A problem the operator can fix, said in one line (no traceback)."""


def check_data_dir(config: Config) -> None:
    """The database folder must exist or be creatable, and be writable."""
    folder = config.database_path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot create the database folder {folder}: "
                           f"{exc.strerror}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StartupError(f"the database folder {folder} is not writable")


def check_files(config: Config) -> None:
    """Read the files the config names (the Alipay keys) once before the app starts, so a
    bad one is one line and exit 2. The payment service reads them again when it opens;
    a failure that late would leave the resources opened before it to the interpreter's
    shutdown, which prints their tracebacks (aiohttp does not unwind a failed start-up)."""
    if config.alipay.enabled:
        read_keys(config.alipay, config.source)


def next_steps(config: Config) -> str:
    """What to do after a zero-config start: a user, a key, and where to point the client."""
    base = f"http://{config.server.host}:{config.server.port}"
    return ("next steps (in another terminal):\n"
            "  python -m gateway users add you@example.com\n"
            "  python -m gateway keys add you@example.com      # prints the key once\n"
            f"  export ANTHROPIC_BASE_URL={base} ANTHROPIC_API_KEY=<that key>\n"
            "then run claude (or any Anthropic SDK); README.md explains [[providers]]")


def warn_about_providers(config: Config) -> None:
    for provider in config.providers:
        if provider.protocol != "demo" and not provider.api_key:
            log.warning("provider %s has no API key (api_key / api_key_env): its upstream "
                        "will likely refuse every request with 401", provider.name)


def serve(config: Config) -> int:
    """Run until stopped; 0 on a clean stop, 2 with one line for a fixable start problem."""
    configure_logging()
    try:
        check_data_dir(config)
        check_files(config)
        return _run(config)
    except StartupError as exc:
        print(f"llmapi: {exc}", file=sys.stderr)
    except ConfigError as exc:  # a file the config names, read when its service opens
        print(f"llmapi: config error: {exc}", file=sys.stderr)
    except OSError as exc:  # binding the port, reading a file the config names
        where = f"{config.server.host}:{config.server.port}"
        if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            print(f"llmapi: cannot listen on {where}: {exc.strerror} "
                  "(another server running? choose one with --port)", file=sys.stderr)
        else:
            print(f"llmapi: cannot start: {exc}", file=sys.stderr)
    except sqlite3.Error as exc:
        print(f"llmapi: cannot open the database {config.database_path}: {exc}",
              file=sys.stderr)
    return EXIT_USAGE


async def _install_drain(app: web.Application) -> None:
    """Replace aiohttp's SIGTERM handler (installed just before start-up) with one that
    drains first: readiness answers 503 for `[server] drain_seconds` while requests are
    still served, then the usual graceful exit. A second SIGTERM exits at once; SIGINT
    (Ctrl-C) keeps aiohttp's immediate graceful exit."""
    loop = asyncio.get_running_loop()
    lifecycle = app[LIFECYCLE]
    wait = app[CONFIG].server.drain_seconds

    def exit_now() -> None:
        raise web.GracefulExit()

    def on_sigterm() -> None:
        if lifecycle.draining or wait <= 0:
            lifecycle.start_draining()
            exit_now()
        lifecycle.start_draining()
        log.info("SIGTERM: draining for %.1f s (readiness 503) before shutting down", wait)
        loop.call_later(wait, exit_now)

    with contextlib.suppress(NotImplementedError):  # Windows: no signal handlers
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)


def _run(config: Config) -> int:
    install_uvloop()
    warn_about_providers(config)
    app = build_app(config)
    app.on_startup.append(_install_drain)
    providers = ", ".join(f"{p.name} ({p.protocol})" for p in config.providers)
    host, port = config.server.host, config.server.port

    def announce(_: str) -> None:
        print(f"llmapi listening on http://{host}:{port} | providers: {providers} | "
              f"database: {describe(config)}", file=sys.stderr, flush=True)
        if config.source == "<defaults>":
            print(next_steps(config), file=sys.stderr, flush=True)

    # web.run_app, with unparsable requests answered as API errors (gateway/http_server.py);
    # the timeout is past the grace: the app ends what is left at the grace (inflight.py)
    http_server.run(app, host, port, config.server.shutdown_grace + CUT_MARGIN,
                    lambda: announce(""))
    return 0
