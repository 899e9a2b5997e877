"""Client-visible tool-call ids that are unique per answer and still lead back upstream.

The rules: docs/protocol.md §4.

Some upstreams number tool calls per answer (Moonshot/Kimi: `functions.Read:0`, then again
`functions.Read:0` on the next turn). Claude Code pairs `tool_result`s with calls by id, so a
repeated id makes it answer the wrong call and loop. The gateway therefore never shows an
upstream id: it shows `toolu_<salt>_<base64url(upstream id)>`, where the salt comes from the
gateway's own message id (unique per answer). The upstream id travels inside the client id,
so when the client sends the history back the original id is recovered by decoding: no
server-side table, nothing to keep across requests or gateway processes, and the history the
upstream sees is exactly the one it produced (its ids, in its order).

Ids that are not in this form (Anthropic's own `toolu_01...`, ids an edited transcript made
up) are sent upstream unchanged.

Both provider protocols do this. The openai path builds the client's blocks itself; the
pass-through (Anthropic-protocol upstream) rewrites the `tool_use` ids in the upstream's
message body (`message_with_client_ids`) and in its `content_block_start` events
(`events_with_client_ids`), and decodes the history on the way up
(`history_with_upstream_ids`). Kimi's Anthropic endpoint numbers its calls per answer just
like its OpenAI one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Any

import orjson

__all__ = ["client_tool_id", "events_with_client_ids", "history_with_upstream_ids", "id_salt",
           "message_with_client_ids", "upstream_tool_id"]

_ENCODED = re.compile(r"^toolu_([0-9a-f]{12})_([A-Za-z0-9_-]+)$")


def id_salt(message_id: str) -> str:
    """12 hex digits derived from the gateway's message id (unique per answer)."""
    return hashlib.blake2s(message_id.encode(), digest_size=6).hexdigest()


def client_tool_id(upstream_id: str, salt: str) -> str:
    """The id the client sees for the upstream call `upstream_id` of one answer."""
    encoded = base64.urlsafe_b64encode(upstream_id.encode()).decode().rstrip("=")
    return f"toolu_{salt}_{encoded}"


def upstream_tool_id(client_id: str) -> str:
    """The upstream's own id inside a client id made by `client_tool_id`, else the id itself."""
    match = _ENCODED.match(client_id)
    if match is None:
        return client_id
    data = match.group(2)
    try:
        raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
        decoded = raw.decode()
    except (binascii.Error, ValueError):
        return client_id
    if not decoded or not decoded.isprintable():
        return client_id
    return decoded


def history_with_upstream_ids(messages: Any) -> list[Any] | None:
    """`messages` (Anthropic) with every `tool_use` id and `tool_result` `tool_use_id` made by
    `client_tool_id` turned back into the upstream's own id; None when nothing changes (the
    common case of a history without such ids costs one pass and no copy)."""
    if not isinstance(messages, list):
        return None
    out: list[Any] | None = None
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        blocks: list[Any] | None = None
        for j, block in enumerate(content):
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            key = "id" if kind == "tool_use" else "tool_use_id" if kind == "tool_result" \
                else None
            value = block.get(key) if key else None
            if not isinstance(value, str) or not value.startswith("toolu_"):
                continue
            original = upstream_tool_id(value)
            if original == value:
                continue
            if blocks is None:
                blocks = list(content)
            blocks[j] = {**block, key: original}
        if blocks is not None:
            if out is None:
                out = list(messages)
            out[i] = {**message, "content": blocks}
    return out


def message_with_client_ids(raw: bytes, salt: str) -> bytes:
    """A non-stream Anthropic message body with its `tool_use` ids made unique for the
    client; `raw` itself when it has no tool call (or is not a JSON message)."""
    if b'"tool_use"' not in raw:
        return raw
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw
    content = data.get("content") if isinstance(data, dict) else None
    if not isinstance(content, list):
        return raw
    changed = False
    for block in content:
        if isinstance(block, dict) and block.get("type") == "tool_use" \
                and isinstance(block.get("id"), str):
            block["id"] = client_tool_id(block["id"], salt)
            changed = True
    return orjson.dumps(data) if changed else raw


def events_with_client_ids(block: bytes, salt: str) -> bytes:
    """Whole SSE events of an Anthropic stream with the id of each `tool_use`
    `content_block_start` made unique for the client. Blocks without a tool call, nearly all
    of a stream, cost one substring scan; the other events pass byte for byte."""
    if b'"tool_use"' not in block:
        return block
    lines = block.split(b"\n")
    for n, line in enumerate(lines):
        if not line.startswith(b"data:") or b'"tool_use"' not in line \
                or b"content_block_start" not in line:
            continue
        end = b"\r" if line.endswith(b"\r") else b""
        try:
            data = orjson.loads(line[5:len(line) - len(end)])
        except orjson.JSONDecodeError:
            continue
        started = data.get("content_block") if isinstance(data, dict) else None
        if isinstance(started, dict) and started.get("type") == "tool_use" \
                and isinstance(started.get("id"), str):
            started["id"] = client_tool_id(started["id"], salt)
            lines[n] = b"data: " + orjson.dumps(data) + end
    return b"\n".join(lines)
