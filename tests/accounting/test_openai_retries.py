"""What the official `openai` SDK does with the gateway's errors and rate-limit headers.

The SDK (openai-python `_base_client`) retries 408, 409, 429 and 5xx up to `max_retries`
times, obeys `x-should-retry: true|false` first, waits `retry-after-ms` / `retry-after` when
it is at most 120 s and gives up at once when it is longer. These tests count the attempts
the SDK really made (an httpx event hook on its own HTTP client) and the calls the upstream
really received (the fake's counters), so a missing or wrong header shows as a wrong count.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from typing import Any

import httpx2
import openai
import pytest

from gateway.accounting.limits import (
    LIMIT_CONCURRENCY,
    LIMIT_RPD,
    LIMIT_RPM,
    LIMIT_TOKENS,
    LIMIT_TOKENS_HELD,
)
from gateway.protocol.openai_errors import _LIMITS, go_duration
from tests.helpers.gateway import fake_stats, provider_table

DURATION = re.compile(r"^(\d+ms|\d+s|\d+m\d+s|\d+h\d+m\d+s)$")


def plan(name: str, **figures: int) -> dict[str, Any]:
    return {"name": name, "monthly_tokens": 0, "rpm": 0, "rpd": 0, "max_keys": 5,
            "max_input_tokens": 0, "concurrency": 0, **figures}


class Counted:
    """An AsyncOpenAI client whose every HTTP attempt is counted."""

    def __init__(self, url: str, key: str, max_retries: int) -> None:
        self.attempts = 0

        async def count(_request: Any) -> None:
            self.attempts += 1

        self.http = httpx2.AsyncClient(event_hooks={"request": [count]})
        self.sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key=key,
                                      max_retries=max_retries, http_client=self.http)


async def start(gateway_factory: Any, fake_factory: Any, plan_figures: dict[str, int],
                routing: dict[str, Any] | None = None,
                **fake: Any) -> tuple[Any, str, str]:
    base, _ = await fake_factory(**fake)
    data: dict[str, Any] = {"providers": [provider_table("fake", "openai", base)],
                            "plans": [plan("p", **plan_figures)],
                            "server": {"access_log": False}}
    if routing:
        data["routing"] = routing
    gw = await gateway_factory(data)
    return gw, await gw.new_key("r@example.com", plan="p"), base


def user(text: str = "hi") -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def upstream_calls(base: str) -> int:
    return int((await fake_stats(base))["requests"].get("chat_completions", 0))


def test_limit_names_are_mapped() -> None:
    assert set(_LIMITS) == {LIMIT_RPM, LIMIT_RPD, LIMIT_CONCURRENCY, LIMIT_TOKENS,
                            LIMIT_TOKENS_HELD}
    assert [go_duration(s) for s in (0, 0.012, 1, 59.2, 360, 3600 * 720)] == \
        ["0s", "12ms", "1s", "1m0s", "6m0s", "720h0m0s"]


@pytest.mark.parametrize("route", ["chat", "responses"])
@pytest.mark.parametrize("stream", [False, True])
async def test_rate_limit_headers_on_every_answer(gateway_factory: Any, fake_factory: Any,
                                                  route: str, stream: bool) -> None:
    gw, key, _ = await start(gateway_factory, fake_factory,
                             {"rpm": 5, "monthly_tokens": 100_000})
    client = Counted(gw.url, key, 0)
    for n in range(1, 3):
        if route == "chat":
            raw = await client.sdk.chat.completions.with_raw_response.create(
                model="gpt-4.1", messages=user(), max_tokens=50, stream=stream)
        else:
            raw = await client.sdk.responses.with_raw_response.create(
                model="gpt-5-codex", input="hi", max_output_tokens=50, stream=stream)
        h = raw.headers
        assert h["x-ratelimit-limit-requests"] == "5"
        assert h["x-ratelimit-remaining-requests"] == str(5 - n)
        assert DURATION.match(h["x-ratelimit-reset-requests"]), h["x-ratelimit-reset-requests"]
        assert h["x-ratelimit-limit-tokens"] == "100000"
        remaining = int(h["x-ratelimit-remaining-tokens"])
        assert 100_000 - 2_000 < remaining <= 100_000 - 50  # this request's reservation held
        hours = re.match(r"^(\d+)h", h["x-ratelimit-reset-tokens"])
        assert hours and 24 * 27 <= int(hours[1]) <= 24 * 31  # the end of the monthly period
        result = raw.parse()
        if stream:
            async for _ in result:
                pass


async def test_unlimited_plan_sends_no_openai_rate_headers(gateway_factory: Any,
                                                           fake_factory: Any) -> None:
    gw, key, _ = await start(gateway_factory, fake_factory, {})
    raw = await Counted(gw.url, key, 0).sdk.chat.completions.with_raw_response.create(
        model="gpt-4.1", messages=user())
    assert not [h for h in raw.headers if h.startswith("x-ratelimit-") and
                h.endswith(("-requests", "-tokens"))]
    assert raw.headers["x-ratelimit-limit"] == "unlimited"  # the gateway's own still says so


async def test_used_up_quota_is_not_retried(gateway_factory: Any, fake_factory: Any) -> None:
    gw, key, base = await start(gateway_factory, fake_factory, {"monthly_tokens": 1000})
    client = Counted(gw.url, key, 3)
    await client.sdk.chat.completions.create(model="gpt-4.1", messages=user(),
                                             max_tokens=5)
    gw.limits.add_tokens(1, 1000)  # the rest of the quota, settled
    client.attempts = 0
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as caught:
        await client.sdk.chat.completions.create(model="gpt-4.1", messages=user())
    assert client.attempts == 1, "x-should-retry: false must stop the SDK's retries"
    assert time.monotonic() - started < 2
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "insufficient_quota"
    assert body["type"] == "insufficient_quota"
    headers = caught.value.response.headers
    assert headers["x-should-retry"] == "false" and int(headers["retry-after"]) > 86_400
    assert headers["x-ratelimit-remaining-tokens"] == "0"
    assert await upstream_calls(base) == 1
    with pytest.raises(openai.RateLimitError):
        await client.sdk.responses.create(model="gpt-5-codex", input="hi")
    assert client.attempts == 2


async def test_daily_limit_is_not_retried(gateway_factory: Any, fake_factory: Any) -> None:
    gw, key, _ = await start(gateway_factory, fake_factory, {"rpd": 1})
    client = Counted(gw.url, key, 3)
    await client.sdk.chat.completions.create(model="gpt-4.1", messages=user())
    with pytest.raises(openai.RateLimitError) as caught:
        await client.sdk.chat.completions.create(model="gpt-4.1", messages=user())
    assert client.attempts == 2
    assert caught.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
    assert caught.value.response.headers["x-should-retry"] == "false"


async def test_concurrency_refusal_is_retried_and_then_served(gateway_factory: Any,
                                                              fake_factory: Any) -> None:
    """concurrency = 1 with one slow request in flight: the second gets 429 `retry-after:
    1`, the SDK waits and retries, and the retry is served once the slot is free."""
    gw, key, base = await start(gateway_factory, fake_factory, {"concurrency": 1})
    slow = Counted(gw.url, key, 0)
    blocker = asyncio.create_task(slow.sdk.chat.completions.create(
        model="gpt-4.1", messages=user('[[fake:{"first_byte_delay":0.6}]]')))
    deadline = time.monotonic() + 5
    while gw.limits._key_in_flight.get(1, 0) == 0:  # the slow one holds the slot
        assert time.monotonic() < deadline, "the first request never got admitted"
        await asyncio.sleep(0.01)
    client = Counted(gw.url, key, 2)
    started = time.monotonic()
    done = await client.sdk.chat.completions.create(model="gpt-4.1", messages=user())
    waited = time.monotonic() - started
    await blocker
    assert done.choices[0].message.content
    assert client.attempts == 2, client.attempts  # one 429, one success
    assert 0.9 < waited < 5  # it waited the retry-after (1 s), not its own 0.5 s backoff
    assert await upstream_calls(base) == 2


async def test_tokens_held_in_flight_are_retried(gateway_factory: Any,
                                                 fake_factory: Any) -> None:
    """A quota full only of reservations in flight frees when they settle: 429 `tokens` /
    `rate_limit_exceeded` with `retry-after: 1`, not `insufficient_quota`."""
    gw, key, _ = await start(gateway_factory, fake_factory, {"monthly_tokens": 1000})
    slow = Counted(gw.url, key, 0)
    blocker = asyncio.create_task(slow.sdk.chat.completions.create(
        model="gpt-4.1", messages=user('[[fake:{"first_byte_delay":0.6,"chunks":3}]]'),
        max_tokens=100_000))
    deadline = time.monotonic() + 5
    while gw.limits._key_in_flight.get(1, 0) == 0:
        assert time.monotonic() < deadline, "the first request never got admitted"
        await asyncio.sleep(0.01)
    client = Counted(gw.url, key, 0)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.sdk.chat.completions.create(model="gpt-4.1", messages=user())
    body, headers = caught.value.body, caught.value.response.headers
    assert isinstance(body, dict) and body["code"] == "rate_limit_exceeded"
    assert body["type"] == "tokens" and "in flight" in body["message"]
    assert headers["retry-after"] == "1" and "x-should-retry" not in headers
    assert client.sdk._parse_retry_after_header(headers) == 1.0  # from retry-after-ms
    await blocker
    retried = Counted(gw.url, key, 2)
    await retried.sdk.chat.completions.create(model="gpt-4.1", messages=user())
    assert retried.attempts == 1


async def test_upstream_overload_retry_after_and_attempt_counts(gateway_factory: Any,
                                                                fake_factory: Any) -> None:
    """The upstream answers 503 twice: the gateway's failover spends both its attempts,
    answers 503 with `retry-after`, the SDK retries once and the third upstream call is
    served. Three upstream calls, two SDK attempts, two usage rows."""
    gw, key, base = await start(gateway_factory, fake_factory, {},
                                routing={"max_attempts": 2, "retry_backoff": 0.01})
    client = Counted(gw.url, key, 2)
    started = time.monotonic()
    done = await client.sdk.chat.completions.create(
        model="gpt-4.1",
        messages=user('[[fake:{"status":503,"fail_times":2,"key":"overload-1"}]]'))
    assert done.choices[0].message.content
    assert client.attempts == 2
    assert await upstream_calls(base) == 3
    assert time.monotonic() - started >= 0.9  # the SDK waited the gateway's retry-after: 1
    await gw.recorder.flush()
    with sqlite3.connect(gw.db.path) as db:
        rows = db.execute("SELECT status, attempts, ingress FROM usage_logs ORDER BY id")
        assert rows.fetchall() == [("error", 2, "chat"), ("success", 1, "chat")]


async def test_circuit_open_says_when_to_come_back(gateway_factory: Any,
                                                   fake_factory: Any) -> None:
    gw, key, _ = await start(gateway_factory, fake_factory, {},
                             routing={"max_attempts": 1, "breaker_failures": 1,
                                      "breaker_cooldown": 30})
    client = Counted(gw.url, key, 0)
    with pytest.raises(openai.InternalServerError):
        await client.sdk.chat.completions.create(
            model="gpt-4.1", messages=user('[[fake:{"status":503}]]'))
    with pytest.raises(openai.InternalServerError) as caught:
        await client.sdk.chat.completions.create(model="gpt-4.1", messages=user())
    assert caught.value.status_code == 503 and "circuit open" in caught.value.message
    assert 25 <= int(caught.value.response.headers["retry-after"]) <= 30


async def test_final_errors_say_do_not_retry(gateway_factory: Any, fake_factory: Any) -> None:
    gw, key, base = await start(gateway_factory, fake_factory, {})
    client = Counted(gw.url, key, 3)
    with pytest.raises(openai.BadRequestError) as bad:
        await client.sdk.chat.completions.create(model="gpt-4.1", messages=user(), n=2)
    assert bad.value.response.headers["x-should-retry"] == "false"
    with pytest.raises(openai.NotFoundError) as missing:
        await client.sdk.get("/nowhere", cast_to=object)
    assert missing.value.response.headers["x-should-retry"] == "false"
    wrong = Counted(gw.url, "sk-llmapi-wrong", 3)
    with pytest.raises(openai.AuthenticationError) as denied:
        await wrong.sdk.responses.create(model="gpt-5-codex", input="hi")
    assert denied.value.response.headers["x-should-retry"] == "false"
    assert client.attempts == 2 and wrong.attempts == 1
    assert await upstream_calls(base) == 0


async def test_upstream_refusing_our_key_is_not_retried(gateway_factory: Any,
                                                        fake_factory: Any) -> None:
    base, _ = await fake_factory(api_key="the-right-one")
    gw = await gateway_factory({
        "providers": [provider_table("fake", "openai", base, api_key="a-wrong-one")],
        "plans": [plan("p")], "server": {"access_log": False}})
    client = Counted(gw.url, await gw.new_key("u@example.com", plan="p"), 3)
    with pytest.raises(openai.APIStatusError) as caught:
        await client.sdk.chat.completions.create(model="gpt-4.1", messages=user())
    assert caught.value.status_code == 502
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert client.attempts == 1
