"""The operator's money pages: orders with refunds, the margin, CSV exports, one customer."""

from __future__ import annotations

import csv
import io
import math
from datetime import UTC, date, datetime, timedelta

from aiohttp import web

from gateway.accounts.users import AccountError
from gateway.billing.payments import PAYMENTS, PaymentError
from gateway.config import CONFIG
from gateway.reports import admin, dashboard, margin
from web.guards import require_admin
from web.i18n import _, translated
from web.responses import client_ip, db_of, flash, form_data, int_param, redirect, render

PER_PAGE = 50
EPOCH = date(1970, 1, 1)
ORDER_STATUSES = ("pending", "paid", "refunded", "closed")


async def orders_page(request: web.Request) -> web.Response:
    await require_admin(request)
    status = request.query.get("status", "")
    status = status if status in ORDER_STATUSES else ""
    db = db_of(request)
    count = await db.fetch_one("admin_orders_count", {"status": status})
    pages = max(1, math.ceil((count["n"] if count else 0) / PER_PAGE))
    page = int_param(request.query.get("page"), 1, 1, pages)
    rows = await db.fetch_all("admin_orders_page", {
        "status": status, "limit": PER_PAGE, "offset": (page - 1) * PER_PAGE})
    return await render(request, "pages/admin/orders.html", {
        "orders": [dict(r) for r in rows], "status": status, "page": page, "pages": pages,
        "error": ""}, forms=True)


async def refund_order(request: web.Request) -> web.Response:
    """POST /admin/orders/{out_trade_no}/refund: amount, reason, confirm=1 (the checkbox is
    the confirmation without JavaScript; with it, a dialog asks too)."""
    actor = await require_admin(request)
    form = await form_data(request)
    out_trade_no = request.match_info["out_trade_no"]
    payments = request.app.get(PAYMENTS)
    if form.get("confirm") != "1":
        await flash(request, _("Not refunded: tick Confirm first."))
        redirect("/admin/orders")
    if payments is None:
        raise web.HTTPServiceUnavailable(reason=_("the gateway is starting"))
    try:
        result = await payments.refund(out_trade_no, form.get("amount", ""),
                                       form.get("reason", ""), actor.id)
    except PaymentError as exc:
        await admin.audit(db_of(request), actor, "order.refund_failed", out_trade_no,
                          str(exc), client_ip(request))
        await flash(request, _("Not refunded: %(error)s", error=translated(exc)))
        redirect("/admin/orders")
    await admin.audit(db_of(request), actor, "order.refund", out_trade_no,
                      f"¥{result.amount}{' (full)' if result.full else ''} "
                      f"{form.get('reason', '')[:100]}".strip(), client_ip(request))
    await flash(request, _("Refunded ¥%(amount)s of order %(no)s.", amount=result.amount,
                           no=out_trade_no))
    redirect("/admin/orders")


def _csv(name: str, header: list[str], rows: list[list[object]]) -> web.Response:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    stamp = datetime.now(UTC).strftime("%Y%m%d")
    return web.Response(body=buffer.getvalue().encode("utf-8-sig"),  # Excel reads UTF-8
                        content_type="text/csv", charset="utf-8", headers={
                            "Content-Disposition": f'attachment; filename="{name}-{stamp}.csv"',
                            "Cache-Control": "no-store"})


def _iso(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


async def export_orders(request: web.Request) -> web.Response:
    await require_admin(request)
    rows = await db_of(request).fetch_all("admin_orders_page", {
        "status": "", "limit": 1_000_000, "offset": 0})
    return _csv("orders", ["out_trade_no", "trade_no", "user_email", "plan", "amount_cny",
                           "refunded_cny", "status", "created_at", "paid_at"],
                [[r["out_trade_no"], r["trade_no"] or "", r["user_email"], r["plan"],
                  r["amount"], f"{r['refunded']:.2f}", r["status"], _iso(r["created_at"]),
                  _iso(r["paid_at"])] for r in rows])


async def export_usage(request: web.Request) -> web.Response:
    """Usage per user per UTC day over the last `days` days (default 30, at most 366)."""
    await require_admin(request)
    days = int_param(request.query.get("days"), 30, 1, 366)
    since = datetime.now(UTC).timestamp() - days * 86400
    rows = await db_of(request).fetch_all("admin_usage_export", {"since": since})
    return _csv("usage", ["day", "user_email", "requests", "input_tokens", "output_tokens",
                          "thinking_tokens", "cache_read_tokens", "cache_creation_tokens",
                          "cost", "currency"],
                [[(EPOCH + timedelta(days=int(r["day"]))).isoformat(), r["user_email"] or "",
                  r["requests"], r["input_tokens"], r["output_tokens"],
                  r["thinking_tokens"], r["cache_read_tokens"],
                  r["cache_creation_tokens"], f"{r['cost']:.6f}", r["currency"]]
                 for r in rows])


MARGIN_DAYS = (7, 30, 90, 365)


async def _margin(request: web.Request) -> tuple[int, margin.MarginReport]:
    days = int_param(request.query.get("days"), 30, 1, 366)
    report = await margin.margin_report(db_of(request),
                                        dict(request.app[CONFIG].site.exchange_rates), days)
    return days, report


async def margin_page(request: web.Request) -> web.Response:
    """/admin/margin?days=N: revenue against upstream cost by plan and by day."""
    await require_admin(request)
    days, report = await _margin(request)
    return await render(request, "pages/admin/margin.html", {
        "report": report, "days": days, "choices": sorted({*MARGIN_DAYS, days}),
        "yuan": margin.yuan_text})


async def export_margin(request: web.Request) -> web.Response:
    """/admin/export/margin.csv?by=day|plan&days=N: the page's table, plus a total row."""
    await require_admin(request)
    by = "plan" if request.query.get("by") == "plan" else "day"
    _days, report = await _margin(request)
    lines = report.plans if by == "plan" else list(reversed(report.days))
    header = [h.format(by=by) for h in margin.CSV_HEADER]
    return _csv(f"margin-by-{by}", header, margin.csv_rows([*lines, report.total]))


async def user_page(request: web.Request) -> web.Response:
    """/admin/users/{user_id}: one customer's keys, usage, orders and audit entries."""
    await require_admin(request)
    db = db_of(request)
    try:
        user_id = int(request.match_info["user_id"])
        row = await admin.user_row(db, user_id)
    except (ValueError, AccountError):
        raise web.HTTPNotFound(reason=_("No such user")) from None
    usage = await dashboard.daily_usage(db, user_id, 30)
    return await render(request, "pages/admin/user.html", {
        "u": row, "keys": await dashboard.list_keys(db, user_id),
        "orders": await dashboard.list_orders(db, user_id),
        "usage": [d for d in reversed(usage) if d.requests],
        "audit": [dict(r) for r in await db.fetch_all(
            "audit_of_target", {"prefix": f"user:{user_id} %"})]}, forms=True)
