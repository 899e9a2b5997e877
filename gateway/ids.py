"""Unique ids for requests and messages, cheap enough for the hot path.

A random per-process prefix plus a counter: unique across processes and restarts without a
`getrandom` system call per request (these ids name things; they are not secrets).
"""

from __future__ import annotations

import itertools
import secrets

from aiohttp import web

_PREFIX = secrets.token_hex(6)
_counter = itertools.count(1)


def new_id(kind: str) -> str:
    """`req_…`, `msg_…`: 24 hex digits, like Anthropic's own ids."""
    return f"{kind}_{_PREFIX}{next(_counter):012x}"


REQUEST_ID = web.RequestKey("request_id", str)
"""The id of the request being served (set first thing by the error middleware)."""
