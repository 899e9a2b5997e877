"""The operator's panel: platform figures, user search, plan and status changes, cost report.

Every change an admin makes goes through here and is written to `audit_log` (who, what,
when, from which address) in the same breath, so web/ cannot forget to audit.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from gateway.accounts.mail import purge_expired
from gateway.accounts.users import AccountError, set_plan, set_user_status
from gateway.store.base import Store

DAY = 86400
PAGE_SIZE = 25
STATUSES = ("active", "pending", "suspended", "deleted")
SETTABLE_STATUSES = ("active", "suspended")


class Actor(Protocol):
    """Who did something, as the audit log records it (the site's signed-in user)."""

    @property
    def id(self) -> int: ...

    @property
    def email(self) -> str: ...


def month_start(now: float) -> float:
    moment = datetime.fromtimestamp(now, UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


@dataclass(frozen=True, slots=True)
class PlatformStats:
    users: int
    new_today: int
    active_7d: int
    requests_month: int
    failed_month: int
    tokens_month: int
    cost_month: dict[str, float]      # currency -> provider cost
    revenue_month: Decimal            # paid orders, site currency
    paid_orders_month: int
    ingress_month: dict[str, int] = field(default_factory=dict)  # client API -> requests


async def platform_stats(db: Store, now: float | None = None) -> PlatformStats:
    now = time.time() if now is None else now
    since_month = month_start(now)
    users = await db.fetch_one("admin_count_users", {"today": now - now % DAY})
    active = await db.fetch_one("admin_active_users_since", {"since": now - 7 * DAY})
    usage = await db.fetch_one("admin_usage_since", {"since": since_month})
    costs = await db.fetch_all("admin_cost_since", {"since": since_month})
    orders = await db.fetch_all("admin_paid_orders_since", {"since": since_month})
    ingress = await db.fetch_all("admin_requests_by_ingress", {"since": since_month})
    revenue = Decimal(0)
    for order in orders:
        try:
            revenue += Decimal(order["amount"])
        except InvalidOperation:
            continue  # a malformed amount is the payment module's bug, not a crash here
    return PlatformStats(
        users=users["users"] if users else 0,
        new_today=(users["new_today"] or 0) if users else 0,
        active_7d=active["users"] if active else 0,
        requests_month=usage["requests"] if usage else 0,
        failed_month=(usage["failed"] or 0) if usage else 0,
        tokens_month=(usage["tokens"] or 0) if usage else 0,
        cost_month={r["currency"] or "?": float(r["cost"]) for r in costs},
        revenue_month=revenue, paid_orders_month=len(orders),
        ingress_month={r["ingress"]: r["requests"] for r in ingress})


@dataclass(frozen=True, slots=True)
class UserFilter:
    query: str = ""
    plan: str = ""
    status: str = ""
    page: int = 1

    def like_pattern(self) -> str:
        q = self.query.strip().lower()
        if not q:
            return ""
        escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return f"%{escaped}%"


@dataclass(frozen=True, slots=True)
class UserPage:
    users: list[dict[str, Any]]
    total: int
    page: int
    pages: int
    filter: UserFilter


async def search_users(db: Store, f: UserFilter, per_page: int = PAGE_SIZE) -> UserPage:
    status = f.status if f.status in STATUSES else ""
    params = {"pattern": f.like_pattern(), "plan": f.plan.strip(), "status": status}
    count = await db.fetch_one("admin_users_count", params)
    total = count["total"] if count else 0
    pages = max(1, -(-total // per_page))
    page = min(max(1, f.page), pages)
    rows = await db.fetch_all("admin_users_page", {**params, "limit": per_page,
                                                   "offset": (page - 1) * per_page})
    return UserPage(users=[dict(r) for r in rows], total=total, page=page, pages=pages,
                    filter=UserFilter(f.query, params["plan"], status, page))


async def user_row(db: Store, user_id: int) -> dict[str, Any]:
    row = await db.fetch_one("admin_user_row", {"id": user_id})
    if row is None:
        raise AccountError("no user with id %(id)d", id=user_id)
    return dict(row)


async def audit(db: Store, actor: Actor | None, action: str, target: str,
                detail: str = "", ip: str = "") -> None:
    await record_audit(db, actor.id if actor else None, actor.email if actor else "system",
                       action, target, detail, ip)


async def record_audit(db: Store, actor_id: int | None, actor_name: str, action: str,
                       target: str, detail: str = "", ip: str = "") -> None:
    """One audit entry; `actor_name` is an admin's e-mail, "system", or "cli:<OS user>"."""
    await db.insert("audit_insert", {
        "actor_id": actor_id, "actor_email": actor_name, "action": action, "target": target,
        "detail": detail, "ip": ip, "now": time.time()})


def user_target(user_id: int, email: str | None) -> str:
    """How the log names a user: "user:<id> (<e-mail>)", which /admin/users/<id> looks up.
    Without the address (a deleted account's is erased) it is "user:<id> (deleted)"."""
    return f"user:{user_id} ({email})" if email else f"user:{user_id} (deleted)"


async def change_status(db: Store, actor: Actor, user_id: int, status: str,
                        ip: str) -> dict[str, Any]:
    """Suspend or re-activate a user (their keys stop or start working within a second)."""
    if status not in SETTABLE_STATUSES:
        raise AccountError("status must be one of %(statuses)s",
                           statuses=", ".join(SETTABLE_STATUSES))
    user = await user_row(db, user_id)
    if user["id"] == actor.id:
        raise AccountError("you cannot change the status of your own account")
    if user["status"] == "deleted":
        raise AccountError("this account was deleted by its owner")
    if user["status"] != status:
        await set_user_status(db, user["email"], status)
        await audit(db, actor, "user.suspend" if status == "suspended" else "user.activate",
                    _target(user), f"status {user['status']} -> {status}", ip)
    return await user_row(db, user_id)


async def change_plan(db: Store, actor: Actor, user_id: int, plan: str,
                      ip: str) -> dict[str, Any]:
    user = await user_row(db, user_id)
    if user["status"] == "deleted":
        raise AccountError("this account was deleted by its owner")
    if user["plan"] != plan:
        await set_plan(db, user["email"], plan)
        await audit(db, actor, "user.plan", _target(user), f"plan {user['plan']} -> {plan}", ip)
    return await user_row(db, user_id)


def _target(user: dict[str, Any]) -> str:
    return user_target(user["id"], user["email"])


@dataclass(slots=True)
class CostDay:
    day: date
    by_provider: dict[str, float] = field(default_factory=dict)
    requests: int = 0
    tokens: int = 0


@dataclass(frozen=True, slots=True)
class CostReport:
    days: list[CostDay]                 # newest first, every day present
    providers: list[str]                # column order
    totals: dict[str, float]            # provider -> cost over the period
    currencies: dict[str, str]          # provider -> currency ("" when mixed or unknown)
    requests: int
    tokens: int


async def cost_report(db: Store, providers: list[str], days: int = 30,
                      now: float | None = None) -> CostReport:
    """Provider cost per UTC day over the last `days` days (configured providers first)."""
    now = time.time() if now is None else now
    first = now - now % DAY - (days - 1) * DAY
    rows = await db.fetch_all("admin_cost_by_provider_day", {"since": first})
    names = list(providers)
    by_day: dict[int, CostDay] = {}
    totals: dict[str, float] = defaultdict(float)
    currencies: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        name = r["provider"] or "(none)"
        if name not in names:
            names.append(name)
        number = int(r["day"])
        entry = by_day.setdefault(number, CostDay(_day(number)))
        entry.by_provider[name] = entry.by_provider.get(name, 0.0) + float(r["cost"] or 0)
        entry.requests += r["requests"]
        entry.tokens += (r["input_tokens"] or 0) + (r["output_tokens"] or 0)
        totals[name] += float(r["cost"] or 0)
        if r["currency"]:
            currencies[name].add(r["currency"])
    first_day = int(first // DAY)
    series = [by_day.get(n) or CostDay(_day(n)) for n in range(first_day + days - 1,
                                                                first_day - 1, -1)]
    return CostReport(
        days=series, providers=names, totals={n: totals.get(n, 0.0) for n in names},
        currencies={n: next(iter(c)) if len(c) == 1 else "" for n, c in currencies.items()},
        requests=sum(d.requests for d in series), tokens=sum(d.tokens for d in series))


def _day(number: int) -> date:
    return date(1970, 1, 1) + timedelta(days=number)


async def outbox(db: Store, limit: int = 50) -> list[dict[str, Any]]:
    """The newest mail; codes that expired are purged first, never shown."""
    await purge_expired(db)
    return [dict(r) for r in await db.fetch_all("mail_recent", {"limit": limit})]


async def outbox_message(db: Store, message_id: int) -> dict[str, Any] | None:
    await purge_expired(db)
    row = await db.fetch_one("mail_by_id", {"id": message_id})
    return dict(row) if row else None


def _like(text: str) -> str:
    """A case-insensitive substring pattern with LIKE's own characters escaped."""
    q = text.strip().lower()
    if not q:
        return ""
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """The audit log's filters; empty means any. Dates are UTC days, both ends included."""

    actor: str = ""
    action: str = ""
    target: str = ""
    since: date | None = None
    until: date | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> AuditFilter:
        """?actor=&action=&target=&from=YYYY-MM-DD&to=YYYY-MM-DD (page and JSON twin)."""
        return cls(actor=query.get("actor", "")[:200], action=query.get("action", "")[:100],
                   target=query.get("target", "")[:200], since=parse_day(query.get("from")),
                   until=parse_day(query.get("to")))

    def params(self) -> dict[str, Any]:
        start = (datetime.combine(self.since, datetime.min.time(), UTC).timestamp()
                 if self.since else 0.0)
        end = (datetime.combine(self.until + timedelta(days=1), datetime.min.time(),
                                UTC).timestamp() if self.until else 1e18)
        return {"actor": _like(self.actor), "action": self.action.strip(),
                "target": _like(self.target), "since": start, "until": end}

    def query(self) -> dict[str, str]:
        """The filter as URL parameters (for page links), empty ones left out."""
        values = {"actor": self.actor.strip(), "action": self.action.strip(),
                  "target": self.target.strip(),
                  "from": self.since.isoformat() if self.since else "",
                  "to": self.until.isoformat() if self.until else ""}
        return {k: v for k, v in values.items() if v}

    @property
    def active(self) -> bool:
        return bool(self.query())


def parse_day(text: str | None) -> date | None:
    """`2026-12-01` as a date; anything else (empty, a typo) as no bound."""
    try:
        return date.fromisoformat((text or "").strip()) if text and text.strip() else None
    except ValueError:
        return None


async def audit_entries(db: Store, page: int = 1, per_page: int = 50,
                        f: AuditFilter | None = None,
                        ) -> tuple[list[dict[str, Any]], int, int]:
    """(entries, page, pages), newest first, those matching `f`."""
    params = (f or AuditFilter()).params()
    count = await db.fetch_one("audit_count", params)
    total = count["total"] if count else 0
    pages = max(1, -(-total // per_page))
    page = min(max(1, page), pages)
    rows = await db.fetch_all("audit_recent", {**params, "limit": per_page,
                                               "offset": (page - 1) * per_page})
    return [dict(r) for r in rows], page, pages


async def audit_actions(db: Store) -> list[str]:
    return [r["action"] for r in await db.fetch_all("audit_actions")]
