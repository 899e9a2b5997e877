"""The remote-control pages over HTTP: who sees which session, ending one, the JSON twin,
and the W3C validator over the pages."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import quote

import aiohttp
import orjson

from gateway.accounts.users import create_key
from gateway.remote.sessions import RemoteSession, create_session, end_session
from tests.helpers.gateway import Gateway
from tests.helpers.html import validate, wrap
from tests.helpers.remote import start_bridge, stop, wait_bridge
from tests.helpers.site import SiteClient, make_user, signed_in
from web.site import CONTENT_SECURITY_POLICY


async def session_of(gw: Gateway, email: str, *, ended: str = "") -> RemoteSession:
    user = await gw.db.fetch_one("user_by_email", {"email": email})
    session = await create_session(gw.db, user["id"], 2)
    if ended:
        await end_session(gw.db, session.id, ended)
    return session


async def status_of(gw: Gateway, session_id: str) -> tuple[str, str | None]:
    row = await gw.db.fetch_one("remote_session_by_id", {"id": session_id})
    return row["status"], row["end_reason"]


async def test_list_shows_only_the_users_own_sessions(gateway: Gateway) -> None:
    alice = await signed_in(gateway, "alice@example.com", plan="pro")
    bob = await signed_in(gateway, "bob@example.com", plan="pro")
    try:
        open_one = await session_of(gateway, "alice@example.com")
        over = await session_of(gateway, "alice@example.com", ended="the terminal exited")
        bobs = await session_of(gateway, "bob@example.com")
        status, page, _ = await alice.get("/remote")
        assert status == 200
        assert open_one.id in page and over.id in page and bobs.id not in page
        assert "Waiting for the bridge" in page and "the terminal exited" in page
        assert f'action="/remote/{open_one.id}/end"' in page
        assert f'action="/remote/{over.id}/end"' not in page  # nothing to end
        assert f'href="/remote/{open_one.id}"' in page
        status, page, _ = await bob.get("/remote")
        assert bobs.id in page and open_one.id not in page and over.id not in page
    finally:
        await alice.close()
        await bob.close()


async def test_signed_out_visitor_is_sent_to_log_in_and_back(gateway: Gateway) -> None:
    await make_user(gateway, "owner@example.com")
    session = await session_of(gateway, "owner@example.com")
    visitor = SiteClient(gateway)
    try:
        for path in ("/remote", f"/remote/{session.id}"):
            status, _, headers = await visitor.get(path)
            assert status == 302
            assert headers["Location"] == "/login?next=" + quote(path, safe="/")
        status, text, _ = await visitor.post(f"/remote/{session.id}/end")
        assert status == 302 and await status_of(gateway, session.id) == ("waiting", None), text
    finally:
        await visitor.close()


async def test_another_users_session_is_a_404_like_a_missing_one(gateway: Gateway) -> None:
    await make_user(gateway, "owner@example.com")
    session = await session_of(gateway, "owner@example.com")
    other = await signed_in(gateway, "other@example.com")
    try:
        status, theirs, _ = await other.get(f"/remote/{session.id}")
        assert status == 404
        status, missing, _ = await other.get("/remote/rc_no-such-session")
        assert status == 404
        assert theirs.replace(session.id, "X") == missing.replace("rc_no-such-session", "X")
        status, _, _ = await other.post(f"/remote/{session.id}/end")
        assert status == 404
        assert await status_of(gateway, session.id) == ("waiting", None)
    finally:
        await other.close()


async def test_terminal_page_loads_xterm_under_a_csp_that_only_relaxes_styles(
        gateway: Gateway) -> None:
    owner = await signed_in(gateway, "owner@example.com")
    session = await session_of(gateway, "owner@example.com")
    try:
        status, page, headers = await owner.get(f"/remote/{session.id}")
        assert status == 200
        assert f'id="terminal" class="term-screen" data-session="{session.id}"' in page
        for asset in ("vendor/xterm/xterm.js", "vendor/xterm/addon-fit.js",
                      "vendor/xterm/xterm.css", "js/remote.js"):
            assert f"/static/{asset}?v=" in page
        assert "<script>" not in page  # no inline script: the CSP would refuse it
        csp = headers["Content-Security-Policy"]
        assert "style-src 'self' 'unsafe-inline'" in csp
        assert "script-src 'self';" in csp and "connect-src 'self';" in csp
        assert headers["Cache-Control"] == "no-store"
        _, _, list_headers = await owner.get("/remote")
        assert list_headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        status, body, _ = await owner.get("/static/vendor/xterm/LICENSE")
        assert status == 200 and "Permission is hereby granted" in body
    finally:
        await owner.close()


async def test_a_session_that_is_over_shows_why_instead_of_a_terminal(
        gateway: Gateway) -> None:
    owner = await signed_in(gateway, "owner@example.com")
    over = await session_of(gateway, "owner@example.com", ended="ended by the user")
    try:
        status, page, _ = await owner.get(f"/remote/{over.id}")
        assert status == 200
        assert "This session is over" in page and "ended by the user" in page
        assert 'id="terminal"' not in page and "xterm.js" not in page
        db = gateway.db
        late = await session_of(gateway, "owner@example.com")
        async with db.transaction():  # past its expiry, not yet swept
            await db.conn.execute("UPDATE remote_sessions SET expires_at = ? WHERE id = ?",
                                  (time.time() - 1, late.id))
        status, page, _ = await owner.get(f"/remote/{late.id}")
        assert "This session is over" in page and "Expired" in page
    finally:
        await owner.close()


async def test_ending_needs_the_csrf_token(gateway: Gateway) -> None:
    owner = await signed_in(gateway, "owner@example.com")
    session = await session_of(gateway, "owner@example.com")
    try:
        status, _, _ = await owner.post(f"/remote/{session.id}/end", csrf=False)
        assert status == 403
        status, _, _ = await owner.post(f"/remote/{session.id}/end",
                                        {"csrf_token": "forged"}, csrf=False)
        assert status == 403
        assert await status_of(gateway, session.id) == ("waiting", None)
    finally:
        await owner.close()


async def test_ending_a_session_closes_the_bridge_and_the_viewers(gateway: Gateway) -> None:
    owner = await signed_in(gateway, "owner@example.com", plan="pro")
    key = (await create_key(gateway.db, "owner@example.com")).raw
    session = await session_of(gateway, "owner@example.com")
    bridge = await start_bridge(gateway, session.id, key)
    try:
        await wait_bridge(gateway, session.id, bridge)
        _, page, _ = await owner.get("/remote")
        assert "Bridge connected" in page
        phone = await owner.http.ws_connect(
            f"{gateway.url}/remote-ws?role=viewer&session={session.id}",
            headers={"Origin": gateway.url})
        status, _, headers = await owner.post(f"/remote/{session.id}/end",
                                              {"next": f"/remote/{session.id}"})
        assert status == 303 and headers["Location"] == f"/remote/{session.id}"
        assert await status_of(gateway, session.id) == ("ended", "ended by the user")
        assert await asyncio.wait_for(bridge.wait(), 10) == 0  # the bridge process exits
        frames = []
        msg = await phone.receive(timeout=5)
        while msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
            frames.append(orjson.loads(msg.data))
            msg = await phone.receive(timeout=5)
        assert {"type": "status", "ended": True, "reason": "ended by the user"} in frames
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 4410)  # do not reconnect
        status, page, _ = await owner.get(f"/remote/{session.id}")
        assert "its bridge has been told to exit" in page and "This session is over" in page
        # ending it again is harmless and says so
        status, _, headers = await owner.post(f"/remote/{session.id}/end",
                                              {"next": "https://evil.example/"})
        assert status == 303 and headers["Location"] == "/remote"
        _, page, _ = await owner.get("/remote")
        assert "had already ended" in page
    finally:
        await stop(bridge)
        await owner.close()


async def test_ending_from_the_list_with_htmx_swaps_in_the_new_list(gateway: Gateway) -> None:
    owner = await signed_in(gateway, "owner@example.com")
    session = await session_of(gateway, "owner@example.com")
    try:
        hx = {"HX-Request": "true", "HX-Target": "remote-sessions"}
        status, fragment, _ = await owner.post(f"/remote/{session.id}/end", headers=hx)
        assert status == 200
        assert fragment.startswith('<section id="remote-sessions"')
        assert "ended by the user" in fragment and "0 open" in fragment
        # from the terminal page (no target) htmx is sent to the page after the post
        other = await session_of(gateway, "owner@example.com")
        status, _, headers = await owner.post(
            f"/remote/{other.id}/end", {"next": f"/remote/{other.id}"},
            headers={"HX-Request": "true"})
        assert status == 204 and headers["HX-Redirect"] == f"/remote/{other.id}"
        assert await status_of(gateway, other.id) == ("ended", "ended by the user")
    finally:
        await owner.close()


async def test_json_api_lists_and_ends_only_own_sessions(gateway: Gateway) -> None:
    owner = await signed_in(gateway, "owner@example.com")
    other = await signed_in(gateway, "other@example.com")
    session = await session_of(gateway, "owner@example.com")
    try:
        status, body = await owner.json("GET", "/api/remote/sessions")
        assert status == 200
        assert [(s["id"], s["state"], s["open"]) for s in body["sessions"]] == [
            (session.id, "waiting", True)]
        assert body["sessions"][0]["url"].endswith(f"/remote/{session.id}")
        status, body = await other.json("GET", "/api/remote/sessions")
        assert body == {"sessions": []}
        status, body = await other.json("POST", f"/api/remote/sessions/{session.id}/end")
        assert status == 404 and body["error"]["type"] == "not_found_error"
        status, body = await owner.json("POST", f"/api/remote/sessions/{session.id}/end",
                                        csrf=False)
        assert status == 403 and body["error"]["type"] == "permission_error"
        status, body = await owner.json("POST", f"/api/remote/sessions/{session.id}/end")
        assert status == 200
        assert (body["state"], body["open"], body["end_reason"]) == (
            "ended", False, "ended by the user")
        async with aiohttp.ClientSession() as anonymous, anonymous.get(
                f"{gateway.url}/api/remote/sessions/{session.id}") as r:
            assert r.status == 401
    finally:
        await owner.close()
        await other.close()


async def test_nav_links_to_remote_only_when_signed_in(gateway: Gateway) -> None:
    owner = await signed_in(gateway, "owner@example.com")
    visitor = SiteClient(gateway)
    try:
        _, page, _ = await owner.get("/remote")
        assert '<a href="/remote" aria-current="page">Remote</a>' in page
        _, page, _ = await visitor.get("/")
        assert 'href="/remote"' not in page
    finally:
        await owner.close()
        await visitor.close()


async def test_remote_pages_pass_the_html_validator(gateway: Gateway, tmp_path: Path) -> None:
    owner = await signed_in(gateway, "owner@example.com")
    pages: dict[str, str] = {}
    try:
        pages["/remote (none)"] = (await owner.get("/remote"))[1]
        live = await session_of(gateway, "owner@example.com")
        over = await session_of(gateway, "owner@example.com", ended="the terminal exited")
        pages["/remote"] = (await owner.get("/remote"))[1]
        pages["/remote/<open>"] = (await owner.get(f"/remote/{live.id}"))[1]
        pages["/remote/<over>"] = (await owner.get(f"/remote/{over.id}"))[1]
        pages["sessions fragment"] = wrap((await owner.get(
            "/remote", headers={"HX-Request": "true", "HX-Target": "remote-sessions"}))[1])
    finally:
        await owner.close()
    assert pages["sessions fragment"].count('id="remote-sessions"') == 1
    names = {}
    for i, (name, html) in enumerate(pages.items()):
        file = tmp_path / f"remote{i:02d}.html"
        file.write_text(html, encoding="utf-8")
        names[file.name] = name
    problems = validate(sorted(str(p) for p in tmp_path.glob("remote*.html")))
    readable = [f"{names.get(uri.rsplit('/', 1)[-1], uri)}: {message}"
                for uri, message in problems]
    assert not readable, "\n".join(readable)
