"""Anthropic-shaped errors: one exception type, one body encoder, one status table."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

# Anthropic error type -> HTTP status (docs/protocol.md §2).
STATUS_OF: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


# Statuses a retry of the same request can fix: the Anthropic SDKs (and so Claude Code)
# retry 408, 409, 429 and 5xx by default. Every other error gets `x-should-retry: false`,
# which the SDKs obey: a wrong key then fails at once instead of after minutes of retries.
RETRYABLE_STATUSES = frozenset({408, 409, 429})


def should_retry(status: int) -> bool:
    return status in RETRYABLE_STATUSES or status >= 500


class ApiError(Exception):
    """An error to send to the client as `{"type":"error","error":{...}}` with its status.

    `headers` always says `x-should-retry: false` for an error a retry cannot fix (any 4xx
    but 408/409/429); a 5xx that is just as final (refused upstream credentials) passes it
    explicitly."""

    def __init__(self, error_type: str, message: str, status: int | None = None,
                 headers: dict[str, str] | None = None, limit: str | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        # which plan limit refused (LIMIT_* in gateway/accounting/limits.py), for ingresses
        # whose protocol tells them apart (OpenAI: `insufficient_quota` vs rate limits)
        self.limit = limit
        self.status = status if status is not None else STATUS_OF.get(error_type, 500)
        self.headers = headers or {}
        if not should_retry(self.status):
            self.headers.setdefault("x-should-retry", "false")

    def body(self) -> bytes:
        return error_body(self.error_type, self.message)


def error_body(error_type: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": error_type, "message": message}})


def invalid_request(message: str) -> ApiError:
    return ApiError("invalid_request_error", message)


ErrorPage = Callable[[web.Request, int, str], Awaitable[web.Response]]
ERROR_PAGE: web.AppKey[ErrorPage] = web.AppKey("error_page")
"""Renders the site's HTML error page (set by the site; a plain page is used without it)."""
