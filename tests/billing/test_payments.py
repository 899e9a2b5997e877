"""Alipay QR checkout end to end against the fake Alipay over loopback, real SQLite.

Every payment path goes through real HTTP: the site's checkout form, the gateway's calls
to the fake's /gateway.do, the fake's signed notifications to /api/payment/notify.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.accounts.users import add_month
from gateway.billing.payments import format_amount, parse_amount
from gateway.testing.fake_alipay import KeySet, load_or_create_keys
from tests.helpers.html import validate, wrap
from tests.helpers.payment import APP_ID, Shop, start_shop
from tests.helpers.site import SiteClient, call_messages, signed_in

ShopFactory = Callable[..., Awaitable[Shop]]


@pytest.fixture(scope="session")
def alipay_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, KeySet]:
    """One set of generated key files for the whole run (RSA key generation is slow-ish)."""
    folder = tmp_path_factory.mktemp("alipay-keys")
    return folder, load_or_create_keys(folder)


@pytest.fixture
async def shop_factory(tmp_path: Path, alipay_keys: tuple[Path, KeySet]
                       ) -> AsyncIterator[ShopFactory]:
    servers: list[TestServer] = []

    async def start(**options: Any) -> Shop:
        return await start_shop(tmp_path, *alipay_keys, servers, **options)

    yield start
    for server in reversed(servers):
        await server.close()


@pytest.fixture
async def shop(shop_factory: ShopFactory) -> Shop:
    return await shop_factory()

ORDER_PATH = re.compile(r"^/billing/orders/(LL\w+)$")


async def user_id(shop: Shop, email: str) -> int:
    row = await shop.db.fetch_one("user_by_email", {"email": email})
    return int(row["id"])


async def buy(client: SiteClient, plan: str, **extra: str) -> str:
    """The checkout form as a browser posts it; returns the new order's out_trade_no."""
    status, text, headers = await client.post("/billing/checkout", {"plan": plan, **extra})
    assert status == 303, text
    found = ORDER_PATH.match(headers["Location"])
    assert found, headers["Location"]
    return found.group(1)


async def buyer(shop: Shop, email: str, plan: str = "free") -> tuple[SiteClient, int]:
    client = await signed_in(shop.gw, email, plan=plan)
    return client, await user_id(shop, email)


# --- the happy path --------------------------------------------------------------------

async def test_full_purchase_upgrades_plan_and_raises_quota_at_once(shop: Shop) -> None:
    client, uid = await buyer(shop, "buyer@example.com")
    try:
        key = await shop.gw.new_key("buyer@example.com")
        status, _ = await call_messages(shop.gw, key)
        assert status == 200
        shop.gw.limits.add_tokens(uid, 50_000)  # the free plan's month is used up
        status, payload = await call_messages(shop.gw, key)
        assert status == 429 and "monthly token quota" in payload["error"]["message"]

        no = await buy(client, "starter")
        status, page, _ = await client.get(f"/billing/orders/{no}")
        assert status == 200 and "<svg" in page and 'class="qr"' in page
        assert "¥9.00" in page and 'data-hx-trigger="every 2s"' in page
        trade = shop.trade(no)
        assert trade.total_amount == "9.00" and trade.notify_url == shop.notify_url
        assert page.count("<path") >= 1  # the QR is drawn inline, no external image

        before = time.time()
        result = await shop.pay(no)
        assert [n["body"] for n in result["notify"]] == ["success"]

        status, payload = await call_messages(shop.gw, key)  # no waiting for any cache
        assert status == 200, payload
        order = await shop.order(no)
        assert order["status"] == "paid" and order["trade_no"] == trade.trade_no
        assert order["paid_at"] >= before
        sub = await shop.subscription(uid)
        assert sub["plan"] == "starter"
        assert sub["period_start"] == order["paid_at"]
        assert sub["paid_until"] == sub["period_end"] == add_month(order["paid_at"])
        quota = await shop.gw.limits.quota(uid)
        assert quota.period_start == order["paid_at"] and quota.tokens_used < 1000

        status, fragment, _ = await client.get(f"/billing/orders/{no}/status",
                                               headers={"HX-Request": "true"})
        assert "Paid" in fragment and "data-hx-trigger" not in fragment  # polling stops
        assert 'id="order-qr" data-hx-swap-oob="true"' in fragment
        status, billing, _ = await client.get("/billing")
        assert "Plan: Starter" in billing and "Renew for a month" in billing
        status, orders, _ = await client.get("/orders")
        assert no in orders and "¥9.00" in orders and "paid" in orders
    finally:
        await client.close()


async def test_duplicate_notify_extends_the_plan_once(shop: Shop) -> None:
    client, uid = await buyer(shop, "twice@example.com")
    try:
        no = await buy(client, "pro")
        result = await shop.pay(no, "duplicate")
        assert [n["body"] for n in result["notify"]] == ["success", "success"]
        order = await shop.order(no)
        sub = await shop.subscription(uid)
        assert sub["plan"] == "pro" and sub["paid_until"] == add_month(order["paid_at"])
    finally:
        await client.close()


async def test_twenty_concurrent_duplicate_notifies_extend_once(shop: Shop) -> None:
    client, uid = await buyer(shop, "burst@example.com")
    try:
        first = await buy(client, "starter")
        await shop.pay(first)
        paid_until = (await shop.subscription(uid))["paid_until"]

        no = await buy(client, "starter")  # a renewal: extends from the current end
        trade = shop.trade(no)
        shop.fake.pay(trade)
        params = shop.fake.notification(trade)
        answers = await asyncio.gather(*(shop.notify(params) for _ in range(20)))
        assert answers == ["success"] * 20
        sub = await shop.subscription(uid)
        assert sub["paid_until"] == add_month(paid_until)
        paid = await shop.db.conn.execute_fetchall(
            "SELECT COUNT(*) AS n FROM orders WHERE user_id = ? AND status = 'paid'", (uid,))
        assert paid[0]["n"] == 2
    finally:
        await client.close()


async def test_renewal_extends_from_the_current_end_and_keeps_the_period(shop: Shop) -> None:
    client, uid = await buyer(shop, "renew@example.com")
    try:
        await shop.pay(await buy(client, "team"))
        first = await shop.subscription(uid)
        await shop.pay(await buy(client, "team"))
        second = await shop.subscription(uid)
        assert second["paid_until"] == add_month(first["paid_until"])
        assert second["period_start"] == first["period_start"]
        assert second["period_end"] == first["period_end"]  # each month keeps its tokens
    finally:
        await client.close()


async def test_switching_plan_starts_a_new_month_now(shop: Shop) -> None:
    client, uid = await buyer(shop, "switch@example.com")
    try:
        await shop.pay(await buy(client, "starter"))
        # Paying for another plan ends the paid starter time: refused until confirmed.
        status, text, _ = await client.post("/billing/checkout", {"plan": "pro"})
        assert status == 422 and "Starter time ends" in text
        assert "/billing/orders/" not in text  # no order, no QR code yet
        no = await buy(client, "pro", confirm_change="1")
        await shop.pay(no)
        sub = await shop.subscription(uid)
        order = await shop.order(no)
        assert sub["plan"] == "pro" and sub["period_start"] == order["paid_at"]
        assert sub["paid_until"] == add_month(order["paid_at"])
    finally:
        await client.close()


# --- what is refused, and changes nothing ----------------------------------------------

@pytest.mark.parametrize("mode", ["tampered", "wrong_amount", "wrong_app_id"])
async def test_invalid_notification_is_refused_and_changes_nothing(shop: Shop,
                                                                   mode: str) -> None:
    client, uid = await buyer(shop, f"{mode}@example.com")
    try:
        no = await buy(client, "starter")
        before = await shop.subscription(uid)
        result = await shop.pay(no, mode)
        assert [n["body"] for n in result["notify"]] == ["failure"]
        order = await shop.order(no)
        assert order["status"] == "pending" and order["paid_at"] is None
        assert await shop.subscription(uid) == before
    finally:
        await client.close()


async def test_notification_for_an_unknown_order_is_refused(shop: Shop) -> None:
    client, uid = await buyer(shop, "unknown@example.com")
    try:
        no = await buy(client, "starter")
        trade = shop.trade(no)
        shop.fake.pay(trade)
        params = shop.fake.notification(trade, out_trade_no="LL20250101000000ffffffffffff")
        before = await shop.subscription(uid)
        assert await shop.notify(params) == "failure"
        assert (await shop.order(no))["status"] == "pending"
        assert await shop.subscription(uid) == before
    finally:
        await client.close()


async def test_notification_without_signature_or_with_rsa1_is_refused(shop: Shop) -> None:
    client, _ = await buyer(shop, "unsigned@example.com")
    try:
        no = await buy(client, "starter")
        trade = shop.trade(no)
        shop.fake.pay(trade)
        params = shop.fake.notification(trade)
        assert await shop.notify({k: v for k, v in params.items() if k != "sign"}) == \
            "failure"
        assert await shop.notify({**params, "sign_type": "RSA"}) == "failure"
        assert await shop.notify({**params, "trade_status": "TRADE_SUCCESS ",
                                  }) == "failure"  # any changed byte breaks the signature
        assert (await shop.order(no))["status"] == "pending"
    finally:
        await client.close()


async def test_browser_supplied_amount_is_ignored(shop: Shop) -> None:
    client, _ = await buyer(shop, "cheap@example.com")
    try:
        no = await buy(client, "team", amount="0.01", total_amount="0.01", price_month="0")
        assert (await shop.order(no))["amount"] == "99.00"
        assert shop.trade(no).total_amount == "99.00"
        status, payload = await client.json("POST", "/api/payment/orders",
                                            {"plan": "pro", "amount": "0.01"})
        assert status == 201 and payload["amount"] == "29.00" and payload["qr_code"]
        assert shop.trade(payload["out_trade_no"]).total_amount == "29.00"
        # paying the smaller amount does not buy the plan
        trade = shop.trade(no)
        shop.fake.pay(trade)
        assert await shop.notify(shop.fake.notification(trade, total_amount="0.01")) == \
            "failure"
        assert (await shop.order(no))["status"] == "pending"
    finally:
        await client.close()


async def test_checkout_needs_the_csrf_token_but_notify_does_not(shop: Shop) -> None:
    client, _ = await buyer(shop, "csrf@example.com")
    try:
        status, _, _ = await client.post("/billing/checkout", {"plan": "pro"}, csrf=False)
        assert status == 403
        status, payload = await client.json("POST", "/api/payment/orders", {"plan": "pro"},
                                            csrf=False)
        assert status == 403 and payload["error"]["type"] == "permission_error"
        status, text, _ = await client.post("/api/payment/notify", {"x": "1"}, csrf=False)
        assert status == 200 and text == "failure"
    finally:
        await client.close()


async def test_order_api_shows_an_order_to_its_owner_only(shop: Shop) -> None:
    alice, _ = await buyer(shop, "alice@example.com")
    bob, _ = await buyer(shop, "bob@example.com")
    stranger = SiteClient(shop.gw)
    try:
        no = await buy(alice, "starter")
        status, payload = await alice.json("GET", f"/api/payment/orders/{no}")
        assert status == 200 and payload["status"] == "pending"
        assert payload["amount"] == "9.00" and payload["plan"] == "starter"
        status, payload = await bob.json("GET", f"/api/payment/orders/{no}")
        assert status == 404 and payload["error"]["type"] == "not_found_error"
        status, _, _ = await bob.get(f"/billing/orders/{no}")
        assert status == 404
        status, _ = await stranger.json("GET", f"/api/payment/orders/{no}")
        assert status == 401
        await shop.pay(no)
        status, payload = await alice.json("GET", f"/api/payment/orders/{no}")
        assert payload["status"] == "paid" and payload["paid_at"]
    finally:
        for c in (alice, bob, stranger):
            await c.close()


async def test_a_second_click_shows_the_same_open_order(shop: Shop) -> None:
    client, _ = await buyer(shop, "click@example.com")
    try:
        assert await buy(client, "pro") == await buy(client, "pro")
        assert await buy(client, "starter") != await buy(client, "pro")
    finally:
        await client.close()


async def test_free_or_unknown_plan_cannot_be_bought(shop: Shop) -> None:
    client, _ = await buyer(shop, "free@example.com")
    try:
        for plan in ("free", "nope", ""):
            status, text, _ = await client.post("/billing/checkout", {"plan": plan})
            assert status == 422, plan
        assert "is free" in text or "no plan" in text
        rows = await shop.db.conn.execute_fetchall("SELECT COUNT(*) AS n FROM orders")
        assert rows[0]["n"] == 0
    finally:
        await client.close()


async def test_a_refused_precreate_closes_the_order_and_says_so(
        shop_factory: ShopFactory) -> None:
    shop = await shop_factory(fake_app_id="2021999999999999")  # the fake rejects our app
    client, _ = await buyer(shop, "refused@example.com")
    try:
        status, text, _ = await client.post("/billing/checkout", {"plan": "pro"})
        assert status == 422 and "did not accept the order" in text
        rows = await shop.db.conn.execute_fetchall("SELECT status FROM orders")
        assert [r["status"] for r in rows] == ["closed"]
    finally:
        await client.close()


# --- reconciliation, expiry, late payments ---------------------------------------------

async def test_reconciliation_pays_an_order_whose_notify_was_lost(shop: Shop) -> None:
    client, uid = await buyer(shop, "lost@example.com")
    try:
        no = await buy(client, "pro")
        result = await shop.pay(no, "lost")
        assert result["notify"] == []
        order = await shop.order(no)
        counts = await shop.payments.reconcile(now=order["created_at"] + 30)
        assert counts["paid"] == 0  # younger than a minute: not asked about yet
        counts = await shop.payments.reconcile(now=order["created_at"] + 61)
        assert counts["paid"] == 1
        order = await shop.order(no)
        assert order["status"] == "paid" and order["trade_no"] == shop.trade(no).trade_no
        assert (await shop.subscription(uid))["plan"] == "pro"
        counts = await shop.payments.reconcile(now=order["created_at"] + 120)
        assert counts["paid"] == 0  # paid orders are not asked about again
    finally:
        await client.close()


async def test_unpaid_orders_are_closed_after_fifteen_minutes(shop: Shop) -> None:
    client, uid = await buyer(shop, "slow@example.com")
    try:
        never_scanned = await buy(client, "pro")
        scanned = await buy(client, "starter")
        await shop.pay(scanned, "scan")
        created = (await shop.order(scanned))["created_at"]
        counts = await shop.payments.reconcile(now=created + 14 * 60)
        assert counts["closed"] == 0
        counts = await shop.payments.reconcile(now=created + 15 * 60 + 1)
        assert counts["closed"] == 2
        for no in (never_scanned, scanned):
            order = await shop.order(no)
            assert order["status"] == "closed" and order["closed_at"] is not None
        assert shop.trade(scanned).status == "TRADE_CLOSED"  # closed at Alipay too
        assert (await shop.subscription(uid))["plan"] == "free"
        _, fragment, _ = await client.get(f"/billing/orders/{scanned}/status")
        assert "closed without a payment" in fragment and "data-hx-trigger" not in fragment
    finally:
        await client.close()


async def test_a_late_payment_of_a_closed_order_is_applied(shop: Shop) -> None:
    client, uid = await buyer(shop, "late@example.com")
    try:
        no = await buy(client, "starter")
        created = (await shop.order(no))["created_at"]
        await shop.payments.reconcile(now=created + 16 * 60)
        assert (await shop.order(no))["status"] == "closed"
        result = await shop.pay(no, "late")
        assert [n["body"] for n in result["notify"]] == ["success"]
        assert (await shop.order(no))["status"] == "paid"
        assert (await shop.subscription(uid))["plan"] == "starter"
    finally:
        await client.close()


async def test_paid_plan_falls_back_to_free_when_paid_time_ends(shop: Shop) -> None:
    client, uid = await buyer(shop, "expire@example.com")
    try:
        key = await shop.gw.new_key("expire@example.com")
        await shop.pay(await buy(client, "pro"))
        sub = await shop.subscription(uid)
        assert await shop.payments.expire_subscriptions(now=sub["paid_until"] - 1) == 0
        counts = await shop.payments.reconcile(now=sub["paid_until"])
        assert counts["expired"] == 1
        sub = await shop.subscription(uid)
        assert sub["plan"] == "free" and sub["paid_until"] is None
        info = await shop.gw.keys.authenticate(key)
        assert info.plan == "free"  # the key cache saw it at once
    finally:
        await client.close()


async def test_operator_plan_change_has_no_end_date(shop: Shop) -> None:
    from gateway.accounts.users import set_plan

    client, uid = await buyer(shop, "granted@example.com")
    try:
        await shop.pay(await buy(client, "starter"))
        await set_plan(shop.db, "granted@example.com", "team")
        sub = await shop.subscription(uid)
        assert sub["plan"] == "team" and sub["paid_until"] is None
        assert await shop.payments.expire_subscriptions(now=time.time() + 400 * 86400) == 0
        status, text, _ = await client.post("/billing/checkout", {"plan": "team"})
        assert status == 422 and "without an end date" in text
    finally:
        await client.close()


# --- pages and figures -----------------------------------------------------------------

async def test_admin_revenue_counts_paid_orders_only(shop: Shop) -> None:
    admin = await signed_in(shop.gw, "boss@example.com", admin=True)
    client, _ = await buyer(shop, "payer@example.com")
    try:
        await shop.pay(await buy(client, "pro"))
        await buy(client, "team", confirm_change="1")  # pending: no revenue
        status, payload = await admin.json("GET", "/api/admin/stats")
        assert status == 200 and payload["revenue_month"] == "29.00"
        assert payload["paid_orders_month"] == 1
        _, text, _ = await admin.get("/admin")
        assert "¥29.00" in text
    finally:
        await admin.close()
        await client.close()


async def test_without_alipay_paid_plans_say_contact_the_operator(gateway: Any) -> None:
    client = await signed_in(gateway, "noalipay@example.com")
    try:
        status, pricing, _ = await client.get("/pricing")
        assert "Contact the operator" in pricing and "/billing/checkout" not in pricing
        status, billing, _ = await client.get("/billing")
        assert status == 200 and "not set up on this server" in billing
        status, text, _ = await client.post("/billing/checkout", {"plan": "pro"})
        assert status == 422 and "contact the operator" in text
        status, text, _ = await client.post("/api/payment/notify", {"out_trade_no": "x"},
                                            csrf=False)
        assert text == "failure"
    finally:
        await client.close()


async def test_pricing_offers_checkout_to_signed_in_users(shop: Shop) -> None:
    client, _ = await buyer(shop, "pricing@example.com")
    visitor = SiteClient(shop.gw)
    try:
        status, text, _ = await client.get("/pricing")
        assert status == 200 and text.count('action="/billing/checkout"') == 3  # starter, pro, team
        _, text, _ = await visitor.get("/pricing")
        assert "/billing/checkout" not in text and "Start with" in text
    finally:
        await client.close()
        await visitor.close()


async def test_fake_alipay_refuses_a_request_signed_with_another_key(shop: Shop) -> None:
    from gateway.billing.alipay_sign import sign_params
    from gateway.testing.fake_alipay import new_key

    params = {"app_id": APP_ID, "method": "alipay.trade.query", "format": "JSON",
              "charset": "utf-8", "sign_type": "RSA2", "timestamp": "2025-01-01 08:00:00",
              "version": "1.0", "biz_content": '{"out_trade_no":"x"}'}
    params["sign"] = sign_params(params, new_key())
    async with aiohttp.ClientSession() as s, s.post(shop.fake_url + "/gateway.do",
                                                    data=params) as r:
        text = await r.text()
    assert "isv.invalid-signature" in text


# --- money arithmetic ------------------------------------------------------------------

def test_amounts_are_two_decimal_yuan_from_the_plan_price() -> None:
    assert format_amount("9") == "9.00"
    assert format_amount("9.9") == "9.90"
    assert format_amount("99.99") == "99.99"
    for bad in ("9.999", "-1", "1e3", " 9", "9.", ".5", "", "NaN", "Infinity", "٩", "9\n"):
        assert parse_amount(bad) is None, bad
    assert parse_amount("9") == parse_amount("9.00") == parse_amount("9.0")


async def test_billing_and_checkout_pages_pass_the_html_validator(shop: Shop,
                                                                  tmp_path: Path) -> None:

    client, _ = await buyer(shop, "valid@example.com")
    pages: dict[str, str] = {}
    try:
        pages["/billing"] = (await client.get("/billing"))[1]
        pages["/pricing"] = (await client.get("/pricing"))[1]
        no = await buy(client, "pro")
        pages["/billing/orders (pending)"] = (await client.get(f"/billing/orders/{no}"))[1]
        hx = {"HX-Request": "true"}
        pages["status (pending)"] = wrap((await client.get(
            f"/billing/orders/{no}/status", headers=hx))[1])
        await shop.pay(no)
        pages["/billing/orders (paid)"] = (await client.get(f"/billing/orders/{no}"))[1]
        pages["status (paid)"] = wrap((await client.get(
            f"/billing/orders/{no}/status", headers=hx))[1])
        pages["/orders"] = (await client.get("/orders"))[1]
        pages["/billing (error)"] = (await client.post("/billing/checkout",
                                                       {"plan": "free"}))[1]
    finally:
        await client.close()
    names = {}
    for i, (name, html) in enumerate(pages.items()):
        (tmp_path / f"page{i:02d}.html").write_text(html, encoding="utf-8")
        names[f"page{i:02d}.html"] = name
    problems = validate(sorted(str(p) for p in tmp_path.glob("page*.html")))
    assert not problems, "\n".join(f"{names.get(uri.rsplit('/', 1)[-1], uri)}: {message}"
                                   for uri, message in problems)
