"""A broken upstream (tests/helpers/hostile_upstream.py) behind every client route: a clear
502 (or an error event once a stream is under way) in the route's shape, bounded memory and
time, and never a 500, a traceback or a broken answer passed on with 200."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from tests.helpers.gateway import Gateway, provider_table
from tests.helpers.hostile_upstream import build_app
from tests.helpers.wire import OPENAI_ROUTES, ROUTES, error_of, minimal_body

OPEN_PLAN = {"name": "free", "rpm": 0, "rpd": 0, "monthly_tokens": 0, "max_input_tokens": 0,
             "concurrency": 0}
MALFORMED = ["usage-list", "usage-string", "usage-number", "json-list", "json-string",
             "json-number", "json-null", "not-json", "content-string"]


@pytest.fixture(params=["anthropic", "openai"])
async def gw(request: Any, gateway_factory: Any) -> Iterator[Gateway]:
    server = TestServer(build_app(), host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    gateway: Gateway = await gateway_factory({
        "providers": [provider_table("hostile", request.param, base)],
        "routing": {"max_attempts": 1, "health_interval": 0, "breaker_failures": 10_000},
        "plans": [OPEN_PLAN]})
    yield gateway
    await server.close()


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()
           or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


def asking(path: str, mode: str, stream: bool = False) -> dict[str, Any]:
    text = f"please hostile:{mode}"
    if path in ("/v1/messages", "/v1/chat/completions"):
        body = minimal_body(path, messages=[{"role": "user", "content": text}])
    else:
        body = minimal_body(path, input=text)
    if stream:
        body["stream"] = True
    return body


async def send(gw: Gateway, path: str, body: dict[str, Any],
               key: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as s, s.post(
            gw.url + path, data=orjson.dumps(body),
            headers={"x-api-key": key, "content-type": "application/json"}) as r:
        return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read()


@pytest.mark.parametrize("path", ROUTES)
async def test_malformed_answers_are_502_in_the_route_shape(
        gw: Gateway, path: str, caplog: pytest.LogCaptureFixture) -> None:
    key = await gw.new_key()
    for mode in MALFORMED:
        status, _, payload = await send(gw, path, asking(path, mode), key)
        assert status == 502, (mode, status, payload[:300])
        _, message = error_of(path, status, payload)
        assert "malformed" in message, (mode, message)
    no_tracebacks(caplog)


@pytest.mark.parametrize("path", ROUTES)
async def test_counts_of_the_wrong_type_count_as_zero(
        gw: Gateway, path: str, caplog: pytest.LogCaptureFixture) -> None:
    """`"input_tokens": "12"`, `[1]`, -5: the answer is fine, the counts are not; it is served
    and no row gets a negative or made-up figure."""
    key = await gw.new_key()
    status, _, payload = await send(gw, path, asking(path, "usage-values"), key)
    assert status == 200, payload[:300]
    await gw.recorder.flush()
    rows = usage_rows(gw)
    assert rows and all(r["input_tokens"] >= 0 and r["output_tokens"] >= 0 for r in rows)
    no_tracebacks(caplog)


def usage_rows(gw: Gateway) -> list[Any]:
    with sqlite3.connect(Path(gw.config.database_path)) as conn:
        conn.row_factory = sqlite3.Row
        return list(conn.execute("SELECT * FROM usage_logs"))


@pytest.mark.parametrize("path", ROUTES)
async def test_a_huge_answer_is_cut_at_the_cap(
        gw: Gateway, path: str, caplog: pytest.LogCaptureFixture) -> None:
    key = await gw.new_key()
    started = time.perf_counter()
    status, _, payload = await send(gw, path, asking(path, "huge"), key)
    took = time.perf_counter() - started
    assert status == 502, payload[:300]
    error_of(path, status, payload)
    assert took < 20
    no_tracebacks(caplog)


class PeakRss:
    """The highest resident set size of this process while the block runs (a thread
    samples /proc, so a loop busy copying bytes cannot hide its peak)."""

    def __init__(self) -> None:
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc/self/status")

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.base) / (1 << 20)


@pytest.mark.parametrize("path", ROUTES)
async def test_a_stream_that_never_ends_an_event_is_bounded(
        gw: Gateway, path: str, caplog: pytest.LogCaptureFixture) -> None:
    """32 MiB of `data:` lines with no blank line: before the first byte a 502, after a
    proper start an error at the end of a well-terminated stream; either way in bounded
    time and memory (the old pass-through buffer grew quadratically: 59 -> 411 MB)."""
    key = await gw.new_key()
    with PeakRss() as rss:
        started = time.perf_counter()
        status, _, payload = await send(gw, path, asking(path, "no-separator", True), key)
        early = time.perf_counter() - started
        assert status == 502, payload[:300]
        error_of(path, status, payload)
        started = time.perf_counter()
        status, headers, payload = await send(gw, path, asking(path, "late-no-separator", True),
                                              key)
        late = time.perf_counter() - started
    print(f"{path}: early {early:.2f} s, late {late:.2f} s, RSS +{rss.growth_mib:.0f} MiB")
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    tail = payload[-2000:]
    if path == "/v1/messages":
        assert b"event: error" in tail, tail
    elif path == "/v1/chat/completions":
        assert b'"error"' in tail, tail
    else:
        assert b"response.failed" in tail or b'"error"' in tail, tail
    assert early < 10 and late < 10
    assert rss.growth_mib < 120, f"RSS grew {rss.growth_mib:.0f} MiB"
    no_tracebacks(caplog)


@pytest.mark.parametrize("path", ROUTES)
async def test_stream_usage_of_the_wrong_type_is_survived(
        gw: Gateway, path: str, caplog: pytest.LogCaptureFixture) -> None:
    key = await gw.new_key()
    status, _, payload = await send(gw, path, asking(path, "usage-list", True), key)
    assert status == 200, payload[:300]
    assert b"error" not in payload.lower() or (
        path in OPENAI_ROUTES and b'"error":null' in payload), payload[-500:]
    no_tracebacks(caplog)


@pytest.mark.parametrize("protocol", ["anthropic", "openai"])
async def test_a_health_probe_reads_a_bounded_model_list(
        gateway_factory: Any, protocol: str, caplog: pytest.LogCaptureFixture) -> None:
    """The probe's GET of the model list used to read the whole body into memory."""
    server = TestServer(build_app(), host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    try:
        with PeakRss() as rss:
            started = time.perf_counter()
            gateway = await gateway_factory({
                "providers": [provider_table("hostile", protocol, base)],
                "routing": {"health_interval": 0.2}, "plans": [OPEN_PLAN]})
            async with asyncio.timeout(20):
                while not gateway.health.results["hostile"].checked_at:
                    await asyncio.sleep(0.02)
            took = time.perf_counter() - started
        result = gateway.health.results["hostile"]
        print(f"{protocol}: probe done in {took:.2f} s, RSS +{rss.growth_mib:.0f} MiB, "
              f"ok={result.ok}")
        assert result.ok is True
        assert rss.growth_mib < 60, f"RSS grew {rss.growth_mib:.0f} MiB"
    finally:
        await server.close()
    no_tracebacks(caplog)
