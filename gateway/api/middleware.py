"""Request ids on every response and Anthropic-shaped errors for everything that fails."""

from __future__ import annotations

import asyncio
import html
import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import paths
from gateway.api.unrelayed import record_unrelayed
from gateway.errors import ERROR_PAGE, ApiError, error_body, should_retry
from gateway.ids import REQUEST_ID, new_id
from gateway.paths import is_api_path
from gateway.protocol.openai_errors import openai_error_body, openai_error_headers

log = logging.getLogger("llmapi.http")


def wants_openai_shape(request: web.Request) -> bool:
    """OpenAI-shaped errors on the OpenAI routes, and on /v1/models for OpenAI clients
    (those that send no `anthropic-version` header, see gateway/api/endpoints.py
    `handle_models`)."""
    path = request.path
    if path in paths.OPENAI_PATHS:
        return True
    return path == paths.MODELS and "anthropic-version" not in request.headers \
        and "x-api-key" not in request.headers


def _json_error(status: int, error_type: str, message: str, request_id: str,
                headers: dict[str, str] | None = None, openai: bool = False,
                param: str | None = None, limit: str | None = None) -> web.Response:
    body = error_body(error_type, message)
    headers = dict(headers or {})
    if openai:
        status, body = openai_error_body(error_type, status, message, param, limit)
        headers = openai_error_headers(headers, limit, time.time())
    if not should_retry(status):  # also 404/405/413 raised by aiohttp, not as ApiError
        headers.setdefault("x-should-retry", "false")
    response = web.Response(status=status, body=body,
                            content_type="application/json", headers=headers)
    response.headers["request-id"] = request_id
    if not should_retry(status):  # 413, 405, 404 ...: the SDKs must not retry them
        response.headers.setdefault("x-should-retry", "false")
    return response


# Non-API paths (the web site) get an HTML error page instead of JSON (gateway/paths.py).


async def _error(request: web.Request, status: int, error_type: str, message: str,
                 request_id: str, headers: dict[str, str] | None = None,
                 param: str | None = None, limit: str | None = None) -> web.Response:
    """The JSON error for API paths, a friendly HTML page for everything else."""
    if is_api_path(request.path):
        return _json_error(status, error_type, message, request_id, headers,
                           wants_openai_shape(request), param, limit)
    render = request.app.get(ERROR_PAGE)
    response: web.Response | None = None
    if render is not None:
        try:
            response = await render(request, status, message)
        except Exception:  # the error page itself failed: fall back to the plain one
            log.exception("error page failed for %s (request %s)", request.path, request_id)
    if response is None:
        body = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>Error {status}</title></head><body><h1>Error {status}</h1>"
                f"<p>{html.escape(message)}</p><p><a href=\"/\">Home</a></p></body></html>")
        response = web.Response(status=status, text=body, content_type="text/html")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    response.headers["request-id"] = request_id
    return response


def refuse_encoded_body(request: web.Request) -> None:
    """415 for any request body with a Content-Encoding (RFC 9110 section 15.5.16).

    No client of the gateway compresses its requests, and inflating one is how 1 MB of
    gzip becomes 1 GiB in memory while the loop stalls; aiohttp's own inflation is off
    (`auto_decompress=False` in app.py), so the body is never inflated, only refused."""
    encoding = request.headers.get("Content-Encoding")
    if encoding is None or encoding.strip().lower() in ("", "identity"):
        return
    raise ApiError("invalid_request_error",
                   f"Content-Encoding {encoding.strip()[:40]!r} is not accepted: send the "
                   "request body uncompressed", status=415,
                   headers={"Accept-Encoding": "identity"})


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request id for everything; every failure answered in the route's shape; and the
    log line and sample of relay requests that never reached `relay` (api/unrelayed.py)."""
    started = time.perf_counter()
    request[REQUEST_ID] = new_id("req")
    try:
        response, error_type = await _answer(request, handler)
    except asyncio.CancelledError:  # the client hung up before an answer
        record_unrelayed(request, started, 499, "client_disconnect")
        raise
    record_unrelayed(request, started, response.status, error_type)
    return response


async def _answer(request: web.Request,
                  handler: Handler) -> tuple[web.StreamResponse, str | None]:
    """The handler's response, or the error response for what it raised, with its type."""
    request_id = request[REQUEST_ID]
    try:
        refuse_encoded_body(request)
        response = await handler(request)
    except ApiError as exc:
        return await _error(request, exc.status, exc.error_type, exc.message, request_id,
                            exc.headers, getattr(exc, "param", None), exc.limit), \
            exc.error_type
    except web.HTTPRequestEntityTooLarge:
        limit = request.app._client_max_size
        return await _error(request, 413, "request_too_large",
                            f"request body is larger than the limit of {limit} bytes",
                            request_id), "request_too_large"
    except web.RequestPayloadError as exc:  # a chunked or length framing that lied
        log.warning("malformed request body on %s (request %s): %s", request.path,
                    request_id, type(exc.__cause__ or exc).__name__)
        broken = await _error(request, 400, "invalid_request_error",
                              "malformed request body: its framing (chunked encoding or "
                              "Content-Length) is broken", request_id)
        # the rest of the stream cannot be framed: no next request can be read from it
        broken.force_close()
        return broken, "invalid_request_error"
    except web.HTTPNotFound:
        return await _error(request, 404, "not_found_error",
                            f"no route for {request.method} {request.path}", request_id), \
            "not_found_error"
    except web.HTTPMethodNotAllowed as exc:
        return await _error(request, 405, "invalid_request_error",
                            f"method {request.method} is not allowed on {request.path}; "
                            f"use {', '.join(sorted(exc.allowed_methods))}", request_id), \
            "invalid_request_error"
    except web.HTTPException as exc:
        if exc.status >= 400:
            error_type = "api_error" if exc.status >= 500 else "invalid_request_error"
            return await _error(request, exc.status, error_type, exc.reason, request_id), \
                error_type
        exc.headers["request-id"] = request_id
        raise
    except Exception:
        log.exception("unhandled error in %s %s (request %s)", request.method, request.path,
                      request_id)
        return await _error(request, 500, "api_error",
                            f"internal error; quote request id {request_id} to the operator",
                            request_id), "api_error"
    if not response.prepared:
        response.headers["request-id"] = request_id
    return response, None
