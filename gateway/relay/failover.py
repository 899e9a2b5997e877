"""Try a request's candidate providers in order until one starts answering.

Retries: connect errors, timeouts before the first byte, and 429/500/502/503/504/529 from
the upstream, within a per-request attempt budget. A retry of the *same* provider waits a
small jittered backoff, or the upstream's `retry-after` when it is short; moving on to
another provider does not wait. A 4xx request error is never retried. Once a reply is
returned its first bytes may reach the client, so there is no failover after that.

An upstream that refuses the gateway's own credentials (401/403) is skipped without
counting against its breaker (it is misconfigured, not overloaded); if no other provider
answers, the client is told exactly that, with `x-should-retry: false`.

When every attempt failed, the client gets the last failure as it was: a 429 stays a 429
with the upstream's `retry-after`, a timeout a 504, and 529 is said only for an overload.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from gateway.config import RoutingConfig
from gateway.errors import ApiError
from gateway.metrics import Metrics
from gateway.providers.base import Call, Provider, Reply, UpstreamError
from gateway.relay.breaker import Breaker
from gateway.relay.routing import Candidate

log = logging.getLogger("llmapi.failover")


SendFn = Callable[[Provider, Call], Awaitable[Reply]]
"""How one attempt talks to a provider; the default is `provider.send(call)` (Anthropic)."""


@dataclass(slots=True)
class Served:
    reply: Reply
    candidate: Candidate
    attempts: int


async def send_with_failover(call: Call, options: Sequence[Candidate],
                             providers: dict[str, Provider], breakers: dict[str, Breaker],
                             routing: RoutingConfig, metrics: Metrics,
                             send: SendFn | None = None) -> Served:
    """The first reply any candidate gives, or `ApiError` (529 when every one failed)."""
    if not options:
        raise ApiError("not_found_error", f"model: no provider serves {call.client_model!r}")
    attempts = 0
    last: UpstreamError | None = None
    tried: dict[str, int] = {}
    last_of: dict[str, UpstreamError] = {}
    while attempts < routing.max_attempts:
        progressed = False
        for option in options:
            if attempts >= routing.max_attempts:
                break
            name = option.provider.name
            if tried.get(name, 0) >= routing.max_attempts:
                continue  # it refused our credentials
            breaker = breakers[name]
            if not breaker.allow():
                continue
            if name in tried:  # a second go at the same provider: back off first
                await asyncio.sleep(_delay(routing, tried[name], last_of.get(name)))
            tried[name] = tried.get(name, 0) + 1
            attempts += 1
            progressed = True
            call.upstream_model = option.upstream_model
            call.provider, call.attempts = name, attempts  # accounting owes this a row
            try:
                provider = providers[name]
                reply = await (provider.send(call) if send is None else send(provider, call))
            except UpstreamError as exc:
                last = last_of[name] = exc
                metrics.attempts.inc((name, "failure"))
                metrics.failures.inc((name, exc.reason))
                if exc.credentials:
                    breaker.release()
                    log.error("%s", exc.message)
                    tried[name] = routing.max_attempts  # never again for this request
                    continue
                if not exc.retryable:
                    breaker.release()  # the request was at fault, not the provider
                    raise ApiError(exc.error_type, exc.message, status=exc.client_status,
                                   headers=_retry_headers(exc)) from None
                breaker.failure()
                log.warning("provider %s failed (%s); %s", name, exc.reason,
                            "trying the next" if attempts < routing.max_attempts else "giving up")
                continue
            except BaseException:
                breaker.release()
                raise
            breaker.success()
            metrics.attempts.inc((name, "success"))
            return Served(reply, option, attempts)
        if not progressed:
            break
    if last is None:
        raise ApiError("overloaded_error",
                       "every provider for this model is unavailable (circuit open); "
                       "retry shortly", headers=_overload_headers(options, breakers))
    refused = [e for e in last_of.values() if e.credentials]
    if refused and all(e.credentials for e in last_of.values()):
        raise ApiError("api_error", "; ".join(e.message for e in refused), status=502,
                       headers={"x-should-retry": "false"})
    if last.credentials:
        last = next(e for e in reversed(list(last_of.values())) if not e.credentials)
    headers = _retry_headers(last)
    if (last.client_status == 429 or last.client_status in OVERLOAD_STATUSES) \
            and "retry-after" not in headers:
        headers = _overload_headers(options, breakers)
    raise ApiError(last.error_type,
                   f"all upstream providers failed after {attempts} attempt(s); "
                   f"last: {last.message}", status=last.client_status, headers=headers)


# Overloaded / unavailable: the client is told when to come back (`retry-after`), as for 429
# (an upstream 429 or 503 without its own `retry-after` gets the gateway's estimate).
OVERLOAD_STATUSES = frozenset({503, 529})


def _retry_headers(error: UpstreamError) -> dict[str, str]:
    """The upstream's Retry-After for a 429, 503 or 529 (Claude Code and the SDKs honour
    it)."""
    if (error.client_status == 429 or error.client_status in OVERLOAD_STATUSES) \
            and error.retry_after_header:
        return {"retry-after": error.retry_after_header}
    return {}


def _overload_headers(options: Sequence[Candidate],
                      breakers: dict[str, Breaker]) -> dict[str, str]:
    """`retry-after` for "every provider is unavailable": when the first open circuit
    half-opens again (a probe may then go through), at least 1 second."""
    now = time.monotonic()
    waits = [b.cooldown - (now - b.opened_at) for b in
             (breakers.get(o.provider.name) for o in options) if b is not None and not b.usable]
    wait = min(waits) if waits and len(waits) == len(options) else 1.0
    return {"retry-after": str(max(1, math.ceil(wait)))}


def _delay(routing: RoutingConfig, tries: int, last: UpstreamError | None) -> float:
    if last is not None and last.retry_after is not None \
            and last.retry_after <= routing.max_retry_after:
        return float(last.retry_after)
    base = routing.retry_backoff * 2.0 ** (tries - 1)
    return base * (0.5 + random.random())
