"""Claude-Code-shaped traffic through the gateway to both kinds of upstream, checked with the
official anthropic SDK (which accumulates and validates the event grammar)."""

from __future__ import annotations

import base64
import sqlite3
from typing import Any

import aiohttp
import anthropic
import pytest

from tests.helpers.gateway import fake_stats, provider_table

PROTOCOLS = ["openai", "anthropic"]
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")).decode()


@pytest.fixture(params=PROTOCOLS)
async def relay(request: Any, gateway_factory: Any, fake_factory: Any) -> dict[str, Any]:
    protocol = request.param
    base, _server = await fake_factory()
    gw = await gateway_factory({
        "providers": [provider_table("fake", protocol, base)],
        "plans": [{"name": "free", "rpm": 0, "monthly_tokens": 0, "max_input_tokens": 0}]})
    key = await gw.new_key()
    sdk = anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0)
    return {"protocol": protocol, "gw": gw, "base": base, "sdk": sdk, "key": key}


def ask(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-6", "max_tokens": 64000,
            "messages": [{"role": "user", "content": text}], **extra}


async def stream(sdk: anthropic.AsyncAnthropic, **kwargs: Any) -> tuple[list[str], Any]:
    events: list[str] = []
    async with sdk.messages.stream(**kwargs) as s:
        async for event in s:
            events.append(event.type)
        return events, await s.get_final_message()


def assert_grammar(events: list[str]) -> None:
    raw = [e for e in events if e in ("message_start", "content_block_start",
                                      "content_block_stop", "message_delta", "message_stop")]
    assert raw[0] == "message_start" and raw[-2:] == ["message_delta", "message_stop"]
    assert raw.count("content_block_start") == raw.count("content_block_stop")


async def test_text_stream(relay: dict[str, Any]) -> None:
    events, final = await stream(relay["sdk"], **ask('[[fake:{"text":"Hello there","chunks":4}]]'))
    assert_grammar(events)
    assert [b.type for b in final.content] == ["text"]
    assert final.content[0].text.replace(" ", "").startswith("Hellothere")
    assert final.stop_reason == "end_turn"
    # converted streams echo the client's model; pass-through keeps the upstream's bytes
    assert final.model == ("claude-sonnet-4-6" if relay["protocol"] == "openai" else "fake-model")
    assert final.usage.output_tokens == 4


async def test_parallel_tool_calls(relay: dict[str, Any]) -> None:
    tools = [{"name": n, "description": n, "input_schema": {"type": "object"}}
             for n in ("Read", "Grep")]
    events, final = await stream(relay["sdk"], **ask("[[fake:tools]]", tools=tools))
    assert_grammar(events)
    uses = [b for b in final.content if b.type == "tool_use"]
    assert [u.name for u in uses] == ["Read", "Grep"]
    assert len({u.id for u in uses}) == 2
    assert all(isinstance(u.input, dict) and u.input for u in uses)
    assert final.stop_reason == "tool_use"


async def test_reasoning_then_text(relay: dict[str, Any]) -> None:
    _, final = await stream(relay["sdk"], **ask("[[fake:reasoning]]"))
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking and final.content[1].text


async def test_length_stop(relay: dict[str, Any]) -> None:
    _, final = await stream(relay["sdk"], **ask("[[fake:length]]"))
    assert final.stop_reason == "max_tokens"


async def test_stop_sequences_reach_the_upstream(relay: dict[str, Any]) -> None:
    await stream(relay["sdk"], **ask("hi", stop_sequences=["END", "STOP"]))
    sent = (await fake_stats(relay["base"]))["last_request"]["json"]
    key = "stop" if relay["protocol"] == "openai" else "stop_sequences"
    assert sent[key] == ["END", "STOP"]


@pytest.mark.parametrize("usage_mode", ["final", "finish"])
async def test_usage_reported_by_upstream(relay: dict[str, Any], usage_mode: str) -> None:
    _, final = await stream(relay["sdk"], **ask(
        f'[[fake:{{"usage":"{usage_mode}","chunks":7}}]]'))
    assert final.usage.output_tokens == 7 and final.usage.input_tokens > 0


async def test_no_usage_is_estimated(relay: dict[str, Any]) -> None:
    _, final = await stream(relay["sdk"], **ask('[[fake:{"usage":"none","chunks":6}]]'))
    assert final.usage.output_tokens > 0


async def test_mid_stream_break_becomes_error_event(relay: dict[str, Any]) -> None:
    with pytest.raises(anthropic.APIError):
        await stream(relay["sdk"], **ask('[[fake:{"break_after":2,"chunks":6}]]'))
    await relay["gw"].recorder.flush()
    with sqlite3.connect(relay["gw"].db.path) as conn:
        assert conn.execute("SELECT status FROM usage_logs").fetchall() == [("error",)]


async def test_upstream_error_payload_midstream(relay: dict[str, Any]) -> None:
    with pytest.raises(anthropic.APIError):
        await stream(relay["sdk"], **ask('[[fake:{"scenario":"error_midstream","chunks":6}]]'))


async def test_images_reach_the_upstream(relay: dict[str, Any]) -> None:
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
        {"type": "text", "text": "[[fake:image_check]] what is this?"},
    ]
    reply = await relay["sdk"].messages.create(
        model="claude-sonnet-4-6", max_tokens=100, messages=[{"role": "user", "content": content}])
    assert reply.content[0].text == "image parts received: 2"


async def test_tool_results_with_images(relay: dict[str, Any]) -> None:
    messages = [
        {"role": "user", "content": "[[fake:image_check]] take a screenshot"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "Screenshot", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                {"type": "text", "text": "here it is"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": PNG}}]},
            {"type": "text", "text": "describe it"}]},
    ]
    tools = [{"name": "Screenshot", "input_schema": {"type": "object"}}]
    reply = await relay["sdk"].messages.create(model="claude-sonnet-4-6", max_tokens=100,
                                               messages=messages, tools=tools)
    assert reply.content[0].text == "image parts received: 1"
    if relay["protocol"] == "openai":
        sent = (await fake_stats(relay["base"]))["last_request"]["json"]["messages"]
        roles = [m["role"] for m in sent]
        assert roles == ["user", "assistant", "tool", "user"]  # image moved after the tool turn


async def test_side_request_non_stream_is_anthropic_json(relay: dict[str, Any]) -> None:
    """Claude Code's small haiku-class calls without tools come back as a message."""
    async with aiohttp.ClientSession() as s, s.post(
            relay["gw"].url + "/v1/messages?beta=true",
            json={"model": "claude-haiku-4-5-20251001", "max_tokens": 512,
                  "system": [{"type": "text", "text": "Summarize as a title."}],
                  "messages": [{"role": "user", "content": "fix the login bug"}]},
            headers={"x-api-key": relay["key"], "anthropic-version": "2023-06-01",
                     "anthropic-beta": "oauth-2025-04-20"}) as r:
        body = await r.json()
    assert r.status == 200
    assert body["type"] == "message" and body["role"] == "assistant"
    assert body["content"][0]["type"] == "text" and "choices" not in body
    assert body["id"].startswith("msg_")
    last = (await fake_stats(relay["base"]))["last_request"]
    assert last["json"]["model"] == "fake-small"  # haiku family mapping
    if relay["protocol"] == "anthropic":
        assert last["headers"]["anthropic-beta"] == "oauth-2025-04-20"


async def test_claude_code_fields_are_not_forwarded_blindly(relay: dict[str, Any]) -> None:
    body = ask("hi", thinking={"type": "adaptive"}, output_config={"effort": "high"},
               context_management={"edits": []}, metadata={"user_id": "u1"},
               system=[{"type": "text", "text": "You are Claude Code.",
                        "cache_control": {"type": "ephemeral"}}])
    body["messages"].insert(0, {"role": "system", "content": "extra system"})
    async with aiohttp.ClientSession() as s, s.post(
            relay["gw"].url + "/v1/messages", json={**body, "stream": True},
            headers={"x-api-key": relay["key"]}) as r:
        text = await r.text()
    assert r.status == 200 and "message_stop" in text
    sent = (await fake_stats(relay["base"]))["last_request"]["json"]
    if relay["protocol"] == "openai":
        for field in ("thinking", "output_config", "context_management", "metadata"):
            assert field not in sent
        assert sent["messages"][0]["role"] == "system"
        assert "extra system" in sent["messages"][0]["content"]
        assert sent["stream_options"] == {"include_usage": True}
    else:
        assert sent["model"] == "fake-model" and sent["thinking"] == {"type": "adaptive"}


@pytest.mark.parametrize(("status", "want_status", "want_type"), [
    (400, 400, "invalid_request_error"), (401, 502, "api_error"),
    (403, 502, "api_error"), (422, 400, "invalid_request_error")])
async def test_upstream_errors_are_mapped(relay: dict[str, Any], status: int, want_status: int,
                                          want_type: str) -> None:
    async with aiohttp.ClientSession() as s, s.post(
            relay["gw"].url + "/v1/messages",
            json=ask(f'[[fake:{{"status":{status}}}]]'),
            headers={"x-api-key": relay["key"]}) as r:
        body = await r.json()
    assert r.status == want_status and body["error"]["type"] == want_type
    if status in (401, 403):
        assert "credentials" in body["error"]["message"]


async def test_count_tokens(relay: dict[str, Any]) -> None:
    result = await relay["sdk"].messages.count_tokens(
        model="claude-sonnet-4-6", messages=[{"role": "user", "content": "hello world " * 100}])
    assert result.input_tokens > 100
    forwarded = (await fake_stats(relay["base"]))["requests"].get("count_tokens", 0)
    assert forwarded == (1 if relay["protocol"] == "anthropic" else 0)


async def test_usage_row_records_both_models(relay: dict[str, Any]) -> None:
    await stream(relay["sdk"], **ask('[[fake:{"chunks":3}]]'))
    await relay["gw"].recorder.flush()
    with sqlite3.connect(relay["gw"].db.path) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT * FROM usage_logs").fetchone()
    assert row["client_model"] == "claude-sonnet-4-6" and row["upstream_model"] == "fake-model"
    assert row["provider"] == "fake" and row["status"] == "success" and row["stream"] == 1
    assert row["output_tokens"] == 3 and row["input_tokens"] > 0
    assert row["ttft_ms"] is not None and row["duration_ms"] >= row["ttft_ms"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("normalize", [True, False])
async def test_prompt_cache_normalisation_keeps_the_prefix_cacheable(
        gateway_factory: Any, fake_factory: Any, protocol: str, normalize: bool) -> None:
    """Claude Code's system prompt carries today's date near the top; with normalisation the
    next day's request still hits the upstream's prefix cache."""
    base, _ = await fake_factory()
    gw = await gateway_factory({"providers": [
        provider_table("fake", protocol, base, normalize_prompt_cache=normalize)]})
    sdk = anthropic.AsyncAnthropic(base_url=gw.url, api_key=await gw.new_key("c@example.com",
                                                                         plan="team"))

    def system(date: str) -> str:
        return (f"You are Claude Code.\n<env>\nToday's date: {date}\n</env>\n"
                + "Follow the repository conventions carefully. " * 150)

    usages = []
    for date in ("2026-11-24", "2026-11-25"):
        reply = await sdk.messages.create(model="claude-sonnet-4-6", max_tokens=100,
                                          system=system(date),
                                          messages=[{"role": "user", "content": "hi"}])
        usages.append(reply.usage)
    assert (usages[0].cache_read_input_tokens or 0) == 0
    cached = usages[1].cache_read_input_tokens or 0
    if normalize:
        assert cached >= 1500  # the ~7 KB system prompt is served from the cache
    else:
        assert cached == 0  # the date near the top breaks the prefix


async def test_billing_header_block_is_dropped_for_both_protocols(relay: dict[str, Any]) -> None:
    await relay["sdk"].messages.create(
        model="claude-sonnet-4-6", max_tokens=50, messages=[{"role": "user", "content": "hi"}],
        system=[{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197.976;"},
                {"type": "text", "text": "You are Claude Code."}])
    sent = (await fake_stats(relay["base"]))["last_request"]["json"]
    assert "x-anthropic-billing-header" not in str(sent)
    assert "You are Claude Code." in str(sent)
