"""The multi-instance harness itself: three gateways on one PostgreSQL behind HAProxy.

It must balance over every instance, stream SSE through the balancer without buffering,
notice a killed instance and take a restarted one back, so the scale-out tests built on it
measure the gateway and not the harness.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from tests.helpers.cluster import Cluster


def stream_body(text: str, max_tokens: int = 200) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-6", "max_tokens": max_tokens, "stream": True,
            "messages": [{"role": "user", "content": text}]}


@pytest.mark.slow
async def test_three_instances_share_requests_and_stream_unbuffered(
        cluster_factory: Any) -> None:
    cluster: Cluster = await cluster_factory(instances=3)
    key = await cluster.new_key("c@example.com")
    async with aiohttp.ClientSession() as s:
        # A slow stream: 10 pieces 0.3 s apart. Unbuffered means the first text delta
        # reaches the client long before the upstream has finished (3 s).
        text = 'slow [[fake:{"chunks":10,"chunk_delay":0.3}]]'
        started = time.monotonic()
        first_delta = None
        async with s.post(cluster.url + "/v1/messages", json=stream_body(text),
                          headers={"x-api-key": key}) as r:
            assert r.status == 200, await r.text()
            async for line in r.content:
                if first_delta is None and b"text_delta" in line:
                    first_delta = time.monotonic() - started
            total = time.monotonic() - started
        assert first_delta is not None and total >= 2.9
        assert first_delta < 1.0, f"first delta after {first_delta:.2f}s of {total:.2f}s"

        async def one(i: int) -> int:
            async with s.post(cluster.url + "/v1/messages", json=stream_body(f"n{i}"),
                              headers={"x-api-key": key}) as r:
                await r.read()
                return r.status

        assert await asyncio.gather(*(one(i) for i in range(30))) == [200] * 30
    served = {name: int(row["stot"]) for name, row in
              cluster.haproxy.server_rows().items()}  # type: ignore[union-attr]
    assert set(served) == {"gw1", "gw2", "gw3"}
    assert all(n > 0 for n in served.values()), served
    n = await cluster.fetchval("SELECT count(*) FROM usage_logs")
    deadline = time.monotonic() + 5
    while n < 31 and time.monotonic() < deadline:  # write-behind: flushed every 0.25 s
        await asyncio.sleep(0.05)
        n = await cluster.fetchval("SELECT count(*) FROM usage_logs")
    assert n == 31


@pytest.mark.slow
async def test_kill_and_restart_one_instance(cluster_factory: Any) -> None:
    cluster: Cluster = await cluster_factory(instances=2)
    key = await cluster.new_key("k@example.com")
    cluster.kill(1)
    waited = await cluster.wait_backend(1, up=False, timeout=10)
    async with aiohttp.ClientSession() as s:
        for i in range(6):  # all on the survivor
            async with s.post(cluster.url + "/v1/messages", json=stream_body(f"k{i}"),
                              headers={"x-api-key": key}) as r:
                assert r.status == 200
                await r.read()
    await cluster.restart(1)
    assert cluster.backend_states() == {"gw1": "UP", "gw2": "UP"}
    print(f"HAProxy marked the killed instance down after {waited:.2f}s")
