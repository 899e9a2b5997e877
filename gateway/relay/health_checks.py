"""Probe every provider in the background without spending tokens, and feed the breakers.

A probe asks for the provider's model list (`GET {base_url}/models` for OpenAI-compatible
upstreams, `GET {base_url}/v1/models` for Anthropic-compatible ones): free, and it proves
DNS, TLS, the network path and the credentials. A 401/403 marks the provider's credentials
as refused; a 404 still proves the server is up (not every vendor lists models).

Each change of a provider's probe state is logged once, with the URL and the cause
(`provider x health probe failing: GET https://.../models: unreachable: Cannot connect to
...`, then `... healthy again ... after 42 s`); a provider that stays down or stays up
adds nothing to the log, however often it is probed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from gateway.config import ProviderConfig
from gateway.relay.breaker import Breaker

log = logging.getLogger("llmapi.health")
PROBE_BODY_BYTES = 1 << 20


@dataclass(slots=True)
class ProbeResult:
    checked_at: float = 0.0
    latency_ms: float | None = None
    ok: bool | None = None  # None: never probed
    error: str | None = None
    detail: str = ""  # the exception's own words, for the log line (not for /health)


class HealthChecker:
    def __init__(self, providers: tuple[ProviderConfig, ...], breakers: dict[str, Breaker],
                 interval: float) -> None:
        self.providers = [p for p in providers if p.protocol != "demo"]
        self.breakers = breakers
        self.interval = interval
        self.results: dict[str, ProbeResult] = {p.name: ProbeResult() for p in providers}
        self._session: aiohttp.ClientSession | None = None
        # provider -> the state last logged: None healthy (or never probed), else the cause
        self._logged: dict[str, str | None] = {}
        self._failing_since: dict[str, float] = {}

    async def probe(self, provider: ProviderConfig) -> ProbeResult:
        assert self._session is not None
        url = provider.base_url + ("/models" if provider.protocol == "openai" else "/v1/models")
        headers = {"Authorization": f"Bearer {provider.api_key}",
                   "x-api-key": provider.api_key} if provider.api_key else {}
        started = time.perf_counter()
        result = ProbeResult(checked_at=time.time())
        # the provider's own timeouts: a probe is judged as its requests are
        timeout = aiohttp.ClientTimeout(total=provider.first_byte_timeout,
                                        connect=provider.connect_timeout)
        try:
            async with self._session.get(url, headers=headers, timeout=timeout) as response:
                # a model list is small: read it to its end, but never an endless body
                seen = 0
                async for chunk in response.content.iter_any():
                    seen += len(chunk)
                    if seen > PROBE_BODY_BYTES:
                        break
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            result.ok, result.error = False, f"unreachable ({type(exc).__name__})"
            result.detail = str(exc) or (f"no answer within {provider.first_byte_timeout:g}s"
                                         if isinstance(exc, TimeoutError) else "")
        else:
            result.latency_ms = round((time.perf_counter() - started) * 1000, 2)
            if status in (401, 403):
                result.ok, result.error = False, "credentials refused"
            elif status >= 500 or status == 429:
                result.ok, result.error = False, f"HTTP {status}"
            else:
                result.ok = True
        self.results[provider.name] = result
        self._log_change(provider.name, url, result)
        breaker = self.breakers[provider.name]
        if result.ok:
            if breaker.state != "closed" and breaker.usable:
                breaker.success()  # the probe plays the half-open request's part
        else:
            breaker.failure()
        return result

    def _log_change(self, name: str, url: str, result: ProbeResult) -> None:
        """One line when the state (healthy, or failing for this cause) changes."""
        state = None if result.ok else result.error
        if self._logged.get(name) == state:
            return
        before = self._logged.get(name)
        self._logged[name] = state
        if state is None:
            since = self._failing_since.pop(name, None)
            took = f" after {time.monotonic() - since:.0f}s" if since is not None else ""
            log.info("provider %s health probe healthy again: GET %s answered%s",
                     name, url, took)
            return
        self._failing_since.setdefault(name, time.monotonic())
        cause = f"{state}: {result.detail}" if result.detail else state
        log.warning("provider %s health probe failing%s: GET %s: %s", name,
                    f" (was: {before})" if before else "", url, cause)

    async def check_all(self) -> None:
        await asyncio.gather(*(self.probe(p) for p in self.providers))

    async def run(self) -> None:
        self._session = aiohttp.ClientSession()
        try:
            while True:
                try:
                    await self.check_all()
                except Exception:  # one bad round must not end health checking
                    log.exception("health check round failed")
                await asyncio.sleep(self.interval)
        finally:
            await self._session.close()

    def snapshot(self, name: str) -> dict[str, Any]:
        result = self.results.get(name, ProbeResult())
        return {"last_check": result.checked_at or None, "latency_ms": result.latency_ms,
                "probe_ok": result.ok, "last_error": result.error}


async def cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


HEALTH = web.AppKey("health_checker", HealthChecker)
"""The background provider prober (app.py: `health_checker`)."""
