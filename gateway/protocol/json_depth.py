"""How deep a parsed JSON request may nest, checked in C rather than by walking it.

orjson reads up to 1,024 levels but writes at most 254, and every provider re-serialises
the client's body (Anthropic pass-through, OpenAI conversion), so a body 300 levels deep
used to parse, then fail inside a provider with a 500. `MAX_JSON_DEPTH` leaves room for the
levels a conversion adds (an Anthropic `input_schema` becomes OpenAI's
`tools[].function.parameters`, one level deeper) and is far above any real tool schema.

The check costs one `orjson.dumps` of the body wrapped in enough lists that orjson's own
limit falls exactly at `MAX_JSON_DEPTH` (about 0.1 ms for a 300 kB Claude Code body, a
fifth of parsing it); a Python walk of the same body costs five times that. Bodies with
fewer brackets than the limit cannot be that deep and skip it.
"""

from __future__ import annotations

from typing import Any

import orjson

MAX_JSON_DEPTH = 128
"""Levels of objects and arrays a request body may nest, the body itself being level 1."""

_ORJSON_WRITE_LIMIT = 254  # orjson.dumps raises "Recursion limit reached" past this


def too_deep(raw: bytes, parsed: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when `parsed` (the JSON value read from `raw`) nests deeper than `limit`."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    probe: Any = parsed
    for _ in range(_ORJSON_WRITE_LIMIT - limit):
        probe = [probe]
    try:
        orjson.dumps(probe)
    except orjson.JSONEncodeError as exc:
        # Anything else orjson refuses (an integer above 64 bits) is not a depth problem:
        # the providers write those bodies with the same orjson and refuse the same way.
        return "Recursion" in str(exc)
    return False


def depth_message(limit: int = MAX_JSON_DEPTH) -> str:
    return (f"request body nests JSON objects or arrays more than {limit} levels deep; "
            f"flatten the deepest value (tool schema, metadata, tool input)")
