"""Remote control across three instances behind HAProxy: the bridge and the phone meet.

The rooms are in-process (`LocalRooms`); what joins the two ends of a session is the
balancer hashing the session id (deploy/haproxy.cfg: `/remote-ws?session=`, `/remote/<id>`,
`/api/remote/sessions/<id>`). The test spreads sessions over the instances, proves each
pair sees each other through the balancer, shows that two ends on different instances
would NOT meet (so the routing is what the test measures), and that a suspension made with
the CLI closes the sockets on whichever instance holds them.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.accounts.users import create_key, create_user
from gateway.remote.hub import CLOSE_ENDED, CLOSE_REVOKED
from gateway.remote.sessions import create_session
from tests.helpers.cluster import Cluster

PASSWORD = "correct horse battery staple"
SESSIONS = 12


async def sign_in(base: str, email: str) -> aiohttp.ClientSession:
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with http.get(base + "/api/auth/csrf") as r:
        token = (await r.json())["csrf_token"]
    async with http.post(base + "/api/auth/login", data={"email": email, "password": PASSWORD},
                         headers={"X-CSRF-Token": token}) as r:
        assert r.status == 200, await r.text()
    return http


class Peer:
    """One WebSocket read all the time in the background (so the server's heartbeat pings
    are answered however long the test takes), its frames queued for the test."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.closed = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                self.frames.put_nowait(orjson.loads(msg.data))
        self.closed.set()

    async def send(self, data: dict[str, Any]) -> None:
        await self.ws.send_bytes(orjson.dumps(data))

    async def until(self, pred: Any, timeout: float = 5) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                data = await self.frames.get()
                if pred(data):
                    return data

    async def close_code(self, timeout: float = 5) -> int | None:
        try:
            await asyncio.wait_for(self.closed.wait(), timeout)
        except TimeoutError:
            return None
        return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()
        self._task.cancel()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.slow
async def test_bridge_and_phone_meet_through_the_balancer(cluster_factory: Any) -> None:
    cluster: Cluster = await cluster_factory(instances=3, config={
        "remote": {"sweep_interval": 0.3}})
    db = await cluster.store()
    email = "remote@example.com"
    user_id = await create_user(db, email, password=PASSWORD, plan="open")
    key = (await create_key(db, email)).raw
    sessions = [await create_session(db, user_id, 2) for _ in range(SESSIONS)]
    phone = await sign_in(cluster.url, email)
    bridges: list[Peer] = []
    viewers: list[Peer] = []
    try:
        for s in sessions:
            bridges.append(Peer(await phone.ws_connect(
                f"{cluster.url}/remote-ws?role=bridge&session={s.id}",
                headers={"x-api-key": key})))
            viewers.append(Peer(await phone.ws_connect(
                f"{cluster.url}/remote-ws?role=viewer&session={s.id}",
                headers={"Origin": cluster.url})))
        for i, (bridge, viewer) in enumerate(zip(bridges, viewers, strict=True)):
            status = await viewer.until(lambda d: d["type"] == "status"
                                        and d.get("bridge") is True)
            assert status["viewers"] == 1
            await bridge.send({"type": "output", "data": b64(f"out {i}\n")})
            got = await viewer.until(lambda d: d["type"] == "output")
            assert base64.b64decode(got["data"]) == f"out {i}\n".encode()
            await viewer.send({"type": "input", "data": b64(f"in {i}")})
            typed = await bridge.until(lambda d: d["type"] == "input")
            assert base64.b64decode(typed["data"]) == f"in {i}".encode()

        # the sessions really are spread: several instances hold rooms
        spread = {name: int(row["stot"]) for name, row in
                  cluster.haproxy.server_rows("gateways_by_session").items()}  # type: ignore[union-attr]
        assert sum(1 for n in spread.values() if n > 0) >= 2, spread
        # the page API, routed by the id too, sees the bridge
        for s in sessions[:3]:
            async with phone.get(f"{cluster.url}/api/remote/sessions/{s.id}") as r:
                assert (await r.json())["state"] == "connected"

        # Control: which instance holds session 0? Only that one reports its bridge. A
        # viewer put on another instance directly (no balancer) does not meet the bridge:
        # the routing is what makes the pairs above work.
        states = []
        for inst in cluster.instances:
            direct = await sign_in(inst.url, email)
            async with direct.get(f"{inst.url}/api/remote/sessions/{sessions[0].id}") as r:
                states.append((await r.json())["state"])
            await direct.close()
        assert states.count("connected") == 1, states
        elsewhere = cluster.instances[(states.index("connected") + 1) % 3]
        stray = await sign_in(elsewhere.url, email)
        lone = Peer(await stray.ws_connect(
            f"{elsewhere.url}/remote-ws?role=viewer&session={sessions[0].id}",
            headers={"Origin": cluster.url}))
        first = await lone.until(lambda d: d["type"] == "status")
        assert first["bridge"] is False
        await bridges[0].send({"type": "output", "data": b64("x")})
        await viewers[0].until(lambda d: d["type"] == "output")
        with pytest.raises(TimeoutError):
            await lone.until(lambda d: d["type"] == "output", timeout=0.5)

        # Ended through the balancer: the End reaches the room's instance, both ends close
        # at once with 4410.
        async with phone.get(cluster.url + "/api/auth/csrf") as r:
            token = (await r.json())["csrf_token"]
        async with phone.post(f"{cluster.url}/api/remote/sessions/{sessions[1].id}/end",
                              headers={"X-CSRF-Token": token}) as r:
            assert r.status == 200, await r.text()
        assert await asyncio.gather(bridges[1].close_code(), viewers[1].close_code()) == \
            [CLOSE_ENDED, CLOSE_ENDED]
        # ...and the stray viewer of session 0 on the wrong instance is closed by that
        # instance's room check once the session ends on the right one
        async with phone.post(f"{cluster.url}/api/remote/sessions/{sessions[0].id}/end",
                              headers={"X-CSRF-Token": token}) as r:
            assert r.status == 200
        assert await lone.close_code() == CLOSE_ENDED
        await stray.close()

        # Suspended with the CLI (no instance told directly): every live socket of the
        # user, on every instance, is closed with 4401 within the key-cache refresh.
        started = time.monotonic()
        run = cluster.cli("users", "suspend", email)
        assert run.returncode == 0, run.stderr
        suspended_at = time.monotonic()
        codes = await asyncio.gather(*(peer.close_code(timeout=10) for peer in
                                       [*bridges[2:], *viewers[2:]]))
        took = time.monotonic() - suspended_at
        assert codes == [CLOSE_REVOKED] * (2 * (SESSIONS - 2)), codes
        print(f"suspension by CLI ({suspended_at - started:.2f}s to run it) closed "
              f"{len(codes)} sockets on 3 instances {took:.2f}s after it returned")
        assert took < 2
    finally:
        for peer in [*bridges, *viewers]:
            await peer.close()
        await phone.close()


async def owner_of(cluster: Cluster, email: str, session_id: str) -> int:
    """Which instance holds the session's bridge (only it reports it connected)."""
    found = []
    for i, inst in enumerate(cluster.instances):
        if not inst.running:
            continue
        direct = await sign_in(inst.url, email)
        async with direct.get(f"{inst.url}/api/remote/sessions/{session_id}") as r:
            if (await r.json())["state"] == "connected":
                found.append(i)
        await direct.close()
    assert len(found) == 1, found
    return found[0]


@pytest.mark.slow
async def test_a_session_outlives_its_instance_and_stays_put_when_it_returns(
        cluster_factory: Any) -> None:
    """Kill -9 the instance holding a session: both ends reconnect through the balancer and
    meet on another one. Restart the killed one: a phone reconnecting later still meets
    its bridge (the stick table; a bare hash would send it back, apart from its bridge)."""
    cluster: Cluster = await cluster_factory(instances=3)
    db = await cluster.store()
    email = "survive@example.com"
    user_id = await create_user(db, email, password=PASSWORD, plan="open")
    key = (await create_key(db, email)).raw
    session = await create_session(db, user_id, 2)
    phone = await sign_in(cluster.url, email)
    ws_url = f"{cluster.url}/remote-ws?session={session.id}&role="

    async def pair() -> tuple[Peer, Peer]:
        bridge = Peer(await phone.ws_connect(ws_url + "bridge", headers={"x-api-key": key}))
        viewer = Peer(await phone.ws_connect(ws_url + "viewer",
                                             headers={"Origin": cluster.url}))
        return bridge, viewer

    async def meet(bridge: Peer, viewer: Peer, word: str) -> None:
        await viewer.until(lambda d: d["type"] == "status" and d.get("bridge") is True)
        await bridge.send({"type": "output", "data": b64(word)})
        got = await viewer.until(lambda d: d["type"] == "output"
                                 and word.encode() in base64.b64decode(d["data"]))
        assert got

    try:
        bridge, viewer = await pair()
        await meet(bridge, viewer, "first")
        owner = await owner_of(cluster, email, session.id)
        cluster.kill(owner)
        assert await bridge.close_code(timeout=10) is not None
        assert await viewer.close_code(timeout=10) is not None
        await cluster.wait_backend(owner, up=False, backend="gateways_by_session")
        bridge, viewer = await pair()  # what the bridge daemon and the page do by themselves
        await meet(bridge, viewer, "second")
        second_owner = await owner_of(cluster, email, session.id)
        assert second_owner != owner

        await cluster.restart(owner)
        await cluster.wait_backend(owner, up=True, backend="gateways_by_session")
        await viewer.close()  # the phone changes network: a new connection, later
        viewer = Peer(await phone.ws_connect(ws_url + "viewer",
                                             headers={"Origin": cluster.url}))
        await meet(bridge, viewer, "third")
        assert await owner_of(cluster, email, session.id) == second_owner
    finally:
        await phone.close()
