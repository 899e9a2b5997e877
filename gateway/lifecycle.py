"""Where this process is in its life: serving, or draining before it stops.

A balancer asks `GET /health/ready` (gateway/api/endpoints.py) which instances take new
requests. From SIGTERM on the answer is 503, so the balancer moves new requests elsewhere
while the requests already here finish; gateway/server.py waits `[server] drain_seconds`
before it closes the listening socket and shuts down (docs/deploy.md).
"""

from __future__ import annotations

import time

from aiohttp import web


class Lifecycle:
    """The draining flag and when it was raised (seconds on the monotonic clock)."""

    def __init__(self) -> None:
        self.draining_since: float | None = None

    @property
    def draining(self) -> bool:
        return self.draining_since is not None

    def start_draining(self) -> None:
        if self.draining_since is None:
            self.draining_since = time.monotonic()


LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
"""Serving or draining (app.py sets it; server.py raises it on SIGTERM)."""
