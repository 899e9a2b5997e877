"""`/health` reports the stores, `/health/ready` drains: SIGTERM behind HAProxy loses nothing.

In-process first (SQLite): the report's shape and the readiness flag. Then real processes:
PostgreSQL and Redis reachability and latency on /health, Redis stopped and started again;
and a SIGTERM of one of three instances under steady streamed load through HAProxy: the
instance answers 503 on readiness, HAProxy takes it out within its check interval, every
request (new ones, and long streams already on the instance) succeeds, and it exits 0.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from gateway.lifecycle import LIFECYCLE
from tests.helpers.cluster import Cluster
from tests.helpers.gateway import Gateway


async def get_json(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.json()


async def test_health_reports_the_database_and_readiness_follows_draining(
        gateway: Gateway) -> None:
    status, body = await get_json(gateway.url + "/health")
    assert status == 200
    assert body["database"]["ok"] is True and body["database"]["kind"] == "sqlite"
    assert 0 <= body["database"]["latency_ms"] < 1000
    assert "redis" not in body  # not configured: not reported
    assert body["draining"] is False
    assert await get_json(gateway.url + "/health/ready") == (200, {"status": "ready"})
    gateway.app[LIFECYCLE].start_draining()
    assert await get_json(gateway.url + "/health/ready") == (503, {"status": "draining"})
    status, body = await get_json(gateway.url + "/health")
    assert body["draining"] is True


@pytest.mark.slow
async def test_health_sees_postgres_and_redis_come_and_go(cluster_factory: Any) -> None:
    cluster: Cluster = await cluster_factory(instances=1, redis=True)
    url = cluster.instances[0].url + "/health"
    status, body = await get_json(url)
    assert status == 200 and body["status"] == "ok", body
    assert body["database"]["ok"] and body["database"]["kind"] == "postgresql"
    assert body["redis"]["ok"] and body["redis"]["latency_ms"] < 1000
    assert cluster.redis_server is not None
    cluster.redis_server.stop()
    started = time.monotonic()
    status, body = await get_json(url)
    took = time.monotonic() - started
    assert status == 200 and body["status"] == "degraded", body
    assert body["redis"]["ok"] is False and body["redis"]["error"]
    assert body["database"]["ok"] is True
    assert took < 2.5, f"/health took {took:.2f}s with Redis down"
    cluster.redis_server.start()  # same port
    deadline = time.monotonic() + 10
    while True:
        status, body = await get_json(url)
        if body["redis"]["ok"]:
            break
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.1)
    assert body["status"] == "ok"


def stream_body(text: str, max_tokens: int = 100) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-6", "max_tokens": max_tokens, "stream": True,
            "messages": [{"role": "user", "content": text}]}


@pytest.mark.slow
async def test_sigterm_drains_behind_haproxy_without_losing_a_request(
        cluster_factory: Any) -> None:
    cluster: Cluster = await cluster_factory(instances=3, config={
        "server": {"drain_seconds": 2.0, "shutdown_grace": 20}})
    key = await cluster.new_key("drain@example.com")
    victim = 1
    outcomes: list[tuple[float, int, bool]] = []  # (when, status, complete)
    stop = asyncio.Event()

    async with aiohttp.ClientSession() as s:
        async def one(url: str, text: str) -> tuple[int, bool]:
            async with s.post(url + "/v1/messages", json=stream_body(text),
                              headers={"x-api-key": key}) as r:
                data = await r.read()
                return r.status, b"message_stop" in data

        async def client(i: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    status, complete = await one(cluster.url, f"c{i} r{n}")
                except (aiohttp.ClientError, ConnectionError) as exc:
                    outcomes.append((time.monotonic(), -1, False))
                    print("client error", exc)
                    continue
                outcomes.append((time.monotonic(), status, complete))

        # long streams already on the victim (directly): 4 s each, they must finish
        slow_text = 'long [[fake:{"chunks":20,"chunk_delay":0.2}]]'
        long_streams = [asyncio.create_task(one(cluster.instances[victim].url, slow_text))
                        for _ in range(3)]
        clients = [asyncio.create_task(client(i)) for i in range(12)]
        while len(outcomes) < 60:
            await asyncio.sleep(0.01)
        served_before = int(cluster.haproxy.server_rows()["gw2"]["stot"])  # type: ignore[union-attr]
        cluster.terminate(victim)
        sigterm_at = time.monotonic()
        took_out = await cluster.wait_backend(victim, up=False, timeout=10)
        served_at_down = int(cluster.haproxy.server_rows()["gw2"]["stot"])  # type: ignore[union-attr]
        code = await cluster.wait_exit(victim, timeout=40)
        exited_after = time.monotonic() - sigterm_at
        long_results = await asyncio.gather(*long_streams)
        after_exit = len(outcomes)
        while len(outcomes) < after_exit + 60:  # the two survivors carry on alone
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.gather(*clients)

    bad = [o for o in outcomes if o[1] != 200 or not o[2]]
    print(f"SIGTERM: out of HAProxy after {took_out:.2f}s, exit {code} after "
          f"{exited_after:.2f}s; {len(outcomes)} requests through the balancer, "
          f"{len(bad)} failed; victim served {served_at_down - served_before} while draining")
    assert code == 0
    assert bad == []
    assert long_results == [(200, True)] * 3
    assert took_out < 2.0  # inter 500 ms x fall 2, inside drain_seconds
    assert exited_after >= 2.0  # it drained before closing the port
    # every request has its row (a clean stop flushes the queue)
    total = len(outcomes) + 3
    deadline = time.monotonic() + 10
    while (rows := await cluster.fetchval("SELECT count(*) FROM usage_logs")) < total:
        assert time.monotonic() < deadline, (rows, total)
        await asyncio.sleep(0.1)
    assert rows == total
