"""Sell plans through Alipay QR checkout and apply each paid order exactly once.

`Payments` creates orders (the amount comes from the plan in the database, never from the
browser), asks Alipay for the QR code, and turns a verified payment into a subscription
change in one transaction: the order's `pending -> paid` update and the subscription
change commit together, and only the one caller whose update changed the order row
changes the subscription, however many notifications or reconciliation rounds race.

A plan bought while another plan (or none) is active starts now: a new period with fresh
counters, paid for one month. The same plan bought again while it is paid extends
`paid_until` by a month from the current end; the monthly token periods keep rolling as
before, so every paid month has its own token allowance. When `paid_until` passes, the
reconciliation task moves the subscription back to the free plan.

A valid payment for an order that was already closed (Alipay may still charge a buyer who
scanned just before the close) is applied and logged, never thrown away.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import aiohttp
from aiohttp import web

from gateway.accounts.users import add_month
from gateway.billing.alipay import AlipayClient, AlipayError
from gateway.billing.alipay_sign import verify_notification
from gateway.config import AlipayConfig, Config
from gateway.events import UserChanged, UserEvents
from gateway.store.base import Store

log = logging.getLogger("llmapi.payments")

# ASCII digits only, whole string: `\d` would take other scripts' digits and `$` a newline.
AMOUNT = re.compile(r"[0-9]+(\.[0-9]{1,2})?")
CENT = Decimal("0.01")
REUSE_ORDER_FOR = 600.0  # seconds: a second click on "buy" shows the same open order
RECONCILE_BATCH = 100


class PaymentError(Exception):
    """A checkout the user or operator can understand (no such plan, payments off...).
    Like `SiteAccountError`: an English gettext `message` with `%(name)s` `params`."""

    def __init__(self, message: str, **params: Any) -> None:
        super().__init__(message % params if params else message)
        self.message = message
        self.params = params


@dataclass(frozen=True, slots=True)
class RefundResult:
    out_trade_no: str
    amount: str
    full: bool
    out_request_no: str


def parse_amount(text: str) -> Decimal | None:
    """Yuan as Alipay writes it ("9", "9.9", "9.90"); None for anything else."""
    if not AMOUNT.fullmatch(text):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def format_amount(price: str) -> str:
    """A plan price ("9", "9.9", "9.90") as the order amount with two decimals ("9.00")."""
    value = parse_amount(price)
    if value is None:
        raise PaymentError(f"plan price {price!r} is not an amount in yuan")
    return f"{value.quantize(CENT):.2f}"


def new_out_trade_no(now: float) -> str:
    """Unique, unguessable, within Alipay's 64 letters and digits: time + 48 random bits."""
    return "LL" + datetime.fromtimestamp(now, UTC).strftime("%Y%m%d%H%M%S") + \
        secrets.token_hex(6)


@dataclass(frozen=True, slots=True)
class Order:
    id: int
    out_trade_no: str
    user_id: int
    plan: str
    amount: str
    subject: str
    status: str
    qr_code: str | None
    trade_no: str | None
    created_at: float
    paid_at: float | None
    closed_at: float | None

    @property
    def final(self) -> bool:
        return self.status != "pending"

    def public(self) -> dict[str, Any]:
        """The JSON an owner sees."""
        return {"id": self.out_trade_no, "out_trade_no": self.out_trade_no,
                "plan": self.plan, "amount": self.amount, "currency": "CNY",
                "subject": self.subject, "status": self.status, "qr_code": self.qr_code,
                "created_at": self.created_at, "paid_at": self.paid_at,
                "closed_at": self.closed_at}


def _order(row: Any) -> Order:
    return Order(id=row["id"], out_trade_no=row["out_trade_no"], user_id=row["user_id"],
                 plan=row["plan"], amount=row["amount"], subject=row["subject"],
                 status=row["status"], qr_code=row["qr_code"], trade_no=row["trade_no"],
                 created_at=row["created_at"], paid_at=row["paid_at"],
                 closed_at=row["closed_at"])


@dataclass(frozen=True, slots=True)
class Applied:
    """The outcome of a verified payment: `changed` is True for the one call that paid."""

    changed: bool
    reason: str                 # paid | already paid | unknown order | wrong amount | ...
    user_id: int | None = None


class Payments:
    """Orders, Alipay calls, the paid transition, reconciliation and plan expiry."""

    def __init__(self, db: Store, config: AlipayConfig, client: AlipayClient | None,
                 events: UserEvents | None, http: aiohttp.ClientSession | None = None) -> None:
        self.db = db
        self.config = config
        self.client = client
        self.events = events  # told of every plan change (key cache and limits listen)
        self._http = http

    @classmethod
    async def open(cls, config: Config, db: Store, events: UserEvents | None) -> Payments:
        """The service, with an Alipay client (and its HTTP session) when configured."""
        if not config.alipay.enabled:
            return cls(db, config.alipay, None, events)
        # `[alipay] timeout` bounds one whole call, connecting included
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=config.alipay.timeout))
        try:
            client = AlipayClient(config.alipay, config.alipay_notify_url, http, config.source)
        except BaseException:
            await http.close()
            raise
        return cls(db, config.alipay, client, events, http)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    @property
    def enabled(self) -> bool:
        return self.client is not None

    # --- orders ---------------------------------------------------------------------

    async def checkout(self, user_id: int, plan_name: str,
                       now: float | None = None) -> Order:
        """An order for one month of `plan_name` with a QR code to pay it.

        The price is read from the plans table here; nothing the browser sends but the
        plan's name is used. An open order for the same plan and price is shown again
        instead of creating another.
        """
        if self.client is None:
            raise PaymentError("online payment is not set up on this server; "
                               "contact the operator to change your plan")
        now = time.time() if now is None else now
        plan = await self.db.fetch_one("plan_by_name", {"name": plan_name})
        if plan is None:
            raise PaymentError("there is no plan called \"%(plan)s\"", plan=plan_name)
        amount = format_amount(plan["price_month"])
        if Decimal(amount) <= 0:
            raise PaymentError("the %(plan)s plan is free: nothing to pay", plan=plan_name)
        sub = await self.db.fetch_one("subscription_by_user", {"user_id": user_id})
        if sub is not None and sub["plan"] == plan_name and sub["paid_until"] is None:
            raise PaymentError("you already have the %(plan)s plan without an end date",
                               plan=plan_name)
        found = await self.db.fetch_one("order_open_for_plan", {
            "user_id": user_id, "plan": plan_name, "amount": amount,
            "since": now - min(REUSE_ORDER_FOR, self.config.order_timeout / 2)})
        if found is not None:
            return _order(found)
        out_trade_no = new_out_trade_no(now)
        subject = f"llmapi {plan_name} plan, 1 month"
        await self.db.insert("order_insert", {
            "out_trade_no": out_trade_no, "user_id": user_id, "plan": plan_name,
            "amount": amount, "subject": subject, "now": now})
        try:
            qr_code = await self.client.precreate(
                out_trade_no, amount, subject, int(self.config.order_timeout // 60))
        except AlipayError as exc:
            log.warning("order %s: precreate failed, order closed: %s", out_trade_no, exc)
            await self.db.execute("order_close", {"out_trade_no": out_trade_no,
                                                  "now": time.time()})
            raise PaymentError("Alipay did not accept the order just now; "
                               "please try again in a minute") from None
        await self.db.execute("order_set_qr_code", {
            "out_trade_no": out_trade_no, "qr_code": qr_code, "now": time.time()})
        log.info("order %s: %s yuan for %s by user %s", out_trade_no, amount, plan_name,
                 user_id)
        return await self.order(out_trade_no)

    async def order(self, out_trade_no: str) -> Order:
        row = await self.db.fetch_one("order_by_out_trade_no", {"out_trade_no": out_trade_no})
        if row is None:
            raise PaymentError("no order %(order)s", order=out_trade_no)
        return _order(row)

    async def order_of_user(self, user_id: int, out_trade_no: str) -> Order | None:
        """The order if it belongs to this user (another user's order is not found)."""
        row = await self.db.fetch_one("order_of_user",
                                      {"out_trade_no": out_trade_no, "user_id": user_id})
        return _order(row) if row is not None else None

    async def subscription(self, user_id: int) -> dict[str, Any] | None:
        """The user's plan, period and paid-until date with the plan's figures."""
        row = await self.db.fetch_one("dash_plan_of_user", {"user_id": user_id})
        return dict(row) if row is not None else None

    # --- refunds ------------------------------------------------------------------------

    async def refund(self, out_trade_no: str, amount: str, reason: str,
                     actor_id: int | None, now: float | None = None) -> RefundResult:
        """Refund part or all of a paid order through Alipay.

        The refund row (with its `out_request_no`) is written before Alipay is called, so
        a crash or a lost answer leaves a `pending` row whose request number a retry reuses
        and Alipay never pays twice. A full refund marks the order `refunded` and ends the
        paid time it bought (the account returns to the free plan)."""
        if self.client is None:
            raise PaymentError("online payment is not set up on this server; "
                               "contact the operator to change your plan")
        now = time.time() if now is None else now
        order = await self.order(out_trade_no)
        if order.status != "paid":
            raise PaymentError("only a paid order can be refunded")
        value = parse_amount(amount.strip())
        if value is None or value <= 0:
            raise PaymentError("enter the amount to refund in yuan, like 9.90")
        done = await self.db.fetch_one("refund_total_of_order", {"out_trade_no": out_trade_no})
        already = Decimal(str(done["total"] if done else 0)).quantize(CENT)
        total = Decimal(order.amount)
        if already + value > total:
            raise PaymentError("at most ¥%(left)s of this order is left to refund",
                               left=f"{total - already:.2f}")
        request_no = f"{out_trade_no}R{secrets.token_hex(4)}"
        await self.db.insert("refund_insert", {
            "out_trade_no": out_trade_no, "out_request_no": request_no,
            "amount": f"{value:.2f}", "reason": reason[:256], "actor_id": actor_id,
            "now": now})
        try:
            answer = await self.client.refund(out_trade_no, f"{value:.2f}", request_no, reason)
        except AlipayError as exc:
            await self.db.execute("refund_mark_failed",
                                  {"out_request_no": request_no, "error": str(exc)})
            log.warning("order %s: refund of %s refused: %s", out_trade_no, value, exc)
            raise PaymentError("Alipay refused the refund: %(reason)s",
                               reason=str(exc)) from None
        full = already + value == total
        async with self.db.transaction() as tx:
            await tx.execute("refund_mark_done", {"out_request_no": request_no,
                                                  "now": time.time()})
            if full:
                await tx.execute("order_mark_refunded", {"out_trade_no": out_trade_no,
                                                         "now": now})
                await tx.execute("subscription_end_paid_now", {
                    "user_id": order.user_id, "plan": order.plan, "now": now})
        if full and self.events is not None:  # the free plan's limits apply at once
            await self.events.publish(UserChanged(order.user_id))
        log.info("order %s: refunded %s yuan (%s in all)", out_trade_no, value,
                 answer.refund_fee)
        return RefundResult(out_trade_no, f"{value:.2f}", full, request_no)

    async def refunds(self, out_trade_no: str) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.db.fetch_all("refunds_of_order",
                                                         {"out_trade_no": out_trade_no})]

    # --- the paid transition ----------------------------------------------------------

    async def apply_payment(self, out_trade_no: str, trade_no: str, total_amount: str,
                            source: str, now: float | None = None) -> Applied:
        """Mark the order paid and extend the subscription, in one transaction, once.

        `total_amount` must equal the order's amount exactly. Every other caller for the
        same order (duplicate notifications, a reconciliation round) finds it paid and
        changes nothing.
        """
        now = time.time() if now is None else now
        paid = parse_amount(total_amount)
        started: tuple[float, float] | None = None
        async with self.db.transaction() as tx:
            row = await tx.fetch_one("order_by_out_trade_no", {"out_trade_no": out_trade_no})
            if row is None:
                return Applied(False, "unknown order")
            order = _order(row)
            if paid is None or paid != Decimal(order.amount):
                return Applied(False, "wrong amount", order.user_id)
            if order.status in ("paid", "refunded"):
                return Applied(False, f"already {order.status}", order.user_id)
            changed = await tx.execute("order_mark_paid", {
                "out_trade_no": out_trade_no, "trade_no": trade_no, "now": now})
            if changed != 1:
                return Applied(False, "already paid", order.user_id)
            started = await self._extend(tx, order, now)
        if order.status == "closed":
            log.warning("order %s was closed but has been paid (%s): applied", out_trade_no,
                        source)
        log.info("order %s paid (%s, trade %s): user %s on %s", out_trade_no, source,
                 trade_no, order.user_id, order.plan)
        if self.events is not None:  # the new plan counts from the next request on
            await self.events.publish(UserChanged(order.user_id, period=started))
        return Applied(True, "paid", order.user_id)

    @staticmethod
    async def _extend(tx: Any, order: Order, now: float) -> tuple[float, float] | None:
        """Give the user the order's month; returns the new period when one started."""
        sub = await tx.fetch_one("subscription_by_user", {"user_id": order.user_id})
        if sub is None:  # accounts made before subscriptions existed
            await tx.insert("subscription_insert", {
                "user_id": order.user_id, "plan": order.plan, "period_start": now,
                "period_end": add_month(now), "now": now})
            sub = await tx.fetch_one("subscription_by_user", {"user_id": order.user_id})
        paid_until = sub["paid_until"]
        if sub["plan"] == order.plan and paid_until is not None and paid_until > now:
            await tx.execute("subscription_extend_paid_until", {
                "user_id": order.user_id, "paid_until": add_month(paid_until), "now": now})
            return None
        if sub["plan"] == order.plan and paid_until is None:
            # Granted by the operator without an end date (checkout refuses this case, so
            # the operator changed the plan while the order was open): keep the grant.
            log.warning("order %s: user %s already has %s without an end date",
                        order.out_trade_no, order.user_id, order.plan)
            await tx.execute("subscription_set_plan", {
                "user_id": order.user_id, "plan": order.plan, "now": now})
            return None
        period_end = add_month(now)
        await tx.execute("subscription_start_paid_period", {
            "user_id": order.user_id, "plan": order.plan, "now": now,
            "period_end": period_end})
        return now, period_end

    # --- Alipay's notification --------------------------------------------------------

    async def handle_notification(self, params: Mapping[str, str]) -> bool:
        """Check and apply one asynchronous notification; True means answer `success`.

        Invalid notifications (signature, app_id, unknown order, amount) change nothing
        and are logged. A valid one for a payment that is not complete, or for an order
        already paid, is acknowledged without change.
        """
        no = params.get("out_trade_no", "")
        if self.client is None:
            log.warning("notify for %r refused: Alipay is not configured", no)
            return False
        if not verify_notification(params, self.client.alipay_public_key):
            log.warning("notify for %r refused: signature missing or wrong", no)
            return False
        if params.get("app_id") != self.config.app_id:
            log.warning("notify for %r refused: app_id %r is not ours", no,
                        params.get("app_id"))
            return False
        status = params.get("trade_status", "")
        if status not in ("TRADE_SUCCESS", "TRADE_FINISHED"):
            known = await self.db.fetch_one("order_by_out_trade_no", {"out_trade_no": no})
            if known is None:
                log.warning("notify for %r refused: unknown order", no)
                return False
            log.info("notify for %s: trade_status %s, nothing to do", no, status)
            return True
        outcome = await self.apply_payment(no, params.get("trade_no", ""),
                                           params.get("total_amount", ""), "notify")
        if outcome.changed or outcome.reason.startswith("already"):
            return True
        log.warning("notify for %r refused: %s (total_amount %r)", no, outcome.reason,
                    params.get("total_amount"))
        return False

    # --- reconciliation and expiry ----------------------------------------------------

    async def reconcile(self, now: float | None = None) -> dict[str, int]:
        """One round: expire ended paid plans, ask Alipay about orders pending longer than
        `reconcile_after`, apply the paid ones, close those older than `order_timeout`."""
        now = time.time() if now is None else now
        counts = {"expired": await self.expire_subscriptions(now), "paid": 0, "closed": 0,
                  "open": 0}
        rows = await self.db.fetch_all("orders_pending_since", {
            "before": now - self.config.reconcile_after, "limit": RECONCILE_BATCH})
        for row in rows:
            order = _order(row)
            try:
                counts[await self._reconcile_order(order, now)] += 1
            except AlipayError as exc:
                log.warning("order %s: reconciliation will retry: %s", order.out_trade_no,
                            exc)
        return counts

    async def _reconcile_order(self, order: Order, now: float) -> str:
        """paid, closed, or open (still waiting, or paid at Alipay but not applicable)."""
        expired = now - order.created_at >= self.config.order_timeout
        if self.client is None:  # payments were switched off: only close what expired
            if expired:
                await self.db.execute("order_close", {"out_trade_no": order.out_trade_no,
                                                      "now": now})
                return "closed"
            return "open"
        trade = await self.client.query(order.out_trade_no)
        if trade.paid:
            outcome = await self.apply_payment(order.out_trade_no, trade.trade_no,
                                               trade.total_amount, "query", now)
            if not outcome.changed:
                log.warning("order %s: Alipay says paid but not applied: %s",
                            order.out_trade_no, outcome.reason)
            return "paid" if outcome.changed else "open"
        if not expired:
            return "open"
        if not await self.client.close(order.out_trade_no):
            return "open"  # paid meanwhile: the next round's query applies it
        await self.db.execute("order_close", {"out_trade_no": order.out_trade_no, "now": now})
        log.info("order %s closed unpaid after %.0f s", order.out_trade_no,
                 now - order.created_at)
        return "closed"

    async def expire_subscriptions(self, now: float | None = None) -> int:
        """Move subscriptions whose paid time is over back to the free plan."""
        now = time.time() if now is None else now
        rows = await self.db.fetch_all("subscriptions_expired", {"now": now})
        expired = 0
        for row in rows:
            changed = await self.db.execute("subscription_expire",
                                            {"user_id": row["user_id"], "now": now})
            expired += changed
            log.info("user %s: plan %s ended (paid until %s); now on free", row["user_id"],
                     row["plan"], row["paid_until"])
            if changed and self.events is not None:
                await self.events.publish(UserChanged(row["user_id"]))
        return expired


PAYMENTS = web.AppKey("payments", Payments)
"""Orders, Alipay and the reconciler (app.py: `payments`)."""
