"""Provider outages never reach the user: failover, breakers, timeouts, disconnects, health,
metrics and graceful shutdown, with fake upstreams as real servers."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sqlite3
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.providers.http import parse_retry_after
from gateway.testing.fake_upstream import FakeSettings
from gateway.testing.fake_upstream import build_app as build_fake
from tests.helpers.gateway import fake_stats, free_port, provider_table, wait_for_port

FAST = {"first_byte_timeout": 0.5, "connect_timeout": 0.5, "idle_timeout": 0.5}
ROUTING = {"breaker_failures": 3, "breaker_cooldown": 0.5, "retry_backoff": 0.01,
           "health_interval": 0}
BODY = {"model": "claude-sonnet-4-6", "max_tokens": 50,
        "messages": [{"role": "user", "content": "hi"}]}


async def two_providers(gateway_factory: Any, fake_factory: Any, first: dict[str, Any],
                        protocol: str = "openai", routing: dict[str, Any] | None = None,
                        first_base: str | None = None) -> tuple[Any, str, str, str]:
    a_base = first_base or (await fake_factory(**first))[0]
    b_base, _ = await fake_factory()
    gw = await gateway_factory({
        "providers": [provider_table("a", protocol, a_base, **FAST),
                      provider_table("b", protocol, b_base, **FAST)],
        "routing": {**ROUTING, **(routing or {})},
        "plans": [{"name": "free", "rpm": 0, "monthly_tokens": 0}]})
    return gw, await gw.new_key(), a_base, b_base


async def post(gw: Any, key: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.post(
            gw.url + "/v1/messages", json=body or BODY, headers={"x-api-key": key}) as r:
        if r.content_type == "text/event-stream":
            return r.status, await r.text()
        return r.status, await r.json()


async def until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    """Wait for a state the gateway reaches by itself (a probe round, a flush)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {timeout}s")
        await asyncio.sleep(0.01)


def served_by(stats: dict[str, Any]) -> int:
    return int(stats["statuses"].get("200", 0))


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
@pytest.mark.parametrize("failure", [
    {"status": 500}, {"status": 503}, {"status": 529}, {"status": 429, "retry_after": "1"}])
async def test_failing_first_provider_is_replaced_by_the_second(
        gateway_factory: Any, fake_factory: Any, protocol: str, failure: dict[str, Any]) -> None:
    gw, key, a, b = await two_providers(gateway_factory, fake_factory, failure, protocol)
    started = time.monotonic()
    status, body = await post(gw, key)
    assert status == 200 and body["type"] == "message"
    assert time.monotonic() - started < 1.0  # moving to another provider does not wait
    assert (await fake_stats(a))["total_requests"] == 1
    assert served_by(await fake_stats(b)) == 1


async def test_hang_before_first_byte_times_out_and_fails_over(
        gateway_factory: Any, fake_factory: Any) -> None:
    gw, key, _a, b = await two_providers(gateway_factory, fake_factory, {"hang": True})
    started = time.monotonic()
    status, _ = await post(gw, key, {**BODY, "stream": True})
    assert status == 200
    assert 0.4 < time.monotonic() - started < 3
    assert served_by(await fake_stats(b)) == 1


async def test_refused_connection_fails_over(gateway_factory: Any, fake_factory: Any) -> None:
    closed = free_port()  # nothing listens there
    gw, key, _, b = await two_providers(gateway_factory, fake_factory, {},
                                        first_base=f"http://127.0.0.1:{closed}")
    status, _ = await post(gw, key)
    assert status == 200 and served_by(await fake_stats(b)) == 1


async def test_request_errors_are_not_retried(gateway_factory: Any, fake_factory: Any) -> None:
    gw, key, _a, b = await two_providers(gateway_factory, fake_factory, {"status": 400})
    status, body = await post(gw, key)
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    assert (await fake_stats(b))["total_requests"] == 0


async def test_retry_after_is_honoured_when_retrying_the_same_provider(
        gateway_factory: Any, fake_factory: Any) -> None:
    base, _ = await fake_factory(status=429, retry_after="0.3", fail_times=1, key="ra")
    gw = await gateway_factory({"providers": [provider_table("only", "openai", base, **FAST)],
                                "routing": ROUTING})
    key = await gw.new_key(plan="team")
    started = time.monotonic()
    status, _ = await post(gw, key)
    assert status == 200
    assert time.monotonic() - started >= 0.3
    assert (await fake_stats(base))["total_requests"] == 2


async def test_all_providers_failing_is_overloaded_529(
        gateway_factory: Any, fake_factory: Any) -> None:
    a, _ = await fake_factory(status=503)
    b, _ = await fake_factory(status=502)
    gw = await gateway_factory({"providers": [provider_table("a", "openai", a, **FAST),
                                              provider_table("b", "openai", b, **FAST)],
                                "routing": {**ROUTING, "max_attempts": 3}})
    key = await gw.new_key(plan="team")
    status, body = await post(gw, key)
    assert status == 529 and body["error"]["type"] == "overloaded_error"
    attempts = (await fake_stats(a))["total_requests"] + (await fake_stats(b))["total_requests"]
    assert attempts == 3  # the per-request attempt budget


async def test_breaker_opens_skips_the_provider_and_recovers_after_cooldown(
        gateway_factory: Any, fake_factory: Any) -> None:
    gw, key, a, _b = await two_providers(
        gateway_factory, fake_factory, {"status": 500, "fail_times": 3, "key": "brk"})
    for _ in range(3):
        assert (await post(gw, key))[0] == 200
    assert (await fake_stats(a))["total_requests"] == 3
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/health") as health:
        snapshot = await health.json()
    assert snapshot["providers"]["a"]["breaker"] == "open"
    assert snapshot["providers"]["b"]["breaker"] == "closed" and health.status == 200
    assert (await post(gw, key))[0] == 200
    assert (await fake_stats(a))["total_requests"] == 3  # open: skipped
    await until(lambda: gw.breakers["a"].usable, "the breaker's cooldown over")
    # half-open now: one request goes through and succeeds
    assert (await post(gw, key))[0] == 200
    assert (await fake_stats(a))["total_requests"] == 4
    assert gw.breakers["a"].state == "closed"
    assert (await post(gw, key))[0] == 200
    assert served_by(await fake_stats(a)) == 2  # back in front


async def test_health_is_503_when_no_provider_is_usable(
        gateway_factory: Any, fake_factory: Any) -> None:
    base, _ = await fake_factory(status=500)
    gw = await gateway_factory({"providers": [provider_table("a", "openai", base, **FAST)],
                                "routing": {**ROUTING, "breaker_failures": 1,
                                            "breaker_cooldown": 60, "max_attempts": 1}})
    key = await gw.new_key(plan="team")
    assert (await post(gw, key))[0] == 529
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/health") as r:
        assert r.status == 503 and (await r.json())["status"] == "unavailable"
    status, body = await post(gw, key)
    assert status == 529 and "circuit" in body["error"]["message"]


async def test_health_checker_probes_without_spending_tokens(
        gateway_factory: Any, fake_factory: Any) -> None:
    up, _ = await fake_factory()
    dead = f"http://127.0.0.1:{free_port()}"
    gw = await gateway_factory({"providers": [provider_table("up", "openai", up, **FAST),
                                              provider_table("dead", "anthropic", dead, **FAST)],
                                "routing": {**ROUTING, "health_interval": 0.1}})
    await until(lambda: all(gw.health.results[n].ok is not None for n in ("up", "dead")),
                "both providers probed")
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/health") as r:
        snapshot = await r.json()
    assert r.status == 200
    assert snapshot["providers"]["up"]["probe_ok"] is True
    assert snapshot["providers"]["up"]["latency_ms"] is not None
    assert snapshot["providers"]["dead"]["probe_ok"] is False
    assert "unreachable" in snapshot["providers"]["dead"]["last_error"]
    assert snapshot["providers"]["dead"]["status"] == "down"
    stats = await fake_stats(up)
    assert stats["requests"].get("chat_completions", 0) == 0  # probes are model listings
    assert stats["requests"].get("models", 0) >= 1


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
async def test_stalled_stream_ends_with_error_event_after_idle_timeout(
        gateway_factory: Any, fake_factory: Any, protocol: str) -> None:
    base, _ = await fake_factory()
    gw = await gateway_factory({"providers": [provider_table("a", protocol, base, **FAST)],
                                "routing": ROUTING})
    key = await gw.new_key(plan="team")
    body = {**BODY, "stream": True,
            "messages": [{"role": "user", "content": '[[fake:{"stall_after":2,"chunks":6}]]'}]}
    started = time.monotonic()
    async with aiohttp.ClientSession() as s, s.post(gw.url + "/v1/messages", json=body,
                                                    headers={"x-api-key": key}) as r:
        text = await r.text()
    assert r.status == 200
    assert 0.4 < time.monotonic() - started < 5
    assert "event: error" in text and "message_stop" not in text
    if protocol == "openai":  # converted streams close their open block before the error
        assert text.count("content_block_start") == text.count("content_block_stop")


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
async def test_client_disconnect_closes_upstream_and_records_usage(
        gateway_factory: Any, fake_factory: Any, protocol: str) -> None:
    base, _ = await fake_factory()
    gw = await gateway_factory({"providers": [provider_table("a", protocol, base)],
                                "routing": ROUTING})
    key = await gw.new_key(plan="team")
    body = {**BODY, "stream": True, "messages": [
        {"role": "user", "content": '[[fake:{"chunks":400,"chunk_delay":0.02}]]'}]}
    session = aiohttp.ClientSession()
    response = await session.post(gw.url + "/v1/messages", json=body, headers={"x-api-key": key})
    seen = b""
    while b"content_block_delta" not in seen:
        seen += await response.content.readany()
    assert (await fake_stats(base))["active_streams"] == 1
    response.close()  # the client goes away mid-answer
    gone = time.monotonic()
    while (await fake_stats(base))["cancelled_streams"] < 1:
        assert time.monotonic() - gone < 0.1, "upstream stream still open 100 ms after"
        await asyncio.sleep(0.005)
    await session.close()
    for _ in range(50):
        await gw.recorder.flush()
        with sqlite3.connect(gw.db.path) as conn:
            rows = conn.execute("SELECT status, output_tokens FROM usage_logs").fetchall()
        if rows:
            break
        await asyncio.sleep(0.02)
    assert len(rows) == 1 and rows[0][0] == "client_disconnect"
    assert rows[0][1] > 0  # the tokens seen so far are still counted


async def test_metrics_parse_as_prometheus_text(gateway_factory: Any, fake_factory: Any) -> None:
    gw, key, _, _ = await two_providers(gateway_factory, fake_factory, {"status": 500})
    assert (await post(gw, key))[0] == 200
    assert (await post(gw, key, {**BODY, "stream": True}))[0] == 200
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/metrics") as r:
        text = await r.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = families["llmapi_requests"].samples
    assert any(s.labels == {"status": "success", "model": "fake-model", "provider": "b"}
               and s.value == 2 for s in requests)
    failures = families["llmapi_upstream_failures"].samples
    assert any(s.labels["provider"] == "a" and s.labels["reason"] == "status_500"
               for s in failures)
    buckets = [s for s in families["llmapi_time_to_first_token_ms"].samples
               if s.name.endswith("_bucket")]
    assert buckets and buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == 2
    assert "llmapi_gateway_overhead_ms" in families
    breaker = {s.labels["provider"]: s.value for s in families["llmapi_breaker_state"].samples}
    assert breaker == {"a": 0, "b": 0}  # two failures are below the threshold of 3
    assert families["llmapi_active_streams"].samples[0].value == 0


def test_sigterm_during_stream_lets_it_finish_and_exits_0(tmp_path: Path, spawn: Any) -> None:
    fake_port, gw_port = free_port(), free_port()
    fake = spawn("fake-upstream", "--port", str(fake_port))
    wait_for_port(fake_port, fake)
    config = tmp_path / "gw.toml"
    config.write_text(
        f'[server]\nport = {gw_port}\nshutdown_grace = 20\n'
        f'[database]\npath = "{tmp_path / "db.sqlite"}"\n'
        f'[[providers]]\nname = "fake"\nprotocol = "openai"\n'
        f'base_url = "http://127.0.0.1:{fake_port}/v1"\n'
        f'[providers.models]\ndefault = "fake-model"\n')
    env = {"LLMAPI_CONFIG": str(config)}
    from tests.helpers.gateway import run_cli

    assert run_cli("users", "add", "t@example.com", "--plan", "team", env=env).returncode == 0
    key = run_cli("keys", "add", "t@example.com", env=env).stdout.strip()
    gateway = spawn("serve", env=env)
    wait_for_port(gw_port, gateway)
    sdk = anthropic.Anthropic(base_url=f"http://127.0.0.1:{gw_port}", api_key=key, max_retries=0)
    with sdk.messages.stream(model="claude-sonnet-4-6", max_tokens=100, messages=[
            {"role": "user", "content": '[[fake:{"chunks":30,"chunk_delay":0.05}]]'}]) as stream:
        events = iter(stream)
        next(events)
        os.kill(gateway.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while True:  # soon no longer accepting new connections, while this stream goes on
            try:
                socket.create_connection(("127.0.0.1", gw_port), timeout=0.5).close()
            except OSError:
                break
            assert time.monotonic() < deadline, "still accepting connections 10 s after SIGTERM"
            time.sleep(0.02)
        rest = [e.type for e in events]
        final = stream.get_final_message()
    assert rest[-1] == "message_stop" and final.usage.output_tokens == 30
    assert gateway.wait(20) == 0
    with sqlite3.connect(tmp_path / "db.sqlite") as conn:  # usage flushed on the way out
        assert conn.execute("SELECT status FROM usage_logs").fetchall() == [("success",)]


async def test_access_log_is_one_json_line_without_prompt_or_key(
        gateway_factory: Any, fake_factory: Any) -> None:
    import io

    import orjson

    base, _ = await fake_factory()
    gw = await gateway_factory({"providers": [provider_table("a", "openai", base)]})
    sink = io.BytesIO()
    gw.access_log.stream = sink  # the running log, writing into this test's buffer
    key = await gw.new_key(plan="team")
    secret_prompt = "my-private-prompt-text " + '[[fake:{"chunks":3}]]'
    body = {**BODY, "stream": True, "messages": [{"role": "user", "content": secret_prompt}]}
    assert (await post(gw, key, body))[0] == 200
    gw.access_log.flush()
    lines = sink.getvalue().splitlines()
    assert len(lines) == 1
    record = orjson.loads(lines[0])
    assert record["request_id"].startswith("req_") and record["user_id"] == 1
    assert record["key"] == key[:18] and record["model"] == "claude-sonnet-4-6"
    assert (record["provider"], record["upstream_model"]) == ("a", "fake-model")
    assert record["status"] == "success" and record["output_tokens"] == 3
    assert record["ttft_ms"] > 0 and record["duration_ms"] >= record["ttft_ms"]
    assert b"my-private-prompt-text" not in sink.getvalue() and key.encode() not in lines[0]


def test_retry_after_is_read_without_a_cap_of_its_own() -> None:
    """Delay-seconds or an HTTP-date (RFC 9110 10.2.3), however long: whether to wait is
    `[routing] max_retry_after`'s decision, not a module constant's."""
    now = 1_700_000_000.0
    assert parse_retry_after("11") == 11.0 and parse_retry_after("3600") == 3600.0
    assert parse_retry_after("0.25") == 0.25 and parse_retry_after("0") == 0.0
    assert parse_retry_after(formatdate(now + 42, usegmt=True), now=now) == 42.0
    assert parse_retry_after(formatdate(now - 42, usegmt=True), now=now) == 0.0
    for bad in ("", None, "-1", "nan", "inf", "soon", "12 seconds"):
        assert parse_retry_after(bad) is None, bad


@pytest.mark.slow
async def test_a_retry_after_beyond_ten_seconds_is_honoured_when_the_config_allows_it(
        gateway_factory: Any, fake_factory: Any) -> None:
    """`max_retry_after = 12` means a 10.5 s retry-after is waited for (a module constant
    capped it at 10 s before)."""
    base, _ = await fake_factory(status=429, retry_after="10.5", fail_times=1, key="long")
    gw = await gateway_factory({"providers": [provider_table("only", "openai", base, **FAST)],
                                "routing": {**ROUTING, "max_retry_after": 12}})
    key = await gw.new_key(plan="team")
    started = time.monotonic()
    status, _ = await post(gw, key)
    assert status == 200
    assert time.monotonic() - started >= 10.5
    assert (await fake_stats(base))["total_requests"] == 2


async def test_a_retry_after_beyond_max_retry_after_is_not_waited_for(
        gateway_factory: Any, fake_factory: Any) -> None:
    base, _ = await fake_factory(status=429, retry_after="2", fail_times=1, key="short")
    gw = await gateway_factory({"providers": [provider_table("only", "openai", base, **FAST)],
                                "routing": {**ROUTING, "max_retry_after": 1}})
    key = await gw.new_key(plan="team")
    started = time.monotonic()
    status, _ = await post(gw, key)
    assert status == 200 and time.monotonic() - started < 1.5  # the backoff, not 2 s
    assert (await fake_stats(base))["total_requests"] == 2


async def test_probe_failures_are_logged_once_per_state_change_with_cause_and_url(
        gateway_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A real upstream goes away for many probe rounds and comes back on the same port:
    one warning naming the URL and the cause, one line when it is healthy again."""
    port = free_port()

    async def start_upstream() -> TestServer:
        server = TestServer(build_fake(FakeSettings(port=0)), host="127.0.0.1", port=port)
        await server.start_server()
        return server

    upstream = await start_upstream()
    base = f"http://127.0.0.1:{port}"
    gw = await gateway_factory({"providers": [provider_table("flaky", "openai", base, **FAST)],
                                "routing": {**ROUTING, "health_interval": 0.05}})
    results = gw.health.results
    caplog.set_level(logging.INFO, logger="llmapi.health")
    try:
        await until(lambda: results["flaky"].ok is True, "first probe healthy")
        await upstream.close()
        down_at = time.time()
        await until(lambda: results["flaky"].ok is False
                    and results["flaky"].checked_at > down_at + 0.5, "many probes while down")
        upstream = await start_upstream()
        up_at = time.time()
        await until(lambda: results["flaky"].ok is True
                    and results["flaky"].checked_at > up_at + 0.3, "many probes after")
    finally:
        await upstream.close()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "llmapi.health"]
    assert len(lines) == 2, lines
    (level, failing), (level2, healthy) = lines
    assert level == "WARNING" and level2 == "INFO"
    assert failing.startswith(f"provider flaky health probe failing: GET {base}/v1/models: "
                              "unreachable (ClientConnectorError): Cannot connect to host "
                              f"127.0.0.1:{port}"), failing
    assert healthy.startswith(f"provider flaky health probe healthy again: GET "
                              f"{base}/v1/models answered after "), healthy
