"""The official anthropic SDK works against the gateway with the built-in demo provider."""

from __future__ import annotations

import asyncio
import time

import anthropic
import pytest

from tests.helpers.gateway import Gateway


def client(gw: Gateway, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0)


async def test_sdk_messages_create(gateway: Gateway) -> None:
    key = await gateway.new_key()
    message = await client(gateway, key).messages.create(
        model="claude-sonnet-4-6", max_tokens=100,
        messages=[{"role": "user", "content": "Hello"}])
    assert message.type == "message" and message.role == "assistant"
    assert message.model == "claude-sonnet-4-6"
    assert message.stop_reason == "end_turn"
    assert message.content[0].type == "text"
    assert "demo provider" in message.content[0].text
    assert "[[providers]]" in message.content[0].text
    assert message.usage.output_tokens > 0 and message.usage.input_tokens > 0


async def test_sdk_messages_stream_event_grammar(gateway: Gateway) -> None:
    key = await gateway.new_key()
    events = []
    async with client(gateway, key).messages.stream(
            model="claude-opus-5-5[1m]", max_tokens=100,
            messages=[{"role": "user", "content": "Hello"}]) as stream:
        async for event in stream:
            events.append(event.type)
        final = await stream.get_final_message()
    assert events[0] == "message_start"
    assert events[-1] == "message_stop"
    assert "content_block_start" in events and "content_block_stop" in events
    assert events.index("message_delta") > events.index("content_block_stop")
    assert final.stop_reason == "end_turn"
    assert "demo provider" in final.content[0].text
    assert final.usage.output_tokens > 0


async def test_sdk_lists_models(gateway: Gateway) -> None:
    key = await gateway.new_key()
    page = await client(gateway, key).models.list()
    ids = [m.id for m in page.data]
    assert any("sonnet" in i for i in ids) and any("haiku" in i for i in ids)


async def test_sdk_count_tokens(gateway: Gateway) -> None:
    key = await gateway.new_key()
    result = await client(gateway, key).messages.count_tokens(
        model="claude-sonnet-4-6", messages=[{"role": "user", "content": "Hello there " * 50}])
    assert 50 < result.input_tokens < 500


async def test_revoked_key_is_refused_within_a_second(gateway: Gateway) -> None:
    from gateway.accounts.users import revoke_key

    key = await gateway.new_key()
    sdk = client(gateway, key)
    await sdk.messages.create(model="claude-haiku-4-5", max_tokens=10,
                              messages=[{"role": "user", "content": "hi"}])
    await revoke_key(gateway.db, key[:18])
    revoked_at = time.monotonic()
    while True:
        try:
            await sdk.messages.create(model="claude-haiku-4-5", max_tokens=10,
                                      messages=[{"role": "user", "content": "hi"}])
        except anthropic.AuthenticationError:
            break
        assert time.monotonic() - revoked_at < 1.0, "revoked key still accepted after 1 s"
        await asyncio.sleep(0.05)
    assert time.monotonic() - revoked_at < 1.0


async def test_sdk_error_is_typed(gateway: Gateway) -> None:
    with pytest.raises(anthropic.AuthenticationError) as info:
        await client(gateway, "sk-llmapi-wrong").messages.create(
            model="claude-haiku-4-5", max_tokens=10,
            messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 401
