"""OpenAI-shaped errors for the OpenAI ingress routes (`/v1/chat/completions`, `/v1/responses`).

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


def openai_error_fields(error_type: str, status: int) -> tuple[int, str, str | None]:
    """(status, OpenAI type, code) for an Anthropic-typed error raised with `status`."""
    mapped = _MAP.get(error_type)
    if mapped is None:
        return status, "server_error" if status >= 500 else "invalid_request_error", None
    new_status, kind, code = mapped
    if error_type == "invalid_request_error" and status not in (400, 422):
        new_status = status  # 405 method, 415 media type, ...: the status says it better
    return new_status, kind, code


def openai_error_body(error_type: str, status: int, message: str,
                      param: str | None = None) -> tuple[int, bytes]:
    """(status, body) of the OpenAI error for an Anthropic-typed error."""
    new_status, kind, code = openai_error_fields(error_type, status)
    if error_type == "not_found_error" and not message.startswith("model"):
        code = None  # a missing route, not a missing model
    return new_status, orjson.dumps(
        {"error": {"message": message, "type": kind, "param": param, "code": code}})


def stream_error_payload(error_type: str, message: str) -> dict[str, Any]:
    """The `error` object a Chat Completions stream ends with after its first byte (the
    OpenAI SDKs raise APIError on a `data:` payload with an `error` key)."""
    _, kind, code = openai_error_fields(error_type, 500)
    return {"message": message, "type": kind, "param": None, "code": code}
