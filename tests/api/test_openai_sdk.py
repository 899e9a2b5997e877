"""The official `openai` Python SDK through the gateway, against both upstream protocols.

The SDK's stream helpers (`chat.completions.stream`, `responses.stream`) accumulate and
check the events (order, item identity, completion), so these tests fail on any grammar
slip, not only on wrong text.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.responses import ResponseCustomToolCall

from gateway.cli import format_usage
from gateway.reports.admin import platform_stats
from gateway.testing.fake_upstream import apply_patch_text
from tests.helpers.gateway import fake_stats, provider_table

PROTOCOLS = ["openai", "anthropic"]
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")).decode()
TOOLS_CHAT = [{"type": "function", "function": {"name": n, "description": n,
                                                 "parameters": {"type": "object"}}}
              for n in ("Read", "Grep")]
TOOLS_RESP = [{"type": "function", "name": n, "description": n,
               "parameters": {"type": "object", "properties": {}}} for n in ("Read", "Grep")]


@pytest.fixture(params=PROTOCOLS)
async def relay(request: Any, gateway_factory: Any, fake_factory: Any) -> dict[str, Any]:
    protocol = request.param
    base, _server = await fake_factory()
    gw = await gateway_factory({
        "providers": [provider_table("fake", protocol, base,
                                     models={"gpt-*": "fake-model", "default": "fake-model"})],
        "plans": [{"name": "free", "rpm": 0, "monthly_tokens": 0, "max_input_tokens": 0}]})
    key = await gw.new_key()
    sdk = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    return {"protocol": protocol, "gw": gw, "base": base, "sdk": sdk, "key": key}


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def test_chat_non_stream(relay: dict[str, Any]) -> None:
    done = await relay["sdk"].chat.completions.create(
        model="gpt-5-codex", messages=user('[[fake:{"text":"Hello there","chunks":4}]]'))
    assert done.choices[0].message.content.replace(" ", "").startswith("Hellothere")
    assert done.choices[0].finish_reason == "stop"
    assert done.usage is not None and done.usage.completion_tokens == 4


async def test_chat_stream_usage_and_helper(relay: dict[str, Any]) -> None:
    sdk = relay["sdk"]
    async with sdk.chat.completions.stream(
            model="gpt-4.1", messages=user('[[fake:{"text":"Hi you","chunks":3}]]'),
            stream_options={"include_usage": True}) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_completion()
    assert final.choices[0].message.content
    assert final.usage is not None and final.usage.completion_tokens == 3
    assert final.usage.prompt_tokens > 0
    # without include_usage no usage-only chunk reaches the client
    chunks = [c async for c in await sdk.chat.completions.create(
        model="gpt-4.1", messages=user("[[fake:text]]"), stream=True)]
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


async def test_chat_parallel_tools(relay: dict[str, Any]) -> None:
    sdk = relay["sdk"]
    async with sdk.chat.completions.stream(
            model="gpt-4.1", messages=user("[[fake:tools]]"), tools=TOOLS_CHAT,
            tool_choice="auto", parallel_tool_calls=True) as stream:
        final = await stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["Read", "Grep"]
    assert len({c.id for c in calls}) == 2
    assert final.choices[0].finish_reason == "tool_calls"
    done = await sdk.chat.completions.create(model="gpt-4.1", messages=user("[[fake:tools]]"),
                                             tools=TOOLS_CHAT)
    assert [c.function.name for c in done.choices[0].message.tool_calls] == ["Read", "Grep"]
    # the tool results go back and the conversation continues
    history = [*user("[[fake:tools]]"), done.choices[0].message.model_dump(exclude_none=True),
               *[{"role": "tool", "tool_call_id": c.id, "content": "ok"}
                 for c in done.choices[0].message.tool_calls]]
    again = await sdk.chat.completions.create(model="gpt-4.1", messages=history,
                                              tools=TOOLS_CHAT)
    assert again.choices[0].message.tool_calls  # the scripted fake calls again; accepted


async def test_chat_images(relay: dict[str, Any]) -> None:
    done = await relay["sdk"].chat.completions.create(model="gpt-4.1", messages=[{
        "role": "user", "content": [
            {"type": "text", "text": "[[fake:image_check]]"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}])
    assert "image parts received: 1" in done.choices[0].message.content


async def test_chat_n_refused_openai_shape(relay: dict[str, Any]) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await relay["sdk"].chat.completions.create(model="gpt-4.1", messages=user("hi"), n=2)
    body = caught.value.body
    assert isinstance(body, dict) and body["param"] == "n" and "n = 1" in body["message"]
    assert body["type"] == "invalid_request_error"


async def test_responses_text_stream_and_create(relay: dict[str, Any]) -> None:
    sdk = relay["sdk"]
    async with sdk.responses.stream(model="gpt-5-codex", instructions="Be brief.",
                                    input='[[fake:{"text":"Hello there","chunks":4}]]') as s:
        kinds = [event.type async for event in s]
        final = await s.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert final.output_text.replace(" ", "").startswith("Hellothere")
    assert final.usage is not None and final.usage.output_tokens == 4
    done = await sdk.responses.create(model="gpt-5-codex", input="[[fake:text]]")
    assert done.status == "completed" and done.output_text
    assert done.usage is not None and done.usage.input_tokens > 0


async def test_responses_function_calls_round_trip(relay: dict[str, Any]) -> None:
    sdk = relay["sdk"]
    async with sdk.responses.stream(model="gpt-5-codex", input="[[fake:tools]]",
                                    tools=TOOLS_RESP) as s:
        kinds = [event.type async for event in s]
        final = await s.get_final_response()
    calls = [o for o in final.output if o.type == "function_call"]
    assert [c.name for c in calls] == ["Read", "Grep"]
    assert all(c.arguments.startswith("{") for c in calls)
    assert "response.function_call_arguments.delta" in kinds
    history: list[Any] = [{"role": "user", "content": "[[fake:echo]]"}]
    history += [c.model_dump(exclude_none=True) for c in calls]
    history += [{"type": "function_call_output", "call_id": c.call_id, "output": "result"}
                for c in calls]
    answer = await sdk.responses.create(model="gpt-5-codex", input=history, tools=TOOLS_RESP)
    echoed = answer.output_text
    roles = '"roles":["user","assistant","tool","tool"]' if relay["protocol"] == "openai" \
        else '"roles":["user","assistant","user"]'
    assert roles in echoed


async def test_responses_reasoning(relay: dict[str, Any]) -> None:
    sdk = relay["sdk"]
    async with sdk.responses.stream(model="gpt-5-codex", input="[[fake:reasoning]]",
                                    include=["reasoning.encrypted_content"]) as s:
        kinds = [event.type async for event in s]
        final = await s.get_final_response()
    assert [o.type for o in final.output] == ["reasoning", "message"]
    assert final.output[0].summary and final.output[0].summary[0].text
    assert "response.reasoning_summary_text.delta" in kinds
    if relay["protocol"] == "anthropic":  # the signature survives as encrypted_content
        assert final.output[0].encrypted_content
    # the reasoning item goes back in the next turn's input and is accepted
    history: list[Any] = [{"role": "user", "content": "[[fake:echo]]"}]
    history += [o.model_dump(exclude_none=True) for o in final.output]
    history.append({"role": "user", "content": "[[fake:echo]] again"})
    again = await sdk.responses.create(model="gpt-5-codex", input=history)
    assert again.status == "completed"


async def test_responses_stateless_and_builtin_tools(relay: dict[str, Any]) -> None:
    sdk = relay["sdk"]
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.responses.create(model="gpt-5-codex", input="hi",
                                   previous_response_id="resp_123")
    assert "stateless" in str(caught.value) and caught.value.body["param"] == \
        "previous_response_id"
    raw = await sdk.responses.with_raw_response.create(
        model="gpt-5-codex", input="[[fake:text]]",
        tools=[{"type": "web_search"}, *TOOLS_RESP])
    assert raw.headers["x-llmapi-dropped-tools"] == "web_search"
    assert raw.parse().status == "completed"


async def test_auth_errors_openai_shape(relay: dict[str, Any]) -> None:
    bad = openai.AsyncOpenAI(base_url=relay["gw"].url + "/v1", api_key="sk-llmapi-nope",
                             max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        await bad.chat.completions.create(model="gpt-4.1", messages=user("hi"))
    assert caught.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        await bad.responses.create(model="gpt-4.1", input="hi")
    with pytest.raises(openai.AuthenticationError):
        await bad.models.list()


async def test_models_shape_by_client(relay: dict[str, Any]) -> None:
    models = await relay["sdk"].models.list()
    assert models.object == "list" and all(m.object == "model" for m in models.data)
    async with aiohttp.ClientSession() as s, s.get(
            relay["gw"].url + "/v1/models",
            headers={"x-api-key": relay["key"], "anthropic-version": "2023-06-01"}) as r:
        data = await r.json()
    assert "has_more" in data and data["data"][0]["type"] == "model"


async def test_upstream_error_mid_stream(relay: dict[str, Any]) -> None:
    sdk = relay["sdk"]
    with pytest.raises(openai.APIError):
        async with sdk.chat.completions.stream(
                model="gpt-4.1", messages=user('[[fake:{"scenario":"error_midstream",'
                                               '"chunks":6}]]')) as stream:
            async for _ in stream:
                pass
    async with sdk.responses.stream(
            model="gpt-4.1", input='[[fake:{"scenario":"error_midstream","chunks":6}]]') as s:
        kinds = [event.type async for event in s]
    assert kinds[-1] == "response.failed"


async def test_usage_rows_carry_ingress(relay: dict[str, Any]) -> None:
    sdk = relay["sdk"]
    await sdk.chat.completions.create(model="gpt-4.1", messages=user("[[fake:text]]"))
    await sdk.responses.create(model="gpt-4.1", input="[[fake:text]]")
    gw = relay["gw"]
    await gw.recorder.flush()
    with sqlite3.connect(gw.db.path) as db:
        rows = db.execute("SELECT ingress, status, output_tokens, client_model FROM usage_logs "
                          "ORDER BY id").fetchall()
    assert [r[0] for r in rows] == ["chat", "responses"]
    assert all(r[1] == "success" and r[2] == 5 and r[3] == "gpt-4.1" for r in rows)
    # the `usage` command, the dashboard and the admin page show the client API
    summary = await gw.db.fetch_all("usage_summary", {"since": 0, "email": None})
    table = format_usage(summary, 30, None)
    assert table.splitlines()[1].split()[:2] == ["user", "api"]
    assert " chat " in table and " responses " in table
    recent = await gw.db.fetch_all("dash_recent_requests", {"user_id": rows_user(gw),
                                                            "limit": 10})
    assert sorted(r["ingress"] for r in recent) == ["chat", "responses"]
    stats_admin = await platform_stats(gw.db)
    assert stats_admin.ingress_month == {"chat": 1, "responses": 1}
    stats = await fake_stats(relay["base"])
    upstream = stats["history"][-1]
    assert upstream["json"]["model"] == "fake-model"


def rows_user(gw: Any) -> int:
    with sqlite3.connect(gw.db.path) as db:
        return int(db.execute("SELECT user_id FROM usage_logs LIMIT 1").fetchone()[0])


APPLY_PATCH = {"type": "custom", "name": "apply_patch",
               "description": "Use the `apply_patch` tool to edit files.",
               "format": {"type": "grammar", "syntax": "lark",
                          "definition": 'start: begin_patch hunk+ end_patch\n'
                                        'begin_patch: "*** Begin Patch" LF'}}


async def test_responses_custom_tool_round_trip(relay: dict[str, Any]) -> None:
    """Codex's free-form `apply_patch`: served as a one-string function upstream, back as
    a `custom_tool_call` with the raw patch, its output sent back as a tool result."""
    sdk, path = relay["sdk"], "/tmp/llmapi-patch/hello.txt"
    prompt = f"[[fake:apply_patch]] Create {path}"
    async with sdk.responses.stream(model="gpt-5-codex", input=prompt,
                                    tools=[APPLY_PATCH]) as s:
        kinds = [event.type async for event in s]
        final = await s.get_final_response()
    calls = [o for o in final.output if isinstance(o, ResponseCustomToolCall)]
    assert len(calls) == 1 and calls[0].name == "apply_patch"
    assert calls[0].input == apply_patch_text(path)
    assert kinds.index("response.custom_tool_call_input.delta") < \
        kinds.index("response.custom_tool_call_input.done")
    assert "response.function_call_arguments.delta" not in kinds
    sent = (await fake_stats(relay["base"]))["history"][-1]["json"]
    tool = sent["tools"][0]
    described = tool["function"] if relay["protocol"] == "openai" else tool
    assert described["name"] == "apply_patch"
    assert "lark grammar:\nstart: begin_patch" in described["description"]
    created = await sdk.responses.create(model="gpt-5-codex", input=prompt,
                                         tools=[APPLY_PATCH])
    assert [o.type for o in created.output] == ["custom_tool_call"]
    history: list[Any] = [{"role": "user", "content": prompt},
                          calls[0].model_dump(exclude_none=True),
                          {"type": "custom_tool_call_output", "call_id": calls[0].call_id,
                           "output": "Done! A /tmp/llmapi-patch/hello.txt"}]
    answer = await sdk.responses.create(model="gpt-5-codex", input=history,
                                        tools=[APPLY_PATCH])
    assert answer.output_text == "Done."
    sent = (await fake_stats(relay["base"]))["history"][-1]["json"]
    if relay["protocol"] == "openai":
        call = sent["messages"][1]["tool_calls"][0]
        assert call["id"] == calls[0].call_id
        assert json.loads(call["function"]["arguments"]) == {"input": apply_patch_text(path)}
        assert sent["messages"][2]["role"] == "tool"
    else:
        use = sent["messages"][1]["content"][0]
        assert use["type"] == "tool_use" and use["input"] == {"input": apply_patch_text(path)}
        assert sent["messages"][2]["content"][0]["type"] == "tool_result"
