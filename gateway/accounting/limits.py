"""Admit or refuse a request by plan: requests per minute and per day, tokens, input size.

All counters live in memory, so admitting a request costs no database round trip. Each
user's subscription (period and tokens used) is loaded once, on their first request, and
from then on this module is its single writer: `usage.UsageRecorder` persists the figures
in its batched transactions. One gateway process owns the counters; docs/scale-out.md
describes the Redis store that would replace them past one process.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway.accounting.keycache import KeyInfo
from gateway.accounts.users import add_month
from gateway.config import PlanConfig
from gateway.errors import ApiError
from gateway.store.base import Store

WINDOW = 60.0  # seconds in the requests-per-minute window
DAY = 86_400


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
    tokens_used: int
    requests_used: int
    day: float  # start (UTC) of the day `requests_today` counts
    requests_today: int
    window: deque[float] = field(default_factory=deque)  # admission times, last minute
    dirty: bool = False  # changed since the usage recorder last persisted it

    def roll_over(self, now: float) -> bool:
        """Start a new monthly period (and a new day) when the old one has ended."""
        rolled = False
        while now >= self.period_end:
            self.period_start, self.period_end = self.period_end, add_month(self.period_end)
            self.tokens_used = 0
            self.requests_used = 0
            rolled = True
        if now >= self.day + DAY:
            self.day = day_start(now)
            self.requests_today = 0
        if rolled:
            self.dirty = True
        return rolled


class Limits:
    """Per-user counters and the checks made before a request goes upstream."""

    def __init__(self, db: Store, plans: dict[str, PlanConfig]) -> None:
        self._db = db
        self.plans = plans
        self._users: dict[int, UserQuota] = {}
        self._key_windows: dict[int, deque[float]] = {}

    def plan_of(self, key: KeyInfo) -> PlanConfig:
        return self.plans.get(key.plan) or self.plans["free"]

    async def quota(self, user_id: int) -> UserQuota:
        """The user's counters, loaded from the database on first use."""
        quota = self._users.get(user_id)
        if quota is None:
            quota = await self._load(user_id)
            # another request of the same user may have loaded it while we awaited
            quota = self._users.setdefault(user_id, quota)
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

    def forget(self, user_id: int) -> None:
        """Reload this user's subscription on the next request (e.g. after a payment)."""
        quota = self._users.get(user_id)
        if quota is not None and not quota.dirty:
            del self._users[user_id]

    def start_period(self, user_id: int, period_start: float, period_end: float) -> None:
        """A payment began a new period: fresh counters at once (`forget` would skip a
        user with unflushed counters, whose next flush would then write the old period)."""
        quota = self._users.get(user_id)
        if quota is not None:
            quota.period_start, quota.period_end = period_start, period_end
            quota.tokens_used = quota.requests_used = 0
            quota.dirty = True  # the next flush writes the new period over any older one

    async def admit(self, key: KeyInfo, input_estimate: int) -> dict[str, str]:
        """Count the request if every limit allows it; returns the rate-limit headers.

        Raises `ApiError` (429 rate_limit_error, or 400 for input over the plan's maximum)
        with the same headers plus `retry-after`, naming the limit, the figure and the reset.
        """
        plan = self.plan_of(key)
        quota = await self.quota(key.user_id)
        now = time.time()
        quota.roll_over(now)

        rpm = key.rpm_override if key.rpm_override is not None else plan.rpm
        window = self._window(key, quota)
        cutoff = now - WINDOW
        while window and window[0] <= cutoff:
            window.popleft()
        reset_at = (window[0] + WINDOW) if window else now + WINDOW
        if self._refusal_possible(plan, quota, rpm, len(window), input_estimate):
            self._check(key, plan, quota, rpm, window, reset_at, input_estimate, now)

        window.append(now)
        quota.requests_today += 1
        quota.requests_used += 1
        quota.dirty = True
        return rate_headers(rpm, len(window), reset_at)

    @staticmethod
    def _refusal_possible(plan: PlanConfig, quota: UserQuota, rpm: int, in_window: int,
                          input_estimate: int) -> bool:
        """The cheap test done on every request; the detailed check runs only on refusal."""
        return bool(
            (plan.max_input_tokens and input_estimate > plan.max_input_tokens)
            or (plan.monthly_tokens and quota.tokens_used >= plan.monthly_tokens)
            or (plan.rpd and quota.requests_today >= plan.rpd)
            or (rpm and in_window >= rpm))

    def _check(self, key: KeyInfo, plan: PlanConfig, quota: UserQuota, rpm: int,
               window: deque[float], reset_at: float, input_estimate: int, now: float) -> None:
        """Raise the error for the first limit that refuses, most fundamental first."""
        headers = rate_headers(rpm, len(window), reset_at)
        if plan.max_input_tokens and input_estimate > plan.max_input_tokens:
            raise ApiError(
                "invalid_request_error",
                f"input too large: about {input_estimate} tokens, plan {plan.name!r} allows "
                f"at most {plan.max_input_tokens} input tokens per request", headers=headers)
        if plan.monthly_tokens and quota.tokens_used >= plan.monthly_tokens:
            raise self._refused(
                f"monthly token quota exhausted: {quota.tokens_used} of {plan.monthly_tokens} "
                f"tokens used on plan {plan.name!r}; resets at {iso(quota.period_end)}",
                headers, quota.period_end, now)
        if plan.rpd and quota.requests_today >= plan.rpd:
            resets = quota.day + DAY
            raise self._refused(
                f"daily request limit reached: {quota.requests_today} of {plan.rpd} requests "
                f"today on plan {plan.name!r}; resets at {iso(resets)}", headers, resets, now)
        if rpm and len(window) >= rpm:
            raise self._refused(
                f"rate limit reached: {len(window)} of {rpm} requests per minute"
                f"{' for this key' if key.rpm_override is not None else ''} on plan "
                f"{plan.name!r}; resets at {iso(reset_at)}", headers, reset_at, now)

    def _window(self, key: KeyInfo, quota: UserQuota) -> deque[float]:
        if key.rpm_override is None:
            return quota.window
        window = self._key_windows.get(key.key_id)
        if window is None:
            window = self._key_windows[key.key_id] = deque()
        return window

    @staticmethod
    def _refused(message: str, headers: dict[str, str], resets: float,
                 now: float) -> ApiError:
        retry = max(1, int(resets - now + 0.999))
        return ApiError("rate_limit_error", message, headers={**headers,
                                                              "retry-after": str(retry)})

    def add_tokens(self, user_id: int, tokens: int) -> None:
        """Charge a finished request's tokens to the user's current period."""
        quota = self._users.get(user_id)
        if quota is not None:
            quota.roll_over(time.time())
            quota.tokens_used += tokens
            quota.dirty = True

    def take_dirty(self) -> list[dict[str, Any]]:
        """Snapshots of every changed user, for the recorder's next transaction."""
        rows = []
        for quota in self._users.values():
            if quota.dirty:
                quota.dirty = False
                rows.append({"user_id": quota.user_id, "period_start": quota.period_start,
                             "period_end": quota.period_end, "tokens_used": quota.tokens_used,
                             "requests_used": quota.requests_used})
        return rows

    def mark_dirty(self, rows: list[dict[str, Any]]) -> None:
        """A failed write: make sure the next flush writes these users again."""
        for row in rows:
            quota = self._users.get(row["user_id"])
            if quota is not None:
                quota.dirty = True


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


LIMITS: web.AppKey[Limits | None] = web.AppKey("limits")
"""Plan limits; None when `[server] accounting = false` (app.py: `limits`)."""
