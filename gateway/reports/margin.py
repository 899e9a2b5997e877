"""The operator's margin: revenue from paid orders (CNY) against upstream cost, by day and plan.

Revenue is every order paid in the window on the UTC day it was paid, under its plan;
refunds Alipay confirmed are subtracted on the day they were confirmed, under the refunded
order's plan. Cost is what `usage_logs` recorded per request from `[providers.pricing]`,
in each provider's `currency`, converted to yuan with the operator's `[site]
exchange_rates` (the page states every rate it used). A cost in a currency without a rate
is never guessed: it stays out of the sums and the page lists it, so a missing rate shows
instead of flattering the margin. Money is summed as `Decimal`; the per-request costs are
floats (fractions of a fen) and are rounded to 1/10000 yuan when converted.

The plan of a request is the one stamped on its usage row when it was written (migration
0014); older rows count under the user's plan of today and are counted in `plan_guessed`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from gateway.store.base import Store

DAY = 86400
SITE_CURRENCY = "CNY"
CENT = Decimal("0.01")
COST_STEP = Decimal("0.0001")
EPOCH = date(1970, 1, 1)


@dataclass(slots=True)
class MarginLine:
    """One day, one plan, or the total."""

    label: str
    orders: int = 0
    revenue: Decimal = Decimal(0)      # paid orders, yuan
    refunds: Decimal = Decimal(0)      # refunds paid out, yuan
    cost: Decimal = Decimal(0)         # upstream cost converted to yuan
    requests: int = 0
    unconverted: dict[str, float] = field(default_factory=dict)  # currency -> cost, no rate

    @property
    def net(self) -> Decimal:
        return self.revenue - self.refunds

    @property
    def margin(self) -> Decimal:
        return self.net - self.cost

    @property
    def margin_percent(self) -> Decimal | None:
        """Margin as a share of net revenue; None without revenue (no share to state)."""
        if self.net <= 0:
            return None
        return (self.margin * 100 / self.net).quantize(Decimal("0.1"), ROUND_HALF_UP)

    def add(self, other: MarginLine) -> None:
        self.orders += other.orders
        self.revenue += other.revenue
        self.refunds += other.refunds
        self.cost += other.cost
        self.requests += other.requests
        for currency, cost in other.unconverted.items():
            self.unconverted[currency] = self.unconverted.get(currency, 0.0) + cost


@dataclass(frozen=True, slots=True)
class MarginReport:
    first: date
    last: date
    days: list[MarginLine]               # newest first, every day of the window
    plans: list[MarginLine]              # by net revenue, then cost
    total: MarginLine
    rates: dict[str, Decimal]            # every currency seen with a rate: yuan per unit
    missing_rates: dict[str, float]      # currency -> cost left out (no rate configured)
    plan_guessed: int                    # requests counted under the user's plan of today


def yuan(text: Any) -> Decimal:
    """An order or refund amount (a decimal string) as yuan; a malformed one is 0 — it is
    the payment module's bug, and one bad row must not take the operator's page down."""
    try:
        value = Decimal(str(text))
    except InvalidOperation:
        return Decimal(0)
    return value if value.is_finite() else Decimal(0)


def to_yuan(cost: float, currency: str, rates: dict[str, Decimal]) -> Decimal | None:
    """`cost` in `currency` as yuan, or None when the operator set no rate for it."""
    code = currency.upper()
    rate = Decimal(1) if code == SITE_CURRENCY else rates.get(code)
    if rate is None:
        return None
    return (Decimal(repr(float(cost))) * rate).quantize(COST_STEP, ROUND_HALF_UP)


async def margin_report(db: Store, exchange_rates: dict[str, float], days: int = 30,
                        now: float | None = None) -> MarginReport:
    """Revenue, refunds, cost and margin per UTC day and per plan over the last `days` days
    (today included)."""
    now = time.time() if now is None else now
    first_day = int(now // DAY) - (days - 1)
    since = first_day * DAY
    rates = {code.upper(): Decimal(repr(float(rate))) for code, rate in exchange_rates.items()}
    by_day: dict[int, MarginLine] = {}
    by_plan: dict[str, MarginLine] = {}

    def line(day: int, plan: str) -> tuple[MarginLine, MarginLine]:
        d = by_day.setdefault(day, MarginLine((EPOCH + timedelta(days=day)).isoformat()))
        p = by_plan.setdefault(plan, MarginLine(plan))
        return d, p

    for order in await db.fetch_all("margin_orders_paid", {"since": since}):
        for target in line(int(order["paid_at"] // DAY), order["plan"]):
            target.orders += 1
            target.revenue += yuan(order["amount"])
    for refund in await db.fetch_all("margin_refunds_done", {"since": since}):
        for target in line(int(refund["done_at"] // DAY), refund["plan"]):
            target.refunds += yuan(refund["amount"])
    used_rates: dict[str, Decimal] = {}
    missing: dict[str, float] = {}
    guessed = 0
    for row in await db.fetch_all("margin_cost_by_day_plan", {"since": since}):
        cost = float(row["cost"] or 0.0)
        currency = (row["currency"] or "").upper()
        requests = int(row["requests"])
        if row["plan_guessed"]:
            guessed += requests
        converted = to_yuan(cost, currency, rates) if cost else Decimal(0)
        for target in line(int(row["day"]), row["billed_plan"] or "?"):
            target.requests += requests
            if converted is None:
                target.unconverted[currency or "?"] = (
                    target.unconverted.get(currency or "?", 0.0) + cost)
            else:
                target.cost += converted
        if cost and converted is None:
            missing[currency or "?"] = missing.get(currency or "?", 0.0) + cost
        elif cost and currency != SITE_CURRENCY:
            used_rates[currency] = rates[currency]
    last_day = int(now // DAY)
    series = [by_day.get(n) or MarginLine((EPOCH + timedelta(days=n)).isoformat())
              for n in range(last_day, first_day - 1, -1)]
    total = MarginLine("total")
    for entry in series:
        total.add(entry)
    plans = sorted(by_plan.values(), key=lambda p: (-p.net, -p.cost, p.label))
    return MarginReport(
        first=EPOCH + timedelta(days=first_day), last=EPOCH + timedelta(days=last_day),
        days=series, plans=plans, total=total, rates=dict(sorted(used_rates.items())),
        missing_rates=dict(sorted(missing.items())), plan_guessed=guessed)


def line_json(line: MarginLine) -> dict[str, Any]:
    """One line for the JSON API: amounts as decimal strings (never floats), margin too."""
    percent = line.margin_percent
    return {"label": line.label, "orders": line.orders, "revenue": str(line.revenue),
            "refunds": str(line.refunds), "net_revenue": str(line.net),
            "cost": str(line.cost), "margin": str(line.margin),
            "margin_percent": None if percent is None else str(percent),
            "requests": line.requests, "cost_without_rate": dict(line.unconverted)}


def report_json(report: MarginReport) -> dict[str, Any]:
    return {"first_day": report.first.isoformat(), "last_day": report.last.isoformat(),
            "currency": SITE_CURRENCY,
            "exchange_rates": {code: str(rate) for code, rate in report.rates.items()},
            "missing_rates": report.missing_rates, "plan_guessed": report.plan_guessed,
            "total": line_json(report.total), "plans": [line_json(p) for p in report.plans],
            "days": [line_json(d) for d in report.days]}


def yuan_text(value: Decimal) -> str:
    """Yuan for people: thousands separated, two decimals rounded half up (Python's own
    Decimal formatting rounds half to even: 137.325 would show as 137.32)."""
    return f"{value.quantize(CENT, ROUND_HALF_UP):,}"


def csv_rows(lines: list[MarginLine]) -> list[list[object]]:
    """The CSV body (amounts in yuan, plain decimal strings a spreadsheet reads)."""
    rows: list[list[object]] = []
    for entry in lines:
        percent = entry.margin_percent
        rows.append([
            entry.label, str(entry.orders), f"{entry.revenue.quantize(CENT)}",
            f"{entry.refunds.quantize(CENT)}", f"{entry.net.quantize(CENT)}",
            f"{entry.cost.quantize(COST_STEP)}", f"{entry.margin.quantize(COST_STEP)}",
            "" if percent is None else str(percent), str(entry.requests),
            " ".join(f"{cost:.6f} {currency}"
                     for currency, cost in sorted(entry.unconverted.items()))])
    return rows


CSV_HEADER = ["{by}", "orders", "revenue_cny", "refunds_cny", "net_revenue_cny", "cost_cny",
              "margin_cny", "margin_percent", "requests", "cost_without_rate"]
