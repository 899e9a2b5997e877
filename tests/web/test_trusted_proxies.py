"""`[server] trusted_proxies`: behind a real HAProxy (deploy/haproxy.cfg, which adds
X-Forwarded-For), each client is counted under its own address, a client cannot pick its
address by sending the header itself, and without the setting every client shares the
proxy's address (the lockout the setting exists to prevent).

Clients bind distinct loopback addresses (127.0.0.66, 127.0.0.77, ...: all of 127/8 is
loopback on Linux), so HAProxy sees real, different peers; HAProxy itself reaches the
gateway from 127.0.0.1, the one trusted address.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.forwarding import networks as proxy_networks
from gateway.forwarding import resolve
from tests.helpers.gateway import Gateway, GatewayFactory
from tests.helpers.services import Haproxy
from tests.helpers.site import PASSWORD, make_user

ATTACKER, OWNER = "127.0.0.66", "127.0.0.77"
BURST = 200


@pytest.mark.parametrize(("peer", "hops", "trusted", "client"), [
    # no trusted proxies: the headers are never read
    ("203.0.113.9", ["198.51.100.1"], (), "203.0.113.9"),
    # an untrusted peer's header is ignored
    ("203.0.113.9", ["198.51.100.1"], ("10.0.0.0/8",), "203.0.113.9"),
    # one trusted proxy: the hop it appended
    ("10.0.0.2", ["198.51.100.1"], ("10.0.0.0/8",), "198.51.100.1"),
    # the client's own (spoofed) entries sit left of what the proxy appended
    ("10.0.0.2", ["1.1.1.1", "2.2.2.2", "198.51.100.1"], ("10.0.0.0/8",), "198.51.100.1"),
    # two proxies in a row, both trusted: the right-most untrusted hop
    ("10.0.0.2", ["6.6.6.6", "198.51.100.1", "10.0.0.3"], ("10.0.0.0/8",), "198.51.100.1"),
    # every hop trusted: the left-most
    ("10.0.0.2", ["10.0.0.5", "10.0.0.3"], ("10.0.0.0/8",), "10.0.0.5"),
    # junk where the client's address should be: the last trusted address, never the junk
    ("10.0.0.2", ["unknown"], ("10.0.0.0/8",), "10.0.0.2"),
    ("10.0.0.2", ["198.51.100.1", "not-an-ip", "10.0.0.3"], ("10.0.0.0/8",), "10.0.0.3"),
    # ports and brackets as proxies write them; IPv4-mapped IPv6
    ("10.0.0.2", ["198.51.100.1:5555"], ("10.0.0.2",), "198.51.100.1"),
    ("10.0.0.2", ['"[2001:db8::7]:4711"'], ("10.0.0.2",), "2001:db8::7"),
    ("::ffff:10.0.0.2", ["198.51.100.1"], ("10.0.0.0/8",), "198.51.100.1"),
    ("::1", ["2001:db8::1"], ("::1",), "2001:db8::1"),
    # no header at all from a trusted peer: the peer
    ("10.0.0.2", [], ("10.0.0.0/8",), "10.0.0.2"),
])
def test_right_most_untrusted_hop(peer: str, hops: list[str], trusted: tuple[str, ...],
                                  client: str) -> None:
    assert resolve(peer, hops, proxy_networks(trusted)) == client


@pytest.fixture
async def proxied(gateway_factory: GatewayFactory) -> AsyncIterator[Any]:
    """start(trusted) -> (gateway, haproxy URL): a gateway behind the deployed HAProxy."""
    proxies: list[Haproxy] = []

    async def start(trusted: list[str]) -> tuple[Gateway, str]:
        gw = await gateway_factory({"server": {"trusted_proxies": trusted},
                                    "web": {"login_failures_per_account": 5,
                                            "login_failures_per_ip": 30}})
        proxy = Haproxy([gw.server.port or 0])
        proxies.append(proxy)
        await asyncio.to_thread(proxy.start)
        deadline = time.monotonic() + 20
        while (await asyncio.to_thread(proxy.server_states)).get("gw1") != "UP":
            assert time.monotonic() < deadline, "HAProxy never saw the gateway ready"
            await asyncio.sleep(0.1)
        return gw, f"http://127.0.0.1:{proxy.port}"

    yield start
    for proxy in proxies:
        await asyncio.to_thread(proxy.destroy)


def visitor(local: str) -> aiohttp.ClientSession:
    """A client whose connections come from the loopback address `local`. At most 100 at
    once: the deployed HAProxy marks a server down on one layer-4 error, and a loaded
    machine's accept queue can produce one under a wider burst (the requests still race:
    100 are in flight together against limits of 5 and 30)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=(local, 0), limit=100),
        cookie_jar=aiohttp.CookieJar(unsafe=True))


async def logins(http: aiohttp.ClientSession, base: str, bodies: list[dict[str, str]],
                 headers: list[dict[str, str]] | None = None) -> list[int]:
    """POST /api/auth/login for every body at once; the statuses."""
    async with http.get(base + "/api/auth/csrf") as r:
        token = (await r.json())["csrf_token"]

    async def one(i: int, body: dict[str, str]) -> int:
        extra = headers[i] if headers else {}
        async with http.post(base + "/api/auth/login", json=body,
                             headers={"X-CSRF-Token": token, **extra}) as r:
            await r.read()
            return r.status

    return list(await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies))))


def probes(n: int) -> list[dict[str, str]]:
    return [{"email": f"probe{i}@example.com", "password": "guess"} for i in range(n)]


async def failures_from(gw: Gateway, ip: str) -> int:
    row = await gw.db.fetch_one("login_failures_by_ip", {"ip": ip, "since": 0})
    return int(row["failures"]) if row else 0


async def test_a_burst_of_bad_logins_behind_the_proxy_locks_out_only_its_sender(
        proxied: Any) -> None:
    gw, base = await proxied(["127.0.0.1"])
    await make_user(gw, "owner@example.com")
    async with visitor(ATTACKER) as attacker, visitor(OWNER) as owner:
        # every request also claims a different address of its own: it must not count
        statuses = await logins(attacker, base, probes(BURST),
                                [{"X-Forwarded-For": f"10.1.{i // 250}.{i % 250}"}
                                 for i in range(BURST)])
        checked, refused = statuses.count(401), statuses.count(429)
        print(f"\n{BURST} bad logins from {ATTACKER} through HAProxy, per-client limit 30: "
              f"{checked} checked, {refused} refused")
        assert checked <= 30 and checked + refused == BURST, Counter(statuses)
        # another client behind the same proxy signs in at once
        status = (await logins(owner, base, [{"email": "owner@example.com",
                                              "password": PASSWORD}]))[0]
        assert status == 200
    assert await failures_from(gw, ATTACKER) == checked
    for spoofed in ("10.1.0.1", "127.0.0.1"):
        assert await failures_from(gw, spoofed) == 0


async def test_without_trusted_proxies_every_client_shares_the_proxy_address(
        proxied: Any) -> None:
    """The control: the same attack with the setting left empty locks the owner out too,
    because HAProxy's address is everyone's address."""
    gw, base = await proxied([])
    await make_user(gw, "owner@example.com")
    async with visitor(ATTACKER) as attacker, visitor(OWNER) as owner:
        statuses = await logins(attacker, base, probes(30))
        assert statuses.count(401) == 30
        status = (await logins(owner, base, [{"email": "owner@example.com",
                                              "password": PASSWORD}]))[0]
        assert status == 429
    assert await failures_from(gw, "127.0.0.1") == 30


async def test_an_untrusted_peer_cannot_choose_its_address(gateway_factory: GatewayFactory
                                                           ) -> None:
    """Straight to the gateway from an address that is not a proxy: the headers are
    ignored, so rotating them buys no extra guesses."""
    gw = await gateway_factory({"server": {"trusted_proxies": ["127.0.0.1"]},
                                "web": {"login_failures_per_ip": 30}})
    async with visitor(ATTACKER) as attacker:
        statuses = await logins(attacker, gw.url, probes(BURST), [
            {"X-Forwarded-For": f"10.2.{i // 250}.{i % 250}",
             "Forwarded": f"for=10.3.{i // 250}.{i % 250}"} for i in range(BURST)])
    assert statuses.count(401) <= 30, statuses
    assert await failures_from(gw, ATTACKER) == statuses.count(401)


async def test_forwarded_header_from_a_trusted_peer(gateway_factory: GatewayFactory) -> None:
    """A trusted peer that speaks RFC 7239 `Forwarded` (IPv6 client, quoted, with port)."""
    gw = await gateway_factory({"server": {"trusted_proxies": ["127.0.0.1"]}})
    async with visitor("127.0.0.1") as proxy:
        statuses = await logins(proxy, gw.url, probes(3), [
            {"Forwarded": 'for=192.0.2.43, for="[2001:db8:cafe::17]:4711";proto=https'}] * 3)
    assert statuses == [401] * 3
    assert await failures_from(gw, "2001:db8:cafe::17") == 3


async def test_access_log_names_the_forwarded_client(proxied: Any) -> None:
    gw, base = await proxied(["127.0.0.1"])
    key = await gw.new_key("logged@example.com")
    gw.access_log.stream = io.BytesIO()
    async with visitor(OWNER) as client, client.post(
            base + "/v1/messages", headers={"x-api-key": key, "X-Forwarded-For": "6.6.6.6"},
            json={"model": "claude-sonnet-4-5", "max_tokens": 20,
                  "messages": [{"role": "user", "content": "hi"}]}) as r:
        assert r.status == 200, await r.text()
    gw.access_log.flush()
    lines = [orjson.loads(x) for x in gw.access_log.stream.getvalue().splitlines()]
    assert [line["client"] for line in lines] == [OWNER]
