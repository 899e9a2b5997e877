"""The remote-control pages in real headless Chromium, against a real bridge running `sh` in
a pty: typing on the phone page reaches the shell and its output shows in xterm.js.

Like tests/test_browser.py: one browser for the module, every page watched for console
errors (a CSP refusal is one), page exceptions and requests to other hosts; screenshots go
to test-artifacts/screenshots/.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page, ViewportSize, expect

from gateway.accounts.users import create_key
from gateway.app import build_app
from gateway.remote.sessions import RemoteSession, create_session
from tests.helpers.browser import DESKTOP, PHONE, htmx_settled, new_context, screenshot
from tests.helpers.gateway import Gateway, make_config
from tests.helpers.remote import start_bridge, stop, wait_bridge
from tests.helpers.site import PASSWORD, make_user

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    app = build_app(make_config(tmp_path_factory.mktemp("remote-browser")))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield Gateway(server, app)
    await server.close()


async def user_with_session(site: Gateway, email: str) -> tuple[str, RemoteSession]:
    user_id = await make_user(site, email, plan="pro")
    key = (await create_key(site.db, email)).raw
    return key, await create_session(site.db, user_id, 2)


async def terminal_text(page: Page) -> str:
    text: str = await page.evaluate("window.llmapiRemote.text()")
    return text


async def wait_for_process(argv: list[str], timeout: float = 10) -> None:
    """Until a process with exactly this command line runs (read from /proc)."""
    wanted = "\0".join(argv).encode() + b"\0"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if (entry / "cmdline").read_bytes() == wanted:
                        return
                except OSError:
                    continue
        await asyncio.sleep(0.05)
    raise AssertionError(f"no process {argv} started within {timeout}s")


async def wait_for_text(page: Page, pattern: str, timeout: float = 10) -> str:
    """The terminal's buffer once `pattern` (a regex) appears in it. Polled with
    page.evaluate: wait_for_function would need eval, which the page's CSP forbids."""
    deadline = time.monotonic() + timeout
    while True:
        text = await terminal_text(page)
        if re.search(pattern, text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{pattern!r} never showed in the terminal:\n{text}")
        await asyncio.sleep(0.05)


async def test_phone_page_types_into_a_real_shell_and_shows_its_output(
        browser: Browser, site: Gateway) -> None:
    key, session = await user_with_session(site, "phone@example.com")
    bridge = await start_bridge(site, session.id, key)
    context, page, watch = await new_context(browser, site, PHONE)
    try:
        await wait_bridge(site, session.id, bridge)
        # signed out: the link from Claude Code goes through the login page and back
        await page.goto(f"/remote/{session.id}")
        await page.wait_for_url(re.compile(r"/login\?next="))
        await page.fill("#email", "phone@example.com")
        await page.fill("#password", PASSWORD)
        await page.click("form.form button[type=submit]")
        await page.wait_for_url(re.compile(f"/remote/{session.id}$"))
        status = page.locator("#remote-status")
        await expect(status).to_have_attribute("data-state", "connected")
        await expect(status).to_have_text("Connected to your terminal")

        # the text box sends the line plus Enter
        await page.fill("#term-line-text", "echo from-the-phone-$((6*7))")
        await page.click("#term-line button[type=submit]")
        await wait_for_text(page, r"(?m)^from-the-phone-42$")
        assert await page.input_value("#term-line-text") == ""

        # typing into xterm itself (a desktop keyboard, or a phone's once the terminal
        # has the focus)
        await page.click("#terminal")
        await page.keyboard.type("echo typed-$((40+2))")
        await page.keyboard.press("Enter")
        await wait_for_text(page, r"(?m)^typed-42$")

        # the shell's window is the size xterm fitted to the phone's width
        cols, rows = await page.evaluate(
            "[window.llmapiRemote.terminal.cols, window.llmapiRemote.terminal.rows]")
        assert 35 <= cols <= 60, cols  # 12 px monospace across a 390 px screen
        await page.fill("#term-line-text", "stty size")
        await page.press("#term-line-text", "Enter")
        await wait_for_text(page, rf"(?m)^{rows} {cols}$")

        # the on-screen Ctrl-C interrupts a running command
        await page.fill("#term-line-text", "sleep 30; echo sleep-was-not-interrupted")
        await page.click("#term-line button[type=submit]")
        await wait_for_text(page, r"sleep 30; echo sleep-was-not-interrupted")
        await wait_for_process(["sleep", "30"])  # a Ctrl-C before the shell ran it is lost
        await page.click(".term-key[data-key='ctrl-c']")
        await page.fill("#term-line-text", "echo after-$((1+1))-ctrl-c")
        await page.click("#term-line button[type=submit]")
        text = await wait_for_text(page, r"(?m)^after-2-ctrl-c$", timeout=8)
        assert "sleep-was-not-interrupted\n" not in text.replace(
            "echo sleep-was-not-interrupted", "")

        assert await page.evaluate(
            "document.documentElement.scrollWidth <= window.innerWidth + 1"), \
            "the terminal page scrolls sideways on a phone"
        box = await page.locator("#terminal").bounding_box()
        assert box is not None and box["width"] >= PHONE["width"] - 24  # full width
        await screenshot(page, "remote-terminal-phone")

        # End session: confirmed, the bridge process exits, the page says it is over
        page.once("dialog", lambda dialog: dialog.accept())
        await page.click(".term-end button")
        await page.wait_for_url(re.compile(f"/remote/{session.id}$"))
        await expect(page.locator("h2")).to_have_text("This session is over")
        await expect(page.locator(".flash")).to_contain_text("bridge has been told to exit")
        assert await asyncio.wait_for(bridge.wait(), 10) == 0
        await screenshot(page, "remote-ended-phone")
        watch.check()
    finally:
        await context.close()
        await stop(bridge)


async def test_page_opened_before_the_bridge_waits_reconnects_and_stops_when_ended(
        browser: Browser, site: Gateway) -> None:
    key, session = await user_with_session(site, "desk@example.com")
    context, page, watch = await new_context(browser, site, DESKTOP)
    bridge = None
    try:
        await page.goto("/login")
        await page.fill("#email", "desk@example.com")
        await page.fill("#password", PASSWORD)
        await page.click("form.form button[type=submit]")
        await page.wait_for_url(re.compile(r"/dashboard$"))
        await page.click("nav.nav >> text=Remote")
        await page.click(f"#session-{session.id} >> text=Open terminal")
        status = page.locator("#remote-status")
        await expect(status).to_have_attribute("data-state", "waiting")
        await expect(status).to_contain_text("Waiting for the bridge")

        # the bridge starts after the page: it still gets the page's terminal size
        bridge = await start_bridge(site, session.id, key)
        await wait_bridge(site, session.id, bridge)
        await expect(status).to_have_attribute("data-state", "connected")
        cols, rows = await page.evaluate(
            "[window.llmapiRemote.terminal.cols, window.llmapiRemote.terminal.rows]")
        assert cols > 100, cols  # wider than the bridge's 100-column default
        await page.fill("#term-line-text", "stty size")
        await page.press("#term-line-text", "Enter")
        await wait_for_text(page, rf"(?m)^{rows} {cols}$")

        await page.fill("#term-line-text", "echo before-the-drop")
        await page.press("#term-line-text", "Enter")
        await wait_for_text(page, r"(?m)^before-the-drop$")

        room = site.remote.rooms.rooms[session.id]  # LocalRooms: this process's rooms
        for viewer in list(room.viewers):  # e.g. a proxy restarting, a phone changing network
            await viewer.close(code=1012, message=b"restarting")
        await expect(status).to_have_attribute("data-state", "connected", timeout=10_000)
        for _ in range(100):
            if len(room.viewers) == 1:
                break
            await asyncio.sleep(0.05)
        assert len(room.viewers) == 1
        await page.fill("#term-line-text", "echo after-the-drop")
        await page.press("#term-line-text", "Enter")
        text = await wait_for_text(page, r"(?m)^after-the-drop$")
        # the hub's replay on reconnect repainted the screen rather than repeating it
        assert re.findall(r"(?m)^before-the-drop$", text) == ["before-the-drop"], text
        await screenshot(page, "remote-terminal-desktop")

        # ended elsewhere (another tab, the sweeper): the page stops and says why
        await site.remote.end(session.id, "ended by the user")
        await expect(status).to_have_attribute("data-state", "ended")
        await expect(status).to_contain_text("ended by the user")
        await expect(page.locator("#term-line-text")).to_be_disabled()
        await expect(page.locator(".term-end")).to_be_hidden()
        await screenshot(page, "remote-terminal-ended-desktop")
        # nobody comes back: the bridge exits (told 4410), and the page, once "ended", has
        # stopped its reconnect timer for good (static/js/remote.js showEnded)
        assert await asyncio.wait_for(bridge.wait(), 10) == 0
        deadline = time.monotonic() + 10
        while session.id in site.remote.rooms.session_ids():
            assert time.monotonic() < deadline, "the ended session's room never closed"
            await asyncio.sleep(0.02)
        assert await page.evaluate("window.llmapiRemote.state()") == "ended"
        assert session.id not in site.remote.rooms.session_ids()
        watch.check()
    finally:
        await context.close()
        if bridge is not None:
            await stop(bridge)


@pytest.mark.parametrize(("width_name", "viewport"), [("desktop", DESKTOP), ("phone", PHONE)])
async def test_sessions_list_ends_a_session_in_place(
        browser: Browser, site: Gateway, width_name: str, viewport: ViewportSize) -> None:
    email = f"list-{width_name}@example.com"
    _, first = await user_with_session(site, email)
    second = await create_session(site.db, first.user_id, 2)
    context, page, watch = await new_context(browser, site, viewport)
    try:
        await page.goto("/login?next=/remote")
        await page.fill("#email", email)
        await page.fill("#password", PASSWORD)
        await page.click("form.form button[type=submit]")
        await page.wait_for_url(re.compile(r"/remote$"))
        await expect(page.locator(".remote-item")).to_have_count(2)
        await expect(page.locator("#remote-sessions .card-head")).to_contain_text("2 open")
        assert await page.evaluate(
            "document.documentElement.scrollWidth <= window.innerWidth + 1"), \
            f"/remote scrolls sideways at {viewport['width']} px"
        await screenshot(page, f"remote-list-{width_name}")
        page.once("dialog", lambda dialog: dialog.accept())
        await page.click(f"#session-{second.id} button:has-text('End')")
        await expect(page.locator(f"#session-{second.id}")).to_contain_text("ended by the user")
        await htmx_settled(page)
        assert page.url.endswith("/remote")  # swapped in place, no navigation
        await expect(page.locator("#remote-sessions .card-head")).to_contain_text("1 open")
        row = await site.db.fetch_one("remote_session_by_id", {"id": second.id})
        assert row["status"] == "ended"
        watch.check()
    finally:
        await context.close()
