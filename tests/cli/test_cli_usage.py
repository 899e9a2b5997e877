"""`python -m gateway usage` shows the requests that failed, with their status, not only
the ones that succeeded: rows written by a real gateway, read by the real CLI."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.helpers.gateway import provider_table, run_cli


def ask(text: str, stream: bool = False) -> bytes:
    return orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 50, "stream": stream,
                         "messages": [{"role": "user", "content": text}]})


async def test_usage_lists_failed_requests_with_their_status(
        tmp_path: Path, gateway_factory: Any, fake_factory: Any) -> None:
    base, _ = await fake_factory()
    gw = await gateway_factory({
        "providers": [provider_table("fake", "openai", base)],
        "routing": {"max_attempts": 1, "health_interval": 0, "breaker_failures": 100},
        "plans": [{"name": "free", "rpm": 0, "monthly_tokens": 0, "max_input_tokens": 0,
                   "concurrency": 0}]})
    key = await gw.new_key("cli@example.com")
    headers = {"x-api-key": key, "content-type": "application/json"}
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            async with s.post(gw.url + "/v1/messages", data=ask("hi"), headers=headers) as r:
                assert r.status == 200
        for _ in range(3):
            async with s.post(gw.url + "/v1/messages", headers=headers,
                              data=ask('[[fake:{"status":500}]]')) as r:
                assert r.status >= 500
        try:  # hang up while the upstream is still thinking
            async with asyncio.timeout(0.5), s.post(
                    gw.url + "/v1/messages", headers=headers,
                    data=ask('[[fake:{"first_byte_delay":5}]]')) as r:
                await r.read()
        except TimeoutError:
            pass
    async with asyncio.timeout(10):
        while True:
            await gw.recorder.flush()
            rows = await gw.db.fetch_all("usage_failures", {"since": 0, "email": None})
            if sum(r["requests"] for r in rows) == 4:
                break
            await asyncio.sleep(0.05)
    config = tmp_path / "cli.toml"
    config.write_text(f'[database]\npath = "{gw.config.database_path}"\n')
    done = run_cli("usage", "--config", str(config))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    print(out)
    assert "failed requests by status" in out
    failed = out.split("failed requests by status", 1)[1].splitlines()
    lines = [line.split() for line in failed if line.startswith("cli@example.com")]
    by_status = {(line[1], line[2]): int(line[3]) for line in lines}
    # an upstream 500 is the upstream's outage: overloaded_error (docs/vendors.md)
    assert sum(n for (status, _), n in by_status.items() if status == "error") == 3, out
    assert all(kind != "-" for (status, kind) in by_status if status == "error"), out
    assert by_status[("client_disconnect", "-")] == 1, out
    assert ("success", "-") not in by_status
    # the per-model table still counts every request, and says how many failed
    assert "total: 6 requests" in out
