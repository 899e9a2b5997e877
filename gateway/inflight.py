"""Relay requests in flight, and what happens to them when the shutdown grace runs out.

On SIGTERM aiohttp stops accepting connections and waits for the requests it has. Left to
itself it waits `shutdown_timeout`, then cancels each handler like a client that hung up
and waits that long again: a stream cut that way got a broken chunked body and a
`client_disconnect` row, and a grace of 10 s took about 20 s. Instead, when the app starts
shutting down (`on_shutdown`, app.py), a timer is set for `[server] shutdown_grace`; at its
end every relay request still running is cancelled *by us*, and `relay` knows the
difference (`was_cut`): a stream ends with an `overloaded_error` event and a properly
terminated body, a request still waiting for its upstream answers 529 (503 on the OpenAI
routes), and each leaves a row with status `error`, error type `gateway_shutdown`.
aiohttp's own timeout (server.py) is set past the grace, so it never cuts first.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

log = logging.getLogger("llmapi.shutdown")

SHUTTING_DOWN = ("the gateway is shutting down and its shutdown grace ran out; "
                 "retry the request")
GATEWAY_SHUTDOWN = "gateway_shutdown"  # the usage row's error_type for a cut request
CUT_MARGIN = 2.0
"""Seconds aiohttp's own shutdown timeout runs past the grace (server.py)."""


class InFlight:
    """The tasks of relay requests under way; `cut` cancels them at the grace's end."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cut: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._tasks)

    def enter(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)

    def leave(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.discard(task)
            self._cut.discard(task)

    def was_cut(self) -> bool:
        """In an `except CancelledError`: True when the grace's end cancelled this task
        (then the cancellation is absorbed, so the request can still end properly), False
        when the client went away."""
        task = asyncio.current_task()
        if task is None or task not in self._cut:
            return False
        self._cut.discard(task)
        task.uncancel()
        return True

    def cut_after(self, grace: float) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(grace, 0.0), self.cut)

    def cut(self) -> None:
        running = [task for task in self._tasks if not task.done()]
        if running:
            log.warning("shutdown grace over: ending %d request(s) still in flight",
                        len(running))
        for task in running:
            self._cut.add(task)
            task.cancel()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


IN_FLIGHT = web.AppKey("in_flight", InFlight)
"""Relay requests under way (app.py: `in_flight`; read by api/messages.py `relay`)."""
