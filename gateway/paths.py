"""Every route path the gateway itself serves, spelled once, and the path classes built on it.

The web site's own pages are listed in `web/routes.py`; the paths here are the ones several
modules must agree on (the router, the error middleware, the site's session middleware).
"""

from __future__ import annotations

MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"
MODELS = "/v1/models"
CHAT_COMPLETIONS = "/v1/chat/completions"
RESPONSES = "/v1/responses"
OPENAI_PATHS = frozenset({CHAT_COMPLETIONS, RESPONSES})  # OpenAI-shaped errors
HEALTH = "/health"
HEALTH_READY = "/health/ready"  # readiness for a balancer: 503 while draining
METRICS = "/metrics"
REMOTE_WS = "/remote-ws"
GOOGLE_CALLBACK = "/login/google/callback"

# The hot path: no session cookie is read or written and no CSRF check runs there.
HOT_PREFIXES = ("/v1/",)
HOT_PATHS = (HEALTH, HEALTH_READY, METRICS)
# Errors on these paths are JSON; everything else gets the site's HTML error page.
API_PREFIXES = ("/v1/", "/api/")
API_PATHS = (HEALTH, HEALTH_READY, METRICS, REMOTE_WS)


def is_hot_path(path: str) -> bool:
    return path.startswith(HOT_PREFIXES) or path in HOT_PATHS


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES) or path in API_PATHS
