"""What a paying customer relies on: the landing's figures follow the plans, the plan button
is right, the chosen plan survives sign-up, forgotten passwords and e-mail changes work by
code, legal pages come from the operator's files, receipts and refunds."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from gateway.reports import savings
from gateway.testing.fake_alipay import KeySet, load_or_create_keys
from tests.helpers.gateway import Gateway, GatewayFactory
from tests.helpers.payment import Shop, start_shop
from tests.helpers.site import PASSWORD, SiteClient, code_from_outbox, make_user, signed_in


def figures(html: str) -> list[str]:
    """The savings table's yuan figures, in order."""
    table = html[html.index('id="savings"'):]
    table = table[:table.index("</table>")]
    return re.findall(r"¥([0-9]+(?:\.[0-9]+)?)", table)


async def test_landing_savings_follow_the_plans_in_the_config(
        gateway_factory: GatewayFactory) -> None:
    tokens = 20_000_000
    gw = await gateway_factory({"plans": [
        {"name": "pro", "price_month": 35, "monthly_tokens": tokens, "rpm": 60}]})
    client = SiteClient(gw)
    try:
        _, text, _ = await client.get("/")
    finally:
        await client.close()
    list_price = savings.list_price_cny(tokens)
    # 20M tokens at US$3 per million at ¥7.10 per dollar
    assert list_price == Decimal("426")
    row = text[text.index("<th scope=\"row\" data-label=\"Plan\">Pro"):]
    row = row[:row.index("</tr>")]
    assert "¥35" in row and f"¥{list_price}" in row and f"¥{list_price - 35}" in row
    assert "20M" in row
    assert "https://www.anthropic.com/pricing" in text and "US$1 = ¥7.10" in text
    assert '"@type": "WebSite"' in text or '"@type":"WebSite"' in text.replace(" ", "")
    assert 'property="og:title"' in text and 'name="twitter:card"' in text
    assert "not affiliated with" in text.lower()
    for question in ("Is this the real Claude?", "Will my tools and MCP servers work?",
                     "Is my code stored?", "What happens when I hit my quota?",
                     "Which models run behind it?"):
        assert question in text


async def test_a_plan_that_saves_nothing_is_not_claimed(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory({"plans": [
        {"name": "starter", "price_month": 500, "monthly_tokens": 1_000_000}]})
    client = SiteClient(gw)
    try:
        _, text, _ = await client.get("/")
    finally:
        await client.close()
    assert 'data-label="Plan">Starter' not in text


async def test_pricing_marks_recommended_and_current_plan_with_the_right_buttons(
        shop: Shop) -> None:
    gateway = shop.gw
    visitor = SiteClient(gateway)
    customer = await signed_in(gateway, "current@example.com", plan="pro")
    try:
        _, text, _ = await visitor.get("/pricing")
        assert 'href="/register?plan=pro"' in text
        pro = text[text.index('id="plan-pro"'):text.index('id="plan-team"')]
        assert "Recommended" in pro
        _, text, _ = await customer.get("/pricing")
        pro = text[text.index('id="plan-pro"'):text.index('id="plan-team"')]
        team = text[text.index('id="plan-team"'):]
        starter = text[text.index('id="plan-starter"'):text.index('id="plan-pro"')]
        assert "Your current plan" in pro
        assert "Upgrade to Team" in team and "Switch to Starter" in starter
    finally:
        await visitor.close()
        await customer.close()


async def test_the_chosen_plan_is_kept_through_sign_up(gateway: Gateway) -> None:
    client = SiteClient(gateway)
    try:
        _, text, _ = await client.get("/register?plan=team")
        assert 'name="plan" value="team"' in text and "/terms" in text
        status, _, _ = await client.post("/register", {
            "email": "chooser@example.com", "password": PASSWORD, "plan": "team"})
        assert status == 303
        code = await code_from_outbox(gateway, "chooser@example.com")
        status, _, headers = await client.post("/register/verify", {"code": code})
        assert status == 303 and headers["Location"] == "/billing?plan=team"
        # a free or unknown plan is not carried
        _, text, _ = await client.get("/register?plan=nonsense")
    finally:
        await client.close()


async def test_forgotten_password_is_reset_by_an_e_mailed_code(gateway: Gateway) -> None:
    await make_user(gateway, "forgot@example.com")
    other = SiteClient(gateway)
    await other.log_in("forgot@example.com")
    client = SiteClient(gateway)
    try:
        await client.get("/password/forgot")
        status, _, headers = await client.post("/password/forgot",
                                               {"email": "forgot@example.com"})
        assert status == 303 and headers["Location"] == "/password/reset"
        code = await code_from_outbox(gateway, "forgot@example.com")
        status, text, _ = await client.post("/password/reset", {
            "code": code, "new_password": "a new long password",
            "confirm_password": "a new long password!"})
        assert status == 422 and "differ" in text
        status, text, _ = await client.post("/password/reset", {
            "code": code, "new_password": "a new long password",
            "confirm_password": "a new long password"})
        assert status == 303, text
        await client.log_in("forgot@example.com", "a new long password")
        status, _, _ = await other.get("/dashboard")
        assert status in (302, 303), "the reset must end the other sign-ins"
        # the same answer for an address without an account, and no mail is sent
        status, _, headers = await client.post("/password/forgot",
                                               {"email": "nobody@example.com"})
        assert status == 303
        assert await gateway.db.fetch_one("mail_latest_to",
                                          {"to_addr": "nobody@example.com"}) is None
    finally:
        await client.close()
        await other.close()


async def test_a_reset_code_cannot_be_guessed_forever(gateway: Gateway) -> None:
    await make_user(gateway, "guess@example.com")
    client = SiteClient(gateway)
    try:
        await client.post("/password/forgot", {"email": "guess@example.com"})
        code = await code_from_outbox(gateway, "guess@example.com")
        wrong = "000000" if code != "000000" else "111111"
        for _ in range(5):
            status, _, _ = await client.post("/password/reset", {
                "code": wrong, "new_password": "another password",
                "confirm_password": "another password"})
            assert status == 422
        status, text, _ = await client.post("/password/reset", {
            "code": code, "new_password": "another password",
            "confirm_password": "another password"})
        assert status == 422 and "too many wrong codes" in text
    finally:
        await client.close()


async def test_e_mail_change_needs_the_code_sent_to_the_new_address(gateway: Gateway) -> None:
    await make_user(gateway, "taken@example.com")
    client = await signed_in(gateway, "old@example.com")
    try:
        await client.get("/settings")
        status, text, _ = await client.post("/settings/email",
                                            {"new_email": "taken@example.com"})
        assert status == 422 and "another account" in text
        status, _, _ = await client.post("/settings/email", {"new_email": "new@example.com"})
        assert status == 303
        code = await code_from_outbox(gateway, "new@example.com")
        status, _, _ = await client.post("/settings/email/confirm", {"code": code})
        assert status == 303
        user = await gateway.db.fetch_one("user_by_email", {"email": "new@example.com"})
        assert user is not None
        notice = await gateway.db.fetch_one("mail_latest_to", {"to_addr": "old@example.com"})
        assert "new@example.com" in notice["body_text"]
    finally:
        await client.close()


async def test_legal_pages_come_from_the_operators_markdown(
        gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    legal = tmp_path / "legal"
    legal.mkdir()
    (legal / "terms.md").write_text("# Our terms\n\nBe <b>nice</b>.\n", encoding="utf-8")
    gw = await gateway_factory({"site": {"legal_dir": str(legal)}})
    client = SiteClient(gw)
    try:
        _, text, _ = await client.get("/terms")
        assert "<h1>Our terms</h1>" in text and "&lt;b&gt;nice&lt;/b&gt;" in text
        _, text, _ = await client.get("/privacy")  # not in the folder: the starting text
        assert "Privacy policy" in text
        _, text, _ = await client.get("/refunds?lang=zh-CN")
        assert "退款政策" in text
        _, text, _ = await client.get("/")
        assert all(f'href="/{p}"' in text for p in ("terms", "privacy", "refunds", "sitemap"))
    finally:
        await client.close()


async def test_deleting_an_account_with_paid_time_warns_first(gateway: Gateway) -> None:
    client = await signed_in(gateway, "paid@example.com", plan="pro")
    row = await gateway.db.fetch_one("user_by_email", {"email": "paid@example.com"})
    await gateway.db.execute("subscription_extend_paid_until", {
        "user_id": row["id"], "paid_until": 4102444800.0, "now": 0.0})
    try:
        _, text, _ = await client.get("/settings")
        delete = text[text.index('id="settings-delete"'):]
        assert "You still have Pro paid until" in delete and "/refunds" in delete
    finally:
        await client.close()


# --- receipts and refunds over the fake Alipay ------------------------------------------

@pytest.fixture
async def shop(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("keys")
    keys: KeySet = load_or_create_keys(folder)
    servers: list[TestServer] = []
    yield await start_shop(tmp_path, folder, keys, servers)
    for server in reversed(servers):
        await server.close()


async def paid_order(shop: Shop, client: SiteClient, plan: str = "pro") -> str:
    status, _, headers = await client.post("/billing/checkout", {"plan": plan})
    assert status == 303
    no = headers["Location"].rsplit("/", 1)[-1]
    await shop.pay(no)
    return no


async def test_receipt_and_a_partial_then_full_refund(shop: Shop) -> None:
    customer = await signed_in(shop.gw, "buyer@example.com")
    admin = await signed_in(shop.gw, "boss@example.com", admin=True)
    try:
        no = await paid_order(shop, customer)
        status, text, _ = await customer.get(f"/billing/orders/{no}/receipt")
        assert status == 200 and no in text and "¥29.00" in text and "buyer@example.com" in text
        _, text, _ = await admin.get("/admin/orders")
        assert no in text and "Refund" in text
        # no confirmation, nothing happens
        await admin.post(f"/admin/orders/{no}/refund", {"amount": "5.00"})
        assert shop.trade(no).refunds == {}
        await admin.post(f"/admin/orders/{no}/refund", {"amount": "30.00", "confirm": "1"})
        assert shop.trade(no).refunds == {}, "more than was paid"
        await admin.post(f"/admin/orders/{no}/refund",
                         {"amount": "9.00", "reason": "slow", "confirm": "1"})
        assert list(shop.trade(no).refunds.values()) == ["9.00"]
        order = await shop.order(no)
        assert order["status"] == "paid"
        uid = (await shop.db.fetch_one("user_by_email", {"email": "buyer@example.com"}))["id"]
        assert (await shop.subscription(uid))["plan"] == "pro"
        await admin.post(f"/admin/orders/{no}/refund", {"amount": "20.00", "confirm": "1"})
        assert shop.trade(no).status == "TRADE_CLOSED"
        order = await shop.order(no)
        assert order["status"] == "refunded"
        assert (await shop.subscription(uid))["plan"] == "free"
        _, text, _ = await customer.get(f"/billing/orders/{no}/receipt")
        assert "¥9.00" in text and "¥20.00" in text
        _, text, _ = await admin.get("/admin/audit")
        assert "order.refund" in text
        status, csv_text, headers = await admin.get("/admin/export/orders.csv")
        assert status == 200 and headers["Content-Type"].startswith("text/csv")
        assert no in csv_text and "29.00" in csv_text
        status, _, _ = await admin.get("/admin/export/usage.csv")
        assert status == 200
        status, _, _ = await customer.get("/admin/orders")
        assert status == 403
    finally:
        await customer.close()
        await admin.close()


async def test_fake_alipay_refund_rules(shop: Shop) -> None:
    """The fake refuses what Alipay refuses (see FakeAlipay._refund)."""
    client = shop.payments.client
    customer = await signed_in(shop.gw, "rules@example.com")
    try:
        no = await paid_order(shop, customer, "starter")
        first = await client.refund(no, "3.00", "R1")
        again = await client.refund(no, "3.00", "R1")  # the same request: no money moves
        assert first.fund_change and not again.fund_change and again.refund_fee == "3.00"
        with pytest.raises(Exception, match=r"CONTEXT_INCONSISTENT|another amount"):
            await client.refund(no, "4.00", "R1")
        with pytest.raises(Exception, match=r"REFUND_FEE_ERR|REASON_TRADE"):
            await client.refund(no, "7.00", "R2")
        done = await client.refund(no, "6.00", "R3")
        assert done.refund_fee == "9.00" and shop.trade(no).status == "TRADE_CLOSED"
    finally:
        await customer.close()


async def test_small_things_names_with_a_dot_and_the_blog_address(
        gateway_factory: GatewayFactory) -> None:
    gateway = await gateway_factory({"server": {"public_url": "http://llm.example.cn"}})
    await make_user(gateway, "carol@example.com")
    await gateway.db.execute("site_user_set_name", {"id": (await gateway.db.fetch_one(
        "user_by_email", {"email": "carol@example.com"}))["id"], "name": "Carol C.",
        "now": 0.0})
    client = SiteClient(gateway)
    try:
        await client.log_in("carol@example.com")
        _, text, _ = await client.get("/dashboard")
        assert "Carol C.." not in text and "Welcome back, Carol C." in text
        _, text, _ = await client.get("/blog/claude-code-on-qwen")
        assert "127.0.0.1:8080" not in text
        assert "ANTHROPIC_BASE_URL=http://llm.example.cn" in text
        status, text, _ = await client.get("/no/such/page")
        assert status == 404 and "no route for" not in text
    finally:
        await client.close()


async def test_admin_user_page_shows_keys_orders_and_audit(gateway: Gateway) -> None:
    admin = await signed_in(gateway, "chief@example.com", admin=True)
    uid = await make_user(gateway, "customer-page@example.com")
    try:
        await admin.get("/admin/users")
        await admin.post(f"/admin/users/{uid}/plan", {"plan": "team"})
        status, text, _ = await admin.get(f"/admin/users/{uid}")
        assert status == 200 and "customer-page@example.com" in text
        assert "plan free -&gt; team" in text or "plan free -> team" in text
        status, _, _ = await admin.get("/admin/users/999999")
        assert status == 404
    finally:
        await admin.close()
