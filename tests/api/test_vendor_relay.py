"""The issue-13 failures, each reproduced against a strict vendor profile through the running
gateway with the official anthropic SDK (fakes: gateway/testing/vendors.py)."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

import aiohttp
import anthropic
import pytest

from gateway.testing.vendors import VENDORS, check_request
from tests.compat import GREP_INPUT, MODEL, READ_INPUT, claude_code_body, final_of, rig


def test_strict_profiles_refuse_what_the_vendors_refuse() -> None:
    deepseek, kimi, openai = VENDORS["deepseek"], VENDORS["kimi"], VENDORS["openai"]
    history = {"model": "m", "tools": [{"type": "function", "function": {"name": "Read"}}],
               "messages": [{"role": "user", "content": "hi"},
                            {"role": "assistant", "content": "", "tool_calls": [
                                {"id": "c1", "type": "function",
                                 "function": {"name": "Read", "arguments": "{}"}}]},
                            {"role": "tool", "tool_call_id": "c1", "content": "x"}]}
    rejected = check_request(deepseek, history, "openai")
    assert rejected is not None and "Missing `reasoning_content` field" in \
        rejected.body["error"]["message"] and "index 1" in rejected.body["error"]["message"]
    assert check_request(deepseek, {**history, "thinking": {"type": "disabled"}},
                         "openai") is None
    rejected = check_request(kimi, history, "openai")
    assert rejected is not None and "reasoning_content is missing" in \
        rejected.body["error"]["message"]
    rejected = check_request(deepseek, {"messages": [{"role": "system", "content": "s"}]},
                             "anthropic")
    assert rejected is not None and "unknown variant `system`" in \
        rejected.body["error"]["message"]
    rejected = check_request(openai, {"messages": [], "max_tokens": 5}, "openai")
    assert rejected is not None and "max_completion_tokens" in rejected.body["error"]["message"]


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
async def test_claude_code_tool_task_with_thinking_on_deepseek(tmp_path: Path,
                                                               protocol: str) -> None:
    """Items 1-3: system messages folded, reasoning_content sent back, step 2 works."""
    async with rig("deepseek", protocol, tmp_path) as r:
        tools = [{"name": "Read", "description": "r", "input_schema": {"type": "object"}}]
        body = claude_code_body("[[fake:tools]]", tools=tools, thinking={"type": "adaptive"})
        first = await final_of(r.sdk, body)
        assert first.content[0].type == "thinking"
        uses = [b for b in first.content if b.type == "tool_use"]
        history = [*body["messages"],
                   {"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                                     for b in first.content]},
                   {"role": "user", "content": [{"type": "tool_result", "tool_use_id": u.id,
                                                 "content": "ok"} for u in uses]}]
        second = await final_of(r.sdk, {**body, "messages": history})
        assert second.stop_reason == "tool_use"
        sent = await r.last_upstream()
        roles = [m["role"] for m in sent["messages"]]
        assert "system" not in roles[1:]


async def test_upstream_400_text_reaches_the_client(tmp_path: Path) -> None:
    """Item 1: the upstream's own message, not "the upstream rejected the request"."""
    async with rig("openai", "openai", tmp_path, reasoning="") as r:
        # without the openai reasoning style max_tokens goes out and OpenAI refuses it
        with pytest.raises(anthropic.BadRequestError) as info:
            await final_of(r.sdk, claude_code_body("hi"))
        assert "max_completion_tokens" in str(info.value.message)
        assert info.value.response.headers["x-should-retry"] == "false"


async def test_openai_reasoning_models_get_max_completion_tokens(tmp_path: Path) -> None:
    """Item 9."""
    async with rig("openai", "openai", tmp_path) as r:
        await final_of(r.sdk, claude_code_body("hi", thinking={"type": "enabled",
                                                              "budget_tokens": 20000},
                                                extra_body={"temperature": 0.5}))
        sent = await r.last_upstream()
        assert sent["max_completion_tokens"] == 64000 and "max_tokens" not in sent
        assert sent["reasoning_effort"] == "high" and "temperature" not in sent


async def test_kimi_ids_are_unique_and_go_back_as_kimi_made_them(tmp_path: Path) -> None:
    """Item 3: `functions.Read:0` on every turn; the client sees distinct toolu_ ids."""
    async with rig("kimi", "openai", tmp_path) as r:
        tools = [{"name": "Read", "description": "r", "input_schema": {"type": "object"}},
                 {"name": "Grep", "description": "g", "input_schema": {"type": "object"}}]
        body = claude_code_body("[[fake:tools]]", tools=tools, thinking={"type": "disabled"})
        seen: list[str] = []
        messages = body["messages"]
        for _ in range(3):
            answer = await final_of(r.sdk, {**body, "messages": messages})
            uses = [b for b in answer.content if b.type == "tool_use"]
            seen += [u.id for u in uses]
            messages = [*messages, {"role": "assistant", "content": [
                b.model_dump(exclude_none=True) for b in answer.content]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": u.id,
                                              "content": "ok"} for u in uses]}]
        assert len(seen) == 6 and len(set(seen)) == 6
        assert all(i.startswith("toolu_") for i in seen)
        sent = await r.last_upstream()
        ids = [c["id"] for m in sent["messages"] for c in m.get("tool_calls") or []]
        assert ids == ["functions.Read:0", "functions.Grep:1"] * 2


@pytest.mark.parametrize("stream", [True, False])
async def test_kimi_ids_on_the_anthropic_endpoint_are_made_unique(tmp_path: Path,
                                                                   stream: bool) -> None:
    """Item 3 on pass-through: Kimi's Anthropic endpoint numbers calls per answer too; the
    client sees distinct toolu_ ids (stream and non-stream), the upstream its own ids, in
    both the tool_use blocks and the tool_results of the history."""
    async with rig("kimi", "anthropic", tmp_path) as r:
        tools = [{"name": "Read", "description": "r", "input_schema": {"type": "object"}},
                 {"name": "Grep", "description": "g", "input_schema": {"type": "object"}}]
        body = claude_code_body("[[fake:tools]]", tools=tools, thinking={"type": "disabled"})
        seen: list[str] = []
        messages = body["messages"]
        for _ in range(3):
            if stream:
                answer = await final_of(r.sdk, {**body, "messages": messages})
            else:
                answer = await r.sdk.messages.create(**{**body, "messages": messages,
                                                        "max_tokens": 8000})
            uses = [b for b in answer.content if b.type == "tool_use"]
            assert [u.input for u in uses] == [READ_INPUT, GREP_INPUT]
            seen += [u.id for u in uses]
            messages = [*messages, {"role": "assistant", "content": [
                b.model_dump(exclude_none=True) for b in answer.content]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": u.id,
                                              "content": "ok"} for u in uses]}]
        assert len(seen) == 6 and len(set(seen)) == 6
        assert all(re.fullmatch(r"toolu_[A-Za-z0-9_-]+", i) for i in seen)  # Anthropic's rule
        sent = await r.last_upstream()
        calls = [b["id"] for m in sent["messages"] if isinstance(m["content"], list)
                 for b in m["content"] if b["type"] == "tool_use"]
        results = [b["tool_use_id"] for m in sent["messages"] if isinstance(m["content"], list)
                   for b in m["content"] if b["type"] == "tool_result"]
        assert calls == results == ["functions.Read:0", "functions.Grep:1"] * 2


async def test_anthropic_ids_not_made_by_the_gateway_go_up_unchanged(tmp_path: Path) -> None:
    """An edited transcript's own ids (Anthropic's toolu_01..., or a look-alike that does not
    decode) are the upstream's business: sent as they are."""
    async with rig("deepseek", "anthropic", tmp_path) as r:
        body = claude_code_body("x", thinking={"type": "disabled"})
        odd = ["toolu_01A09q90qw90lq917835lq9", "toolu_0123456789ab_!!", "toolu_abc"]
        body["messages"] = [{"role": "user", "content": "go"}, {"role": "assistant", "content": [
            {"type": "tool_use", "id": i, "name": "Read", "input": {}} for i in odd]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": i,
                                          "content": "ok"} for i in odd]}]
        await final_of(r.sdk, body)
        sent = await r.last_upstream()
        assert [b["id"] for b in sent["messages"][1]["content"]] == odd
        assert [b["tool_use_id"] for b in sent["messages"][2]["content"]] == odd


@pytest.mark.parametrize(("vendor", "switch"), [
    ("ollama", {"reasoning_effort": "none"}),
    ("vllm", {"chat_template_kwargs": {"enable_thinking": False}}),
    ("llamacpp", {"chat_template_kwargs": {"enable_thinking": False}}),
])
@pytest.mark.parametrize("stream", [True, False])
async def test_thinking_disabled_reaches_servers_that_think_by_default(
        tmp_path: Path, vendor: str, switch: dict[str, object], stream: bool) -> None:
    """Item 2: Ollama thinks by default and reads only reasoning_effort "none" on /v1;
    Qwen3 on vLLM / llama.cpp thinks unless chat_template_kwargs says enable_thinking false.
    Thinking on sends no switch (Ollama refuses to make a model think that cannot)."""
    async with rig(vendor, "openai", tmp_path) as r:
        for thinking, thinks in (({"type": "disabled"}, False),
                                 ({"type": "enabled", "budget_tokens": 2048}, True)):
            body = claude_code_body("hi", thinking=thinking)
            if stream:
                answer = await final_of(r.sdk, body)
            else:
                answer = await r.sdk.messages.create(**{**body, "max_tokens": 8000})
            sent = await r.last_upstream()
            assert any(b.type == "thinking" for b in answer.content) is thinks
            assert r.thinks(sent) is thinks
            for key, value in switch.items():
                assert (sent.get(key) == value) is not thinks
            assert "think" not in sent


async def test_kimi_usage_in_the_choice_is_exact(tmp_path: Path) -> None:
    """Item 4: usage from choices[0].usage and cache hits from usage.cached_tokens."""
    async with rig("kimi", "openai", tmp_path) as r:
        final = await final_of(r.sdk, claude_code_body('[[fake:{"chunks":5,"cached_tokens":16}]]',
                                                       thinking={"type": "disabled"}))
        assert final.usage.output_tokens == 5 and final.usage.cache_read_input_tokens == 16
        await r.gw.recorder.flush()
        with sqlite3.connect(r.gw.db.path) as conn:
            row = conn.execute("SELECT output_tokens, cache_read_tokens, input_tokens "
                               "FROM usage_logs").fetchone()
        assert row == (5, 16, final.usage.input_tokens)


async def test_pdf_from_a_tool_result_reaches_the_upstream_as_text(tmp_path: Path) -> None:
    """Item 5: a PDF returned by Claude Code's Read tool is not "[empty result]"."""
    import base64

    from tests.compat import PDF_TEXT, pdf_bytes
    async with rig("deepseek", "openai", tmp_path) as r:
        body = claude_code_body("x", thinking={"type": "disabled"})
        body["messages"] = [
            {"role": "user", "content": "read it"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01X",
                                               "name": "Read", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01X",
                                          "content": [{"type": "document", "source": {
                                              "type": "base64",
                                              "media_type": "application/pdf",
                                              "data": base64.b64encode(pdf_bytes()).decode()}}]}]}]
        await final_of(r.sdk, body)
        tool = [m for m in (await r.last_upstream())["messages"] if m["role"] == "tool"]
        assert PDF_TEXT in tool[0]["content"]


@pytest.mark.parametrize("stream", [True, False])
async def test_insufficient_system_resource_is_not_a_complete_answer(tmp_path: Path,
                                                                     stream: bool) -> None:
    """Item 6."""
    async with rig("deepseek", "openai", tmp_path, routing={"max_attempts": 1}) as r:
        body = claude_code_body('[[fake:{"finish":"insufficient_system_resource"}]]',
                                thinking={"type": "disabled"})
        with pytest.raises(anthropic.APIStatusError) as info:
            if stream:
                await final_of(r.sdk, body)
            else:
                await r.sdk.messages.create(**{**body, "max_tokens": 8000})
        assert "insufficient_system_resource" in str(info.value)


@pytest.mark.parametrize("stream", [True, False])
async def test_error_in_an_http_200_keeps_its_message(tmp_path: Path, stream: bool) -> None:
    """Item 7: OpenRouter's errors inside a 200 body or event."""
    async with rig("openrouter", "openai", tmp_path, routing={"max_attempts": 1}) as r:
        body = claude_code_body('[[fake:{"error_in_200":true}]]', thinking={"type": "disabled"})
        with pytest.raises(anthropic.APIStatusError) as info:
            if stream:
                await final_of(r.sdk, body)
            else:
                await r.sdk.messages.create(**{**body, "max_tokens": 8000})
        assert "Provider returned error" in str(info.value.message)


@pytest.mark.parametrize("stream", [True, False])
async def test_keep_alive_while_queued_is_liveness_and_nothing_is_resubmitted(
        tmp_path: Path, stream: bool) -> None:
    """Item 8: 1.5 s of `: keep-alive` with a first_byte_timeout of 0.5 s is a wait, not a
    failure, and no second upstream is asked."""
    async with rig("deepseek", "openai", tmp_path, first_byte_timeout=0.5) as r:
        body = claude_code_body('[[fake:{"queue_for":1.5}]]', thinking={"type": "disabled"})
        started = time.monotonic()
        if stream:
            final = await final_of(r.sdk, body)
        else:
            final = await r.sdk.messages.create(**{**body, "max_tokens": 8000})
        assert time.monotonic() - started >= 1.4
        assert any(b.type == "text" for b in final.content)
        assert (await r.stats())["total_requests"] == 1


async def test_queue_timeout_gives_up_and_closes_the_upstream(tmp_path: Path) -> None:
    async with rig("deepseek", "openai", tmp_path, first_byte_timeout=0.5, queue_timeout=0.8,
                   routing={"max_attempts": 1}) as r:
        body = claude_code_body('[[fake:{"queue_for":30}]]', thinking={"type": "disabled"})
        with pytest.raises(anthropic.APIStatusError) as info:
            await final_of(r.sdk, body)
        assert info.value.status_code == 504 and "queued" in str(info.value.message)
        # the upstream request was closed before the gateway answered
        for _ in range(50):
            if (await r.stats())["cancelled_requests"] == 1:
                break
            await __import__("asyncio").sleep(0.05)
        assert (await r.stats())["cancelled_requests"] == 1


async def test_reasoning_model_is_the_model_of_record(tmp_path: Path) -> None:
    """Item 10: clamped with and priced as the reasoning model."""
    async with rig("deepseek", "openai", tmp_path, reasoning_model="fake-reasoner",
                   max_output_tokens={"fake-model": 100, "fake-reasoner": 5000}) as r:
        await final_of(r.sdk, claude_code_body("hi", thinking={"type": "enabled",
                                                              "budget_tokens": 2000}))
        sent = await r.last_upstream()
        assert (sent["model"], sent["max_tokens"]) == ("fake-reasoner", 5000)
        await r.gw.recorder.flush()
        with sqlite3.connect(r.gw.db.path) as conn:
            assert conn.execute("SELECT upstream_model FROM usage_logs").fetchone() == \
                ("fake-reasoner",)


async def test_wrong_key_fails_fast_without_retries(tmp_path: Path) -> None:
    """Item 11: the SDK (as Claude Code) does not retry a 401 marked x-should-retry: false."""
    async with rig("deepseek", "openai", tmp_path) as r:
        sdk = anthropic.AsyncAnthropic(base_url=r.gw.url, api_key="sk-llmapi-wrong",
                                       max_retries=5)
        started = time.monotonic()
        with pytest.raises(anthropic.AuthenticationError) as info:
            await sdk.messages.create(model=MODEL, max_tokens=10,
                                      messages=[{"role": "user", "content": "hi"}])
        assert time.monotonic() - started < 5
        assert info.value.response.headers["x-should-retry"] == "false"


async def test_upstream_refusing_the_gateway_key_is_said_and_not_overloaded(
        tmp_path: Path) -> None:
    """Item 11: no 529, no retries, no breaker trip."""
    async with rig("deepseek", "openai", tmp_path, fake_settings={"api_key": "right"},
                   api_key="wrong") as r:
        for _ in range(3):
            with pytest.raises(anthropic.APIStatusError) as info:
                await final_of(r.sdk, claude_code_body("hi"))
            assert info.value.status_code == 502
            assert "refused the gateway's credentials" in str(info.value.message)
            assert info.value.response.headers["x-should-retry"] == "false"
        assert (await r.stats())["total_requests"] == 3  # one attempt per request
        assert r.gw.breakers["deepseek"].state == "closed"


async def test_upstream_429_keeps_retry_after(tmp_path: Path) -> None:
    async with rig("glm", "openai", tmp_path, routing={"max_attempts": 2}) as r:
        with pytest.raises(anthropic.RateLimitError) as info:
            await r.sdk.messages.create(**claude_code_body(
                '[[fake:{"status":429,"retry_after":"30"}]]', max_tokens=8000,
                thinking={"type": "disabled"}))
        assert info.value.response.headers["retry-after"] == "30"


@pytest.mark.parametrize("stream", [True, False])
async def test_glm_empty_account_is_said_once_not_retried_as_a_rate_limit(
        tmp_path: Path, stream: bool) -> None:
    """GLM answers an empty account with HTTP 429 and code 1113: not a rate limit. The
    gateway does not retry it, does not trip the breaker, and tells the client it is final."""
    async with rig("glm", "openai", tmp_path, routing={"max_attempts": 3}) as r:
        body = claude_code_body('[[fake:{"status":429,"error_code":"1113"}]]',
                                thinking={"type": "disabled"})
        with pytest.raises(anthropic.APIStatusError) as info:
            if stream:
                await final_of(r.sdk, body)
            else:
                await r.sdk.messages.create(**{**body, "max_tokens": 8000})
        assert info.value.status_code == 502
        assert info.value.response.headers["x-should-retry"] == "false"
        assert "cannot pay" in str(info.value.message) and "top up" in str(info.value.message)
        assert (await r.stats())["total_requests"] == 1
        assert r.gw.breakers["glm"].state == "closed"
        # the same status with GLM's rate-limit code stays a retryable 429
        with pytest.raises(anthropic.RateLimitError) as limited:
            await r.sdk.messages.create(**claude_code_body(
                '[[fake:{"status":429,"retry_after":"3"}]]', max_tokens=8000,
                thinking={"type": "disabled"}))
        assert limited.value.response.headers["retry-after"] == "3"
        assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


async def test_get_model_by_id(tmp_path: Path) -> None:
    """Item 12."""
    async with rig("deepseek", "openai", tmp_path) as r:
        model = await r.sdk.models.retrieve("claude-opus-5-5[1m]")
        assert model.id == "claude-opus-5-5[1m]"
        async with aiohttp.ClientSession() as s:
            key = r.sdk.api_key
            async with s.get(r.gw.url + "/v1/models/whatever",
                             headers={"x-api-key": key}) as resp:
                assert resp.status == 200  # `default` serves every name


