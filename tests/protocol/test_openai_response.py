"""Non-stream OpenAI response -> Anthropic message, and upstream error mapping."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.protocol.openai_response import (
    CREDENTIALS_REFUSED,
    anthropic_error_from_openai,
    to_anthropic_message,
)
from gateway.protocol.tool_ids import upstream_tool_id
from gateway.protocol.usage import Usage

FIXTURES = Path(__file__).parent.parent / "fixtures"
NONSTREAM_CASES = sorted(
    p.name.removesuffix(".openai.json") for p in FIXTURES.glob("nonstream_*.openai.json")
)
MODEL = "claude-sonnet-4-6"
MESSAGE_ID = "msg_01TestNonStream"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((FIXTURES / name).read_bytes())
    return data


def comparable_content(content: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fixtures README point 6: an empty thinking signature may be absent."""
    out = []
    for block in content:
        block = dict(block)
        if block["type"] == "thinking" and block.get("signature", "") == "":
            block.pop("signature", None)
        out.append(block)
    return out


def test_all_nonstream_fixtures_are_covered() -> None:
    assert NONSTREAM_CASES == [
        "nonstream_reasoning_text", "nonstream_text_cached", "nonstream_tool_calls"]


@pytest.mark.parametrize("case", NONSTREAM_CASES)
def test_nonstream_fixture(case: str) -> None:
    expected = load(f"{case}.anthropic.json")
    message, usage = to_anthropic_message(load(f"{case}.openai.json"), MODEL, MESSAGE_ID)
    with_upstream_ids(message)
    assert re.fullmatch(r"msg_[A-Za-z0-9_]+", message["id"])
    assert isinstance(message["model"], str) and message["model"]
    assert (message["type"], message["role"]) == ("message", "assistant")
    assert comparable_content(message["content"]) == comparable_content(expected["content"])
    assert message["stop_reason"] == expected["stop_reason"]
    assert message["stop_sequence"] == expected["stop_sequence"]
    assert message["usage"] == expected["usage"]
    assert usage.input_tokens == expected["usage"]["input_tokens"]
    assert usage.output_tokens == expected["usage"]["output_tokens"]
    assert usage.cache_read_input_tokens == expected["usage"]["cache_read_input_tokens"]
    assert not usage.estimated


def test_reasoning_tokens_reported_as_thinking_tokens() -> None:
    _, usage = to_anthropic_message(load("nonstream_reasoning_text.openai.json"), MODEL,
                                    MESSAGE_ID)
    assert usage == Usage(input_tokens=38, output_tokens=112, thinking_tokens=87)


def test_cached_prompt_tokens_are_not_counted_as_input() -> None:
    _, usage = to_anthropic_message(load("nonstream_text_cached.openai.json"), MODEL, MESSAGE_ID)
    assert (usage.input_tokens, usage.cache_read_input_tokens) == (256, 3840)
    assert usage.total_tokens == 4096 + 23


# -- building blocks -------------------------------------------------------------------


def completion(
    message: dict[str, Any], finish: str | None = "stop", **choice: Any
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "model": "qwen3-coder-plus",
        "choices": [{"index": 0, "message": {"role": "assistant", **message},
                     "finish_reason": finish, **choice}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def call(arguments: Any, call_id: str = "call_1", name: str = "Bash") -> dict[str, Any]:
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": arguments}}


def convert(body: dict[str, Any], stop: list[str] | None = None) -> dict[str, Any]:
    message, _ = to_anthropic_message(body, MODEL, MESSAGE_ID, stop)
    return with_upstream_ids(message)


def with_upstream_ids(message: dict[str, Any]) -> dict[str, Any]:
    """Client tool ids are `toolu_<salt>_<upstream id>`; tests compare the upstream id."""
    for block in message["content"]:
        if block["type"] == "tool_use":
            assert re.fullmatch(r"toolu_[0-9a-f]{12}_[A-Za-z0-9_-]+", block["id"])
            block["id"] = upstream_tool_id(block["id"])
    return message


def test_thinking_block_comes_before_text() -> None:
    message = convert(completion({"content": "Answer.", "reasoning_content": "Think."}))
    assert [b["type"] for b in message["content"]] == ["thinking", "text"]


def test_empty_content_opens_no_block() -> None:
    message = convert(completion({"content": "", "reasoning_content": None}))
    assert message["content"] == []
    assert message["stop_reason"] == "end_turn"


def test_tool_calls_become_tool_use_blocks_in_order() -> None:
    message = convert(completion({"content": None, "tool_calls": [
        call('{"command": "ls"}', "call_a"),
        call('{"pattern": "x"}', "call_b", "Grep")]}, "tool_calls"))
    assert message["content"] == [
        {"type": "tool_use", "id": "call_a", "name": "Bash", "input": {"command": "ls"}},
        {"type": "tool_use", "id": "call_b", "name": "Grep", "input": {"pattern": "x"}},
    ]
    assert message["stop_reason"] == "tool_use"


def test_tool_calls_with_stop_finish_still_stop_for_tool_use() -> None:
    message = convert(completion({"content": "", "tool_calls": [call("{}")]}, "stop"))
    assert message["stop_reason"] == "tool_use"


def test_empty_tool_arguments_become_empty_object() -> None:
    message = convert(completion({"tool_calls": [call("")]}, "tool_calls"))
    assert message["content"][0]["input"] == {}


@pytest.mark.parametrize("arguments", [
    '{"command": "pytest -q', "not json at all", "[1, 2]", '"just a string"', "null",
])
def test_invalid_tool_arguments_do_not_crash(arguments: str) -> None:
    message = convert(completion({"tool_calls": [call(arguments)]}, "tool_calls"))
    block = message["content"][0]
    assert block["input"] == {"_raw_arguments": arguments}
    # It must stay something the client can serialise and send back.
    assert orjson.loads(orjson.dumps(message))["content"][0]["input"] == block["input"]


def test_arguments_sent_as_an_object_are_used_as_is() -> None:
    message = convert(completion({"tool_calls": [call({"command": "ls"})]}, "tool_calls"))
    assert message["content"][0]["input"] == {"command": "ls"}


def test_tool_call_without_id_gets_a_unique_id() -> None:
    message = convert(completion({"tool_calls": [
        {"type": "function", "function": {"name": "A", "arguments": "{}"}},
        {"id": "", "type": "function", "function": {"name": "B", "arguments": "{}"}},
    ]}, "tool_calls"))
    ids = [b["id"] for b in message["content"]]
    assert len(set(ids)) == 2 and all(ids)


def test_legacy_function_call_becomes_tool_use() -> None:
    message = convert(completion({"content": None, "function_call": {
        "name": "Read", "arguments": '{"file_path": "a.py"}'}}, "function_call"))
    assert message["content"][0]["name"] == "Read"
    assert message["content"][0]["input"] == {"file_path": "a.py"}
    assert message["stop_reason"] == "tool_use"


@pytest.mark.parametrize(("finish", "stop_reason"), [
    ("stop", "end_turn"),
    ("length", "max_tokens"),
    ("content_filter", "refusal"),
    ("tool_calls", "end_turn"),  # no call was actually made: nothing for the client to run
    (None, "end_turn"),
])
def test_finish_reason_mapping(finish: str | None, stop_reason: str) -> None:
    assert convert(completion({"content": "hi"}, finish))["stop_reason"] == stop_reason


def test_length_inside_a_tool_call_is_max_tokens() -> None:
    message = convert(completion({"tool_calls": [call('{"command": "ec')]}, "length"))
    assert message["stop_reason"] == "max_tokens"
    assert message["content"][0]["input"] == {"_raw_arguments": '{"command": "ec'}


# -- stop sequences (rule in the module docstring) -------------------------------------


def test_stop_sequence_named_by_the_upstream_is_reported() -> None:
    message = convert(completion({"content": "one two"}, "stop", stop_reason="END"),
                      stop=["END", "STOP"])
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "END")
    assert message["content"] == [{"type": "text", "text": "one two"}]


def test_stop_sequence_kept_in_text_is_reported_and_cut_off() -> None:
    message = convert(completion({"content": "one two\nTHE END"}), stop=["END", "THE END"])
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "THE END")
    assert message["content"] == [{"type": "text", "text": "one two\n"}]


def test_stripped_stop_sequence_cannot_be_told_from_end_turn() -> None:
    message = convert(completion({"content": "one two"}), stop=["END"])
    assert (message["stop_reason"], message["stop_sequence"]) == ("end_turn", None)


def test_stop_sequences_ignored_when_the_finish_was_not_stop() -> None:
    message = convert(completion({"content": "cut END"}, "length"), stop=["END"])
    assert (message["stop_reason"], message["stop_sequence"]) == ("max_tokens", None)
    assert message["content"][0]["text"] == "cut END"


# -- usage -----------------------------------------------------------------------------


def test_deepseek_cache_hit_tokens_used_when_cached_tokens_absent() -> None:
    body = completion({"content": "hi"})
    body["usage"] = {"prompt_tokens": 1000, "completion_tokens": 7,
                     "prompt_cache_hit_tokens": 640, "prompt_cache_miss_tokens": 360}
    message, usage = to_anthropic_message(body, MODEL, MESSAGE_ID)
    assert message["usage"] == {"input_tokens": 360, "output_tokens": 7,
                                "cache_creation_input_tokens": 0,
                                "cache_read_input_tokens": 640}
    assert usage.total_tokens == 1007


def test_missing_usage_is_estimated_from_the_output() -> None:
    body = completion({"content": "x" * 40})
    del body["usage"]
    message, usage = to_anthropic_message(body, MODEL, MESSAGE_ID)
    assert usage.estimated and usage.output_tokens == 10 and usage.input_tokens == 0
    assert message["usage"]["output_tokens"] == 10


@pytest.mark.parametrize("body", [
    {}, {"choices": []}, {"choices": [None]}, {"choices": [{"message": None}]},
    {"choices": [{"message": {"content": 12, "tool_calls": "x"}}], "usage": "n/a"},
    {"choices": [{"message": {"tool_calls": [None, {"function": None}]}}]},
])
def test_malformed_bodies_do_not_crash(body: dict[str, Any]) -> None:
    message, usage = to_anthropic_message(body, MODEL, MESSAGE_ID, ["END"])
    assert message["type"] == "message" and isinstance(message["content"], list)
    assert usage.output_tokens >= 0


# -- upstream errors -------------------------------------------------------------------


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": "invalid_request_error",
                                   "code": "invalid_parameter"}})


@pytest.mark.parametrize(("status", "client_status", "error_type"), [
    (400, 400, "invalid_request_error"),
    (404, 400, "invalid_request_error"),
    (422, 400, "invalid_request_error"),
    (401, 502, "api_error"),
    (403, 502, "api_error"),
    (413, 413, "request_too_large"),
    (429, 429, "rate_limit_error"),
    (500, 529, "overloaded_error"),
    (502, 529, "overloaded_error"),
    (503, 529, "overloaded_error"),
    (504, 529, "overloaded_error"),
    (529, 529, "overloaded_error"),
    (402, 502, "api_error"),
    (418, 502, "api_error"),
])
def test_upstream_status_mapping(status: int, client_status: int, error_type: str) -> None:
    got_status, got_type, message = anthropic_error_from_openai(status, error_body("boom"))
    assert (got_status, got_type) == (client_status, error_type)
    assert message


def test_bad_request_passes_the_upstream_message_on() -> None:
    body = error_body("Range of max_tokens should be [1, 8192]")
    assert anthropic_error_from_openai(400, body) == (
        400, "invalid_request_error", "Range of max_tokens should be [1, 8192]")


def test_upstream_message_may_be_top_level() -> None:
    assert anthropic_error_from_openai(422, b'{"message": "model not found"}')[2] == (
        "model not found")


def test_long_upstream_messages_are_truncated() -> None:
    _, _, message = anthropic_error_from_openai(400, error_body("x" * 5000))
    assert len(message) <= 500 and message.startswith("xxx")


def test_refused_credentials_never_echo_the_upstream_body() -> None:
    body = error_body("Incorrect API key provided: sk-abc123***********xyz")
    for status in (401, 403):
        assert anthropic_error_from_openai(status, body) == (502, "api_error",
                                                             CREDENTIALS_REFUSED)


@pytest.mark.parametrize("body", [b"", b"<html>Bad Gateway</html>", b"[1]", b'{"error": 5}'])
def test_unparseable_error_bodies_still_give_a_message(body: bytes) -> None:
    status, error_type, message = anthropic_error_from_openai(400, body)
    assert (status, error_type) == (400, "invalid_request_error")
    assert "400" in message


def test_anthropic_shaped_error_bodies_are_understood() -> None:
    body = b'{"type":"error","error":{"type":"invalid_request_error","message":"bad model"}}'
    assert anthropic_error_from_openai(404, body) == (400, "invalid_request_error", "bad model")


def test_glm_business_codes_inside_a_200_are_not_http_statuses() -> None:
    """GLM's `error.code` is a four-digit string ("1214"), never an HTTP status: 1214 is a
    bad request, 1302 a rate limit, 1113 an empty account; an unknown code says nothing."""
    from gateway.protocol.openai_response import error_from_payload

    assert error_from_payload({"error": {"code": "1214", "message": "bad"}})[:2] == \
        (400, "invalid_request_error")
    assert error_from_payload({"error": {"code": "1302", "message": "slow down"}})[1:2] == \
        ("rate_limit_error",)
    status, _, message, retryable = error_from_payload(
        {"error": {"code": "1113", "message": "余额不足或无可用资源包,请充值。"}})
    assert (status, retryable) == (502, False) and "余额不足" in message
    _, _, message, _ = error_from_payload({"error": {"code": "9999", "message": "odd"}})
    assert "HTTP 9999" not in message and "odd" in message
