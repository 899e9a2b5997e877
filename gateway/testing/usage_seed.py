"""Insert synthetic usage rows (demos, tests) until real traffic has filled `usage_logs`.

The rows have the same columns as the usage recorder's and are charged to the user's
subscription the same way, so the dashboard and the admin reports cannot tell them apart.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from gateway.store.base import Store


@dataclass(frozen=True, slots=True)
class SyntheticRequest:
    input_tokens: int
    output_tokens: int
    days_ago: float = 0.0
    provider: str = "demo"
    client_model: str = "claude-sonnet-4-5"
    upstream_model: str = "demo"
    cost: float = 0.0
    currency: str = "CNY"
    ttft_ms: float = 420.0
    tokens_per_second: float = 55.0
    status: str = "success"


async def insert_synthetic_usage(db: Store, user_id: int, key_id: int | None,
                                 requests: list[SyntheticRequest],
                                 now: float | None = None) -> None:
    """Write one usage row per request and add their tokens to the subscription."""
    now = time.time() if now is None else now
    async with db.transaction() as tx:
        for r in requests:
            ok = r.status == "success"
            await tx.insert("seed_usage_insert", {
                "request_id": "req_synthetic_" + secrets.token_hex(8), "user_id": user_id,
                "key_id": key_id, "client_model": r.client_model, "provider": r.provider,
                "upstream_model": r.upstream_model, "input_tokens": r.input_tokens,
                "output_tokens": r.output_tokens, "cost": r.cost, "currency": r.currency,
                "ttft_ms": r.ttft_ms if ok else None,
                "tokens_per_second": r.tokens_per_second if ok else None,
                "duration_ms": r.ttft_ms + 1000.0 * r.output_tokens / max(r.tokens_per_second, 1),
                "status": r.status, "error_type": None if ok else "api_error",
                "created_at": now - r.days_ago * 86400})
        await tx.execute("seed_subscription_charge", {
            "user_id": user_id, "tokens": sum(r.input_tokens + r.output_tokens for r in requests),
            "requests": len(requests)})
