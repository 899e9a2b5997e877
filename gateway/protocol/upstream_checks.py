"""What a complete (non-stream) upstream answer must look like before a client sees it.

An upstream that answers HTTP 200 with `[1, 2]`, `"ok"`, `null` or a message whose `usage`
is a list is broken, and passing its bytes on with 200 hands the breakage to the client's
SDK (and to billing). These checks are deliberately loose about what vendors really vary in
(extra fields, a missing `type`, `usage: null`) and strict about what the gateway and every
client rely on: a JSON object, a content or choices list, and usage (when given) as an
object. A failed check becomes a 502 that failover may retry elsewhere.
"""

from __future__ import annotations

from typing import Any


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _usage_problem(body: dict[str, Any]) -> str | None:
    usage = body.get("usage")
    if usage is not None and not isinstance(usage, dict):
        return f"its usage is {_kind(usage)}, not an object"
    return None


def anthropic_message_problem(body: Any) -> str | None:
    """None for a usable Anthropic `message` body, else what is wrong with it."""
    if not isinstance(body, dict):
        return f"the answer is {_kind(body)}, not a JSON object"
    if not isinstance(body.get("content"), list):
        return f"its content is {_kind(body.get('content'))}, not a list"
    return _usage_problem(body)


def chat_completion_problem(body: Any) -> str | None:
    """None for a usable `chat.completion` body, else what is wrong with it (an `error`
    object in a 200 is the caller's to recognise first)."""
    if not isinstance(body, dict):
        return f"the answer is {_kind(body)}, not a JSON object"
    if not isinstance(body.get("choices"), list):
        return f"its choices are {_kind(body.get('choices'))}, not a list"
    return _usage_problem(body)


def token_count(value: Any) -> int:
    """A reported token count: a non-negative integer, else 0 (strings, floats, lists and
    booleans are not counts; the accounting clamps the size later)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return value
