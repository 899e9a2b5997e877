"""The site in real headless Chromium (Debian's, driven by Playwright): sign up, create and copy
a key, the chart, an admin changing a plan, every main page on desktop and phone widths.

Every page is watched: a console error, an uncaught exception or a request to any host
other than this loopback server fails the test. Screenshots go to
test-artifacts/screenshots/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer
from playwright.async_api import (
    Browser,
    Dialog,
    ViewportSize,
    expect,
)

from gateway.accounts.users import create_key
from gateway.app import build_app
from gateway.testing.usage_seed import SyntheticRequest, insert_synthetic_usage
from tests.helpers.browser import (
    DESKTOP,
    PHONE,
    htmx_settled,
    log_in,
    new_context,
    screenshot,
)
from tests.helpers.gateway import Gateway, make_config
from tests.helpers.site import PASSWORD, call_messages, code_from_outbox, make_user

pytestmark = pytest.mark.asyncio(loop_scope="module")



@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    app = build_app(make_config(tmp_path_factory.mktemp("browser")))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield Gateway(server, app)
    await server.close()


async def test_sign_up_create_and_copy_a_key_and_see_the_chart(browser: Browser,
                                                               site: Gateway) -> None:
    context, page, watch = await new_context(
        browser, site, permissions=["clipboard-read", "clipboard-write"])
    try:
        await page.goto("/")
        await page.click("text=Start free, no card needed")
        await page.fill("#name", "Browser Person")
        await page.fill("#email", "browser@example.com")
        await page.fill("#password", PASSWORD)
        await page.click("form.form button[type=submit]")
        await page.wait_for_url(re.compile(r"/register/verify$"))
        await page.fill("#code", await code_from_outbox(site, "browser@example.com"))
        await page.click("form.form button[type=submit]")
        await page.wait_for_url(re.compile(r"/dashboard$"))
        await expect(page.locator(".flash")).to_contain_text("verified")

        await page.fill("#key-name", "my laptop")
        await page.click("#keys button[type=submit]:has-text('Create key')")
        key_box = page.locator("#new-key-value")
        await expect(key_box).to_be_visible()
        await htmx_settled(page)
        raw_key = await key_box.input_value()
        assert raw_key.startswith("sk-llmapi-")
        assert page.url.endswith("/dashboard")  # htmx swapped the fragment, no navigation
        await page.click("button[data-copy='new-key-value']")
        await expect(page.locator("button[data-copy='new-key-value']")).to_have_text("Copied")
        assert await page.evaluate("navigator.clipboard.readText()") == raw_key
        await screenshot(page, "dashboard-new-key-desktop")

        status, _ = await call_messages(site, raw_key)
        assert status == 200
        user = await site.db.fetch_one("user_by_email", {"email": "browser@example.com"})
        await insert_synthetic_usage(site.db, user["id"], None, [
            SyntheticRequest(4000 + 900 * (d % 7), 800 + 150 * (d % 5), days_ago=d + 0.2)
            for d in range(1, 29)])
        await page.reload()
        bars = page.locator("svg.chart g.bar")
        await expect(bars).to_have_count(30)
        heights = await page.eval_on_selector_all(
            "svg.chart rect.bar-in", "rects => rects.map(r => r.getBBox().height)")
        assert sum(1 for h in heights if h > 0) >= 28
        await expect(page.locator("svg.chart")).to_have_attribute(
            "aria-label", re.compile(r"Tokens per day over the last 30 days"))
        await page.click("nav[aria-label='Chart range'] >> text=7 days")
        await expect(bars).to_have_count(7)
        await htmx_settled(page)
        await page.click("nav[aria-label='Chart range'] >> text=30 days")
        await expect(bars).to_have_count(30)
        await htmx_settled(page)
        await expect(page.locator("#recent-requests")).to_contain_text("claude-sonnet-4-5")
        await screenshot(page, "dashboard-desktop")

        page.once("dialog", lambda dialog: dialog.accept())
        await page.click("#keys button:has-text('Revoke')")
        await expect(page.locator("#keys")).to_contain_text("You have no active key yet.")
        watch.check()
    finally:
        await context.close()


async def test_admin_changes_a_users_plan_inline(browser: Browser, site: Gateway) -> None:
    await make_user(site, "admin-browser@example.com", admin=True)
    target = await make_user(site, "customer@example.com", plan="free")
    context, page, watch = await new_context(browser, site)
    try:
        await log_in(page, "admin-browser@example.com")
        await page.goto("/admin/users")
        await page.fill("#q", "customer")
        row = page.locator(f"#user-{target}")
        await expect(page.locator("#users-table > p")).to_have_text("1 user")
        await htmx_settled(page)
        assert "q=customer" in page.url  # the filter is in the URL (hx-push-url)
        await row.locator("select").select_option("team")
        await expect(page.locator(f"#user-{target}")).to_contain_text("Saved")
        await htmx_settled(page)
        sub = await site.db.fetch_one("subscription_by_user", {"user_id": target})
        assert sub["plan"] == "team"
        asked: list[str] = []

        async def confirm(dialog: Dialog) -> None:
            asked.append(dialog.message)
            await dialog.accept()

        page.once("dialog", confirm)
        await page.locator(f"#user-{target} button:has-text('Suspend')").click()
        await expect(page.locator(f"#user-{target}")).to_contain_text("suspended")
        assert asked and "customer@example.com" in asked[0]  # confirmed before suspending
        await screenshot(page, "admin-users-desktop")
        await page.goto("/admin/audit")
        await expect(page.locator("table")).to_contain_text("plan free -> team")
        await expect(page.locator("table")).to_contain_text("user.suspend")
        await page.goto("/admin")
        await expect(page.locator("#admin-health")).to_contain_text("demo")
        await screenshot(page, "admin-overview-desktop")
        watch.check()
    finally:
        await context.close()


async def test_non_admin_sees_the_403_page(browser: Browser, site: Gateway) -> None:
    await make_user(site, "nosy@example.com")
    context, page, watch = await new_context(browser, site)
    watch.expected_statuses.add("403")
    try:
        await log_in(page, "nosy@example.com")
        response = await page.goto("/admin")
        assert response is not None and response.status == 403
        await expect(page.locator("h1")).to_have_text("Not allowed")
        watch.check()
    finally:
        await context.close()


PUBLIC_PAGES = {"home": "/", "pricing": "/pricing", "docs": "/docs", "blog": "/blog",
                "blog-post": "/blog/why-gateways-break-tool-calls", "login": "/login",
                "register": "/register", "not-found": "/no/such/page"}
SIGNED_IN_PAGES = {"dashboard": "/dashboard", "settings": "/settings", "orders": "/orders",
                   "admin": "/admin", "admin-users": "/admin/users",
                   "admin-costs": "/admin/costs", "admin-outbox": "/admin/outbox"}


@pytest.mark.parametrize(("width_name", "viewport"), [("desktop", DESKTOP), ("phone", PHONE)])
async def test_main_pages_render_cleanly_on_desktop_and_phone(
        browser: Browser, site: Gateway, width_name: str, viewport: ViewportSize) -> None:
    email = f"tour-{width_name}@example.com"
    await make_user(site, email, admin=True, plan="pro")
    key = (await create_key(site.db, email)).raw
    await call_messages(site, key)
    context, page, watch = await new_context(browser, site, viewport)
    watch.expected_statuses.add("404")
    try:
        for name, path in PUBLIC_PAGES.items():
            response = await page.goto(path)
            assert response is not None
            assert response.status == (404 if name == "not-found" else 200), path
            await expect(page.locator("h1").first).to_be_visible()
            assert await page.evaluate(
                "document.documentElement.scrollWidth <= window.innerWidth + 1"), \
                f"{path} scrolls sideways at {viewport['width']} px"
            await screenshot(page, f"{name}-{width_name}")
        await log_in(page, email)
        for name, path in SIGNED_IN_PAGES.items():
            response = await page.goto(path)
            assert response is not None and response.status == 200, path
            assert await page.evaluate(
                "document.documentElement.scrollWidth <= window.innerWidth + 1"), \
                f"{path} scrolls sideways at {viewport['width']} px"
            await screenshot(page, f"{name}-{width_name}")
        watch.check()
    finally:
        await context.close()


async def test_forms_work_with_javascript_off(browser: Browser, site: Gateway) -> None:
    await make_user(site, "nojs@example.com", plan="pro")
    context, page, watch = await new_context(browser, site, java_script_enabled=False)
    try:
        await log_in(page, "nojs@example.com")
        await page.fill("#key-name", "no-js key")
        await page.click("#keys button[type=submit]:has-text('Create key')")
        await expect(page.locator("#new-key-value")).to_be_visible()
        assert (await page.locator("#new-key-value").input_value()).startswith("sk-llmapi-")
        for button in await page.locator("button[data-copy]").all():
            await expect(button).to_be_hidden()  # copying needs JavaScript
        await page.goto("/dashboard")
        await page.click("#keys button:has-text('Revoke')")
        await page.wait_for_url(re.compile(r"/dashboard"))
        await expect(page.locator(".flash")).to_contain_text("revoked")
        await page.goto("/settings")
        await page.fill("#name", "Plain Form")
        await page.click("#settings-name button[type=submit]")
        await expect(page.locator(".flash")).to_contain_text("Your name was saved.")
        watch.check()
    finally:
        await context.close()
