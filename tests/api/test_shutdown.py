"""`[server] shutdown_grace` on a real server process: what is still open when the grace
runs out is ended properly, recorded honestly, and the process is gone soon after.

Before: streams cut at the grace end got a broken chunked body and a `client_disconnect`
row, and a grace of 10 s took about 20 s to exit (aiohttp waits the grace, then cancels and
waits the grace again)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.helpers.gateway import fake_stats, provider_table
from tests.helpers.process import GatewayProcess

GRACE = 2.0
EXIT_BOUND = 1.5  # seconds past the grace the process may take to be gone
SLOW = '[[fake:{"chunks":400,"chunk_delay":0.05}]]'  # 20 s of answer
HANG = '[[fake:{"hang":true}]]'


def toml_of(provider: dict[str, Any]) -> str:
    lines = ["[[providers]]"]
    models = provider.pop("models")
    lines += [f"{k} = {orjson.dumps(v).decode()}" for k, v in provider.items()]
    lines.append("[providers.models]")
    lines += [f"{k} = {orjson.dumps(v).decode()}" for k, v in models.items()]
    return "\n".join(lines) + "\n"


def body(path: str, text: str, stream: bool) -> bytes:
    if path == "/v1/messages":
        data: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 4000,
                                "messages": [{"role": "user", "content": text}]}
    elif path == "/v1/chat/completions":
        data = {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}
    else:
        data = {"model": "gpt-4o", "input": text}
    data["stream"] = stream
    return orjson.dumps(data)


class Client:
    """One request read to its end; `started` is set once its first body byte arrived."""

    def __init__(self, path: str, stream: bool) -> None:
        self.path, self.stream = path, stream
        self.started = asyncio.Event()
        self.status = 0
        self.body = b""
        self.error: BaseException | None = None

    async def run(self, session: aiohttp.ClientSession, base: str, key: str) -> None:
        try:
            async with session.post(base + self.path, data=body(
                    self.path, SLOW if self.stream else HANG, self.stream), headers={
                    "x-api-key": key, "content-type": "application/json"}) as r:
                self.status = r.status
                async for chunk in r.content.iter_any():
                    self.body += chunk
                    self.started.set()
        except (TimeoutError, aiohttp.ClientError) as exc:  # a broken body
            self.error = exc
        self.started.set()


@pytest.mark.parametrize("protocol", ["anthropic", "openai"])
async def test_what_is_open_at_the_grace_end_is_ended_properly(
        tmp_path: Path, fake_factory: Any, protocol: str) -> None:
    base, _ = await fake_factory()
    provider = toml_of(provider_table("fake", protocol, base))
    with GatewayProcess(tmp_path, provider, f"shutdown_grace = {GRACE}\n") as gw:
        url = f"http://127.0.0.1:{gw.port}"
        streams = [Client(p, True) for p in ("/v1/messages",) * 3 + (
            "/v1/chat/completions", "/v1/chat/completions", "/v1/responses")]
        waiting = [Client("/v1/messages", False), Client("/v1/chat/completions", False)]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
            tasks = [asyncio.create_task(c.run(s, url, gw.key)) for c in streams + waiting]
            async with asyncio.timeout(15):
                for c in streams:
                    await c.started.wait()
                while (await fake_stats(base))["active_requests"] < len(streams + waiting):
                    await asyncio.sleep(0.05)
            sent = gw.terminate()
            async with asyncio.timeout(GRACE + 15):
                await asyncio.gather(*tasks)
                while gw.proc is not None and gw.proc.poll() is None:
                    await asyncio.sleep(0.02)
            took = time.perf_counter() - sent
            assert gw.proc is not None
            print(f"{protocol}: exited {gw.proc.returncode} {took:.2f} s after SIGTERM "
                  f"(grace {GRACE} s)")
            log = gw.log()
    assert gw.proc.returncode == 0
    assert took <= GRACE + EXIT_BOUND, f"exit took {took:.2f} s for a grace of {GRACE} s"
    assert "Traceback" not in log, log[-3000:]
    for c in streams:
        assert c.error is None, (c.path, c.error)  # the chunked body was terminated
        assert c.status == 200
        text = c.body.decode()
        assert "shutting down" in text, (c.path, text[-500:])
        if c.path == "/v1/messages":
            assert "event: error" in text and "overloaded_error" in text
        elif c.path == "/v1/chat/completions":
            assert '"error"' in text.rsplit("data: ", 1)[-1] or '"error"' in text[-600:]
        else:
            assert "response.failed" in text
    for c in waiting:
        assert c.error is None
        assert c.status in (503, 529), (c.path, c.status, c.body[:300])
        assert b"shutting down" in c.body
    with sqlite3.connect(gw.db) as conn:
        rows = conn.execute("SELECT status, error_type FROM usage_logs").fetchall()
    assert len(rows) == len(streams) + len(waiting)
    assert set(rows) == {("error", "gateway_shutdown")}, rows
