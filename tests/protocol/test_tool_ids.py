"""Tool-call ids on the pass-through: rewritten in events and bodies, decoded in histories."""

from __future__ import annotations

import orjson

from gateway.protocol.sse import SSEParser
from gateway.protocol.tool_ids import (
    client_tool_id,
    events_with_client_ids,
    history_with_upstream_ids,
    id_salt,
    message_with_client_ids,
    upstream_tool_id,
)

SALT = id_salt("msg_one")


def event(name: str, data: dict[str, object], end: bytes = b"\n") -> bytes:
    return (b"event: " + name.encode() + end + b"data: " + orjson.dumps(data) + end + end)


def start(tool_id: str) -> dict[str, object]:
    return {"type": "content_block_start", "index": 1,
            "content_block": {"type": "tool_use", "id": tool_id, "name": "Read", "input": {}}}


def test_tool_use_starts_get_client_ids_and_the_rest_passes_byte_for_byte() -> None:
    text = event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
        "type": "text_delta", "text": 'a "tool_use" in the text'}})
    for end in (b"\n", b"\r\n"):
        block = text + event("content_block_start", start("functions.Read:0"), end) + text
        out = events_with_client_ids(block, SALT)
        events = SSEParser().feed(out)
        assert [e.event for e in events] == ["content_block_delta", "content_block_start",
                                             "content_block_delta"]
        new_id = orjson.loads(events[1].data)["content_block"]["id"]
        assert new_id == client_tool_id("functions.Read:0", SALT)
        assert upstream_tool_id(new_id) == "functions.Read:0"
        assert out.startswith(text) and out.endswith(text)
    assert events_with_client_ids(text, SALT) is text  # no tool call: the same object


def test_same_upstream_id_differs_between_answers() -> None:
    one = events_with_client_ids(event("content_block_start", start("x:0")), id_salt("msg_a"))
    two = events_with_client_ids(event("content_block_start", start("x:0")), id_salt("msg_b"))
    assert one != two


def test_message_body_ids_and_poison_bodies() -> None:
    raw = orjson.dumps({"type": "message", "content": [
        {"type": "text", "text": "t"},
        {"type": "tool_use", "id": "functions.Read:0", "name": "Read", "input": {}},
        {"type": "tool_use", "id": "functions.Read:0", "name": "Read", "input": {}}]})
    ids = [b.get("id") for b in orjson.loads(message_with_client_ids(raw, SALT))["content"]]
    assert ids[1] == ids[2] == client_tool_id("functions.Read:0", SALT)
    for poison in (b'{"content": "tool_use"}', b'"tool_use"', b'{"tool_use"', b"[]"):
        assert message_with_client_ids(poison, SALT) == poison


def test_history_is_decoded_and_untouched_when_nothing_was_ours() -> None:
    ours = client_tool_id("functions.Read:0", SALT)
    history = [{"role": "user", "content": "hi"},
               {"role": "assistant", "content": [{"type": "tool_use", "id": ours}]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": ours},
                                            {"type": "text", "text": "x"}]}]
    out = history_with_upstream_ids(history)
    assert out is not None
    assert out[1]["content"][0]["id"] == out[2]["content"][0]["tool_use_id"] == \
        "functions.Read:0"
    assert history[1]["content"][0]["id"] == ours  # the client's body is not mutated
    plain = [{"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01abc"}]},
             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": 7}]}, "x"]
    assert history_with_upstream_ids(plain) is None
    assert history_with_upstream_ids("nope") is None
