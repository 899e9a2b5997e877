"""The OpenAI routes under the same plan limits as /v1/messages: the output limit sent to an
openai-protocol upstream is lowered to the quota reservation, and the retry and rate-limit
headers the official `openai` SDK reads.

Real gateways on loopback, real SQLite files, the fake upstream recording every body it got
(`/_fake/stats` history), strict vendor profiles where a vendor refuses a field.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.accounting.counters import MIN_OUTPUT_TOKENS
from tests.helpers.gateway import fake_stats, provider_table


def plan(name: str, **figures: int) -> dict[str, Any]:
    return {"name": name, "monthly_tokens": 0, "rpm": 0, "rpd": 0, "max_keys": 5,
            "max_input_tokens": 0, "concurrency": 0, **figures}


async def post(s: aiohttp.ClientSession, url: str, key: str,
               payload: dict[str, Any]) -> tuple[int, Any, bytes]:
    async with s.post(url, json=payload, headers={"Authorization": f"Bearer {key}"}) as r:
        return r.status, r.headers, await r.read()


def chat(text: str, stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4.1", "stream": stream,
            "messages": [{"role": "user", "content": text}], **extra}


async def last_upstream_body(base: str) -> dict[str, Any]:
    history = (await fake_stats(base))["history"]
    assert history, "the upstream received nothing"
    body: dict[str, Any] = history[-1]["json"]
    return body


async def quota_gateway(gateway_factory: Any, fake_factory: Any, monthly: int,
                        **provider: Any) -> tuple[Any, str, str]:
    base, _ = await fake_factory(vendor=provider.pop("vendor", ""))
    gw = await gateway_factory({
        "providers": [provider_table("fake", "openai", base, **provider)],
        "plans": [plan("small", monthly_tokens=monthly)], "server": {"access_log": False}})
    return gw, await gw.new_key("m@example.com", plan="small"), base


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_chat_pass_through_output_limit_lowered_to_the_reservation(
        gateway_factory: Any, fake_factory: Any, field: str, stream: bool) -> None:
    gw, key, base = await quota_gateway(gateway_factory, fake_factory, 500)
    async with aiohttp.ClientSession() as s:
        status, _, raw = await post(s, gw.url + "/v1/chat/completions", key,
                                    chat("hi", stream, **{field: 100_000}))
    assert status == 200, raw
    sent = await last_upstream_body(base)
    assert MIN_OUTPUT_TOKENS <= sent[field] < 500, sent
    assert sent["model"] == "fake-model"


async def test_both_chat_limits_lowered(gateway_factory: Any, fake_factory: Any) -> None:
    gw, key, base = await quota_gateway(gateway_factory, fake_factory, 500)
    async with aiohttp.ClientSession() as s:
        status, _, raw = await post(s, gw.url + "/v1/chat/completions", key,
                                    chat("hi", max_tokens=90_000, max_completion_tokens=80))
    assert status == 200, raw
    sent = await last_upstream_body(base)
    assert sent["max_completion_tokens"] == 80  # already within the reservation
    assert sent["max_tokens"] < 500


async def test_chat_without_a_limit_gets_the_reservation(gateway_factory: Any,
                                                         fake_factory: Any) -> None:
    """A client that names no limit would get the vendor's default (often the model's
    whole output window): the gateway sends what it reserved instead."""
    gw, key, base = await quota_gateway(gateway_factory, fake_factory, 500)
    async with aiohttp.ClientSession() as s:
        status, _, raw = await post(s, gw.url + "/v1/chat/completions", key, chat("hi"))
    assert status == 200, raw
    sent = await last_upstream_body(base)
    assert MIN_OUTPUT_TOKENS <= sent["max_tokens"] < 500
    assert "max_completion_tokens" not in sent


async def test_openai_reasoning_upstream_gets_max_completion_tokens(
        gateway_factory: Any, fake_factory: Any) -> None:
    """OpenAI's reasoning models refuse `max_tokens` (the strict `openai` vendor profile
    answers 400 "Unsupported parameter: 'max_tokens'..."): the added limit is
    `max_completion_tokens` there."""
    gw, key, base = await quota_gateway(gateway_factory, fake_factory, 500, vendor="openai",
                                        reasoning="openai")
    async with aiohttp.ClientSession() as s:
        status, _, raw = await post(s, gw.url + "/v1/chat/completions", key, chat("hi"))
    assert status == 200, raw
    sent = await last_upstream_body(base)
    assert "max_tokens" not in sent and MIN_OUTPUT_TOKENS <= sent["max_completion_tokens"] < 500


async def test_responses_output_limit_lowered(gateway_factory: Any, fake_factory: Any) -> None:
    gw, key, base = await quota_gateway(gateway_factory, fake_factory, 500)
    async with aiohttp.ClientSession() as s:
        status, _, raw = await post(s, gw.url + "/v1/responses", key, {
            "model": "gpt-5-codex", "input": "hi", "max_output_tokens": 100_000})
        assert status == 200, raw
        assert (await last_upstream_body(base))["max_tokens"] < 500
        status, _, raw = await post(s, gw.url + "/v1/responses", key,
                                    {"model": "gpt-5-codex", "input": "hi"})
    assert status == 200, raw
    assert (await last_upstream_body(base))["max_tokens"] < 500


async def test_unlimited_plan_body_untouched(gateway_factory: Any, fake_factory: Any) -> None:
    gw, key, base = await quota_gateway(gateway_factory, fake_factory, 0)
    async with aiohttp.ClientSession() as s:
        await post(s, gw.url + "/v1/chat/completions", key, chat("hi"))
        sent = await last_upstream_body(base)
        assert "max_tokens" not in sent and "max_completion_tokens" not in sent
        await post(s, gw.url + "/v1/chat/completions", key, chat("hi", max_tokens=100_000))
    assert (await last_upstream_body(base))["max_tokens"] == 100_000


def db_tokens(path: Any) -> tuple[int, int, int, set[str]]:
    """(tokens on rows, rows, subscription counter, ingress values)."""
    with sqlite3.connect(path) as conn:
        tokens, rows = conn.execute(
            "SELECT COALESCE(SUM(input_tokens + output_tokens + cache_read_tokens"
            " + cache_creation_tokens), 0), COUNT(*) FROM usage_logs").fetchone()
        used = conn.execute("SELECT COALESCE(SUM(tokens_used), 0) FROM subscriptions").fetchone()
        ingress = {r[0] for r in conn.execute("SELECT DISTINCT ingress FROM usage_logs")}
    return int(tokens), int(rows), int(used[0]), ingress


def openai_body(route: str, i: int, max_tokens: int | None) -> dict[str, Any]:
    text = f"request {i}: tell me a long story"
    if route == "chat":
        extra = {"max_completion_tokens": max_tokens} if max_tokens else {}
        return chat(text, stream=i % 2 == 0, **extra)
    extra = {"max_output_tokens": max_tokens} if max_tokens else {}
    return {"model": "gpt-5-codex", "input": text, "stream": i % 2 == 0, **extra}


@pytest.mark.parametrize("max_tokens", [None, 20, 100_000])
@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
@pytest.mark.parametrize("route", ["chat", "responses"])
async def test_200_concurrent_openai_requests_cannot_outrun_a_1000_token_plan(
        gateway_factory: Any, fake_factory: Any, route: str, protocol: str,
        max_tokens: int | None) -> None:
    """docs/limits.md's bound (at most 2x the quota) on the OpenAI routes: 200 concurrent
    requests with 20,000-token answers, the client asking for no limit or for 100,000."""
    limit, bound = 1000, 2000
    base, _ = await fake_factory(chunks=20_000)
    gw = await gateway_factory({"providers": [provider_table("fake", protocol, base)],
                                "plans": [plan("tiny", monthly_tokens=limit)],
                                "server": {"access_log": False}})
    key = await gw.new_key("q@example.com", plan="tiny")
    url = gw.url + ("/v1/chat/completions" if route == "chat" else "/v1/responses")
    async with aiohttp.ClientSession() as s:
        results = await asyncio.gather(*(post(s, url, key, openai_body(route, i, max_tokens))
                                         for i in range(200)))
    statuses = [r[0] for r in results]
    assert set(statuses) <= {200, 429}, [r for r in results if r[0] not in (200, 429)][:1]
    for status, headers, raw in results:
        if status == 429:
            error = orjson.loads(raw)["error"]
            assert "monthly token quota exhausted" in error["message"], error
            # only held by requests in flight: frees when they settle. (A quota also used up
            # names what is held too, and is final: the message then gives the reset.)
            if "retry when a request in flight finishes" in error["message"]:
                assert (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")
                assert headers["retry-after"] == "1" and "x-should-retry" not in headers
            else:
                assert error["code"] == "insufficient_quota"
                assert headers["x-should-retry"] == "false"
    await gw.recorder.flush()
    tokens, rows, used, ingress = db_tokens(gw.db.path)
    print(f"\n[quota {route}/{protocol}/{max_tokens}] 200 concurrent on a {limit}-token plan: "
          f"{statuses.count(200)} admitted, {tokens} tokens used (overshoot "
          f"{tokens - limit:+d}; documented bound {bound - limit:+d})")
    assert rows == statuses.count(200) > 0
    assert used == tokens <= bound
    assert ingress == {route}
