"""The OpenAI ingress's pure converters, one rule per test (gateway/protocol/*)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.protocol.anthropic_to_chat import AnthropicToChat, message_to_completion
from gateway.protocol.chat_stream_reader import ChatStreamReader
from gateway.protocol.chat_to_anthropic import (
    ConversionError,
    chat_to_anthropic,
    validate_chat_request,
)
from gateway.protocol.chat_to_responses import ChatToResponses, completion_to_response
from gateway.protocol.openai_errors import openai_error_body
from gateway.protocol.responses_to_chat import (
    CustomInputStream,
    for_openai_upstream,
    responses_to_chat,
)

TOOL = {"type": "function", "function": {"name": "Read", "parameters": {"type": "object"}}}


def chat(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4.1", "messages": list(messages), **extra}


def test_system_and_developer_fold_into_system_and_tool_turns_merge() -> None:
    out = chat_to_anthropic(chat(
        {"role": "system", "content": "A"}, {"role": "developer", "content": "B"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "calling", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "Read", "arguments": ""}},
            {"id": "c2", "type": "function",
             "function": {"name": "Read", "arguments": "{\"p\":1}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "two"}]},
        {"role": "user", "content": "next"}, tools=[TOOL], parallel_tool_calls=False))
    assert out["system"] == "A\n\nB"
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]
    assistant = out["messages"][1]["content"]
    assert [b["type"] for b in assistant] == ["text", "tool_use", "tool_use"]
    assert assistant[1]["input"] == {} and assistant[2]["input"] == {"p": 1}
    last = out["messages"][2]["content"]
    assert [b["type"] for b in last] == ["tool_result", "tool_result", "text"]
    assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert out["tools"][0]["input_schema"] == {"type": "object"}


def test_images_limits_and_sampling() -> None:
    out = chat_to_anthropic(chat({"role": "user", "content": [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "https://x.example/a.png"}}]},
        max_completion_tokens=100, max_tokens=5, stop="END", temperature=1.7, user="u1"))
    blocks = out["messages"][0]["content"]
    assert blocks[1]["source"] == {"type": "base64", "media_type": "image/png", "data": "AAAA"}
    assert blocks[2]["source"] == {"type": "url", "url": "https://x.example/a.png"}
    assert out["max_tokens"] == 100 and out["stop_sequences"] == ["END"]
    assert out["temperature"] == 1.0 and out["metadata"] == {"user_id": "u1"}


def test_reasoning_effort_and_response_format() -> None:
    out = chat_to_anthropic(chat({"role": "user", "content": "x"}, reasoning_effort="high",
                                 max_tokens=32000,
                                 response_format={"type": "json_schema", "json_schema": {
                                     "name": "r", "schema": {"type": "object"}}}))
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 16384}
    assert "JSON Schema" in out["system"]
    # thinking does not combine with temperature: temperature wins
    plain = chat_to_anthropic(chat({"role": "user", "content": "x"}, reasoning_effort="high",
                                   temperature=0.2))
    assert "thinking" not in plain


@pytest.mark.parametrize(("extra", "param"), [
    ({"logprobs": True}, "logprobs"), ({"functions": []}, "functions"),
    ({"audio": {"voice": "x"}}, "audio")])
def test_unconvertible_fields_are_refused(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(ConversionError) as caught:
        chat_to_anthropic(chat({"role": "user", "content": "x"}, **extra))
    assert caught.value.param == param


def test_validation_names_the_field() -> None:
    assert validate_chat_request(chat({"role": "user", "content": "x"}, n=2))[1] == "n"
    assert validate_chat_request(chat())[1] == "messages"
    assert validate_chat_request({"messages": []})[1] == "model"
    assert validate_chat_request(chat({"role": "tool", "content": "x"}))[1] == \
        "messages[0].tool_call_id"
    assert validate_chat_request(chat({"role": "user", "content": "x"}, n=1)) is None


def test_responses_input_items_become_chat_messages() -> None:
    body, ctx = responses_to_chat({
        "model": "m", "instructions": "be brief", "stream": True,
        "include": ["reasoning.encrypted_content"],
        "input": [
            {"type": "message", "role": "developer",
             "content": [{"type": "input_text", "text": "dev"}]},
            {"role": "user", "content": [{"type": "input_text", "text": "hi"},
                                         {"type": "input_image",
                                          "image_url": "data:image/png;base64,AA"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text",
                                                             "text": "think"}],
             "encrypted_content": "SIG"},
            {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "ok"}]},
            {"type": "function_call", "call_id": "c1", "name": "Read", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "done"}],
        "tools": [{"type": "function", "name": "Read", "parameters": {"type": "object"}},
                  {"type": "namespace", "name": "ns", "tools": [
                      {"type": "function", "name": "Inner"}]},
                  {"type": "web_search"}]})
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "system", "user", "assistant", "tool"]
    assistant = body["messages"][3]
    assert assistant["content"] == "ok" and assistant["tool_calls"][0]["id"] == "c1"
    assert (assistant["reasoning_content"], assistant["reasoning_signature"]) == ("think", "SIG")
    assert [t["function"]["name"] for t in body["tools"]] == ["Read", "Inner"]
    assert ctx.dropped_tools == ["web_search"] and ctx.include_encrypted
    assert body["stream_options"] == {"include_usage": True}
    clean = for_openai_upstream(body)
    assert "reasoning_signature" not in clean["messages"][3]
    signed = chat_to_anthropic(body)["messages"][1]["content"][0]
    assert signed == {"type": "thinking", "thinking": "think", "signature": "SIG"}


@pytest.mark.parametrize("field", ["previous_response_id", "conversation"])
def test_responses_are_stateless(field: str) -> None:
    with pytest.raises(ConversionError) as caught:
        responses_to_chat({"model": "m", "input": "x", field: "resp_1"})
    assert "stateless" in caught.value.message and caught.value.param == field
    with pytest.raises(ConversionError):
        responses_to_chat({"model": "m", "input": [{"type": "item_reference", "id": "x"}]})
    with pytest.raises(ConversionError):
        responses_to_chat({"model": "m", "input": "x", "tools": [{"type": "web_search"}],
                           "tool_choice": {"type": "web_search"}})


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def events_of(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in data.split(b"\n") if line.startswith(b"data: ")]


def test_stream_event_order_with_interleaved_parallel_calls() -> None:
    _, ctx = responses_to_chat({"model": "m", "input": "x"})
    conv = ChatToResponses(ctx, "resp_abc", 1)
    out = conv.start() + conv.feed([
        chunk({"reasoning_content": "hm"}), chunk({"content": "Hi"}),
        chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "A",
                                                                   "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "B",
                                                                   "arguments": "{\"y\""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": ":1}"}}]}, "tool_calls"),
        {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3,
                                  "prompt_tokens_details": {"cached_tokens": 2}}},
    ]) + conv.end()
    events = events_of(out)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    added = [e["output_index"] for e in events if e["type"] == "response.output_item.added"]
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert added == [0, 1, 2, 3] and [d["type"] for d in done] == [
        "reasoning", "message", "function_call", "function_call"]
    assert [d["arguments"] for d in done[2:]] == ["{}", "{\"y\":1}"]
    final = events[-1]["response"]
    assert final["usage"]["input_tokens"] == 7
    assert final["usage"]["input_tokens_details"]["cached_tokens"] == 2
    assert [o["id"] for o in final["output"]] == [d["id"] for d in done]


def test_length_is_incomplete_and_an_error_fails() -> None:
    _, ctx = responses_to_chat({"model": "m", "input": "x"})
    conv = ChatToResponses(ctx, "resp_1", 1)
    events = events_of(conv.start() + conv.feed([chunk({"content": "a"}, "length")])
                       + conv.end())
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    broken = ChatToResponses(ctx, "resp_2", 1)
    events = events_of(broken.start() + broken.feed([chunk({"content": "a"}),
                                                     {"error": {"message": "boom"}}]))
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["message"] == "boom"
    assert broken.end() == b""


def anthropic_stream() -> bytes:
    def ev(name: str, data: dict[str, Any]) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(
            {"type": name, **data}) + b"\n\n"
    return b"".join([
        ev("message_start", {"message": {"usage": {"input_tokens": 10,
                                                   "cache_read_input_tokens": 4}}}),
        ev("content_block_start", {"index": 0, "content_block": {"type": "thinking"}}),
        ev("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta",
                                                         "thinking": "hm"}}),
        ev("content_block_delta", {"index": 0, "delta": {"type": "signature_delta",
                                                         "signature": "S"}}),
        ev("content_block_start", {"index": 1, "content_block": {"type": "tool_use",
                                                                 "id": "t1", "name": "A"}}),
        ev("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta",
                                                         "partial_json": "{}"}}),
        ev("message_delta", {"delta": {"stop_reason": "tool_use"},
                             "usage": {"output_tokens": 5}}),
        ev("message_stop", {}),
    ])


def test_anthropic_stream_to_chat_at_every_split() -> None:
    raw = anthropic_stream()
    expected: list[dict[str, Any]] | None = None
    for cut in range(1, len(raw), 7):
        conv = AnthropicToChat("chatcmpl-1", "m", 1, include_usage=True, keep_signature=True)
        out = conv.feed(raw[:cut]) + conv.feed(raw[cut:]) + conv.finish()
        if expected is None:
            expected = out
        assert out == expected
    assert expected is not None
    deltas = [c["choices"][0]["delta"] for c in expected if c.get("choices")]
    assert deltas[1] == {"reasoning_content": "hm"} and deltas[2] == {"reasoning_signature": "S"}
    assert deltas[3]["tool_calls"][0]["id"] == "t1"
    assert expected[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert expected[-1]["usage"]["prompt_tokens"] == 14
    assert expected[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 4


def test_truncated_anthropic_stream_ends_in_an_error_payload() -> None:
    raw = anthropic_stream()
    conv = AnthropicToChat("c", "m", 1, include_usage=False)
    out = conv.feed(raw[: raw.index(b"event: message_delta")]) + conv.finish()
    assert "error" in out[-1] and conv.error is not None


def test_non_stream_round_trip_to_responses() -> None:
    completion = message_to_completion({"content": [
        {"type": "thinking", "thinking": "hm", "signature": "S"},
        {"type": "text", "text": "Hi"},
        {"type": "tool_use", "id": "t", "name": "A", "input": {"x": 1}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 3, "output_tokens": 2}},
        "chatcmpl-1", "m", 1, keep_signature=True)
    assert completion["choices"][0]["finish_reason"] == "tool_calls"
    _, ctx = responses_to_chat({"model": "m", "input": "x",
                                "include": ["reasoning.encrypted_content"]})
    response = completion_to_response(completion, ctx, "resp_1", 1)
    assert [o["type"] for o in response["output"]] == ["reasoning", "message", "function_call"]
    assert response["output"][0]["encrypted_content"] == "S"
    assert response["output"][2]["arguments"] == "{\"x\":1}"


def test_chat_reader_keeps_raw_bytes_and_sees_the_end() -> None:
    reader = ChatStreamReader()
    pairs = reader.feed(b": keep-alive\r\ndata:{\"choices\":[{\"delta\":{\"content\":\"a\"},"
                        b"\"finish_reason\":\"stop\"}]}\r\n\r\ndata: [DONE]\n\n")
    assert [raw for raw, _ in pairs] == [b"{\"choices\":[{\"delta\":{\"content\":\"a\"},"
                                         b"\"finish_reason\":\"stop\"}]}"]
    assert reader.done and reader.finish_reason == "stop"


@pytest.mark.parametrize(("kind", "status", "expected"), [
    ("authentication_error", 401, (401, "invalid_request_error", "invalid_api_key")),
    ("billing_error", 402, (429, "insufficient_quota", "insufficient_quota")),
    ("overloaded_error", 529, (503, "server_error", "overloaded")),
    ("rate_limit_error", 429, (429, "requests", "rate_limit_exceeded")),
    ("invalid_request_error", 405, (405, "invalid_request_error", None)),
])
def test_error_mapping(kind: str, status: int, expected: tuple[int, str, str | None]) -> None:
    new_status, body = openai_error_body(kind, status, "m", None)
    error = orjson.loads(body)["error"]
    assert (new_status, error["type"], error["code"]) == expected
    assert set(error) == {"message", "type", "param", "code"}


# ---- custom (free-form) tools: Codex's apply_patch ------------------------------------

APPLY_PATCH = {"type": "custom", "name": "apply_patch", "description": "Edit files.",
               "format": {"type": "grammar", "syntax": "lark",
                          "definition": "start: begin_patch hunk+ end_patch"}}
PATCH = '*** Begin Patch\n*** Add File: /w/a.txt\n+say "hi"\\n\n*** End Patch\n'


def test_custom_tool_becomes_a_described_one_string_function() -> None:
    chat_body, ctx = responses_to_chat({"model": "m", "input": "x", "tools": [
        APPLY_PATCH, {"type": "namespace", "name": "ns", "tools": [
            {"type": "custom", "name": "freeform"}]}],
        "tool_choice": {"type": "custom", "name": "apply_patch"}})
    function = chat_body["tools"][0]["function"]
    assert function["name"] == "apply_patch"
    assert function["parameters"] == {
        "type": "object", "required": ["input"], "additionalProperties": False,
        "properties": {"input": {"type": "string",
                                 "description": "The raw input for apply_patch, unchanged."}}}
    assert function["description"].startswith("Edit files.\n\n")
    assert "lark grammar:\nstart: begin_patch hunk+ end_patch" in function["description"]
    assert chat_body["tools"][1]["function"]["name"] == "freeform"
    assert chat_body["tool_choice"] == {"type": "function", "function": {"name": "apply_patch"}}
    assert ctx.custom_tools == {"apply_patch", "freeform"} and not ctx.dropped_tools
    assert ctx.tools[0] is APPLY_PATCH  # the response echoes the tool as it was sent
    # and on to an Anthropic upstream, as a tool with that input schema
    anthropic = chat_to_anthropic(chat_body)
    assert anthropic["tools"][0]["input_schema"]["required"] == ["input"]


def test_custom_tool_call_and_output_round_trip_as_a_function_call() -> None:
    chat_body, _ = responses_to_chat({"model": "m", "tools": [APPLY_PATCH], "input": [
        {"role": "user", "content": "patch it"},
        {"type": "custom_tool_call", "call_id": "call_1", "name": "apply_patch",
         "input": PATCH},
        {"type": "custom_tool_call_output", "call_id": "call_1", "output": "Done!"}]})
    assistant, tool = chat_body["messages"][1], chat_body["messages"][2]
    call = assistant["tool_calls"][0]
    assert call["id"] == "call_1" and call["function"]["name"] == "apply_patch"
    assert orjson.loads(call["function"]["arguments"]) == {"input": PATCH}
    assert tool == {"role": "tool", "tool_call_id": "call_1", "content": "Done!"}
    with pytest.raises(ConversionError):
        responses_to_chat({"model": "m", "input": [
            {"type": "custom_tool_call", "call_id": "c", "name": "apply_patch"}]})


@pytest.mark.parametrize("arguments", [orjson.dumps({"input": PATCH}).decode(),
                                       orjson.dumps({"patch": PATCH}).decode(), PATCH])
def test_custom_call_in_a_completion_comes_back_raw(arguments: str) -> None:
    """`{"input": ...}` as asked, a lone other key, or no JSON at all: the raw text."""
    _, ctx = responses_to_chat({"model": "m", "input": "x", "tools": [
        APPLY_PATCH, {"type": "function", "name": "Read"}]})
    response = completion_to_response({"choices": [{"finish_reason": "tool_calls", "message": {
        "role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "apply_patch", "arguments": arguments}},
            {"id": "c2", "type": "function", "function": {"name": "Read",
                                                          "arguments": "{\"p\":1}"}}]}}]},
        ctx, "resp_x", 1)
    custom, function = response["output"]
    assert custom == {"id": "ctc_x_0", "type": "custom_tool_call", "status": "completed",
                      "call_id": "c1", "name": "apply_patch", "input": PATCH}
    assert function["type"] == "function_call" and function["arguments"] == "{\"p\":1}"


def test_custom_call_stream_events() -> None:
    _, ctx = responses_to_chat({"model": "m", "input": "x", "tools": [APPLY_PATCH],
                                "stream": True})
    conv = ChatToResponses(ctx, "resp_s", 1)
    arguments = orjson.dumps({"input": PATCH}).decode()
    pieces = [arguments[i:i + 7] for i in range(0, len(arguments), 7)]
    out = conv.start() + conv.feed(
        [chunk({"content": "Patching."}),
         chunk({"tool_calls": [{"index": 0, "id": "c9", "function": {
             "name": "apply_patch", "arguments": ""}}]})]
        + [chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]})
           for p in pieces] + [chunk({}, "tool_calls")]) + conv.end()
    events = events_of(out)
    kinds = [e["type"] for e in events]
    assert "response.function_call_arguments.delta" not in kinds
    call_events = [e for e in events if e.get("output_index") == 1]
    added, *deltas, done_input, done = call_events
    assert added["type"] == "response.output_item.added"
    assert {e["type"] for e in deltas} == {"response.custom_tool_call_input.delta"}
    assert len(deltas) > 3  # the raw input streams as it is decoded
    assert (done_input["type"], done["type"]) == ("response.custom_tool_call_input.done",
                                                  "response.output_item.done")
    assert added["item"]["type"] == "custom_tool_call" and added["item"]["input"] == ""
    assert "".join(e["delta"] for e in deltas) == done_input["input"] == \
        done["item"]["input"] == PATCH
    assert done["item"]["call_id"] == "c9" and done["item"]["id"] == added["item"]["id"]
    assert events[-1]["response"]["output"][1] == done["item"]


@pytest.mark.parametrize("text", [PATCH, "emoji \U0001f600, é, \u2028, tab\t, \\ and \"", ""])
def test_custom_input_decodes_at_every_split(text: str) -> None:
    """Every cut of the arguments (inside escapes, \\u sequences and surrogate pairs too)
    streams exactly the raw input."""
    arguments = orjson.dumps({"input": text}).decode().replace(
        "\U0001f600", "\\ud83d\\ude00")
    for cut in range(1, len(arguments)):
        for second in (cut, min(len(arguments), cut + 5)):
            decoder = CustomInputStream()
            parts = [arguments[:cut], arguments[cut:second], arguments[second:]]
            assert "".join(decoder.feed(p) for p in parts) == text
            assert decoder.closed and not decoder.failed


def test_custom_call_of_another_shape_goes_out_whole_at_the_end() -> None:
    _, ctx = responses_to_chat({"model": "m", "input": "x", "tools": [APPLY_PATCH],
                                "stream": True})
    conv = ChatToResponses(ctx, "resp_o", 1)
    events = events_of(conv.start() + conv.feed([
        chunk({"tool_calls": [{"index": 0, "id": "c", "function": {
            "name": "apply_patch", "arguments": '{"patch": "'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'abc"}'}}]}, "tool_calls"),
    ]) + conv.end())
    deltas = [e["delta"] for e in events if e["type"] == "response.custom_tool_call_input.delta"]
    assert deltas == ["abc"]
    done = next(e for e in events if e["type"] == "response.output_item.done")
    assert done["item"]["input"] == "abc"
