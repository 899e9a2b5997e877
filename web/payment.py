"""Billing pages, the Alipay QR checkout page, /api/payment/* and Alipay's notify callback."""

from __future__ import annotations

from typing import Any

import segno
from aiohttp import web
from markupsafe import Markup

from gateway.billing.payments import PAYMENTS, Order, PaymentError, Payments
from gateway.config import CONFIG
from gateway.errors import ApiError
from gateway.reports import catalog, savings
from web.api import reply
from web.guards import api_user, require_user
from web.i18n import N_, _, translated
from web.responses import NO_STORE, db_of, form_data, is_htmx, redirect, render

POLL_EVERY = "2s"


def payments_of(request: web.Request) -> Payments:
    payments = request.app.get(PAYMENTS)
    if payments is None:
        raise web.HTTPServiceUnavailable(reason=N_("the gateway is starting"))
    return payments


def qr_svg(text: str, title: str) -> Markup:
    """The QR code as inline SVG, drawn here (no image service sees the payment link)."""
    qr = segno.make(text, error="m")
    svg = qr.svg_inline(scale=5, border=4, title=title, svgclass="qr", dark="#111",
                        light="#fff")
    return Markup(svg)  # segno escapes the title; the rest is numbers and path data


async def _billing_context(request: web.Request, user_id: int) -> dict[str, Any]:
    payments = payments_of(request)
    plans = await catalog.plans(db_of(request))
    chosen = request.query.get("plan", "")
    return {
        "subscription": await payments.subscription(user_id),
        "plans": [p for p in plans if p["price_month"] != "0"],
        "payments_enabled": payments.enabled,
        "recommended": savings.recommended(plans, request.app[CONFIG].site.recommended_plan),
        "chosen": chosen if any(p["name"] == chosen for p in plans) else "",
        "error": "",
    }


async def billing_page(request: web.Request) -> web.Response:
    user = await require_user(request)
    return await render(request, "pages/billing.html",
                        await _billing_context(request, user.id), forms=True)


async def checkout(request: web.Request) -> web.Response:
    """POST /billing/checkout (form field `plan`): create the order, show its QR page."""
    user = await require_user(request)
    form = await form_data(request)
    plan = form.get("plan", "")
    payments = payments_of(request)
    sub = await payments.subscription(user.id)
    if (sub is not None and sub["paid_until"] and sub["plan"] not in (plan, "free")
            and form.get("confirm_change") != "1"):
        # Paying for another plan ends the paid time of this one: say so before any QR code.
        ctx = await _billing_context(request, user.id)
        ctx["error"] = _("Tick the box to confirm that your %(current)s time ends when the "
                         "%(plan)s month starts.", current=str(sub["plan"]).capitalize(),
                         plan=plan.capitalize())
        return await render(request, "pages/billing.html", ctx, status=422, forms=True)
    try:
        order = await payments.checkout(user.id, plan)
    except PaymentError as exc:
        ctx = await _billing_context(request, user.id)
        ctx["error"] = translated(exc)
        return await render(request, "pages/billing.html", ctx, status=422, forms=True)
    if is_htmx(request):
        return web.Response(status=204, headers={"HX-Redirect": _order_path(order)})
    redirect(_order_path(order))


def _order_path(order: Order) -> str:
    return f"/billing/orders/{order.out_trade_no}"


async def _own_order(request: web.Request, user_id: int) -> Order:
    order = await payments_of(request).order_of_user(user_id,
                                                     request.match_info["out_trade_no"])
    if order is None:
        raise web.HTTPNotFound(reason=N_("No such order"))
    return order


async def _order_context(request: web.Request, order: Order) -> dict[str, Any]:
    ctx: dict[str, Any] = {"order": order, "poll_every": POLL_EVERY, "oob": False,
                           "qr": None, "subscription": None}
    if order.status == "pending" and order.qr_code:
        ctx["qr"] = qr_svg(order.qr_code, f"Alipay QR code for order {order.out_trade_no}")
    if order.status == "paid":
        ctx["subscription"] = await payments_of(request).subscription(order.user_id)
    return ctx


async def order_page(request: web.Request) -> web.Response:
    user = await require_user(request)
    order = await _own_order(request, user.id)
    return await render(request, "pages/checkout.html", await _order_context(request, order),
                        headers=NO_STORE)


async def receipt_page(request: web.Request) -> web.Response:
    """A receipt for a paid (or refunded) order of the signed-in user."""
    user = await require_user(request)
    order = await _own_order(request, user.id)
    if order.status not in ("paid", "refunded"):
        raise web.HTTPNotFound(reason=_("This order has no receipt: it was not paid"))
    return await render(request, "pages/receipt.html", {
        "order": order, "refunds": await payments_of(request).refunds(order.out_trade_no)},
        headers=NO_STORE)


async def order_status_fragment(request: web.Request) -> web.Response:
    """The part of the checkout page htmx polls; it stops polling once the order is final."""
    user = await require_user(request)
    order = await _own_order(request, user.id)
    ctx = await _order_context(request, order)
    ctx["oob"] = order.final  # also clear the QR code next to the status
    return await render(request, "partials/order_status.html", ctx, headers=NO_STORE)


# --- /api/payment --------------------------------------------------------------------

async def api_create_order(request: web.Request) -> web.Response:
    """POST /api/payment/orders {"plan": "pro"}: 201 with the order and its `qr_code`.
    Any amount in the body is ignored: the price comes from the plan."""
    user = await api_user(request)
    form = await form_data(request)
    try:
        order = await payments_of(request).checkout(user.id, form.get("plan", ""))
    except PaymentError as exc:
        raise ApiError("invalid_request_error", str(exc)) from None
    return reply(order.public(), status=201)


async def api_order(request: web.Request) -> web.Response:
    """GET /api/payment/orders/{out_trade_no}: the owner's order (404 for anyone else)."""
    user = await api_user(request)
    order = await payments_of(request).order_of_user(user.id,
                                                     request.match_info["out_trade_no"])
    if order is None:
        raise ApiError("not_found_error", "no such order")
    return reply(order.public())


async def alipay_notify(request: web.Request) -> web.Response:
    """POST /api/payment/notify: Alipay's form-encoded notification, verified by signature
    (exempt from CSRF). The literal `success` only once the payment is committed."""
    posted = await request.post()
    params = {k: v for k, v in posted.items() if isinstance(v, str)}
    ok = len(params) == len(posted)  # no repeated names, no file parts
    if ok:
        ok = await payments_of(request).handle_notification(params)
    return web.Response(text="success" if ok else "failure", content_type="text/plain")
