"""Encode Anthropic Messages stream events as SSE bytes (`event: NAME\\ndata: JSON\\n\\n`).

The per-token event, `content_block_delta`, is built from a per-block prefix computed once
when the block opens, plus `orjson.dumps` of the new piece and a constant suffix: only the
piece itself is serialised on the hot path. The output is byte-identical to
`encode_event(name, data)` with the same dict (tests check this).
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

# Name of the field that carries the payload in each kind of content_block_delta.
DELTA_FIELDS: Mapping[str, str] = {
    "text_delta": "text",
    "thinking_delta": "thinking",
    "input_json_delta": "partial_json",
    "signature_delta": "signature",
}

# Closes the `delta` object and the event's data object, then ends the event.
DELTA_END = b"}}\n\n"


def encode_event(name: str, data: Mapping[str, object]) -> bytes:
    """Any event: `data` must already contain `"type": name`, as Anthropic's stream does."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


PING = encode_event("ping", {"type": "ping"})
MESSAGE_STOP = encode_event("message_stop", {"type": "message_stop"})


def message_start(message_id: str, model: str, input_tokens: int) -> bytes:
    """The first event of every stream; usage here is the pre-stream estimate."""
    message: dict[str, object] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 0},
    }
    return encode_event("message_start", {"type": "message_start", "message": message})


def _block_start(index: int, block: Mapping[str, object]) -> bytes:
    return encode_event(
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": block},
    )


def text_block_start(index: int) -> bytes:
    """Open a text block."""
    return _block_start(index, {"type": "text", "text": ""})


def thinking_block_start(index: int) -> bytes:
    """Open a thinking block; OpenAI upstreams have no signature, so it stays empty."""
    return _block_start(index, {"type": "thinking", "thinking": "", "signature": ""})


def tool_use_block_start(index: int, tool_id: str, name: str) -> bytes:
    """Open a tool_use block; its input arrives as input_json_delta pieces."""
    return _block_start(index, {"type": "tool_use", "id": tool_id, "name": name, "input": {}})


def block_stop(index: int) -> bytes:
    """Close block `index`."""
    return encode_event("content_block_stop", {"type": "content_block_stop", "index": index})


def delta_prefix(index: int, delta_type: str) -> bytes:
    """Everything of a content_block_delta event before its JSON-encoded payload string."""
    return (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
        + str(index).encode()
        + b',"delta":{"type":"'
        + delta_type.encode()
        + b'","'
        + DELTA_FIELDS[delta_type].encode()
        + b'":'
    )


def content_block_delta(index: int, delta_type: str, value: str) -> bytes:
    """One delta event; the converter inlines this with a cached prefix."""
    return delta_prefix(index, delta_type) + orjson.dumps(value) + DELTA_END


def message_delta(
    stop_reason: str | None, stop_sequence: str | None, usage: Mapping[str, int]
) -> bytes:
    """The final stop reason and usage, sent just before message_stop."""
    return encode_event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
            "usage": usage,
        },
    )


def error_event(error_type: str, message: str) -> bytes:
    """An `error` event: ends the stream when the HTTP status can no longer change."""
    return encode_event(
        "error", {"type": "error", "error": {"type": error_type, "message": message}}
    )
