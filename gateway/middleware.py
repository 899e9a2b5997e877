"""Request ids on every response and Anthropic-shaped errors for everything that fails."""

from __future__ import annotations

import logging
import secrets

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.errors import ApiError, error_body
from gateway.state import REQUEST_ID

log = logging.getLogger("llmapi.http")


def _json_error(status: int, error_type: str, message: str, request_id: str,
                headers: dict[str, str] | None = None) -> web.Response:
    response = web.Response(status=status, body=error_body(error_type, message),
                            content_type="application/json", headers=headers)
    response.headers["request-id"] = request_id
    return response


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = "req_" + secrets.token_hex(12)
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except ApiError as exc:
        return _json_error(exc.status, exc.error_type, exc.message, request_id, exc.headers)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app._client_max_size
        return _json_error(413, "request_too_large",
                           f"request body is larger than the limit of {limit} bytes",
                           request_id)
    except web.HTTPNotFound:
        return _json_error(404, "not_found_error",
                           f"no route for {request.method} {request.path}", request_id)
    except web.HTTPMethodNotAllowed as exc:
        return _json_error(405, "invalid_request_error",
                           f"method {request.method} is not allowed on {request.path}; "
                           f"use {', '.join(sorted(exc.allowed_methods))}", request_id)
    except web.HTTPException as exc:
        if exc.status >= 400:
            error_type = "api_error" if exc.status >= 500 else "invalid_request_error"
            return _json_error(exc.status, error_type, exc.reason, request_id)
        exc.headers["request-id"] = request_id
        raise
    except Exception:
        log.exception("unhandled error in %s %s (request %s)", request.method, request.path,
                      request_id)
        return _json_error(500, "api_error",
                           f"internal error; quote request id {request_id} to the operator",
                           request_id)
    if not response.prepared:
        response.headers["request-id"] = request_id
    return response
