"""The HTTP server under the app: aiohttp's, with requests it cannot parse answered in the
API's shape and logged without a single header value.

A request whose head aiohttp's parser rejects (a header line without a colon, a control
character in a value, a line over 8,190 bytes) never reaches the app or its middleware:
aiohttp answers it itself, in plain text that quotes the offending line, and logs the
same line with a traceback. That line is often `x-api-key: ...` or `Cookie: ...`, so the
key or the session ended up in the log. aiohttp has no hook for this (aio-libs/aiohttp
#9882), so `GatewayRequestHandler` overrides the two methods involved: `handle_error`
answers `{"type":"error","error":{"type":"invalid_request_error",...}}` naming only the
kind of problem, and `log_exception` writes one warning line without the exception's
text for a malformed request (a real bug in a handler is still logged with its
traceback).

`run` replaces `web.run_app` so the server is built with that handler; it keeps
run_app's shutdown order (the main task, whose `finally` runs the graceful cleanup, is
cancelled first, everything else after).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import _ErrInfo

from gateway.errors import error_body, should_retry

log = logging.getLogger("llmapi.http")

MALFORMED = (HttpProcessingError, web.RequestPayloadError)


def describe(exc: BaseException | None) -> str:
    """What was wrong with a request aiohttp could not parse, without quoting any of it."""
    if isinstance(exc, LineTooLong):
        return "a request or header line is too long"
    if isinstance(exc, HttpProcessingError):
        return f"malformed HTTP request ({type(exc).__name__})"
    return "malformed HTTP request"


class GatewayRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, answering unparsable requests as API errors."""

    __slots__ = ()

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            log.error("error before routing from %s", request.remote, exc_info=exc)
            text = "internal error before the request was routed"
            kind = "api_error"
        else:
            text = describe(exc)
            kind = "invalid_request_error"
            log.warning("refused a request from %s with %d: %s", request.remote, status, text)
        if request.writer.output_size > 0:  # part of an answer is out: only closing is left
            raise ConnectionError("an answer was already started; closing the connection")
        response = web.Response(status=status, body=error_body(kind, text),
                                content_type="application/json")
        if not should_retry(status):
            response.headers["x-should-retry"] = "false"
        response.force_close()
        return response

    def data_received(self, data: bytes) -> None:
        """A framing error in the body of a request already being handled: aiohttp queues
        a 400 for after it, but leaves that request's body waiting for bytes that will
        never be framed, so its handler would hang until the client gives up. Fail the
        body instead; the middleware answers 400 and closes the connection."""
        before = len(self._messages)
        super().data_received(data)
        if len(self._messages) > before and isinstance(self._messages[-1][0], _ErrInfo):
            request = self._current_request
            if request is not None and not request.content.is_eof():
                request.content.set_exception(
                    web.RequestPayloadError("the body's framing broke mid-request"))

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, MALFORMED):
            log.warning("dropped a malformed request: %s", describe(exc))
            return
        super().log_exception(*args, **kw)


class GatewayServer(web.Server):
    """`web.Server` whose connections are handled by `GatewayRequestHandler`."""

    def __call__(self) -> web.RequestHandler:
        return GatewayRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """`web.AppRunner` serving through `GatewayServer` (tests use it too)."""

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return GatewayServer(plain.request_handler, request_factory=plain.request_factory,
                             handler_cancellation=plain.handler_cancellation,
                             loop=plain._loop, **plain._kwargs)


async def _serve(app: web.Application, host: str, port: int, shutdown_timeout: float,
                 announce: Callable[[], None]) -> None:
    runner = GatewayRunner(app, handle_signals=True, access_log=None,
                           handler_cancellation=True, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        announce()
        while True:
            await asyncio.sleep(3600)
    finally:
        await runner.cleanup()


def run(app: web.Application, host: str, port: int, shutdown_timeout: float,
        announce: Callable[[], None]) -> None:
    """Serve until SIGINT/SIGTERM (GracefulExit), then shut down as `web.run_app` does."""
    loop = asyncio.new_event_loop()
    main = loop.create_task(_serve(app, host, port, shutdown_timeout, announce))
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                main.cancel()  # its `finally` is the graceful cleanup
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            rest = asyncio.all_tasks(loop)
            for task in rest:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()
