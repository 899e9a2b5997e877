"""Checkout in headless Chromium: pricing -> Alipay QR page -> the fake pays -> "Paid" appears
by itself (htmx polling), and with JavaScript off the "check the status" link does the job."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, expect

from gateway.testing.fake_alipay import load_or_create_keys
from tests.helpers.browser import log_in, new_context, screenshot
from tests.helpers.payment import Shop, start_shop
from tests.helpers.site import make_user

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shop(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Shop]:
    keys_dir: Path = tmp_path_factory.mktemp("browser-alipay-keys")
    servers: list[TestServer] = []
    shop = await start_shop(tmp_path_factory.mktemp("browser-shop"), keys_dir,
                            load_or_create_keys(keys_dir), servers)
    yield shop
    for server in reversed(servers):
        await server.close()


async def test_checkout_page_turns_to_paid_without_a_reload(browser: Browser,
                                                            shop: Shop) -> None:
    await make_user(shop.gw, "qr@example.com")
    context, page, watch = await new_context(browser, shop.gw)
    try:
        await log_in(page, "qr@example.com")
        await page.goto("/pricing")
        await page.click("#plan-pro ~ form button")
        await page.wait_for_url(re.compile(r"/billing/orders/LL\w+$"))
        no = page.url.rsplit("/", 1)[-1]
        await expect(page.locator("svg.qr")).to_be_visible()
        await expect(page.locator("#order-status")).to_contain_text("Waiting for payment")
        await screenshot(page, "checkout-pending")
        loads = []
        page.on("load", lambda _: loads.append(1))

        await shop.pay(no)
        await expect(page.locator("#order-status")).to_contain_text("Paid", timeout=6000)
        await expect(page.locator("svg.qr")).to_have_count(0)  # swapped out of band
        assert loads == []  # htmx swapped the fragment; the page never reloaded
        await screenshot(page, "checkout-paid")
        watch.check()
    finally:
        await context.close()


async def test_checkout_without_javascript_uses_the_status_link(browser: Browser,
                                                                shop: Shop) -> None:
    await make_user(shop.gw, "nojs@example.com")
    context, page, watch = await new_context(browser, shop.gw,
                                             java_script_enabled=False)
    try:
        await log_in(page, "nojs@example.com")
        await page.goto("/billing")
        await page.click("#buy-starter ~ form button")
        await page.wait_for_url(re.compile(r"/billing/orders/LL\w+$"))
        await shop.pay(page.url.rsplit("/", 1)[-1])
        await page.click("text=Check the status")
        await expect(page.locator("#order-status")).to_contain_text("Paid")
        await page.goto("/billing")
        await expect(page.locator("#current-plan")).to_have_text("Plan: Starter")
        await screenshot(page, "billing")
        watch.check()
    finally:
        await context.close()
