"""Remote control: the trigger, the hub's access rules, and a real pty bridge end to end."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest
from aiohttp.test_utils import TestServer

from gateway.accounts.users import create_key, create_user
from gateway.app import build_app
from gateway.remote.sessions import create_session
from tests.helpers.gateway import Gateway, make_config
from tests.helpers.remote import start_bridge, stop, wait_bridge

PASSWORD = "correct horse battery staple"
BASH = {"name": "Bash", "description": "Run a shell command",
        "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}


async def make_user(gw: Gateway, email: str) -> tuple[int, str]:
    user_id = await create_user(gw.db, email, password=PASSWORD, plan="team")
    return user_id, (await create_key(gw.db, email)).raw


async def browser(gw: Gateway, email: str | None) -> aiohttp.ClientSession:
    """A client with a cookie jar, signed in as `email` (None: anonymous)."""
    session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    if email is not None:
        async with session.get(gw.url + "/api/auth/csrf") as r:
            token = (await r.json())["csrf_token"]
        async with session.post(gw.url + "/api/auth/login",
                                data={"email": email, "password": PASSWORD},
                                headers={"X-CSRF-Token": token}) as r:
            assert r.status == 200, await r.text()
    return session


def ws_url(gw: Gateway, session_id: str, role: str) -> str:
    return f"{gw.url}/remote-ws?role={role}&session={session_id}"


async def viewer(client: aiohttp.ClientSession, gw: Gateway,
                 session_id: str) -> aiohttp.ClientWebSocketResponse:
    return await client.ws_connect(ws_url(gw, session_id, "viewer"),
                                   headers={"Origin": gw.url})


async def read_output(ws: aiohttp.ClientWebSocketResponse, want: bytes,
                      timeout: float = 10) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while want not in seen:
        msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
        assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), msg
        data = orjson.loads(msg.data)
        if data["type"] == "output":
            seen += base64.b64decode(data["data"])
    return seen


async def send_input(ws: aiohttp.ClientWebSocketResponse, text: str) -> None:
    await ws.send_bytes(orjson.dumps({"type": "input",
                                      "data": base64.b64encode(text.encode()).decode()}))


# ---- the trigger ---------------------------------------------------------------------


async def test_trigger_phrase_answers_with_a_bash_call_the_sdk_accepts(gateway: Gateway) -> None:
    user_id, key = await make_user(gateway, "rc@example.com")
    sdk = anthropic.AsyncAnthropic(base_url=gateway.url, api_key=key, max_retries=0)
    async with sdk.messages.stream(
            model="claude-opus-5-5", max_tokens=1000, tools=[BASH],
            messages=[{"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
                {"type": "text", "text": "Remote Control!"}]}]) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    text, call = final.content
    assert call.type == "tool_use" and call.name == "Bash"
    command = call.input["command"]
    assert command.startswith(f"python -m gateway remote-bridge --server {gateway.url.rstrip('/')}"
                              " --session rc_") or "--server" in command
    assert "--key-env ANTHROPIC_API_KEY" in command and key not in command
    session_id = command.split("--session ")[1].split()[0]
    assert f"/remote/{session_id}" in text.text
    row = await gateway.db.fetch_one("remote_session_by_id", {"id": session_id})
    assert row["user_id"] == user_id and row["status"] == "waiting"
    assert 7100 < row["expires_at"] - row["created_at"] <= 7200


@pytest.mark.parametrize("phrase", ["开启远程控制", "start remote control", "REMOTE CONTROL"])
async def test_every_default_phrase_triggers_non_stream_too(gateway: Gateway,
                                                           phrase: str) -> None:
    _, key = await make_user(gateway, "p@example.com")
    sdk = anthropic.AsyncAnthropic(base_url=gateway.url, api_key=key, max_retries=0)
    reply = await sdk.messages.create(model="claude-sonnet-4-6", max_tokens=100, tools=[BASH],
                                      messages=[{"role": "user", "content": phrase}])
    assert [b.type for b in reply.content] == ["text", "tool_use"]


async def test_without_bash_tool_the_answer_is_text_with_the_command(gateway: Gateway) -> None:
    _, key = await make_user(gateway, "t@example.com")
    sdk = anthropic.AsyncAnthropic(base_url=gateway.url, api_key=key, max_retries=0)
    reply = await sdk.messages.create(model="claude-sonnet-4-6", max_tokens=100,
                                      messages=[{"role": "user", "content": "remote control"}])
    assert [b.type for b in reply.content] == ["text"]
    assert "python -m gateway remote-bridge" in reply.content[0].text
    assert reply.stop_reason == "end_turn"


@pytest.mark.parametrize("text", ["please explain remote control protocols",
                                  "remote controls", "what is 远程控制技术"])
async def test_other_text_goes_upstream(gateway: Gateway, text: str) -> None:
    _, key = await make_user(gateway, "n@example.com")
    sdk = anthropic.AsyncAnthropic(base_url=gateway.url, api_key=key, max_retries=0)
    reply = await sdk.messages.create(model="claude-sonnet-4-6", max_tokens=100, tools=[BASH],
                                      messages=[{"role": "user", "content": text}])
    assert "demo provider" in reply.content[0].text  # the (demo) upstream answered
    rows = await gateway.db.fetch_all("remote_sessions_of_user",
                                            {"user_id": 1, "limit": 5})
    assert rows == []


async def test_triggers_can_be_disabled(gateway_factory: Any) -> None:
    gw = await gateway_factory({"remote": {"enabled": False}})
    _, key = await make_user(gw, "d@example.com")
    sdk = anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0)
    reply = await sdk.messages.create(model="claude-sonnet-4-6", max_tokens=100, tools=[BASH],
                                      messages=[{"role": "user", "content": "remote control"}])
    assert "demo provider" in reply.content[0].text


# ---- the hub's access rules ----------------------------------------------------------


async def handshake_status(coro: Any) -> int:
    try:
        ws = await coro
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await ws.close()
    return 101


async def test_only_the_owner_gets_in(gateway: Gateway) -> None:
    owner_id, owner_key = await make_user(gateway, "owner@example.com")
    _, other_key = await make_user(gateway, "other@example.com")
    session = await create_session(gateway.db, owner_id, 2)
    owner = await browser(gateway, "owner@example.com")
    other = await browser(gateway, "other@example.com")
    anonymous = await browser(gateway, None)
    try:
        url = ws_url(gateway, session.id, "viewer")
        assert await handshake_status(owner.ws_connect(url, headers={"Origin": gateway.url})) \
            == 101
        assert await handshake_status(other.ws_connect(url, headers={"Origin": gateway.url})) \
            == 404  # another user's browser: not even told it exists
        assert await handshake_status(anonymous.ws_connect(
            url, headers={"Origin": gateway.url})) == 401
        assert await handshake_status(owner.ws_connect(
            url, headers={"Origin": "https://evil.example"})) == 403
        bridge_url = ws_url(gateway, session.id, "bridge")
        assert await handshake_status(anonymous.ws_connect(
            bridge_url, headers={"x-api-key": owner_key})) == 101
        assert await handshake_status(anonymous.ws_connect(
            bridge_url, headers={"x-api-key": other_key})) == 404
        assert await handshake_status(anonymous.ws_connect(
            bridge_url, headers={"x-api-key": "sk-llmapi-wrong"})) == 401
        # the cookie alone does not make a bridge
        assert await handshake_status(owner.ws_connect(bridge_url)) == 401
    finally:
        for client in (owner, other, anonymous):
            await client.close()


async def test_expired_session_is_refused_and_connections_closed(gateway: Gateway) -> None:
    owner_id, owner_key = await make_user(gateway, "exp@example.com")
    session = await create_session(gateway.db, owner_id, 2)
    client = await browser(gateway, "exp@example.com")
    try:
        bridge = await client.ws_connect(ws_url(gateway, session.id, "bridge"),
                                         headers={"x-api-key": owner_key})
        db = gateway.db
        async with db.transaction():  # the gateway's own connection: no lock contention
            await db.conn.execute("UPDATE remote_sessions SET expires_at = ? WHERE id = ?",
                                  (time.time() - 1, session.id))
        await gateway.remote.sweep()
        closed = await bridge.receive(timeout=5)
        while closed.type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            closed = await bridge.receive(timeout=5)
        assert bridge.close_code == 4410
        assert await handshake_status(client.ws_connect(
            ws_url(gateway, session.id, "bridge"), headers={"x-api-key": owner_key})) == 410
        assert await handshake_status(viewer(client, gateway, session.id)) == 410
        row = await gateway.db.fetch_one("remote_session_by_id", {"id": session.id})
        assert row["status"] == "expired" and row["end_reason"] == "expired"
        for _ in range(100):  # the hub records the end as its handler finishes
            connections = await gateway.db.fetch_all("remote_connections_of_session",
                                                           {"session_id": session.id})
            if connections[0]["ended_at"] is not None:
                break
            await asyncio.sleep(0.02)
        assert [c["end_reason"] for c in connections] == ["session expired: expired"]
    finally:
        await client.close()


async def test_oversized_and_too_fast_messages_close_the_connection(
        gateway_factory: Any) -> None:
    gw = await gateway_factory({"remote": {"max_message_bytes": 4096,
                                           "messages_per_second": 5}})
    owner_id, _ = await make_user(gw, "big@example.com")
    session = await create_session(gw.db, owner_id, 2)
    client = await browser(gw, "big@example.com")
    try:
        ws = await viewer(client, gw, session.id)
        await ws.send_str("x" * 10_000)
        msg = await ws.receive(timeout=5)
        while msg.type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            msg = await ws.receive(timeout=5)
        assert ws.close_code == 1009  # message too big
        ws = await viewer(client, gw, session.id)
        for _ in range(30):
            if ws.closed:
                break
            await ws.send_bytes(b'{"type":"ping"}')
            await asyncio.sleep(0)
        msg = await ws.receive(timeout=5)
        while msg.type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            msg = await ws.receive(timeout=5)
        assert ws.close_code == 1008  # rate limit
    finally:
        await client.close()


# ---- the real bridge -----------------------------------------------------------------


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """A gateway on a fixed port that a test can stop and start again (same database)."""
    port_holder: dict[str, Any] = {}

    async def start() -> Gateway:
        app = build_app(make_config(tmp_path))
        server = TestServer(app, host="127.0.0.1", port=port_holder.get("port"))
        await server.start_server()
        port_holder["port"] = server.port
        port_holder["server"] = server
        return Gateway(server, app)

    port_holder["start"] = start
    yield port_holder
    if "server" in port_holder:
        await port_holder["server"].close()


async def test_phone_types_into_a_real_shell_and_sees_the_output(live: dict[str, Any]) -> None:
    gw = await live["start"]()
    owner_id, key = await make_user(gw, "pty@example.com")
    session = await create_session(gw.db, owner_id, 2)
    proc = await start_bridge(gw, session.id, key)
    client = await browser(gw, "pty@example.com")
    try:
        await wait_bridge(gw, session.id, proc)
        phone = await viewer(client, gw, session.id)
        await send_input(phone, "echo hi-$((40+2))\n")
        assert b"hi-42" in await read_output(phone, b"hi-42")
        await phone.send_bytes(b'{"type":"resize","cols":77,"rows":21}')
        await send_input(phone, "stty size\n")
        await read_output(phone, b"21 77")

        # a phone that connects late sees what was on the screen
        late = await viewer(client, gw, session.id)
        assert b"hi-42" in await read_output(late, b"hi-42")

        # the terminal exits: the session ends and the bridge process exits
        await send_input(phone, "exit\n")
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        row = await gw.db.fetch_one("remote_session_by_id", {"id": session.id})
        assert row["status"] == "ended" and row["end_reason"] == "the terminal exited"
    finally:
        await client.close()
        await stop(proc)


async def test_bridge_reconnects_after_the_hub_restarts(live: dict[str, Any]) -> None:
    gw = await live["start"]()
    owner_id, key = await make_user(gw, "re@example.com")
    session = await create_session(gw.db, owner_id, 2)
    proc = await start_bridge(gw, session.id, key)
    try:
        await wait_bridge(gw, session.id, proc)
        await live["server"].close()  # the gateway goes away (restart)
        gw = await live["start"]()  # same port, same database, empty hub
        await wait_bridge(gw, session.id, proc)
        client = await browser(gw, "re@example.com")
        try:
            phone = await viewer(client, gw, session.id)
            await send_input(phone, "echo back-again\n")
            await read_output(phone, b"back-again")
            # the owner ends the session: the bridge exits
            await gw.remote.end(session.id, "ended by the user")
            assert await asyncio.wait_for(proc.wait(), 10) == 0
        finally:
            await client.close()
    finally:
        await stop(proc)


async def test_bridge_output_fits_a_small_max_message_bytes(gateway_factory: Any) -> None:
    """`[remote] max_message_bytes = 4096`: the hub tells the bridge as it joins, and 60 kB of
    output arrive in frames the hub takes, over the one connection (before, the bridge's
    own 32 kB batches closed it with 1009 and the output was lost)."""
    gw = await gateway_factory({"remote": {"max_message_bytes": 4096}})
    owner_id, key = await make_user(gw, "small@example.com")
    session = await create_session(gw.db, owner_id, 2)
    proc = await start_bridge(gw, session.id, key)
    client = await browser(gw, "small@example.com")
    try:
        await wait_bridge(gw, session.id, proc)
        phone = await viewer(client, gw, session.id)
        await send_input(phone, "head -c 60000 /dev/zero | tr '\\0' x; echo; echo end-$((6*7))\n")
        seen = await read_output(phone, b"end-42", timeout=20)
        assert seen.count(b"x") >= 60_000
        assert gw.remote.bridge_connected(session.id) and proc.returncode is None
        connections = await gw.db.fetch_all("remote_connections_of_session",
                                            {"session_id": session.id})
        bridges = [c for c in connections if c["role"] == "bridge"]
        assert len(bridges) == 1 and bridges[0]["ended_at"] is None, bridges
    finally:
        await client.close()
        await stop(proc)
