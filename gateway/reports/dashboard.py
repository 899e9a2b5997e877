"""What a signed-in user sees: plan and quota, usage figures, daily series, requests, keys.

Usage comes from `usage_logs` (written by the usage recorder); the quota from
`subscriptions.tokens_used` against the plan. Days are UTC days.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from gateway.accounts.users import AccountError, NewKey, create_key
from gateway.store.base import Store

DAY = 86400
MAX_KEY_NAME = 60


@dataclass(frozen=True, slots=True)
class TokenCounts:
    """Requests and tokens by kind over some span (input here excludes cache reads/writes)."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0

    @property
    def total(self) -> int:
        return (self.input_tokens + self.output_tokens + self.cache_read_tokens
                + self.cache_creation_tokens)


def change(today: int, yesterday: int) -> int | None:
    """Whole per cent today against yesterday; None when yesterday had nothing to compare."""
    if yesterday <= 0:
        return None
    return round(100 * (today - yesterday) / yesterday)


async def token_counts(db: Store, user_id: int, since: float, until: float) -> TokenCounts:
    row = await db.fetch_one("dash_tokens_between",
                             {"user_id": user_id, "since": since, "until": until})
    if row is None:
        return TokenCounts()
    return TokenCounts(**{k: int(row[k] or 0) for k in (
        "requests", "input_tokens", "output_tokens", "thinking_tokens", "cache_read_tokens",
        "cache_creation_tokens")})


@dataclass(frozen=True, slots=True)
class Overview:
    plan: str
    price_month: str
    monthly_tokens: int  # 0 = unlimited
    tokens_used: int
    period_start: float
    period_end: float
    rpm: int
    rpd: int
    max_keys: int
    active_keys: int
    requests_today: int
    requests_period: int
    avg_ttft_ms: float | None
    avg_tokens_per_second: float | None
    today: TokenCounts | None = None
    yesterday: TokenCounts | None = None
    period: TokenCounts | None = None

    @property
    def quota_warning(self) -> int:
        """80 or 100 once that share of the monthly tokens is used, else 0."""
        percent = self.quota_percent
        if percent is None:
            return 0
        return 100 if percent >= 100 else 80 if percent >= 80 else 0

    @property
    def quota_percent(self) -> float | None:
        """Share of the monthly tokens used, 0-100 (None when unlimited)."""
        if not self.monthly_tokens:
            return None
        return min(100.0, 100.0 * self.tokens_used / self.monthly_tokens)

    @property
    def tokens_left(self) -> int | None:
        return None if not self.monthly_tokens else max(0,
                                                           self.monthly_tokens - self.tokens_used)

    @property
    def can_add_key(self) -> bool:
        return not self.max_keys or self.active_keys < self.max_keys


@dataclass(frozen=True, slots=True)
class DayUsage:
    day: date
    requests: int
    input_tokens: int
    output_tokens: int

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def start_of_day(ts: float) -> float:
    return ts - ts % DAY


async def overview(db: Store, user_id: int, now: float | None = None) -> Overview:
    now = time.time() if now is None else now
    sub = await db.fetch_one("dash_plan_of_user", {"user_id": user_id})
    if sub is None:
        raise AccountError("this account has no subscription")
    today = await db.fetch_one("dash_requests_since",
                               {"user_id": user_id, "since": start_of_day(now)})
    period = await db.fetch_one("dash_requests_since",
                                {"user_id": user_id, "since": sub["period_start"]})
    speed = await db.fetch_one("dash_speed_since",
                               {"user_id": user_id, "since": sub["period_start"]})
    keys = await db.fetch_all("dash_keys", {"user_id": user_id})
    midnight = start_of_day(now)
    return Overview(
        plan=sub["plan"], price_month=sub["price_month"], monthly_tokens=sub["monthly_tokens"],
        tokens_used=sub["tokens_used"], period_start=sub["period_start"],
        period_end=sub["period_end"], rpm=sub["rpm"], rpd=sub["rpd"],
        max_keys=sub["max_keys"], active_keys=len(keys),
        requests_today=today["requests"] if today else 0,
        requests_period=period["requests"] if period else 0,
        avg_ttft_ms=speed["ttft_ms"] if speed else None,
        avg_tokens_per_second=speed["tokens_per_second"] if speed else None,
        today=await token_counts(db, user_id, midnight, now + 1),
        yesterday=await token_counts(db, user_id, midnight - DAY, midnight),
        period=await token_counts(db, user_id, sub["period_start"], now + 1),
    )


async def daily_usage(db: Store, user_id: int, days: int = 30,
                      now: float | None = None) -> list[DayUsage]:
    """One entry per UTC day for the last `days` days (today last), zeros included."""
    now = time.time() if now is None else now
    first = start_of_day(now) - (days - 1) * DAY
    rows = await db.fetch_all("dash_daily_usage", {"user_id": user_id, "since": first})
    by_day = {int(r["day"]): r for r in rows}
    first_day = int(first // DAY)
    series = []
    for offset in range(days):
        number = first_day + offset
        row = by_day.get(number)
        series.append(DayUsage(
            day=date(1970, 1, 1) + timedelta(days=number),
            requests=row["requests"] if row else 0,
            input_tokens=(row["input_tokens"] or 0) if row else 0,
            output_tokens=(row["output_tokens"] or 0) if row else 0))
    return series


async def recent_requests(db: Store, user_id: int, limit: int = 20) -> list[dict[str, Any]]:
    rows = await db.fetch_all("dash_recent_requests", {"user_id": user_id, "limit": limit})
    return [dict(r) for r in rows]


async def list_keys(db: Store, user_id: int) -> list[dict[str, Any]]:
    return [dict(r) for r in await db.fetch_all("dash_keys", {"user_id": user_id})]


async def add_key(db: Store, user_id: int, email: str, name: str) -> NewKey:
    """A new key for the user within the plan's key limit (`AccountError` past it)."""
    name = " ".join(name.split())
    if len(name) > MAX_KEY_NAME:
        raise AccountError("keep the key name under %(max)d characters", max=MAX_KEY_NAME)
    return await create_key(db, email, name or "default")


async def revoke_own_key(db: Store, user_id: int, key_id: int) -> None:
    """Revoke one of the user's own keys; another user's key id is simply not found."""
    changed = await db.execute("dash_key_revoke",
                               {"id": key_id, "user_id": user_id, "now": time.time()})
    if not changed:
        raise AccountError("no such active key")


async def list_orders(db: Store, user_id: int, limit: int = 100) -> list[dict[str, Any]]:
    return [dict(r) for r in await db.fetch_all("dash_orders",
                                                 {"user_id": user_id, "limit": limit})]
