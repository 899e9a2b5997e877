"""The new site flows in real headless Chromium, in Chinese and English, at desktop and 390 px
phone widths: every page is checked for sideways scrolling and by axe-core (no serious or
critical violation), the password reset runs with JavaScript off, the menu button and the
focus after revoking a key work. Screenshots go to test-artifacts/screenshots/.

axe-core is vendored under tests/browser/vendor/axe-core (MPL-2.0), never fetched: it is
injected into the page, so these contexts bypass the page's CSP for that one script.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, ViewportSize, expect

from gateway.accounts.users import create_key
from gateway.app import build_app
from tests.helpers.browser import DESKTOP, LANGUAGES, PHONE, WIDTHS, check_page, context_for, shot
from tests.helpers.gateway import Gateway, make_config
from tests.helpers.site import PASSWORD, call_messages, code_from_outbox, make_user

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.browser]

PUBLIC = {"home": "/", "pricing": "/pricing", "docs": "/docs", "blog": "/blog",
          "login": "/login", "register": "/register?plan=pro", "forgot": "/password/forgot",
          "reset": "/password/reset", "terms": "/terms", "privacy": "/privacy",
          "refunds": "/refunds", "sitemap": "/sitemap", "not-found": "/no/such/page",
          "blog-post": "/blog/claude-code-on-qwen"}
SIGNED_IN = {"dashboard": "/dashboard", "settings": "/settings", "orders": "/orders",
             "billing": "/billing", "remote": "/remote", "admin": "/admin",
             "admin-users": "/admin/users", "admin-orders": "/admin/orders",
             "admin-costs": "/admin/costs", "admin-audit": "/admin/audit",
             "admin-margin": "/admin/margin", "admin-outbox": "/admin/outbox",
             "admin-audit-filtered": "/admin/audit?actor=cli&action=user.plan"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    app = build_app(make_config(tmp_path_factory.mktemp("flows")))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield Gateway(server, app)
    await server.close()


@pytest.mark.parametrize(("width_name", "viewport"), WIDTHS)
@pytest.mark.parametrize("lang", list(LANGUAGES))
async def test_every_page_fits_the_width_and_passes_axe(
        browser: Browser, site: Gateway, width_name: str, viewport: ViewportSize,
        lang: str) -> None:
    email = f"flows-{width_name}-{lang}@example.com"
    await make_user(site, email, admin=True, plan="pro")
    key = (await create_key(site.db, email)).raw
    await call_messages(site, key)
    context, page = await context_for(browser, site, viewport, lang)
    problems: list[str] = []
    try:
        for name, path in PUBLIC.items():
            await page.goto(path)
            assert await page.get_attribute("html", "lang") == lang, path
            problems += await check_page(page, path)
            await shot(page, f"flows-{name}-{lang}-{width_name}")
        await page.goto("/login")
        await page.fill("#email", email)
        await page.fill("#password", PASSWORD)
        await page.click("form.form button[type=submit]")
        await page.wait_for_url(re.compile(r"/dashboard$"))
        for name, path in SIGNED_IN.items():
            response = await page.goto(path)
            assert response is not None and response.status == 200, path
            problems += await check_page(page, path)
            await shot(page, f"flows-{name}-{lang}-{width_name}")
    finally:
        await context.close()
    assert not problems, "\n".join(problems)


async def test_phone_menu_button_opens_the_navigation(browser: Browser, site: Gateway) -> None:
    await make_user(site, "menu@example.com")
    context, page = await context_for(browser, site, PHONE, "zh-CN")
    try:
        await page.goto("/")
        nav = page.locator("nav.nav")
        await expect(nav).to_be_hidden()
        await page.click("summary.menu-button")
        await expect(nav).to_be_visible()
        await expect(nav.locator("a[href='/pricing']")).to_have_text("价格")
        await shot(page, "flows-menu-open-zh-CN-phone")
    finally:
        await context.close()


async def test_language_switch_keeps_the_page_and_the_choice(browser: Browser,
                                                             site: Gateway) -> None:
    context, page = await context_for(browser, site, DESKTOP, "en")
    try:
        await page.goto("/pricing")
        await page.click("nav.lang-switch >> text=中文")
        await expect(page.locator("h1")).to_have_text("价格")
        await page.goto("/docs")
        assert await page.get_attribute("html", "lang") == "zh-CN"  # the cookie kept it
    finally:
        await context.close()


async def test_focus_lands_on_the_notice_after_revoking_a_key(browser: Browser,
                                                              site: Gateway) -> None:
    await make_user(site, "focus@example.com")
    await create_key(site.db, "focus@example.com")
    context, page = await context_for(browser, site, DESKTOP, "en")
    try:
        await page.goto("/login")
        await page.fill("#email", "focus@example.com")
        await page.fill("#password", PASSWORD)
        await page.click("form.form button[type=submit]")
        await page.wait_for_url(re.compile(r"/dashboard$"))
        page.once("dialog", lambda dialog: dialog.accept())
        await page.click("#keys button:has-text('Revoke')")
        notice = page.locator("#keys .flash")
        await expect(notice).to_be_visible()
        await expect(notice).to_be_focused()
        font = await page.evaluate("getComputedStyle(document.querySelector('#snip-unix'))"
                                   ".fontFamily")
        assert "mono" in font.lower()
    finally:
        await context.close()


@pytest.mark.parametrize(("width_name", "viewport"), WIDTHS)
async def test_password_reset_with_javascript_off_in_chinese(
        browser: Browser, site: Gateway, width_name: str, viewport: ViewportSize) -> None:
    email = f"reset-{width_name}@example.com"
    await make_user(site, email)
    context, page = await context_for(browser, site, viewport, "zh-CN", js=False)
    try:
        await page.goto("/login")
        await page.click("text=忘记密码？")
        await page.fill("#email", email)
        await page.click("form.form button[type=submit]")
        await page.wait_for_url(re.compile(r"/password/reset$"))
        await expect(page.locator(".flash")).to_contain_text("验证码已经发往")
        await page.fill("#code", await code_from_outbox(site, email))
        await page.fill("#new_password", "a brand new password")
        await page.fill("#confirm_password", "a brand new password")
        await shot(page, f"flows-reset-filled-zh-CN-{width_name}")
        await page.click("form.form button[type=submit]")
        await page.wait_for_url(re.compile(r"/login$"))
        await expect(page.locator(".flash")).to_contain_text("密码已修改")
        await page.fill("#email", email)
        await page.fill("#password", "a brand new password")
        await page.click("form.form button[type=submit]")
        await page.wait_for_url(re.compile(r"/dashboard$"))
        await shot(page, f"flows-dashboard-after-reset-zh-CN-{width_name}")
    finally:
        await context.close()


async def test_sign_up_with_a_chosen_plan_lands_on_billing_in_english(
        browser: Browser, site: Gateway) -> None:
    context, page = await context_for(browser, site, PHONE, "en", js=False)
    try:
        await page.goto("/pricing")
        await page.click("a[href='/register?plan=pro']")
        await expect(page.locator(".notice")).to_contain_text("Pro plan")
        await page.fill("#email", "planned@example.com")
        await page.fill("#password", PASSWORD)
        await page.click("form.form button[type=submit]")
        await page.wait_for_url(re.compile(r"/register/verify$"))
        await page.fill("#code", await code_from_outbox(site, "planned@example.com"))
        await page.click("form.form button[type=submit]")
        await page.wait_for_url(re.compile(r"/billing\?plan=pro$"))
        await expect(page.locator(".flash")).to_contain_text("plan you chose")
        await shot(page, "flows-billing-chosen-plan-en-phone")
    finally:
        await context.close()
