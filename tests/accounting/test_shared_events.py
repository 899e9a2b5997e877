"""`RedisEvents`: user changes announced to every instance over a real redis-server.

The key cache's own poll of the database is switched off on the instance that must feel the
change, so what refuses the key there can only be the pub/sub message.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
from redis.asyncio import Redis

from gateway.events import CHANNEL, REMOTE, USER_EVENTS, RedisEvents, UserChanged, announce
from tests.helpers.gateway import Gateway, provider_table
from tests.helpers.services import RedisServer, free_port
from tests.helpers.site import signed_in

BODY = {"model": "claude-sonnet-4-6", "max_tokens": 20,
        "messages": [{"role": "user", "content": "hi"}]}


async def status_of(gw: Gateway, key: str) -> int:
    async with aiohttp.ClientSession() as s, s.post(
            gw.url + "/v1/messages", json=BODY, headers={"x-api-key": key}) as r:
        await r.read()
        return r.status


async def wait_for(predicate: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not await predicate():
        assert time.monotonic() - started < timeout, what
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_revoked_on_a_refused_on_b_with_b_polling_off(
        gateway_factory: Any, fake_factory: Any, pg_url: str,
        redis_server: RedisServer) -> None:
    base, _ = await fake_factory()
    config = {"providers": [provider_table("fake", "anthropic", base)],
              "plans": [{"name": "free", "max_keys": 5}],
              "database": {"url": pg_url}, "redis": {"url": redis_server.url},
              "server": {"access_log": False}}
    a = await gateway_factory(config)
    b = await gateway_factory(config)
    assert isinstance(b.app[USER_EVENTS], RedisEvents)
    await asyncio.wait_for(b.app[USER_EVENTS].connected.wait(), 10)
    owner = await signed_in(a, "own@example.com")
    try:
        status, made = await owner.json("POST", "/api/dashboard/keys", {"name": "k"})
        assert status == 201, made
        key = made["key"]
        assert await status_of(b, key) == 200  # cached on B
        b.keys.refresh_interval = 3600.0  # B stops polling the database
        b.keys._wake.set()  # (its current wait ends; the next one is an hour)
        await asyncio.sleep(0.05)
        status, _ = await owner.json("DELETE", f"/api/dashboard/keys/{made['id']}")
        assert status == 200
        started = time.monotonic()

        async def refused() -> bool:
            return await status_of(b, key) == 401

        took = await wait_for(refused, 1.0, "B still accepts a key revoked on A")
        print(f"\n[pub/sub] revoked on A, refused on B (polling off) after "
              f"{(time.monotonic() - started) * 1000:.0f} ms ({took * 1000:.0f})")
    finally:
        await owner.close()


async def test_listener_survives_a_redis_restart_and_skips_its_own_and_bad_messages(
        redis_server: RedisServer) -> None:
    bus = RedisEvents(redis_server.url, timeout=0.5)
    heard: list[UserChanged] = []
    bus.subscribe(heard.append)
    task = asyncio.create_task(bus.run())
    admin = Redis.from_url(redis_server.url)
    try:
        await asyncio.wait_for(bus.connected.wait(), 10)
        heard.clear()  # the poll-now event every (re)connect delivers
        await bus.publish(UserChanged(5))  # delivered locally once, not again from Redis
        await admin.publish(CHANNEL, b"not json")
        await admin.publish(CHANNEL, orjson.dumps({"from": "x", "user_id": "seven"}))
        await admin.publish(CHANNEL, orjson.dumps({"from": "x", "user_id": 9,
                                                   "period": [1.5, 2.5]}))

        async def nine() -> bool:
            return any(e.user_id == 9 for e in heard)

        await wait_for(nine, 5, "message from another instance not heard")
        assert [e.user_id for e in heard] == [5, 9]
        assert heard[1].origin is REMOTE and heard[1].period == (1.5, 2.5)
        assert not heard[1].broadcast

        redis_server.stop()

        async def lost() -> bool:
            return not bus.connected.is_set()

        await wait_for(lost, 10, "the listener did not notice Redis going away")
        await bus.publish(UserChanged(6))  # Redis down: delivered locally, no exception
        assert heard[-1].user_id == 6
        redis_server.start()
        await asyncio.wait_for(bus.connected.wait(), 10)
        assert heard[-1].user_id == 0 and heard[-1].origin is REMOTE  # poll now
        assert await announce(redis_server.url, 11)

        async def eleven() -> bool:
            return any(e.user_id == 11 for e in heard)

        await wait_for(eleven, 5, "announce after the restart not heard")
    finally:
        task.cancel()
        await admin.aclose()
        await bus.close()


async def test_announce_without_redis_says_so() -> None:
    port = free_port()  # nothing listens there
    assert not await announce(f"redis://127.0.0.1:{port}/0", 1, timeout=0.2)
