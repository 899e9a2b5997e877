"""Plans' limits trip at exactly the configured figure, with the right status, headers and
message; usage is recorded once per request and survives a clean shutdown."""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime
from typing import Any

import aiohttp
import pytest

from gateway.accounting import usage as usage_module
from gateway.accounts.users import create_key, create_user, set_key_rpm, set_plan
from tests.helpers.gateway import Gateway

BODY = {"model": "claude-sonnet-4-6", "max_tokens": 20,
        "messages": [{"role": "user", "content": "hi"}]}
HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset",
           "anthropic-ratelimit-requests-limit", "anthropic-ratelimit-requests-remaining",
           "anthropic-ratelimit-requests-reset")


def plan(name: str, **figures: int) -> dict[str, Any]:
    base = {"name": name, "monthly_tokens": 0, "rpm": 0, "rpd": 0, "max_keys": 5,
            "max_input_tokens": 0}
    return {**base, **figures}


async def send(gw: Gateway, key: str, body: dict[str, Any] | None = None,
               ) -> tuple[int, dict[str, Any], Any]:
    async with aiohttp.ClientSession() as s, s.post(
            gw.url + "/v1/messages", json=body or BODY, headers={"x-api-key": key}) as r:
        return r.status, await r.json(), r.headers


async def user_key(gw: Gateway, email: str, plan_name: str) -> str:
    await create_user(gw.db, email, plan=plan_name)
    return (await create_key(gw.db, email)).raw


async def test_rpm_trips_at_exactly_the_limit(gateway_factory: Any) -> None:
    gw = await gateway_factory({"plans": [plan("tiny", rpm=3)]})
    key = await user_key(gw, "r@example.com", "tiny")
    remaining = []
    for _ in range(3):
        status, _, headers = await send(gw, key)
        assert status == 200
        assert all(h in headers for h in HEADERS)
        remaining.append(headers["x-ratelimit-remaining"])
    assert remaining == ["2", "1", "0"]
    status, payload, headers = await send(gw, key)
    assert status == 429
    assert payload["error"]["type"] == "rate_limit_error"
    message = payload["error"]["message"]
    assert "3 of 3 requests per minute" in message and "resets at" in message
    assert headers["x-ratelimit-limit"] == "3" and headers["x-ratelimit-remaining"] == "0"
    assert 1 <= int(headers["retry-after"]) <= 60
    reset = datetime.fromisoformat(headers["x-ratelimit-reset"].replace("Z", "+00:00"))
    assert 0 < reset.timestamp() - time.time() <= 61


async def test_key_rpm_override_applies_to_that_key_only(gateway_factory: Any) -> None:
    gw = await gateway_factory({"plans": [plan("roomy", rpm=100)]})
    await create_user(gw.db, "k@example.com", plan="roomy")
    limited = await create_key(gw.db, "k@example.com")
    other = await create_key(gw.db, "k@example.com")
    await set_key_rpm(gw.db, limited.key_id, 1)
    assert (await send(gw, limited.raw))[0] == 200
    status, payload, headers = await send(gw, limited.raw)
    assert status == 429 and "for this key" in payload["error"]["message"]
    assert headers["x-ratelimit-limit"] == "1"
    assert (await send(gw, other.raw))[0] == 200


async def test_rpd_trips_at_exactly_the_limit(gateway_factory: Any) -> None:
    gw = await gateway_factory({"plans": [plan("daily", rpd=2)]})
    key = await user_key(gw, "d@example.com", "daily")
    assert [(await send(gw, key))[0] for _ in range(2)] == [200, 200]
    status, payload, headers = await send(gw, key)
    assert status == 429 and "2 of 2 requests today" in payload["error"]["message"]
    assert int(headers["retry-after"]) <= 86_400


async def test_monthly_quota_trips_once_tokens_reach_it(gateway_factory: Any) -> None:
    gw = await gateway_factory({"plans": [plan("small", monthly_tokens=100)]})
    key = await user_key(gw, "q@example.com", "small")
    statuses = []
    for _ in range(10):
        status, payload, _ = await send(gw, key)
        statuses.append(status)
        if status == 429:
            assert "monthly token quota exhausted" in payload["error"]["message"]
            assert "of 100 tokens" in payload["error"]["message"]
            break
    assert statuses[-1] == 429 and statuses[:-1] == [200] * (len(statuses) - 1)
    used = gw.limits._users[1].tokens_used  # the same figure the message quoted
    assert used >= 100 and f"{used} of 100" in payload["error"]["message"]


async def test_input_over_plan_maximum_is_400(gateway_factory: Any) -> None:
    gw = await gateway_factory({"plans": [plan("short", max_input_tokens=50)]})
    key = await user_key(gw, "i@example.com", "short")
    body = {**BODY, "messages": [{"role": "user", "content": "word " * 400}]}
    status, payload, headers = await send(gw, key, body)
    assert status == 400 and payload["error"]["type"] == "invalid_request_error"
    assert "at most 50 input tokens" in payload["error"]["message"]
    assert "x-ratelimit-limit" in headers
    assert (await send(gw, key))[0] == 200  # a small request still passes


async def test_plan_change_takes_effect_at_once(gateway_factory: Any) -> None:
    gw = await gateway_factory({"plans": [plan("one", rpm=1), plan("many", rpm=50)]})
    key = await user_key(gw, "p@example.com", "one")
    assert (await send(gw, key))[0] == 200
    assert (await send(gw, key))[0] == 429
    await set_plan(gw.db, "p@example.com", "many")
    await gw.keys.refresh()
    status, _, headers = await send(gw, key)
    assert status == 200 and headers["x-ratelimit-limit"] == "50"


async def test_period_rollover_resets_usage(gateway_factory: Any, tmp_path: Any) -> None:
    gw = await gateway_factory({"plans": [plan("small", monthly_tokens=100)]})
    await create_user(gw.db, "o@example.com", plan="small")
    key = (await create_key(gw.db, "o@example.com")).raw
    past = time.time() - 40 * 86_400
    with sqlite3.connect(gw.db.path) as conn:  # a period that ended long ago, used up
        conn.execute("UPDATE subscriptions SET period_start = ?, period_end = ?,"
                     " tokens_used = 100", (past, past + 30 * 86_400))
    status, payload, _ = await send(gw, key)
    assert status == 200, payload
    await gw.recorder.flush()
    with sqlite3.connect(gw.db.path) as conn:
        start, end, used = conn.execute(
            "SELECT period_start, period_end, tokens_used FROM subscriptions").fetchone()
        row_tokens = conn.execute(
            "SELECT SUM(input_tokens + output_tokens) FROM usage_logs").fetchone()[0]
    assert start <= time.time() < end
    assert used == row_tokens > 0  # only this request's tokens: the old 100 are gone


async def test_clean_shutdown_with_full_queue_loses_no_row(
        gateway_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usage_module, "FLUSH_INTERVAL", 3600.0)  # nothing flushes by itself
    monkeypatch.setattr(usage_module, "BATCH_ROWS", 10**9)
    gw = await gateway_factory({"plans": [plan("bulk")]})
    key = await user_key(gw, "s@example.com", "bulk")
    for _ in range(40):
        assert (await send(gw, key))[0] == 200
    assert gw.recorder.pending == 40
    path = gw.db.path
    await gw.server.close()  # runs the app's cleanup: the recorder drains
    with sqlite3.connect(path) as conn:
        rows, tokens = conn.execute(
            "SELECT COUNT(*), SUM(input_tokens + output_tokens) FROM usage_logs").fetchone()
        used, requests = conn.execute(
            "SELECT tokens_used, requests_used FROM subscriptions").fetchone()
    assert rows == 40 and used == tokens and requests == 40


async def test_rate_limit_headers_on_unlimited_plan(gateway_factory: Any) -> None:
    gw = await gateway_factory({"plans": [plan("free-for-all")]})
    key = await user_key(gw, "u@example.com", "free-for-all")
    status, _, headers = await send(gw, key)
    assert status == 200
    assert headers["x-ratelimit-limit"] == "unlimited"
    assert headers["anthropic-ratelimit-requests-remaining"] == "unlimited"
