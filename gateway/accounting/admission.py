"""The accounting API every ingress calls: `admit` before the upstream, `finish` after.

    admission = await accountant.admit(key, input_estimate=..., max_tokens=...)
    body["max_tokens"] = admission.max_tokens        # what the reservation holds
    ... send upstream (failover sets call.provider / call.attempts) ...
    await admission.finish(Outcome(...))              # exactly once, also on failure

`finish` is where "every upstream token is on a row" is kept: a request that started at
least one upstream attempt gets ONE usage row (status, attempt count, what was used or
known), whatever happened — success, upstream error, every provider failed, client gone
before or after the first byte, stream cut at shutdown. A request that never reached a
provider (refused, no route) gets no row and its reservation is released. Usage figures
are clamped here, at the edge, so no upstream value can poison the counters or a batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web

from gateway.accounting.counters import Ask, Counters, Grant
from gateway.accounting.keycache import KeyInfo
from gateway.accounting.usage import NoopRecorder, UsageRecord, UsageRecorder
from gateway.config import PlanConfig
from gateway.protocol.usage import Usage

# The largest token figure one request can plausibly report; anything above (2**63, ...) is
# an upstream bug and is clamped so SQLite's INTEGER and the counters stay sane.
MAX_TOKENS_PER_FIELD = 100_000_000


def clamp_tokens(value: object) -> int:
    """A usage figure as a sane non-negative int: bools, floats, lists, negatives -> 0 or
    clamped (a negative count would credit the user; 2**63 would overflow SQLite)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return min(max(value, 0), MAX_TOKENS_PER_FIELD)


def clean_usage(usage: Usage) -> Usage:
    output = clamp_tokens(usage.output_tokens)
    return Usage(
        input_tokens=clamp_tokens(usage.input_tokens), output_tokens=output,
        cache_read_input_tokens=clamp_tokens(usage.cache_read_input_tokens),
        cache_creation_input_tokens=clamp_tokens(usage.cache_creation_input_tokens),
        thinking_tokens=min(clamp_tokens(usage.thinking_tokens), output),
        estimated=bool(usage.estimated))


@dataclass(slots=True)
class Outcome:
    """How a request ended, as the ingress saw it."""

    status: str                 # success | error | client_disconnect | interrupted
    provider: str               # "" when no attempt was made
    upstream_model: str
    attempts: int               # upstream attempts started (0: never reached a provider)
    usage: Usage | None         # what the upstream reported (None: nothing seen)
    error_type: str | None
    duration_ms: float
    ttft_ms: float | None


class Admission:
    """One admitted request's claim; `finish` settles or releases it exactly once."""

    __slots__ = ("_accountant", "_grant", "client_model", "ingress", "input_estimate", "key",
                 "request_id", "stream")

    def __init__(self, accountant: Accountant, grant: Grant | None, key: KeyInfo,
                 request_id: str, client_model: str, stream: bool, input_estimate: int,
                 ingress: str = "anthropic") -> None:
        self.ingress = ingress
        self._accountant = accountant
        self._grant = grant
        self.key = key
        self.request_id = request_id
        self.client_model = client_model
        self.stream = stream
        self.input_estimate = input_estimate

    @property
    def headers(self) -> dict[str, str]:
        return self._grant.headers if self._grant is not None else {}

    @property
    def max_tokens(self) -> int | None:
        """The max_tokens the reservation holds (None: accounting off, send the client's)."""
        return self._grant.max_tokens if self._grant is not None else None

    async def finish(self, outcome: Outcome) -> Usage:
        """Write the row (if a provider was reached) and settle; returns the usage billed."""
        acc, grant = self._accountant, self._grant
        usage = clean_usage(outcome.usage) if outcome.usage is not None else Usage()
        if outcome.attempts <= 0:
            if grant is not None and acc.counters is not None:
                await acc.counters.release(grant)
            return usage
        if outcome.usage is None and outcome.status in ("client_disconnect", "interrupted"):
            # the upstream got the prompt and may bill it: charge the estimate, marked so
            usage = Usage(input_tokens=self.input_estimate, estimated=True)
        if grant is not None and acc.counters is not None:
            await acc.counters.settle(grant, usage.total_tokens)
        acc.recorder.record(UsageRecord(
            request_id=self.request_id, user_id=self.key.user_id, key_id=self.key.key_id,
            client_model=self.client_model, provider=outcome.provider,
            upstream_model=outcome.upstream_model, usage=usage, stream=self.stream,
            status=outcome.status, error_type=outcome.error_type,
            duration_ms=outcome.duration_ms, ttft_ms=outcome.ttft_ms,
            created_at=time.time(), attempts=outcome.attempts, ingress=self.ingress))
        return usage


class Accountant:
    """Admission against the counters plus the usage recorder, for any ingress."""

    def __init__(self, counters: Counters | None, recorder: UsageRecorder | NoopRecorder,
                 plans: dict[str, PlanConfig]) -> None:
        self.counters = counters  # None: accounting off (benchmark baseline)
        self.recorder = recorder
        self.plans = plans

    def plan_of(self, key: KeyInfo) -> PlanConfig:
        return self.plans.get(key.plan) or self.plans["free"]

    async def admit(self, key: KeyInfo, *, request_id: str, client_model: str, stream: bool,
                    input_estimate: int, max_tokens: int,
                    ingress: str = "anthropic") -> Admission:
        """Admit (and count) or raise `ApiError` 429/400 with rate-limit headers.

        Waits first while the usage queue is full (back-pressure: a stalled disk slows
        admissions down instead of piling rows up in memory)."""
        await self.recorder.wait_for_room()
        grant: Grant | None = None
        if self.counters is not None:
            plan = self.plan_of(key)
            rpm = key.rpm_override if key.rpm_override is not None else plan.rpm
            grant = await self.counters.admit(Ask(
                user_id=key.user_id, key_id=key.key_id, plan=plan, rpm=rpm,
                rpm_per_key=key.rpm_override is not None, input_estimate=input_estimate,
                max_tokens=max(1, clamp_tokens(max_tokens))))
        return Admission(self, grant, key, request_id, client_model, stream, input_estimate,
                         ingress)


ACCOUNTANT: web.AppKey[Accountant] = web.AppKey("accountant")
"""admit / finish: the one accounting API every ingress calls."""
