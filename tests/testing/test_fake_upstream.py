"""The scripted fake upstream, driven over real HTTP on loopback."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import pytest
from aiohttp import web

from gateway.testing.fake_upstream import (
    CACHE_BLOCK,
    DEFAULT_TEXT,
    FAKE_UPSTREAM,
    WRITE_CONTENT,
    FakeSettings,
    ScriptError,
    add_arguments,
    build_app,
    settings_from_args,
    start_server,
)

ROOT = Path(__file__).resolve().parents[2]
USER = [{"role": "user", "content": "hi"}]


# ---------------------------------------------------------------- helpers


class Fake:
    """A running fake upstream and a client session pointed at it."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session

    async def post(
        self,
        path: str,
        body: dict[str, Any],
        script: dict[str, Any] | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        hdrs = dict(headers or {})
        if script is not None:
            hdrs["x-fake-scenario"] = script if isinstance(script, str) else json.dumps(script)
        async with self.session.post(self.url + path, json=body, headers=hdrs) as resp:
            return resp.status, dict(resp.headers), await resp.read()

    async def chat(
        self, script: dict[str, Any] | str | None = None, **body: Any
    ) -> tuple[int, dict[str, str], bytes]:
        body.setdefault("model", "fake-model")
        body.setdefault("messages", USER)
        return await self.post("/v1/chat/completions", body, script)

    async def messages(
        self, script: dict[str, Any] | str | None = None, **body: Any
    ) -> tuple[int, dict[str, str], bytes]:
        body.setdefault("model", "claude-sonnet-4-6")
        body.setdefault("max_tokens", 100)
        body.setdefault("messages", USER)
        return await self.post("/v1/messages", body, script)

    async def stats(self) -> dict[str, Any]:
        async with self.session.get(self.url + "/_fake/stats") as resp:
            data: dict[str, Any] = await resp.json()
            return data

    async def wait_idle(self, timeout: float = 3.0) -> dict[str, Any]:
        """Stats once no request is in flight (server-side cleanup is asynchronous)."""
        deadline = time.monotonic() + timeout
        while True:
            stats = await self.stats()
            if stats["active_requests"] == 0 or time.monotonic() > deadline:
                return stats
            await asyncio.sleep(0.02)


@pytest.fixture
async def fake() -> AsyncIterator[Fake]:
    async with start_server(FakeSettings(port=0)) as url, aiohttp.ClientSession() as session:
        yield Fake(url, session)


def openai_chunks(raw: bytes) -> list[Any]:
    """The `data:` payloads of an OpenAI stream; "[DONE]" stays a string."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        payload = block[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def anthropic_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: "), block
        name, data = name_line[len("event: ") :], json.loads(data_line[len("data: ") :])
        assert data["type"] == name
        events.append((name, data))
    return events


def check_anthropic_grammar(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Assert the Anthropic stream grammar (docs/protocol.md §8); returns the blocks as
    built from the deltas."""
    names = [name for name, _ in events]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    message = events[0][1]["message"]
    assert message["id"].startswith("msg_") and message["content"] == []
    assert message["stop_reason"] is None and message["usage"]["output_tokens"] == 0
    blocks: list[dict[str, Any]] = []
    open_index: int | None = None
    for name, data in events[1:-2]:
        if name == "ping":
            continue
        if name == "content_block_start":
            assert open_index is None and data["index"] == len(blocks)
            open_index = data["index"]
            blocks.append({**data["content_block"], "_json": ""})
        elif name == "content_block_delta":
            assert data["index"] == open_index
            block, delta = blocks[data["index"]], data["delta"]
            kind = {
                "text_delta": "text",
                "thinking_delta": "thinking",
                "signature_delta": "thinking",
                "input_json_delta": "tool_use",
            }[delta["type"]]
            assert block["type"] == kind
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            else:
                block["_json"] += delta["partial_json"]
        else:
            assert name == "content_block_stop" and data["index"] == open_index, (name, data)
            open_index = None
    assert open_index is None
    for block in blocks:
        if block["type"] == "tool_use":
            block["input"] = json.loads(block["_json"] or "{}")
        del block["_json"]
    return blocks


def joined(chunks: list[Any], field: str) -> str:
    return "".join(
        c["choices"][0]["delta"].get(field) or ""
        for c in chunks
        if isinstance(c, dict) and c.get("choices")
    )


def tool_calls(chunks: list[Any]) -> dict[int, dict[str, str]]:
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        if not isinstance(chunk, dict) or not chunk.get("choices"):
            continue
        for call in chunk["choices"][0]["delta"].get("tool_calls") or []:
            entry = calls.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
            if call.get("id"):
                assert not entry["id"], "id repeated on a later fragment"
                entry["id"] = call["id"]
                entry["name"] = call["function"]["name"]
            entry["arguments"] += call["function"].get("arguments", "")
    return calls


# ---------------------------------------------------------------- OpenAI endpoint


async def test_openai_text_stream_has_role_chunk_pieces_finish_usage_and_done(fake: Fake) -> None:
    status, headers, raw = await fake.chat(
        {"chunks": 4}, stream=True, stream_options={"include_usage": True}
    )
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    chunks = openai_chunks(raw)
    assert chunks[-1] == "[DONE]"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c for c in chunks[1:-3]]
    assert len(content) == 4 and all(c["choices"][0]["finish_reason"] is None for c in content)
    assert joined(chunks, "content") == DEFAULT_TEXT
    assert chunks[-3]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    usage_chunk = chunks[-2]
    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    assert usage["completion_tokens"] == 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + 4
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    ids = {c["id"] for c in chunks[:-1]}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    assert {c["model"] for c in chunks[:-1]} == {"fake-model"}


async def test_prompt_tokens_are_body_bytes_over_four(fake: Fake) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 400}]}
    async with fake.session.post(
        fake.url + "/v1/chat/completions",
        data=json.dumps(body),
        headers={"content-type": "application/json"},
    ) as resp:
        data = await resp.json()
    assert data["usage"]["prompt_tokens"] == len(json.dumps(body)) // 4


async def test_openai_stream_without_include_usage_reports_no_usage(fake: Fake) -> None:
    _, _, raw = await fake.chat(stream=True)
    chunks = openai_chunks(raw)
    assert chunks[-1] == "[DONE]" and chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert not any("usage" in c for c in chunks[:-1])


async def test_usage_knob_puts_usage_in_finish_chunk_or_nowhere(fake: Fake) -> None:
    _, _, raw = await fake.chat(
        {"usage": "finish", "chunks": 3}, stream=True, stream_options={"include_usage": True}
    )
    chunks = openai_chunks(raw)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-2]["usage"]["completion_tokens"] == 3
    assert all(c["choices"] for c in chunks[:-1])

    _, _, raw = await fake.chat(
        {"usage": "none"}, stream=True, stream_options={"include_usage": True}
    )
    assert not any("usage" in c for c in openai_chunks(raw)[:-1])
    _, _, raw = await fake.chat({"usage": "none"})
    assert "usage" not in json.loads(raw)


async def test_chat_completions_answers_without_v1_prefix(fake: Fake) -> None:
    status, _, raw = await fake.post("/chat/completions", {"model": "m", "messages": USER})
    assert status == 200
    assert json.loads(raw)["choices"][0]["message"]["content"] == DEFAULT_TEXT
    assert (await fake.stats())["requests"] == {"chat_completions": 1}


async def test_openai_nonstream_text_body(fake: Fake) -> None:
    status, _, raw = await fake.chat({"chunks": 3}, model="qwen-max")
    body = json.loads(raw)
    assert status == 200 and body["object"] == "chat.completion" and body["model"] == "qwen-max"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": DEFAULT_TEXT}
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 3


async def test_parallel_tool_calls_get_distinct_indexes_and_fragmented_arguments(
    fake: Fake,
) -> None:
    _, _, raw = await fake.chat("tools", stream=True, stream_options={"include_usage": True})
    chunks = openai_chunks(raw)
    calls = tool_calls(chunks)
    assert sorted(calls) == [0, 1]
    assert calls[0]["name"] == "Read" and calls[1]["name"] == "Grep"
    assert calls[0]["id"] != calls[1]["id"] and calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["arguments"]) == {"file_path": "/tmp/fake-upstream/notes.txt"}
    assert json.loads(calls[1]["arguments"])["pattern"] == "TODO"
    order = [c["choices"][0]["delta"]["tool_calls"][0]["index"] for c in chunks[1:-3]]
    assert order == [0, 1] + [0, 1] * 5  # headers, then alternating fragments
    assert chunks[-3]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-2]["usage"]["completion_tokens"] == 12  # 2 calls + 2 x 5 fragments
    assert joined(chunks, "content") == ""


async def test_tools_nonstream_and_text_preface(fake: Fake) -> None:
    _, _, raw = await fake.chat({"scenario": "tools", "text": "Reading.", "chunks": 2})
    body = json.loads(raw)
    message = body["choices"][0]["message"]
    assert message["content"] == "Reading."
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["Read", "Grep"]
    assert json.loads(message["tool_calls"][1]["function"]["arguments"])["path"]
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert body["usage"]["completion_tokens"] == 2 + 2 + 4


async def test_reasoning_content_comes_before_content(fake: Fake) -> None:
    _, _, raw = await fake.chat(
        {"scenario": "reasoning", "chunks": 3}, stream=True, stream_options={"include_usage": True}
    )
    chunks = openai_chunks(raw)
    kinds = [
        "reasoning" if c["choices"][0]["delta"].get("reasoning_content") else "content"
        for c in chunks[1:-3]
    ]
    assert kinds == ["reasoning"] * 3 + ["content"] * 3
    assert joined(chunks, "reasoning_content") and joined(chunks, "content") == DEFAULT_TEXT
    usage = chunks[-2]["usage"]
    assert usage["completion_tokens"] == 6
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 3}

    _, _, raw = await fake.chat({"scenario": "reasoning"})
    message = json.loads(raw)["choices"][0]["message"]
    assert message["reasoning_content"] and message["content"] == DEFAULT_TEXT


async def test_length_and_finish_override(fake: Fake) -> None:
    _, _, raw = await fake.chat("length", stream=True)
    assert openai_chunks(raw)[-2]["choices"][0]["finish_reason"] == "length"
    _, _, raw = await fake.chat({"finish": "content_filter"})
    assert json.loads(raw)["choices"][0]["finish_reason"] == "content_filter"
    _, _, raw = await fake.messages({"finish": "content_filter"})
    assert json.loads(raw)["stop_reason"] == "refusal"
    _, _, raw = await fake.messages({"finish": "max_tokens"}, stream=True)
    assert anthropic_events(raw)[-2][1]["delta"]["stop_reason"] == "max_tokens"


async def test_text_knob_is_cut_into_exactly_chunks_pieces(fake: Fake) -> None:
    _, _, raw = await fake.chat({"text": "abc", "chunks": 7}, stream=True)
    chunks = openai_chunks(raw)
    assert len(chunks) == 1 + 7 + 1 + 1
    assert joined(chunks, "content") == "abc abc"  # repeated until 7 characters
    _, _, raw = await fake.chat({"text": "", "chunks": 7}, stream=True)
    assert len(openai_chunks(raw)) == 3  # role chunk, finish, [DONE]


async def test_each_response_gets_its_own_id_and_echoes_the_model(fake: Fake) -> None:
    model = 'odd "model" \\ name'
    _, _, first = await fake.chat(stream=True, model=model)
    _, _, second = await fake.chat(stream=True, model="other")
    a, b = openai_chunks(first), openai_chunks(second)
    assert a[0]["id"] != b[0]["id"]
    assert a[0]["model"] == model and b[0]["model"] == "other"


# ---------------------------------------------------------------- Anthropic endpoint


@pytest.mark.parametrize(
    ("scenario", "types", "stop_reason", "output_tokens"),
    [
        ("text", ["text"], "end_turn", 5),
        ("tools", ["tool_use", "tool_use"], "tool_use", 12),
        ("reasoning", ["thinking", "text"], "end_turn", 10),
        ("length", ["text"], "max_tokens", 5),
    ],
)
async def test_anthropic_stream_follows_the_event_grammar(
    fake: Fake, scenario: str, types: list[str], stop_reason: str, output_tokens: int
) -> None:
    status, headers, raw = await fake.messages(scenario, stream=True)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = anthropic_events(raw)
    blocks = check_anthropic_grammar(events)
    assert [b["type"] for b in blocks] == types
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": stop_reason, "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == output_tokens
    start_usage = events[0][1]["message"]["usage"]
    assert delta["usage"]["input_tokens"] == start_usage["input_tokens"] > 0
    if scenario == "reasoning":
        assert blocks[0]["thinking"] and blocks[0]["signature"]
        assert blocks[1]["text"] == DEFAULT_TEXT
    if scenario == "tools":
        assert blocks[0]["input"] == {"file_path": "/tmp/fake-upstream/notes.txt"}
        assert blocks[0]["id"] != blocks[1]["id"]


async def test_anthropic_nonstream_matches_the_stream(fake: Fake) -> None:
    _, _, raw = await fake.messages("reasoning")
    body = json.loads(raw)
    assert body["type"] == "message" and body["id"].startswith("msg_")
    assert [b["type"] for b in body["content"]] == ["thinking", "text"]
    assert body["content"][1]["text"] == DEFAULT_TEXT
    assert body["stop_reason"] == "end_turn" and body["stop_sequence"] is None
    assert body["usage"]["output_tokens"] == 10
    assert body["usage"]["cache_creation_input_tokens"] == 0


async def test_anthropic_sdk_accepts_create_and_stream(fake: Fake) -> None:
    client = anthropic.AsyncAnthropic(base_url=fake.url, api_key="x", max_retries=0)
    try:
        message = await client.messages.create(
            model="claude-sonnet-4-6", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        )
        assert message.content[0].type == "text" and message.content[0].text == DEFAULT_TEXT
        assert message.stop_reason == "end_turn" and message.usage.output_tokens == 5

        tools = await client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=50,
            messages=[{"role": "user", "content": "[[fake:tools]]"}],
        )
        assert [b.type for b in tools.content] == ["tool_use", "tool_use"]
        assert tools.stop_reason == "tool_use"

        for scenario, types in (
            ("text", ["text"]),
            ("tools", ["tool_use", "tool_use"]),
            ("reasoning", ["thinking", "text"]),
        ):
            async with client.messages.stream(
                model="claude-sonnet-4-6",
                max_tokens=50,
                messages=[{"role": "user", "content": "hi"}],
                extra_headers={"x-fake-scenario": scenario},
            ) as stream:
                final = await stream.get_final_message()
            assert [b.type for b in final.content] == types
            assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0
            if scenario == "tools":
                block = final.content[1]
                assert block.type == "tool_use" and block.input == {
                    "pattern": "TODO",
                    "path": "/tmp/fake-upstream",
                }
            if scenario == "reasoning":
                assert final.content[0].type == "thinking" and final.content[0].signature
    finally:
        await client.close()


async def test_anthropic_sdk_sees_scripted_overload(fake: Fake) -> None:
    client = anthropic.AsyncAnthropic(base_url=fake.url, api_key="x", max_retries=0)
    try:
        with pytest.raises(anthropic.APIStatusError) as info:
            await client.messages.create(
                model="claude-sonnet-4-6",
                max_tokens=50,
                messages=[{"role": "user", "content": "hi"}],
                extra_headers={"x-fake-scenario": '{"status": 529}'},
            )
        assert info.value.status_code == 529
        assert info.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    finally:
        await client.close()


async def test_count_tokens_and_models(fake: Fake) -> None:
    body = {"model": "m", "messages": USER}
    status, _, raw = await fake.post("/v1/messages/count_tokens", body)
    assert status == 200 and json.loads(raw) == {"input_tokens": len(json.dumps(body)) // 4}
    for path in ("/v1/models", "/models"):
        async with fake.session.get(fake.url + path) as resp:
            models = await resp.json()
        assert models["object"] == "list" and models["has_more"] is False
        assert models["data"][0]["id"] == "fake-model" and models["data"][0]["type"] == "model"


# ---------------------------------------------------------------- request-aware scenarios


async def test_echo_summarises_the_request(fake: Fake) -> None:
    tools = [{"type": "function", "function": {"name": "Read", "parameters": {}}}]
    _, _, raw = await fake.chat(
        "echo",
        model="m1",
        max_tokens=7,
        tools=tools,
        stream=True,
        messages=[{"role": "system", "content": "s"}, *USER],
    )
    summary = json.loads(joined(openai_chunks(raw), "content"))
    assert summary == {
        "protocol": "openai",
        "model": "m1",
        "stream": True,
        "messages": 2,
        "roles": ["system", "user"],
        "system": True,
        "tools": 1,
        "tool_names": ["Read"],
        "max_tokens": 7,
        "keys": ["max_tokens", "messages", "model", "stream", "tools"],
    }
    _, _, raw = await fake.messages(
        "echo", system="be brief", tools=[{"name": "Write", "input_schema": {}}]
    )
    summary = json.loads(json.loads(raw)["content"][0]["text"])
    assert summary["protocol"] == "anthropic" and summary["tool_names"] == ["Write"]
    assert summary["system"] is True and summary["max_tokens"] == 100


async def test_image_check_counts_image_parts(fake: Fake) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x"}}
    messages = [
        {"role": "user", "content": [image, {"type": "text", "text": "look"}]},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t", "name": "R", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t", "content": [image]}],
        },
    ]
    _, _, raw = await fake.messages("image_check", messages=messages)
    assert json.loads(raw)["content"][0]["text"] == "image parts received: 2"
    parts = [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,x"}},
        {"type": "text", "text": "what is it"},
    ]
    _, _, raw = await fake.chat("image_check", messages=[{"role": "user", "content": parts}])
    assert json.loads(raw)["choices"][0]["message"]["content"] == "image parts received: 1"


async def test_write_file_calls_write_then_says_done(fake: Fake) -> None:
    target = "/tmp/e2e/out.txt"
    prompt = f'[[fake:{{"scenario":"write_file"}}]] Create the file {target} using the Write tool.'
    first_turn = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "<system-reminder>See /root/CLAUDE.md</system-reminder>"},
                {"type": "text", "text": prompt},
                {"type": "text", "text": "<system-reminder>Todo at /root/t</system-reminder>"},
            ],
        }
    ]
    _, _, raw = await fake.messages(stream=True, messages=first_turn)
    events = anthropic_events(raw)
    blocks = check_anthropic_grammar(events)
    assert len(blocks) == 1 and blocks[0]["name"] == "Write"
    assert blocks[0]["input"] == {"file_path": target, "content": WRITE_CONTENT}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"

    second_turn = [
        *first_turn,
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": blocks[0]["id"], "name": "Write", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": blocks[0]["id"], "content": "File created"}
            ],
        },
    ]
    _, _, raw = await fake.messages(stream=True, messages=second_turn)
    events = anthropic_events(raw)
    assert check_anthropic_grammar(events) == [{"type": "text", "text": "Done."}]
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"

    # The same through the OpenAI endpoint (a gateway converts tool results to role "tool").
    folded = f"<system-reminder>cwd is /root/project</system-reminder>\n{prompt}"
    _, _, raw = await fake.chat("write_file", messages=[{"role": "user", "content": folded}])
    call = json.loads(raw)["choices"][0]["message"]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"])["file_path"] == target
    done = [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "ok"},
    ]
    _, _, raw = await fake.chat("write_file", messages=done)
    assert json.loads(raw)["choices"][0]["message"]["content"] == "Done."


# ---------------------------------------------------------------- choosing the script


async def test_directive_in_last_user_message_selects_the_scenario(fake: Fake) -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": 'please [[fake:{"scenario": "length", "chunks": 2}]]'}
            ],
        }
    ]
    _, _, raw = await fake.messages(messages=messages)
    body = json.loads(raw)
    assert body["stop_reason"] == "max_tokens" and body["usage"]["output_tokens"] == 2
    script = (await fake.stats())["last_request"]["script"]
    assert script["scenario"] == "length" and script["chunks"] == 2


async def test_header_beats_directive(fake: Fake) -> None:
    messages = [{"role": "user", "content": "[[fake:tools]]"}]
    _, _, raw = await fake.chat("length", messages=messages)
    assert json.loads(raw)["choices"][0]["finish_reason"] == "length"


async def test_bad_script_is_a_400_in_the_protocol_shape(fake: Fake) -> None:
    status, _, raw = await fake.chat({"chunkz": 3})
    assert status == 400 and "chunkz" in json.loads(raw)["error"]["message"]
    status, _, raw = await fake.messages("nonsense")
    body = json.loads(raw)
    assert status == 400 and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    status, _, _ = await fake.chat("{not json")
    assert status == 400
    status, _, _ = await fake.chat({"status": 200})
    assert status == 400


# ---------------------------------------------------------------- errors and failures


async def test_status_knob_returns_realistic_error_bodies(fake: Fake) -> None:
    status, headers, raw = await fake.chat({"status": 429, "retry_after": 3}, stream=True)
    assert status == 429 and headers["Retry-After"] == "3"
    error = json.loads(raw)["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    expected = {
        401: "authentication_error",
        404: "not_found_error",
        429: "rate_limit_error",
        500: "api_error",
        503: "api_error",
        529: "overloaded_error",
    }
    for code, kind in expected.items():
        status, _, raw = await fake.messages({"status": code}, stream=True)
        assert status == code
        assert json.loads(raw) == {
            "type": "error",
            "error": {"type": kind, "message": f"fake upstream: scripted {code} error"},
        }


async def test_fail_times_fails_first_requests_per_key(fake: Fake) -> None:
    script = {"status": 503, "fail_times": 2, "key": "a"}
    assert (await fake.chat(script))[0] == 503
    assert (await fake.chat({**script, "key": "b"}))[0] == 503  # its own counter
    assert (await fake.chat(script))[0] == 503
    assert (await fake.chat(script))[0] == 200
    assert (await fake.chat(script))[0] == 200
    stats = await fake.stats()
    assert stats["fail_counts"] == {"a": 4, "b": 1}
    assert stats["statuses"] == {"503": 3, "200": 2}
    await fake.session.post(fake.url + "/_fake/reset")
    assert (await fake.chat(script))[0] == 503


async def test_error_midstream_sends_an_error_payload_after_some_chunks(fake: Fake) -> None:
    _, _, raw = await fake.chat({"scenario": "error_midstream", "chunks": 4}, stream=True)
    chunks = openai_chunks(raw)
    assert len(chunks) == 1 + 2 + 1 and "[DONE]" not in chunks
    assert chunks[-1]["error"]["type"] == "server_error"

    _, _, raw = await fake.messages("error_midstream", stream=True)
    events = anthropic_events(raw)
    assert events[-1] == (
        "error",
        {
            "type": "error",
            "error": {
                "type": "overloaded_error",
                "message": "fake upstream: scripted error mid-stream",
            },
        },
    )
    assert "message_stop" not in [name for name, _ in events]

    status, _, _ = await fake.chat("error_midstream")
    assert status == 500
    script = {"scenario": "error_midstream", "fail_times": 1, "key": "mid"}
    await fake.chat(script, stream=True)
    _, _, raw = await fake.chat(script, stream=True)
    assert openai_chunks(raw)[-1] == "[DONE]"


async def test_break_after_drops_the_connection_without_done(fake: Fake) -> None:
    body = {"model": "m", "messages": USER, "stream": True}
    headers = {"x-fake-scenario": json.dumps({"break_after": 2})}
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with fake.session.post(
            fake.url + "/v1/chat/completions", json=body, headers=headers
        ) as resp:
            assert resp.status == 200
            async for data in resp.content.iter_any():
                received += data
    chunks = openai_chunks(received)
    assert len(chunks) == 3 and joined(chunks, "content")  # role chunk + 2 pieces
    stats = await fake.wait_idle()
    assert stats["broken_streams"] == 1 and stats["cancelled_streams"] == 0
    assert stats["completed_streams"] == 0


async def test_break_after_past_the_last_piece_and_without_streaming(fake: Fake) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": USER, "stream": True}
    headers = {"x-fake-scenario": json.dumps({"break_after": 99, "chunks": 3})}
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with fake.session.post(fake.url + "/v1/messages", json=body, headers=headers) as r:
            async for data in r.content.iter_any():
                received += data
    names = [name for name, _ in anthropic_events(received)]
    assert names.count("content_block_delta") == 3 and "content_block_stop" not in names
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await fake.chat({"break_after": 1})
    stats = await fake.wait_idle()
    assert stats["broken_streams"] == 1 and stats["cancelled_requests"] == 0


async def test_tools_with_zero_chunks_have_empty_arguments(fake: Fake) -> None:
    _, _, raw = await fake.chat({"scenario": "tools", "chunks": 0}, stream=True)
    calls = tool_calls(openai_chunks(raw))
    assert [c["arguments"] for c in calls.values()] == ["", ""]
    _, _, raw = await fake.messages({"scenario": "tools", "chunks": 0})
    body = json.loads(raw)
    assert [b["input"] for b in body["content"]] == [{}, {}]
    assert body["usage"]["output_tokens"] == 2
    assert (await fake.chat({"chunks": 10**6}))[0] == 400


async def test_stall_after_sends_some_chunks_then_goes_quiet(fake: Fake) -> None:
    body = {"model": "m", "messages": USER, "stream": True}
    headers = {"x-fake-scenario": json.dumps({"stall_after": 1})}
    async with fake.session.post(fake.url + "/v1/messages", json=body, headers=headers) as resp:
        seen = b""
        while b"text_delta" not in seen:
            seen += await resp.content.readany()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(resp.content.readany(), 0.3)
        assert (await fake.stats())["active_streams"] == 1
    stats = await fake.wait_idle()
    assert stats["cancelled_streams"] == 1 and stats["active_streams"] == 0

    started = time.monotonic()
    _, _, raw = await fake.messages({"stall_after": 1, "stall_for": 0.2}, stream=True)
    assert time.monotonic() - started >= 0.2
    check_anthropic_grammar(anthropic_events(raw))


async def test_delays_are_applied(fake: Fake) -> None:
    started = time.monotonic()
    async with fake.session.post(
        fake.url + "/v1/chat/completions",
        json={"model": "m", "messages": USER, "stream": True},
        headers={"x-fake-scenario": '{"first_byte_delay": 0.2}'},
    ) as r:
        assert time.monotonic() - started >= 0.2
        await r.read()
    started = time.monotonic()
    _, _, raw = await fake.chat({"chunk_delay": 0.05, "chunks": 4}, stream=True)
    assert time.monotonic() - started >= 0.2
    assert joined(openai_chunks(raw), "content") == DEFAULT_TEXT
    started = time.monotonic()
    await fake.messages({"chunk_delay": 0.05, "chunks": 4})
    assert time.monotonic() - started >= 0.2


async def test_hang_is_seen_as_cancelled_when_the_client_gives_up(fake: Fake) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(fake.chat('{"hang": true}', stream=True), 0.3)
    stats = await fake.wait_idle()
    assert stats["cancelled_streams"] == 1 and stats["cancelled_requests"] == 1
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(fake.chat('{"hang": true}'), 0.3)
    stats = await fake.wait_idle()
    assert stats["cancelled_streams"] == 1 and stats["cancelled_requests"] == 2


async def test_client_closing_mid_stream_is_counted_without_handler_cancellation(
    aiohttp_server: Any,
) -> None:
    # aiohttp's test server does not cancel handlers on disconnect: the fake must notice itself.
    server = await aiohttp_server(build_app(FakeSettings()))
    url = str(server.make_url("")).rstrip("/")
    fake_state = server.app[FAKE_UPSTREAM]
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            url + "/v1/chat/completions",
            json={"model": "m", "messages": USER, "stream": True},
            headers={"x-fake-scenario": json.dumps({"chunk_delay": 0.5, "chunks": 10})},
        )
        await resp.content.readany()
        assert fake_state.stats.active_streams == 1
        resp.close()
    for _ in range(100):
        if fake_state.stats.active_streams == 0:
            break
        await asyncio.sleep(0.02)
    assert fake_state.stats.active_streams == 0
    assert fake_state.stats.cancelled_streams == 1
    assert fake_state.stats.completed_streams == 0


# ---------------------------------------------------------------- stats and caching


async def test_stats_record_the_last_request_without_auth_values(fake: Fake) -> None:
    await fake.post(
        "/v1/chat/completions?x=1",
        {"model": "m", "messages": USER},
        headers={"Authorization": "Bearer sk-secret", "X-Custom": "v"},
    )
    stats = await fake.stats()
    last = stats["last_request"]
    assert last["endpoint"] == "chat_completions" and last["path"] == "/v1/chat/completions"
    assert last["query"] == "x=1" and last["json"] == {"model": "m", "messages": USER}
    assert last["headers"]["x-custom"] == "v"
    assert "authorization" not in last["headers"]
    assert "sk-secret" not in json.dumps(stats)
    assert last["auth"] == {
        "present": True,
        "header": "authorization",
        "scheme": "bearer",
        "sha256_prefix": hashlib.sha256(b"sk-secret").hexdigest()[:12],
    }
    await fake.post(
        "/v1/messages",
        {"model": "m", "max_tokens": 1, "messages": USER},
        headers={"x-api-key": "k2"},
    )
    stats = await fake.stats()
    assert stats["last_request"]["auth"]["header"] == "x-api-key"
    assert stats["requests"] == {"chat_completions": 1, "messages": 1}
    assert stats["total_requests"] == 2 and len(stats["history"]) == 2
    assert stats["completed_streams"] == 0 and stats["active_streams"] == 0

    await fake.session.post(fake.url + "/_fake/reset")
    stats = await fake.stats()
    assert stats["requests"] == {} and stats["last_request"] is None


async def test_api_key_is_required_when_configured() -> None:
    settings = FakeSettings(port=0, api_key="sk-up")
    async with start_server(settings) as url, aiohttp.ClientSession() as session:
        fake = Fake(url, session)
        status, _, raw = await fake.messages()
        assert status == 401 and json.loads(raw)["error"]["type"] == "authentication_error"
        status, _, raw = await fake.chat()
        assert status == 401 and json.loads(raw)["error"]["code"] == "invalid_api_key"
        assert (
            await fake.post(
                "/v1/chat/completions",
                {"model": "m", "messages": USER},
                headers={"Authorization": "Bearer sk-up"},
            )
        )[0] == 200
        assert (
            await fake.post(
                "/v1/messages",
                {"model": "m", "max_tokens": 1, "messages": USER},
                headers={"x-api-key": "sk-up"},
            )
        )[0] == 200


async def test_repeated_prefix_reports_cached_tokens(fake: Fake) -> None:
    system = [
        {"type": "text", "text": "You are helpful. " * 50, "cache_control": {"type": "ephemeral"}}
    ]
    first = {
        "role": "user",
        "content": [
            {"type": "text", "text": "question " * 40, "cache_control": {"type": "ephemeral"}}
        ],
    }
    _, _, raw = await fake.messages(system=system, messages=[first])
    assert json.loads(raw)["usage"]["cache_read_input_tokens"] == 0
    # Next turn: same prefix (Claude Code moved the cache_control marker), more messages.
    moved = {"role": "user", "content": [{"type": "text", "text": "question " * 40}]}
    turn = [
        moved,
        {"role": "assistant", "content": "answer"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "more", "cache_control": {"type": "ephemeral"}}],
        },
    ]
    _, _, raw = await fake.messages(system=system, messages=turn, stream=True)
    events = anthropic_events(raw)
    usage = events[-2][1]["usage"]
    plain_system = [{"type": "text", "text": "You are helpful. " * 50}]
    more = {"role": "user", "content": [{"type": "text", "text": "more"}]}
    seen_before = json.dumps(["claude-sonnet-4-6", [plain_system, None, [moved]]],
                             separators=(",", ":"))
    now_sent = json.dumps(["claude-sonnet-4-6", [plain_system, None, [moved, turn[1], more]]],
                          separators=(",", ":"))
    common = next((i for i, (x, y) in enumerate(zip(seen_before, now_sent, strict=False))
                   if x != y), min(len(seen_before), len(now_sent)))
    cached = common // CACHE_BLOCK * CACHE_BLOCK // 4  # whole 1 KiB blocks sent before
    assert usage["cache_read_input_tokens"] == cached > 0
    body_bytes = len(
        json.dumps(
            {
                "model": "claude-sonnet-4-6",
                "max_tokens": 100,
                "messages": turn,
                "system": system,
                "stream": True,
            }
        )
    )
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] == body_bytes // 4
    assert events[0][1]["message"]["usage"]["cache_read_input_tokens"] == cached

    # OpenAI shape: system messages + first user message.
    messages = [{"role": "system", "content": "sys " * 600}, {"role": "user", "content": "q"}]
    _, _, raw = await fake.chat(messages=messages)
    assert json.loads(raw)["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    _, _, raw = await fake.chat(
        messages=[
            *messages,
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "again"},
        ]
    )
    usage = json.loads(raw)["usage"]
    assert 0 < usage["prompt_tokens_details"]["cached_tokens"] <= usage["prompt_tokens"]
    _, _, raw = await fake.chat(model="other-model", messages=messages)
    assert json.loads(raw)["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


async def test_cached_tokens_knob_overrides_the_simulation(fake: Fake) -> None:
    _, _, raw = await fake.messages({"cached_tokens": 3})
    usage = json.loads(raw)["usage"]
    assert usage["cache_read_input_tokens"] == 3
    _, _, raw = await fake.chat({"cached_tokens": 10**9})
    usage = json.loads(raw)["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"]


# ---------------------------------------------------------------- command line


def test_settings_from_args() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--port",
            "0",
            "--scenario",
            "tools",
            "--chunks",
            "3",
            "--chunk-text",
            "hey",
            "--api-key",
            "k",
            "--script",
            '{"cached_tokens": 5, "chunks": 4}',
        ]
    )
    settings = settings_from_args(args)
    assert (settings.port, settings.scenario, settings.text) == (0, "tools", "hey")
    assert (settings.chunks, settings.cached_tokens, settings.api_key) == (4, 5, "k")
    with pytest.raises(ScriptError):
        settings_from_args(parser.parse_args(["--script", '{"nope": 1}']))
    assert settings_from_args(parser.parse_args([])) == FakeSettings()


def test_run_serves_until_sigterm() -> None:
    code = (
        "import argparse, sys; from gateway.testing.fake_upstream import add_arguments, run; "
        "p = argparse.ArgumentParser(); add_arguments(p); "
        "sys.exit(run(p.parse_args(sys.argv[1:])))"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code, "--port", "0", "--chunks", "2"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("fake upstream listening on http://127.0.0.1:"), line
            url = line.split()[-1]

            async def probe() -> dict[str, Any]:
                body = {"model": "m", "messages": USER}
                async with (
                    aiohttp.ClientSession() as session,
                    session.post(url + "/v1/chat/completions", json=body) as resp,
                ):
                    data: dict[str, Any] = await resp.json()
                    return data

            body = asyncio.run(probe())
            assert body["usage"]["completion_tokens"] == 2
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=10)
            assert proc.returncode == 0 and "Traceback" not in err, err
        finally:
            if proc.poll() is None:
                proc.kill()


def test_build_app_default_settings() -> None:
    app = build_app()
    assert isinstance(app, web.Application)
    assert app[FAKE_UPSTREAM].settings == FakeSettings()


def test_vendor_flag_selects_a_strict_profile() -> None:
    import argparse

    from gateway.testing.fake_upstream import (
        ScriptError,
        add_arguments,
        build_app,
        settings_from_args,
    )

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    settings = settings_from_args(parser.parse_args(["--vendor", "kimi"]))
    assert settings.vendor == "kimi"
    with pytest.raises(SystemExit):
        parser.parse_args(["--vendor", "nobody"])
    from gateway.testing.fake_upstream import FakeSettings

    with pytest.raises(ScriptError):
        build_app(FakeSettings(vendor="nobody"))
