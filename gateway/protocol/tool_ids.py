"""Client-visible tool-call ids that are unique per answer and still lead back upstream.

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
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

__all__ = ["client_tool_id", "id_salt", "upstream_tool_id"]

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
