"""The access-log line and metrics sample of a relay request that never reached `relay`.

`relay` (gateway/api/messages.py) accounts for every request it takes through `Trip`. A
request refused before that (bad body 400, no key 401, suspended 403, too large 413,
compressed 415, over a limit 429) or answered without a provider (the remote-control
trigger) is written here instead, by the error middleware, so every request on
/v1/messages, /v1/chat/completions and /v1/responses leaves exactly one line and one
sample. These requests have no usage row: no provider was asked (docs/limits.md).
"""

from __future__ import annotations

import time

from aiohttp import web

from gateway import paths
from gateway.access_log import ACCESS_LOG
from gateway.accounting.keycache import KEY_CACHE, KeyInfo, api_key_from
from gateway.forwarding import client_address
from gateway.ids import REQUEST_ID
from gateway.metrics import METRICS

INGRESS_OF = {paths.MESSAGES: "anthropic", paths.CHAT_COMPLETIONS: "chat",
              paths.RESPONSES: "responses"}

CLIENT_KEY = web.RequestKey("client_key", KeyInfo)
"""The authenticated key, once known (for the log line of a later refusal)."""
RELAYED = web.RequestKey("relayed", bool)
"""Set by `relay`: its `Trip` writes the line and the sample."""


async def authenticated(request: web.Request) -> KeyInfo:
    """The request's key (401/403 otherwise), remembered for a refusal's log line."""
    key = await request.app[KEY_CACHE].authenticate(api_key_from(request))
    request[CLIENT_KEY] = key
    return key


def record_unrelayed(request: web.Request, started: float, http_status: int,
                     error_type: str | None) -> None:
    """One access-log line and one metrics sample, unless `relay` already wrote them."""
    ingress = INGRESS_OF.get(request.path)
    if ingress is None or request.get(RELAYED):
        return
    duration_ms = (time.perf_counter() - started) * 1000
    status = "refused" if http_status >= 400 else "local"
    metrics = request.app[METRICS]
    metrics.requests.inc((status, "none", "none"))
    if http_status >= 400:
        metrics.refused.inc((ingress, str(http_status)))
    metrics.duration.observe(duration_ms, ("none",))
    access_log = request.app[ACCESS_LOG]
    if access_log is None:
        return
    key = request.get(CLIENT_KEY)
    access_log.write({
        "ts": round(time.time(), 3), "request_id": request.get(REQUEST_ID),
        "user_id": key.user_id if key else None, "key": key.prefix if key else None,
        "client": client_address(request), "ingress": ingress, "model": None,
        "provider": None, "upstream_model": None,
        "status": status, "http_status": http_status, "error_type": error_type,
        "stream": None, "attempts": 0, "input_tokens": 0, "output_tokens": 0,
        "cache_read_tokens": 0, "ttft_ms": None, "duration_ms": round(duration_ms, 2),
    })
