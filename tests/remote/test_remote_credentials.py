"""Remote-control sockets live only as long as their credentials (issue 14).

Real gateways on loopback, real WebSockets: a suspension, a revoked key or a password
change made anywhere (here directly in the database, as another instance or the CLI would)
closes the user's live bridge and viewer sockets within the key cache's refresh; the
viewer's Origin must be the configured public URL's, never whatever the Host header says.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson

from gateway.accounts.signup import change_password
from gateway.accounts.users import (
    create_key,
    create_user,
    end_sessions,
    revoke_key,
    set_user_status,
)
from gateway.remote.hub import CLOSE_REVOKED
from gateway.remote.sessions import create_session
from tests.helpers.gateway import Gateway

PASSWORD = "correct horse battery staple"


async def signed_in(gw: Gateway, email: str) -> aiohttp.ClientSession:
    session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with session.get(gw.url + "/api/auth/csrf") as r:
        token = (await r.json())["csrf_token"]
    async with session.post(gw.url + "/api/auth/login",
                            data={"email": email, "password": PASSWORD},
                            headers={"X-CSRF-Token": token}) as r:
        assert r.status == 200, await r.text()
    return session


def ws_url(gw: Gateway, session_id: str, role: str) -> str:
    return f"{gw.url}/remote-ws?role={role}&session={session_id}"


async def closed_with(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5) -> int | None:
    """Read until the server closes; the close code (None if still open at the deadline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = await ws.receive(timeout=max(0.05, deadline - time.monotonic()))
        except TimeoutError:
            return None
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                        aiohttp.WSMsgType.CLOSING):
            return ws.close_code
    return None


async def still_open(ws: aiohttp.ClientWebSocketResponse) -> bool:
    """Open and answering: a ping gets its pong."""
    await ws.send_bytes(b'{"type":"ping"}')
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        msg = await ws.receive(timeout=5)
        if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            return False
        if orjson.loads(msg.data)["type"] == "pong":
            return True
    return False


async def connected_pair(gw: Gateway, email: str) -> tuple[Any, ...]:
    user_id = await create_user(gw.db, email, password=PASSWORD, plan="team")
    key = await create_key(gw.db, email)
    session = await create_session(gw.db, user_id, 2)
    browser = await signed_in(gw, email)
    bridge = await browser.ws_connect(ws_url(gw, session.id, "bridge"),
                                      headers={"x-api-key": key.raw})
    viewer = await browser.ws_connect(ws_url(gw, session.id, "viewer"),
                                      headers={"Origin": gw.url})
    return user_id, key, session, browser, bridge, viewer


async def connection_reasons(gw: Gateway, session_id: str) -> list[str]:
    deadline = time.monotonic() + 5
    while True:
        rows = await gw.db.fetch_all("remote_connections_of_session",
                                     {"session_id": session_id})
        if all(r["ended_at"] is not None for r in rows) or time.monotonic() > deadline:
            return sorted(str(r["end_reason"]) for r in rows)
        await asyncio.sleep(0.05)


async def test_suspension_closes_bridge_and_viewer(gateway: Gateway) -> None:
    _, _, session, browser, bridge, viewer = await connected_pair(gateway, "s@example.com")
    try:
        assert await still_open(bridge) and await still_open(viewer)
        started = time.monotonic()
        await set_user_status(gateway.db, "s@example.com", "suspended")
        codes = await asyncio.gather(closed_with(bridge), closed_with(viewer))
        assert codes == [CLOSE_REVOKED, CLOSE_REVOKED]
        assert time.monotonic() - started < 2  # the key cache polls every 0.4 s
        assert await connection_reasons(gateway, session.id) == ["account suspended"] * 2
        # and they cannot come back
        async with browser.ws_connect(ws_url(gateway, session.id, "bridge"),
                                      headers={"x-api-key": "x"}) as _:
            raise AssertionError("a bad key got in")
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status == 401
    finally:
        await browser.close()


async def test_revoking_the_key_closes_its_bridge_only(gateway: Gateway) -> None:
    _, key, session, browser, bridge, viewer = await connected_pair(gateway, "r@example.com")
    try:
        await revoke_key(gateway.db, key.prefix)
        assert await closed_with(bridge) == CLOSE_REVOKED
        assert await still_open(viewer)  # the viewer signed in with a password, not the key
        try:
            await browser.ws_connect(ws_url(gateway, session.id, "bridge"),
                                     headers={"x-api-key": key.raw})
            raise AssertionError("a revoked key got in again")
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 401
    finally:
        await viewer.close()
        await browser.close()


async def test_password_change_closes_every_socket_of_the_user(gateway: Gateway) -> None:
    user_id, key, session, browser, bridge, viewer = await connected_pair(
        gateway, "p@example.com")
    _, _, _, other_browser, other_bridge, other_viewer = \
        await connected_pair(gateway, "q@example.com")
    try:
        await change_password(gateway.db, user_id, PASSWORD, "a different long passphrase",
                              "a different long passphrase")
        assert await asyncio.gather(closed_with(bridge), closed_with(viewer)) == \
            [CLOSE_REVOKED, CLOSE_REVOKED]
        # someone else's sockets are untouched
        assert await still_open(other_bridge) and await still_open(other_viewer)
        # the old cookie no longer opens a viewer; the key still opens a bridge
        try:
            await browser.ws_connect(ws_url(gateway, session.id, "viewer"),
                                     headers={"Origin": gateway.url})
            raise AssertionError("the old sign-in got in again")
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 401
        again = await browser.ws_connect(ws_url(gateway, session.id, "bridge"),
                                         headers={"x-api-key": key.raw})
        assert await still_open(again)
        await again.close()
    finally:
        await other_bridge.close()
        await other_viewer.close()
        await browser.close()
        await other_browser.close()


async def handshake(client: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> int:
    try:
        ws = await client.ws_connect(url, headers=headers)
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await ws.close()
    return 101


async def test_origin_is_compared_with_the_configured_public_url(
        gateway_factory: Any) -> None:
    gw = await gateway_factory({"server": {"public_url": "http://relay.example.com"}})
    user_id = await create_user(gw.db, "o@example.com", password=PASSWORD, plan="team")
    session = await create_session(gw.db, user_id, 2)
    browser = await signed_in(gw, "o@example.com")
    url = ws_url(gw, session.id, "viewer")
    host = gw.url.split("://", 1)[1]
    try:
        # the request's own Host is not enough: it is what a DNS-rebinding page controls
        assert await handshake(browser, url, {"Origin": gw.url}) == 403
        assert await handshake(browser, url, {"Origin": "http://evil.example",
                                              "Host": "evil.example"}) == 403
        assert await handshake(browser, url, {"Origin": "http://relay.example.com.evil"}) \
            == 403
        assert await handshake(browser, url, {}) == 403
        assert await handshake(browser, url, {"Origin": "http://relay.example.com",
                                              "Host": host}) == 101
    finally:
        await browser.close()


async def test_without_public_url_a_rebinding_host_is_refused(gateway: Gateway) -> None:
    user_id = await create_user(gateway.db, "d@example.com", password=PASSWORD, plan="team")
    session = await create_session(gateway.db, user_id, 2)
    browser = await signed_in(gateway, "d@example.com")
    url = ws_url(gateway, session.id, "viewer")
    port = gateway.url.rsplit(":", 1)[1]
    try:
        # evil.example resolving to 127.0.0.1: Origin and Host agree, and both are wrong
        assert await handshake(browser, url, {"Origin": f"http://evil.example:{port}",
                                              "Host": f"evil.example:{port}"}) == 403
        assert await handshake(browser, url, {"Origin": gateway.url}) == 101
    finally:
        await browser.close()


async def test_sign_out_everywhere_closes_viewers_at_the_next_room_check(
        gateway: Gateway) -> None:
    user_id, _, _, browser, bridge, viewer = await connected_pair(gateway, "out@example.com")
    try:
        epoch = (await gateway.db.fetch_one("user_by_id", {"id": user_id}))["session_epoch"]
        # sign-out from the live session: moves the epoch; no user-changed event
        assert await end_sessions(gateway.db, user_id, epoch)
        codes = asyncio.gather(closed_with(bridge), closed_with(viewer))
        assert await gateway.remote.recheck_all() == 2  # what run_room_check does
        assert await codes == [CLOSE_REVOKED, CLOSE_REVOKED]
        assert await gateway.remote.recheck_all() == 0
    finally:
        await browser.close()
