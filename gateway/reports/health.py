"""The health report: overall status and per-provider state (/health and the admin page).

Reads only the app's resources, so the site can show it without importing the API.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from gateway.providers.base import PROVIDERS
from gateway.relay.breaker import BREAKERS
from gateway.relay.health_checks import HEALTH
from gateway.streams import STREAMS

STARTED_AT = web.AppKey("started_at", float)
"""Wall-clock time the process opened its resources (uptime on /health)."""


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
