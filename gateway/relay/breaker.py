"""Per-provider circuit breaker: stop sending to a provider that keeps failing, probe it later.

closed --N consecutive failures--> open --cooldown elapsed--> half-open (one probe allowed)
half-open --probe succeeds--> closed;  half-open --probe fails--> open again.
"""

from __future__ import annotations

import time

from aiohttp import web

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATE_VALUE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}  # for the /metrics gauge


class Breaker:
    def __init__(self, failures: int = 5, cooldown: float = 30.0) -> None:
        self.threshold = failures
        self.cooldown = cooldown
        self.state = CLOSED
        self.consecutive_failures = 0
        self.opened_at = 0.0
        self._probe_in_flight = False

    def allow(self, now: float | None = None) -> bool:
        """May a request go to this provider now? In half-open, only the one probe may."""
        if self.state == CLOSED:
            return True
        now = time.monotonic() if now is None else now
        if self.state == OPEN:
            if now - self.opened_at < self.cooldown:
                return False
            self.state = HALF_OPEN
            self._probe_in_flight = False
        if self._probe_in_flight:
            return False
        self._probe_in_flight = True
        return True

    @property
    def usable(self) -> bool:
        """Would `allow` let something through (without claiming the probe)?"""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            return time.monotonic() - self.opened_at >= self.cooldown
        return not self._probe_in_flight

    def success(self) -> None:
        self.state = CLOSED
        self.consecutive_failures = 0
        self._probe_in_flight = False

    def failure(self, now: float | None = None) -> None:
        self.consecutive_failures += 1
        if self.state == HALF_OPEN or self.consecutive_failures >= self.threshold:
            self.state = OPEN
            self.opened_at = time.monotonic() if now is None else now
        self._probe_in_flight = False

    def release(self) -> None:
        """A probe that ended without verdict (e.g. a 4xx request error): allow another."""
        self._probe_in_flight = False


BREAKERS: web.AppKey[dict[str, Breaker]] = web.AppKey("breakers")
"""One circuit breaker per provider name (app.py: `providers`)."""
