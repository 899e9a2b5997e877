"""AnthropicUsageTap: usage and ending of a pass-through Anthropic stream, read cheaply."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.protocol import anthropic_tap
from gateway.protocol.anthropic_events import encode_event
from gateway.protocol.anthropic_tap import AnthropicUsageTap
from gateway.protocol.usage import Usage


def event(name: str, **fields: Any) -> bytes:
    return encode_event(name, {"type": name, **fields})


START = event(
    "message_start",
    message={
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-6",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 25,
            "cache_read_input_tokens": 4000,
            "cache_creation_input_tokens": 300,
            "output_tokens": 1,
        },
    },
)
TEXT = (
    event("content_block_start", index=0, content_block={"type": "text", "text": ""})
    + event("content_block_delta", index=0, delta={"type": "text_delta", "text": "Hi 😀"})
    + event("content_block_stop", index=0)
)
DELTA = event(
    "message_delta",
    delta={"stop_reason": "end_turn", "stop_sequence": None},
    usage={"output_tokens": 42},
)
STOP = event("message_stop")
STREAM = START + event("ping") + TEXT + DELTA + STOP


def tap_of(data: bytes, size: int = 0) -> AnthropicUsageTap:
    tap = AnthropicUsageTap()
    step = size or len(data) or 1
    for start in range(0, len(data), step):
        tap.feed(data[start : start + step])
    tap.close()
    return tap


@pytest.mark.parametrize("size", [0, 1, 7, 64])
def test_records_usage_from_message_start_and_message_delta(size: int) -> None:
    tap = tap_of(STREAM, size)
    assert tap.usage == Usage(
        input_tokens=25,
        output_tokens=42,
        cache_read_input_tokens=4000,
        cache_creation_input_tokens=300,
    )
    assert tap.saw_message_start and tap.saw_message_stop
    assert tap.stop_reason == "end_turn"
    assert tap.error is None


def test_later_message_delta_values_override_earlier_ones() -> None:
    second = event(
        "message_delta",
        delta={"stop_reason": "tool_use", "stop_sequence": None},
        usage={"output_tokens": 50, "input_tokens": 30, "cache_read_input_tokens": None},
    )
    tap = tap_of(START + DELTA + second)
    assert (tap.usage.input_tokens, tap.usage.output_tokens) == (30, 50)
    assert tap.usage.cache_read_input_tokens == 4000, "null keeps the earlier value"
    assert tap.stop_reason == "tool_use"


def test_stream_cut_before_message_stop_is_noticed() -> None:
    tap = tap_of(START + TEXT)
    assert tap.saw_message_start and not tap.saw_message_stop
    assert tap.usage.output_tokens == 1


def test_error_event_is_recorded() -> None:
    error = event("error", error={"type": "overloaded_error", "message": "Overloaded"})
    tap = tap_of(START + TEXT + error)
    assert tap.error == ("overloaded_error", "Overloaded")
    assert not tap.saw_message_stop


def test_only_usage_events_are_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[str] = []
    real_loads = orjson.loads

    def counting_loads(data: str) -> Any:
        decoded.append(real_loads(data)["type"])
        return real_loads(data)

    monkeypatch.setattr(anthropic_tap.orjson, "loads", counting_loads)
    tap_of(STREAM + event("ping") + TEXT)
    assert decoded == ["message_start", "message_delta"]


def test_broken_json_in_a_content_event_is_not_even_looked_at() -> None:
    garbage = b"event: content_block_delta\ndata: {not json\n\n"
    tap = tap_of(START + garbage + DELTA + STOP)
    assert tap.usage.output_tokens == 42 and tap.saw_message_stop


def test_broken_json_in_a_usage_event_is_skipped() -> None:
    tap = tap_of(START + b"event: message_delta\ndata: {oops\n\n" + STOP)
    assert tap.usage.input_tokens == 25 and tap.saw_message_stop


def test_final_event_without_blank_line_counts_at_close() -> None:
    tap = tap_of(START + DELTA + STOP.rstrip(b"\n"))
    assert tap.saw_message_stop


def test_crlf_stream() -> None:
    tap = tap_of(STREAM.replace(b"\n", b"\r\n"), 5)
    assert tap.usage.output_tokens == 42 and tap.saw_message_stop


def test_feed_complete_skips_blocks_without_watched_events_but_sees_the_rest() -> None:
    from gateway.protocol.anthropic_tap import AnthropicUsageTap

    start = (b'event: message_start\ndata: {"type":"message_start","message":{"usage":'
             b'{"input_tokens":11,"output_tokens":0}}}\n\n')
    deltas = b"".join(
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"x"}}\n\n' for _ in range(5))
    end = (b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":'
           b'"end_turn"},"usage":{"output_tokens":5}}\n\nevent: message_stop\n'
           b'data: {"type":"message_stop"}\n\n')
    tap = AnthropicUsageTap()
    for block in (start, deltas, end):
        tap.feed_complete(block)
    assert (tap.usage.input_tokens, tap.usage.output_tokens) == (11, 5)
    assert tap.saw_message_start and tap.saw_message_stop and tap.stop_reason == "end_turn"


@pytest.mark.parametrize("framing", ["lf", "crlf", "nospace"])
def test_feed_complete_matches_the_full_parser(framing: str) -> None:
    """The find-based fast path and the parser agree, whatever the framing."""
    from gateway.protocol.anthropic_tap import AnthropicUsageTap

    events = [
        ("message_start", '{"type":"message_start","message":{"usage":{"input_tokens":7,'
                          '"cache_read_input_tokens":3,"output_tokens":1}}}'),
        ("content_block_delta", '{"type":"content_block_delta","delta":{"text":'
                                '"event: message_delta\\n says the model"}}'),
        ("message_delta", '{"type":"message_delta","delta":{"stop_reason":"max_tokens"},'
                          '"usage":{"output_tokens":9}}'),
        ("message_delta", '{"type":"message_delta","usage":{"output_tokens":12}}'),
        ("error", '{"type":"error","error":{"type":"overloaded_error","message":"busy"}}'),
    ]
    sep = {"lf": "\n", "crlf": "\r\n", "nospace": "\n"}[framing]
    colon = ":" if framing == "nospace" else ": "
    block = "".join(f"event{colon}{n}{sep}data{colon}{d}{sep}{sep}" for n, d in events).encode()
    fast, slow = AnthropicUsageTap(), AnthropicUsageTap()
    fast.feed_complete(block)
    slow.feed(block)
    slow.close()
    assert fast.usage == slow.usage
    assert (fast.usage.input_tokens, fast.usage.output_tokens) == (7, 12)
    assert fast.stop_reason == slow.stop_reason == "max_tokens"
    assert fast.error == slow.error == ("overloaded_error", "busy")
    assert fast.saw_message_start and not fast.saw_message_stop
