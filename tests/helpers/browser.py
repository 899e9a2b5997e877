"""What the Chromium tests share: viewports, a context that watches for console errors and
off-server requests, screenshots, waiting for htmx, signing in, and the axe check."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

from playwright.async_api import Browser, BrowserContext, Page, ViewportSize

from tests.helpers.gateway import ROOT, Gateway
from tests.helpers.site import PASSWORD

SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
AXE_JS = ROOT / "tests" / "browser" / "vendor" / "axe-core" / "axe.min.js"
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}
WIDTHS = [("desktop", DESKTOP), ("phone", PHONE)]
LANGUAGES = {"en": "en-US", "zh-CN": "zh-CN"}
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


class Watch:
    """Console errors, page exceptions and off-server requests seen by one context."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.expected_statuses: set[str] = set()

    def attach(self, page: Page) -> None:
        page.on("console", lambda m: self._console(m.type, m.text))
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("request", lambda r: self._request(r.url))

    def _console(self, kind: str, text: str) -> None:
        if kind != "error":
            return
        if any(f"status of {s}" in text for s in self.expected_statuses):
            return  # the document itself was an expected error page (the 404 screenshot)
        self.problems.append(f"console error: {text}")

    def _request(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob", "about"):
            return
        if parts.hostname not in LOOPBACK:
            self.problems.append(f"request to another host: {url}")

    def check(self) -> None:
        assert not self.problems, "\n".join(self.problems)


async def new_context(browser: Browser, site: Gateway, viewport: ViewportSize = DESKTOP, *,
                      permissions: list[str] | None = None,
                      java_script_enabled: bool = True) -> tuple[BrowserContext, Page, Watch]:
    context = await browser.new_context(base_url=site.url, viewport=viewport,
                                        permissions=permissions,
                                        java_script_enabled=java_script_enabled)
    watch = Watch()
    context.on("page", watch.attach)
    page = await context.new_page()
    return context, page, watch


async def context_for(browser: Browser, site: Gateway, viewport: ViewportSize, lang: str,
                      *, js: bool = True) -> tuple[BrowserContext, Page]:
    """A context in one of the site's languages (CSP bypassed so axe can be injected)."""
    context = await browser.new_context(base_url=site.url, viewport=viewport,
                                        locale=LANGUAGES[lang], java_script_enabled=js,
                                        bypass_csp=True)
    page = await context.new_page()
    return context, page


async def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 5000
    return path


async def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def htmx_settled(page: Page, timeout: float = 5) -> None:
    """htmx wires up swapped-in elements when it settles (20 ms after the swap); a person
    cannot click that fast, a test can."""
    busy = "() => !!document.querySelector('.htmx-request, .htmx-swapping, .htmx-settling, " \
           ".htmx-added')"
    deadline = time.monotonic() + timeout
    while await page.evaluate(busy):  # page.evaluate, not wait_for_function: CSP forbids eval
        if time.monotonic() > deadline:
            raise AssertionError(f"htmx never settled within {timeout}s")
        await asyncio.sleep(0.02)


async def log_in(page: Page, email: str, password: str = PASSWORD) -> None:
    await page.goto("/login")
    await page.fill("#email", email)
    await page.fill("#password", password)
    await page.click("form.form button[type=submit]")
    await page.wait_for_url(re.compile(r"/dashboard$"))


async def check_page(page: Page, label: str) -> list[str]:
    """Sideways scrolling and serious/critical axe violations on the current page."""
    problems = []
    if not await page.evaluate("document.documentElement.scrollWidth <= innerWidth + 1"):
        problems.append(f"{label}: scrolls sideways")
    await page.add_script_tag(content=AXE_JS.read_text(encoding="utf-8"))
    result = await page.evaluate(
        "async () => JSON.stringify((await axe.run(document, {resultTypes: ['violations']}))"
        ".violations.filter(v => v.impact === 'serious' || v.impact === 'critical')"
        ".map(v => v.id + ': ' + v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(', ')))")
    problems += [f"{label}: axe {v}" for v in json.loads(result)]
    return problems
