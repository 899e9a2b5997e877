"""The health report: overall status and per-provider state (/health and the admin page),
plus the reachability and latency of the shared stores (the database, Redis).

Reads only the app's resources, so the site can show it without importing the API. The
stores register a ping each in `DEPENDENCIES` (app.py); `dependency_report` runs them side
by side, each bounded by `PING_TIMEOUT`, so a hung database makes /health slow by at most
that, never stuck.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.providers.base import PROVIDERS
from gateway.relay.breaker import BREAKERS
from gateway.relay.health_checks import HEALTH
from gateway.streams import STREAMS

STARTED_AT = web.AppKey("started_at", float)
"""Wall-clock time the process opened its resources (uptime on /health)."""

Ping = Callable[[], Awaitable[float]]
DEPENDENCIES: web.AppKey[dict[str, tuple[str, Ping]]] = web.AppKey("dependencies")
"""name ("database", "redis") -> (what it is, a ping returning seconds); app.py fills it."""

PING_TIMEOUT = 1.0


async def _probe(kind: str, ping: Ping) -> dict[str, Any]:
    try:
        async with asyncio.timeout(PING_TIMEOUT):
            seconds = await ping()
    except Exception as exc:  # any failure is "unreachable", said with its cause
        cause = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        return {"ok": False, "kind": kind, "latency_ms": None, "error": cause[:300]}
    return {"ok": True, "kind": kind, "latency_ms": round(seconds * 1000, 3)}


async def dependency_report(app: web.Application) -> dict[str, dict[str, Any]]:
    """Each registered store: {"ok", "kind", "latency_ms", "error"?}."""
    found = app.get(DEPENDENCIES) or {}
    names = list(found)
    results = await asyncio.gather(*(_probe(*found[n]) for n in names))
    return dict(zip(names, results, strict=True))


def health_snapshot(app: web.Application) -> dict[str, Any]:
    """A provider is usable while its breaker lets requests through and its last probe (if
    any) succeeded; the gateway is "ok" while at least one provider is usable."""
    providers: dict[str, Any] = {}
    breakers, health = app[BREAKERS], app[HEALTH]
    for name, provider in app[PROVIDERS].items():
        breaker = breakers[name]
        probe = health.snapshot(name)
        usable = breaker.usable and probe["probe_ok"] is not False
        providers[name] = {
            "status": "ok" if usable else "down", "protocol": provider.config.protocol,
            "breaker": breaker.state, "consecutive_failures": breaker.consecutive_failures,
            **probe,
        }
    ok = any(p["status"] == "ok" for p in providers.values())
    return {"status": "ok" if ok else "unavailable",
            "uptime_s": round(time.time() - app[STARTED_AT]),
            "active_streams": len(app[STREAMS]), "providers": providers}
