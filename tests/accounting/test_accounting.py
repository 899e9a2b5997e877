"""Nothing lost, nothing counted twice: concurrent streams from many keys add up exactly."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import anthropic
import pytest

from gateway.accounts.users import create_key, create_user
from tests.helpers.gateway import provider_table

BENCH_PLAN = {"name": "bench", "monthly_tokens": 0, "rpm": 0, "rpd": 0, "max_keys": 10,
              "max_input_tokens": 0}


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
async def test_200_concurrent_streams_sum_exactly(gateway_factory: Any, fake_factory: Any,
                                                  protocol: str) -> None:
    base, _ = await fake_factory()
    gw = await gateway_factory({"providers": [provider_table("fake", protocol, base)],
                                "plans": [BENCH_PLAN], "server": {"access_log": False}})
    db = gw.db
    keys: list[tuple[str, str]] = []
    for u in range(5):
        email = f"user{u}@example.com"
        await create_user(db, email, plan="bench")
        for _ in range(3):
            keys.append((email, (await create_key(db, email)).raw))

    async def one(i: int) -> tuple[str, int]:
        email, key = keys[i % len(keys)]
        sdk = anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0)
        directive = f'[[fake:{{"chunks":{1 + i % 9}}}]] request {i}'
        async with sdk.messages.stream(model="claude-sonnet-4-6", max_tokens=100, messages=[
                {"role": "user", "content": directive}]) as stream:
            final = await stream.get_final_message()
        u = final.usage
        reported = u.input_tokens + u.output_tokens + (u.cache_read_input_tokens or 0)
        assert u.output_tokens == 1 + i % 9
        return email, reported

    results = await asyncio.gather(*(one(i) for i in range(200)))
    await gw.recorder.flush()
    by_user: dict[str, int] = {}
    for email, tokens in results:
        by_user[email] = by_user.get(email, 0) + tokens

    with sqlite3.connect(db.path) as conn:
        rows = conn.execute("SELECT COUNT(*), COUNT(DISTINCT request_id) FROM usage_logs"
                            " WHERE status = 'success'").fetchone()
        logged = dict(conn.execute(
            "SELECT u.email, SUM(l.input_tokens + l.output_tokens + l.cache_read_tokens)"
            " FROM usage_logs l JOIN users u ON u.id = l.user_id GROUP BY u.email").fetchall())
        counters = dict(conn.execute(
            "SELECT u.email, s.tokens_used FROM subscriptions s JOIN users u"
            " ON u.id = s.user_id").fetchall())
        requests = conn.execute("SELECT SUM(requests_used) FROM subscriptions").fetchone()[0]
    assert rows == (200, 200)
    assert logged == by_user  # rows add up to what the upstream reported, per user
    assert counters == by_user  # and the quota counters to the same figures
    assert requests == 200
