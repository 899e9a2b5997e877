"""The operator's new pages and the bilingual blog in real headless Chromium, in both
languages at 1280 and 390 px: the audit filters with JavaScript (HTMX swaps the results
and keeps the URL) and without it (a plain GET form), the margin page with its totals and
CSV, and the blog's language switch. Each page is checked for sideways scrolling and by
axe-core; screenshots go to test-artifacts/screenshots/.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page, ViewportSize, expect

from gateway.accounts.users import create_user
from gateway.app import build_app
from gateway.reports.admin import record_audit
from gateway.testing.usage_seed import SyntheticRequest, insert_synthetic_usage
from tests.helpers.browser import WIDTHS, check_page, context_for, shot
from tests.helpers.gateway import Gateway, make_config
from tests.helpers.site import PASSWORD, make_user

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.browser]

ROW = "#audit-results tbody tr"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    config = make_config(tmp_path_factory.mktemp("operator"),
                         {"site": {"exchange_rates": {"USD": 7.1}}})
    server = TestServer(build_app(config), host="127.0.0.1")
    await server.start_server()
    gw = Gateway(server, server.app)
    await seed(gw)
    yield gw
    await server.close()


async def seed(gw: Gateway) -> None:
    buyer = await create_user(gw.db, "buyer.with.a.rather.long.address@example.com",
                              plan="pro")
    now = time.time()
    await gw.db.execute("order_insert", {"out_trade_no": "B1", "user_id": buyer,
                                         "plan": "pro", "amount": "29.00", "subject": "pro",
                                         "now": now - 120})
    await gw.db.execute("order_mark_paid", {"out_trade_no": "B1", "trade_no": "TB1",
                                            "now": now - 60})
    await insert_synthetic_usage(gw.db, buyer, None, [
        SyntheticRequest(1000, 100, cost=1.5, currency="USD"),
        SyntheticRequest(1000, 100, cost=2.0, currency="CNY")])
    for n in range(6):
        await record_audit(gw.db, None, "cli:alice", "user.plan", f"user:{n} (u{n}@example.com)",
                           "plan free -> pro")
    await record_audit(gw.db, None, "cli:bob", "key.revoke", "user:1 (u1@example.com)",
                       "key sk-llmapi-abc")


async def checked(page: Page, label: str, js: bool) -> list[str]:
    """axe needs JavaScript: without it (same pages, same markup) only the width is checked."""
    if js:
        return await check_page(page, label)
    fits = await page.evaluate("document.documentElement.scrollWidth <= innerWidth + 1")
    return [] if fits else [f"{label}: scrolls sideways"]


async def sign_in(page: Page, email: str) -> None:
    await page.goto("/login")
    await page.fill("#email", email)
    await page.fill("#password", PASSWORD)
    await page.click("form.form button[type=submit]")
    await page.wait_for_url(re.compile(r"/dashboard$"))


@pytest.mark.parametrize(("width_name", "viewport"), WIDTHS)
@pytest.mark.parametrize("lang", ["en", "zh-CN"])
@pytest.mark.parametrize("js", [True, False], ids=["js", "no-js"])
async def test_audit_filters_margin_and_blog(browser: Browser, site: Gateway, width_name: str,
                                             viewport: ViewportSize, lang: str,
                                             js: bool) -> None:
    email = f"op-{width_name}-{lang}-{js}@example.com"
    await make_user(site, email, admin=True)
    context, page = await context_for(browser, site, viewport, lang, js=js)
    label = f"{lang}-{width_name}-{'js' if js else 'nojs'}"
    problems: list[str] = []
    try:
        await sign_in(page, email)
        # --- audit: filter by who and action ---
        await page.goto("/admin/audit")
        await expect(page.locator(ROW)).to_have_count(7)
        await page.fill("#audit-actor", "bob")
        if js:  # HTMX: typing filters (after a short pause), the URL follows
            await expect(page.locator(ROW)).to_have_count(1)
            await page.wait_for_url(re.compile(r"actor=bob"))
        else:   # no JavaScript: the button submits the GET form
            await page.click("form.filters button[type=submit]")
            await page.wait_for_url(re.compile(r"actor=bob"))
            await expect(page.locator(ROW)).to_have_count(1)
        await expect(page.locator(ROW).first).to_contain_text("key.revoke")
        await page.fill("#audit-actor", "")
        await page.select_option("#audit-action", "user.plan")
        if not js:
            await page.click("form.filters button[type=submit]")
        await page.wait_for_url(re.compile(r"action=user\.plan"))
        await expect(page.locator(ROW)).to_have_count(6)
        problems += await checked(page, f"audit {label}", js)
        await shot(page, f"operator-audit-filtered-{label}")
        # --- margin: totals, the stated rate, CSV ---
        await page.goto("/admin/margin?days=30")
        foot = page.locator("#margin-days-table tfoot")
        await expect(foot).to_contain_text("¥29.00")
        await expect(foot).to_contain_text("¥12.65")    # 1.5 USD * 7.1 + 2.0
        await expect(foot).to_contain_text("¥16.35")    # 29 - 12.65
        await expect(page.locator("#rates")).to_contain_text("1 USD = ¥7.1")
        problems += await checked(page, f"margin {label}", js)
        await shot(page, f"operator-margin-{label}")
        csv = await page.request.get("/admin/export/margin.csv?by=plan&days=30")
        assert csv.ok and "pro,1,29.00,0.00,29.00,12.6500,16.3500" in await csv.text()
        # --- blog: the switch picks the other language's version ---
        await page.goto("/blog/claude-code-on-qwen")
        other = "en" if lang == "zh-CN" else "zh-CN"
        await page.click(f"nav.lang-switch a[hreflang='{other}']")
        await expect(page.locator("article.prose")).to_have_attribute("lang", other)
        title = ("Running Claude Code on Qwen through llmapi" if other == "en"
                 else "通过 llmapi 在通义千问上运行 Claude Code")
        await expect(page.locator("article.prose h1")).to_have_text(title)
        problems += await checked(page, f"blog {label}", js)
        await shot(page, f"operator-blog-{other}-{width_name}-{'js' if js else 'nojs'}")
    finally:
        await context.close()
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("width_name", "viewport"), WIDTHS)
async def test_suspending_without_javascript_is_confirmed_on_a_page(
        browser: Browser, site: Gateway, width_name: str, viewport: ViewportSize) -> None:
    admin = f"suspender-{width_name}@example.com"
    await make_user(site, admin, admin=True)
    target = await make_user(site, f"to-suspend-{width_name}@example.com")
    context, page = await context_for(browser, site, viewport, "zh-CN", js=False)
    try:
        await sign_in(page, admin)
        await page.goto(f"/admin/users?q=to-suspend-{width_name}")
        await page.locator(f"#user-{target} button:has-text('停用')").click()
        await expect(page.locator("h1")).to_have_text("停用这个用户？")
        assert (await site.db.fetch_one("user_by_id", {"id": target}))["status"] == "active"
        fits = await page.evaluate("document.documentElement.scrollWidth <= innerWidth + 1")
        assert fits, "the confirmation page scrolls sideways"
        await shot(page, f"operator-confirm-suspend-zh-CN-{width_name}")
        await page.click("main form button[type=submit]")
        await page.wait_for_url(re.compile(r"/admin/users\?q=to-suspend"))
        await expect(page.locator(f"#user-{target}")).to_contain_text("已停用")
        assert (await site.db.fetch_one("user_by_id", {"id": target}))["status"] == "suspended"
    finally:
        await context.close()
