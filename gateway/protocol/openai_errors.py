"""OpenAI-shaped errors for the OpenAI ingress routes (`/v1/chat/completions`, `/v1/responses`).

The rules: docs/protocol.md §14.

The gateway raises errors in Anthropic terms (`gateway.errors.ApiError`: an Anthropic error
type and a status). On the OpenAI routes they are sent as OpenAI's error object,
`{"error": {"message", "type", "param", "code"}}`, with the status OpenAI itself uses, so
the official SDKs raise the matching exception class (they choose it by status:
400 BadRequestError, 401 AuthenticationError, 403 PermissionDeniedError, 404 NotFoundError,
429 RateLimitError, >=500 InternalServerError) and retry what OpenAI's own API would have
them retry (408, 409, 429 and 5xx).

Mapping (Anthropic type -> OpenAI status, type, code), following OpenAI's error-code guide
(platform.openai.com/docs/guides/error-codes): a refused key is 401 `invalid_request_error`
with code `invalid_api_key`; a rate limit is 429 `requests`/`rate_limit_exceeded`; an
exhausted plan is 429 `insufficient_quota` (OpenAI has no 402); an overloaded or unreachable
upstream is 503 `server_error` (OpenAI's "engine is currently overloaded"; 529 is not an
OpenAI status and some clients do not retry it).
"""

from __future__ import annotations

import calendar
import math
import time
from collections.abc import Mapping
from typing import Any

import orjson

# Anthropic error type -> (OpenAI status, OpenAI type, OpenAI code)
_MAP: dict[str, tuple[int, str, str | None]] = {
    "invalid_request_error": (400, "invalid_request_error", None),
    "authentication_error": (401, "invalid_request_error", "invalid_api_key"),
    "billing_error": (429, "insufficient_quota", "insufficient_quota"),
    "permission_error": (403, "permission_error", None),
    "not_found_error": (404, "invalid_request_error", "model_not_found"),
    "request_too_large": (413, "invalid_request_error", "request_too_large"),
    "rate_limit_error": (429, "requests", "rate_limit_exceeded"),
    "api_error": (500, "server_error", None),
    "timeout_error": (504, "server_error", "timeout"),
    "overloaded_error": (503, "server_error", "overloaded"),
}


# `ApiError.limit` of a plan refusal (gateway/accounting/limits.py LIMIT_*) -> (type, code):
# OpenAI answers an exhausted quota 429 `insufficient_quota` ("You exceeded your current
# quota", platform.openai.com/docs/guides/error-codes) and a rate limit 429 with type
# `requests` or `tokens` and code `rate_limit_exceeded`.
_LIMITS: dict[str, tuple[str, str]] = {
    "monthly_tokens": ("insufficient_quota", "insufficient_quota"),
    "monthly_tokens_held": ("tokens", "rate_limit_exceeded"),
    "rpm": ("requests", "rate_limit_exceeded"),
    "rpd": ("requests", "rate_limit_exceeded"),
    "concurrency": ("requests", "rate_limit_exceeded"),
}
# The longest `retry-after` the official SDKs wait for (openai-python and openai-node:
# MAX_RETRY_AFTER_DELAY, 2 minutes; beyond it they give up). A refusal that resets later
# cannot be fixed by a retry, so it says `x-should-retry: false` to every client.
MAX_CLIENT_RETRY_AFTER = 120


def openai_error_fields(error_type: str, status: int,
                        limit: str | None = None) -> tuple[int, str, str | None]:
    """(status, OpenAI type, code) for an Anthropic-typed error raised with `status`."""
    if limit is not None and limit in _LIMITS:
        return 429, *_LIMITS[limit]
    mapped = _MAP.get(error_type)
    if mapped is None:
        return status, "server_error" if status >= 500 else "invalid_request_error", None
    new_status, kind, code = mapped
    if error_type == "invalid_request_error" and status not in (400, 422):
        new_status = status  # 405 method, 415 media type, ...: the status says it better
    elif error_type == "api_error" and status > 500:
        new_status = status  # 502/504: an upstream refused our key, broke or went silent
    return new_status, kind, code


def openai_error_body(error_type: str, status: int, message: str,
                      param: str | None = None, limit: str | None = None) -> tuple[int, bytes]:
    """(status, body) of the OpenAI error for an Anthropic-typed error."""
    new_status, kind, code = openai_error_fields(error_type, status, limit)
    if error_type == "not_found_error" and not message.startswith("model"):
        code = None  # a missing route, not a missing model
    return new_status, orjson.dumps(
        {"error": {"message": message, "type": kind, "param": param, "code": code}})


def stream_error_payload(error_type: str, message: str) -> dict[str, Any]:
    """The `error` object a Chat Completions stream ends with after its first byte (the
    OpenAI SDKs raise APIError on a `data:` payload with an `error` key)."""
    _, kind, code = openai_error_fields(error_type, 500)
    return {"message": message, "type": kind, "param": None, "code": code}


def openai_error_headers(headers: Mapping[str, str], limit: str | None,
                         now: float) -> dict[str, str]:
    """The headers of an OpenAI-route error: the gateway's own plus OpenAI's rate-limit
    names, and `x-should-retry: false` when no retry the SDKs would make can succeed (the
    quota is used up, or the limit resets later than they wait)."""
    out = {**headers, **openai_rate_headers(headers, now)}
    retry = out.get("retry-after", "")
    if limit == "monthly_tokens" or (retry.isdigit() and int(retry) > MAX_CLIENT_RETRY_AFTER):
        out["x-should-retry"] = "false"
    return out


# (OpenAI header suffix, the gateway's limit / remaining / reset headers)
_RATE_SOURCES = (
    ("requests", ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")),
    ("tokens", ("anthropic-ratelimit-tokens-limit", "anthropic-ratelimit-tokens-remaining",
                "anthropic-ratelimit-tokens-reset")),
)


def openai_rate_headers(headers: Mapping[str, str], now: float) -> dict[str, str]:
    """OpenAI's rate-limit headers from the gateway's (gateway/accounting/limits.py):
    `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, the reset as a duration such
    as `1s`, `6m0s` or `12ms` (platform.openai.com/docs/guides/rate-limits, "Rate limits in
    headers"). Requests are the plan's per-minute limit, tokens its monthly quota; a limit
    the plan does not have is left out (OpenAI's values are integers, never "unlimited")."""
    out: dict[str, str] = {}
    for suffix, (limit_name, remaining_name, reset_name) in _RATE_SOURCES:
        limit = headers.get(limit_name, "")
        if not limit.isdigit():
            continue
        out["x-ratelimit-limit-" + suffix] = limit
        out["x-ratelimit-remaining-" + suffix] = headers.get(remaining_name, "0")
        reset = _epoch(headers.get(reset_name, ""))
        if reset is not None:
            out["x-ratelimit-reset-" + suffix] = go_duration(reset - now)
    return out


def go_duration(seconds: float) -> str:
    """A duration the way OpenAI writes its resets (Go's time.Duration: `12ms`, `1s`,
    `6m0s`, `719h59m59s`)."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, int(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


_epoch_memo: dict[str, float] = {}


def _epoch(text: str) -> float | None:
    """Seconds since the epoch of the gateway's `2026-12-02T01:02:03Z` (memoized: the
    same few seconds come back on every request)."""
    value = _epoch_memo.get(text)
    if value is None:
        try:
            value = float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))
        except ValueError:
            return None
        if len(_epoch_memo) > 1024:
            _epoch_memo.clear()
        _epoch_memo[text] = value
    return value
