"""The in-memory `Counters`: plan limits checked and counted in one step, no database trip.

Each user's subscription (period and tokens used) is loaded once, on their first request;
from then on this process counts in memory and `usage.UsageRecorder` persists what changed
as deltas (`take_deltas`) in its batched transactions. The key cache never drops these
counters: a change to a user, key or plan reaches the hot path through `KeyInfo` (plan
name, status, rpm override) while the counts stay where they are. Nothing awaits between
a check and its count, so admission is atomic on the event loop. Several processes need a
shared store behind the same protocol (`gateway.accounting.shared.RedisCounters`).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web

from gateway.accounting.counters import MIN_OUTPUT_TOKENS, Ask, CounterDelta, Counters, Grant
from gateway.accounts.users import add_month
from gateway.config import PlanConfig
from gateway.errors import ApiError
from gateway.store.base import Store

WINDOW = 60.0  # seconds in the requests-per-minute window
DAY = 86_400
CONCURRENCY_RETRY_AFTER = 1  # seconds: a slot frees as soon as any request of the user ends
# `ApiError.limit` of each refusal: the OpenAI ingress answers `insufficient_quota` (and no
# retry) for a used-up quota, a retryable rate limit for the rest. A quota that is full only
# because of reservations in flight frees when they settle, like a concurrency slot.
LIMIT_RPM, LIMIT_RPD, LIMIT_CONCURRENCY = "rpm", "rpd", "concurrency"
LIMIT_TOKENS, LIMIT_TOKENS_HELD = "monthly_tokens", "monthly_tokens_held"


_iso_memo: dict[int, str] = {}


def iso(ts: float) -> str:
    """RFC 3339 / ISO 8601 UTC with seconds, as rate-limit headers carry it (memoized: the
    hot path asks for the same few seconds over and over)."""
    second = int(ts)
    text = _iso_memo.get(second)
    if text is None:
        if len(_iso_memo) > 1024:
            _iso_memo.clear()
        text = _iso_memo[second] = datetime.fromtimestamp(second, UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
    return text


def day_start(ts: float) -> float:
    return ts - ts % DAY


@dataclass(slots=True)
class UserQuota:
    """One user's counters: the current period's tokens and today's requests."""

    user_id: int
    period_start: float
    period_end: float
    tokens_used: int         # settled usage in this period (stored figure + our deltas)
    requests_used: int
    day: float               # start (UTC) of the day `requests_today` counts
    requests_today: int
    window: deque[float] = field(default_factory=deque)  # admission times, last minute
    reserved: int = 0        # tokens held by requests in flight
    in_flight: int = 0
    tokens_delta: int = 0    # not yet persisted
    requests_delta: int = 0
    dirty: bool = False      # the period changed or deltas wait: persist on the next flush

    def roll_over(self, now: float) -> None:
        """Start a new monthly period (and a new day) when the old one has ended."""
        while now >= self.period_end:
            self.period_start, self.period_end = self.period_end, add_month(self.period_end)
            self.tokens_used = self.requests_used = 0
            self.tokens_delta = self.requests_delta = 0  # the rows keep the old period's use
            self.dirty = True
        if now >= self.day + DAY:
            self.day = day_start(now)
            self.requests_today = 0


class MemoryCounters:
    """Per-user and per-key counters of this process (the `Counters` protocol)."""

    def __init__(self, db: Store, plans: dict[str, PlanConfig]) -> None:
        self._db = db
        self.plans = plans
        self._users: dict[int, UserQuota] = {}
        self._key_windows: dict[int, deque[float]] = {}
        self._key_in_flight: dict[int, int] = {}

    def plan_of(self, name: str) -> PlanConfig:
        return self.plans.get(name) or self.plans["free"]

    async def quota(self, user_id: int) -> UserQuota:
        """The user's counters, loaded from the database on first use."""
        quota = self._users.get(user_id)
        if quota is None:
            loaded = await self._load(user_id)
            # another request of the same user may have loaded it while we awaited
            quota = self._users.setdefault(user_id, loaded)
        return quota

    async def _load(self, user_id: int) -> UserQuota:
        now = time.time()
        sub = await self._db.fetch_one("subscription_by_user", {"user_id": user_id})
        today = day_start(now)
        row = await self._db.fetch_one("usage_requests_since",
                                       {"user_id": user_id, "since": today})
        requests_today = int(row["n"]) if row else 0
        if sub is None:  # users made before subscriptions existed: start one now
            return UserQuota(user_id, now, add_month(now), 0, 0, today, requests_today,
                             dirty=True)
        return UserQuota(user_id, sub["period_start"], sub["period_end"], sub["tokens_used"],
                         sub["requests_used"], today, requests_today)

    async def start_period(self, user_id: int, period_start: float, period_end: float) -> None:
        self.reset_period(user_id, period_start, period_end)

    def pending_tokens(self, user_id: int, period_start: float) -> int:
        """Tokens counted here for the period and not yet persisted (the Redis rebuild adds
        them to the database's figure)."""
        quota = self._users.get(user_id)
        if quota is None or quota.period_start != period_start:
            return 0
        return quota.tokens_delta

    def drop_idle(self) -> None:
        """Forget every user with nothing in flight and nothing left to persist, so their
        figures are loaded afresh on next use (the Redis fallback calls this each time Redis
        goes away: what it counted during an earlier outage is stale by now)."""
        self._users = {uid: q for uid, q in self._users.items() if q.in_flight or q.dirty}

    def reset_period(self, user_id: int, period_start: float, period_end: float) -> None:
        """A payment began a new period (the database row was reset in the same breath)."""
        quota = self._users.get(user_id)
        if quota is not None:
            quota.period_start, quota.period_end = period_start, period_end
            quota.tokens_used = quota.requests_used = 0
            quota.tokens_delta = quota.requests_delta = 0

    async def admit(self, ask: Ask) -> Grant:
        """Check every limit and count the request, with no await in between (atomic).

        Raises `ApiError` (429 rate_limit_error, or 400 for input over the plan's maximum)
        with the rate-limit headers plus `retry-after`, naming the limit and the reset.
        """
        plan = ask.plan
        quota = await self.quota(ask.user_id)
        # ---- from here on nothing awaits: check and count are one step ----
        now = time.time()
        quota.roll_over(now)
        window = self._window(ask, quota)
        cutoff = now - WINDOW
        while window and window[0] <= cutoff:
            window.popleft()
        reset_at = (window[0] + WINDOW) if window else now + WINDOW
        key_in_flight = self._key_in_flight.get(ask.key_id, 0)
        reserved, max_tokens = self._reservation(ask, quota)
        if (reserved < 0 or (plan.max_input_tokens and ask.input_estimate > plan.max_input_tokens)
                or (plan.rpd and quota.requests_today >= plan.rpd)
                or (ask.rpm and len(window) >= ask.rpm)
                or (plan.concurrency and (quota.in_flight >= plan.concurrency
                                          or key_in_flight >= plan.concurrency))):
            # the headers as they stand before this request (built only for a refusal)
            headers = rate_headers(ask.rpm, len(window), reset_at)
            raise self._refusal(ask, quota, window, reset_at, headers, key_in_flight, now)
        window.append(now)
        quota.requests_today += 1
        quota.requests_used += 1
        quota.requests_delta += 1
        quota.reserved += reserved
        quota.in_flight += 1
        quota.dirty = True
        self._key_in_flight[ask.key_id] = key_in_flight + 1
        granted = rate_headers(ask.rpm, len(window), reset_at)
        if plan.monthly_tokens:
            granted.update(token_headers(plan.monthly_tokens, quota.tokens_used,
                                         quota.reserved, quota.period_end))
        return Grant(ask.user_id, ask.key_id, reserved, max_tokens, quota.period_start, granted)

    @staticmethod
    def _reservation(ask: Ask, quota: UserQuota) -> tuple[int, int]:
        """(tokens to reserve, max_tokens to send); reserve -1 when the quota cannot
        hold the input plus the minimum answer."""
        limit = ask.plan.monthly_tokens
        if not limit:
            return 0, ask.max_tokens
        left = limit - quota.tokens_used - quota.reserved - ask.input_estimate
        if left < min(ask.max_tokens, MIN_OUTPUT_TOKENS):
            return -1, 0
        max_tokens = min(ask.max_tokens, left)
        return ask.input_estimate + max_tokens, max_tokens

    def _refusal(self, ask: Ask, quota: UserQuota, window: deque[float], reset_at: float,
                 headers: dict[str, str], key_in_flight: int, now: float) -> ApiError:
        return refusal(ask, Figures(
            tokens_used=quota.tokens_used, reserved=quota.reserved,
            quota_short=self._reservation(ask, quota)[0] < 0,
            requests_today=quota.requests_today, day=quota.day, window=len(window),
            reset_at=reset_at, in_flight=quota.in_flight, key_in_flight=key_in_flight,
            period_end=quota.period_end), headers, now)

    def _window(self, ask: Ask, quota: UserQuota) -> deque[float]:
        if not ask.rpm_per_key:
            return quota.window
        window = self._key_windows.get(ask.key_id)
        if window is None:
            window = self._key_windows[ask.key_id] = deque()
        return window

    async def settle(self, grant: Grant, tokens: int) -> None:
        """Replace the reservation by the real usage (charged to the grant's period only:
        a payment in between started a fresh one)."""
        quota = self._give_back(grant)
        if quota is not None and tokens > 0:
            quota.roll_over(time.time())
            if quota.period_start == grant.period_start:
                quota.tokens_used += tokens
                quota.tokens_delta += tokens
                quota.dirty = True

    def add_tokens(self, user_id: int, tokens: int) -> None:
        """Charge tokens outside any request (operator adjustments, tests)."""
        quota = self._users.get(user_id)
        if quota is not None:
            quota.roll_over(time.time())
            quota.tokens_used += tokens
            quota.tokens_delta += tokens
            quota.dirty = True

    async def release(self, grant: Grant) -> None:
        self._give_back(grant)

    def _give_back(self, grant: Grant) -> UserQuota | None:
        if grant.done:
            return None
        grant.done = True
        quota = self._users.get(grant.user_id)
        if quota is not None:
            quota.reserved = max(0, quota.reserved - grant.reserved)
            quota.in_flight = max(0, quota.in_flight - 1)
        left = self._key_in_flight.get(grant.key_id, 0) - 1
        if left > 0:
            self._key_in_flight[grant.key_id] = left
        else:
            self._key_in_flight.pop(grant.key_id, None)
        return quota

    def take_deltas(self) -> list[CounterDelta]:
        deltas = []
        for quota in self._users.values():
            if quota.dirty:
                quota.dirty = False
                deltas.append(CounterDelta(quota.user_id, quota.period_start, quota.period_end,
                                           quota.tokens_delta, quota.requests_delta))
                quota.tokens_delta = quota.requests_delta = 0
        return deltas

    def restore_deltas(self, deltas: list[CounterDelta]) -> None:
        for delta in deltas:
            quota = self._users.get(delta.user_id)
            if quota is not None and quota.period_start == delta.period_start:
                quota.tokens_delta += delta.tokens
                quota.requests_delta += delta.requests
                quota.dirty = True


@dataclass(frozen=True, slots=True)
class Figures:
    """What a refusal quotes: the counts one store of counters (memory or Redis) saw."""

    tokens_used: int
    reserved: int
    quota_short: bool        # the quota cannot hold the input plus the minimum answer
    requests_today: int
    day: float               # start (UTC) of the day `requests_today` counts
    window: int              # requests in the last minute (the window that applies)
    reset_at: float          # when the oldest of them leaves the window
    in_flight: int
    key_in_flight: int
    period_end: float


def refusal(ask: Ask, fig: Figures, headers: dict[str, str], now: float) -> ApiError:
    """The error for the first limit that refuses, most fundamental first (the same words
    whichever store counted)."""
    plan = ask.plan
    if plan.monthly_tokens:
        headers = {**headers, **token_headers(plan.monthly_tokens, fig.tokens_used,
                                              fig.reserved, fig.period_end)}
    if plan.max_input_tokens and ask.input_estimate > plan.max_input_tokens:
        return ApiError(
            "invalid_request_error",
            f"input too large: about {ask.input_estimate} tokens, plan {plan.name!r} "
            f"allows at most {plan.max_input_tokens} input tokens per request",
            headers=headers)
    if plan.monthly_tokens and fig.quota_short:
        held = f", {fig.reserved} more held by requests in flight" if fig.reserved else ""
        need = ask.input_estimate + min(ask.max_tokens, MIN_OUTPUT_TOKENS)
        only_held = plan.monthly_tokens - fig.tokens_used >= need
        return _refused(
            f"monthly token quota exhausted: {fig.tokens_used} of {plan.monthly_tokens} "
            f"tokens used{held} on plan {plan.name!r}; this request needs at least {need} "
            f"(about {ask.input_estimate} input tokens plus an answer); "
            + ("retry when a request in flight finishes" if only_held
               else f"resets at {iso(fig.period_end)}"), headers,
            now + CONCURRENCY_RETRY_AFTER if only_held else fig.period_end, now,
            LIMIT_TOKENS_HELD if only_held else LIMIT_TOKENS)
    if plan.rpd and fig.requests_today >= plan.rpd:
        resets = fig.day + DAY
        return _refused(
            f"daily request limit reached: {fig.requests_today} of {plan.rpd} requests "
            f"today on plan {plan.name!r}; resets at {iso(resets)}", headers, resets, now,
            LIMIT_RPD)
    if ask.rpm and fig.window >= ask.rpm:
        return _refused(
            f"rate limit reached: {fig.window} of {ask.rpm} requests per minute"
            f"{' for this key' if ask.rpm_per_key else ''} on plan "
            f"{plan.name!r}; resets at {iso(fig.reset_at)}", headers, fig.reset_at, now,
            LIMIT_RPM)
    whose = "this account" if fig.in_flight >= plan.concurrency else "this key"
    running = max(fig.in_flight, fig.key_in_flight)
    return _refused(
        f"concurrency limit reached: {running} of {plan.concurrency} requests already "
        f"in flight for {whose} on plan {plan.name!r}; retry when one finishes",
        headers, now + CONCURRENCY_RETRY_AFTER, now, LIMIT_CONCURRENCY)


def _refused(message: str, headers: dict[str, str], resets: float, now: float,
             limit: str) -> ApiError:
    """A 429 saying when to come back: `retry-after` in whole seconds (rounded up) and
    `retry-after-ms`, which the Anthropic and OpenAI SDKs read first, to the millisecond
    (an rpm window that frees in 0.3 s is not worth a 1 s wait)."""
    retry = max(1, int(resets - now + 0.999))
    retry_ms = max(1, min(retry * 1000, int((resets - now) * 1000)))
    return ApiError("rate_limit_error", message,
                    headers={**headers, "retry-after": str(retry),
                             "retry-after-ms": str(retry_ms)}, limit=limit)


def rate_headers(limit: int, used: int, reset_at: float) -> dict[str, str]:
    """The headers the docs page promises, in both spellings clients look for."""
    if limit:
        limit_s, remaining = str(limit), str(max(0, limit - used))
    else:
        limit_s = remaining = "unlimited"
    reset = iso(reset_at)
    return {
        "x-ratelimit-limit": limit_s,
        "x-ratelimit-remaining": remaining,
        "x-ratelimit-reset": reset,
        "anthropic-ratelimit-requests-limit": limit_s,
        "anthropic-ratelimit-requests-remaining": remaining,
        "anthropic-ratelimit-requests-reset": reset,
    }


def token_headers(monthly_tokens: int, used: int, reserved: int,
                  period_end: float) -> dict[str, str]:
    """The monthly token quota under Anthropic's token rate-limit names: the limit, what is
    left after settled usage and every reservation in flight, and the period's end."""
    return {"anthropic-ratelimit-tokens-limit": str(monthly_tokens),
            "anthropic-ratelimit-tokens-remaining": str(max(0, monthly_tokens - used - reserved)),
            "anthropic-ratelimit-tokens-reset": iso(period_end)}


LIMITS: web.AppKey[Counters | None] = web.AppKey("limits")
"""The process's counters; None when `[server] accounting = false`."""
