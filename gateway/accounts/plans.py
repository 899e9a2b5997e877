"""Plans in the database follow the config: built-in plans plus `[[plans]]` overrides.

The server syncs them when it opens and so does every CLI command, so `users add --plan X`
works for a plan defined in the config before the server ever started.
"""

from __future__ import annotations

import time

from gateway.config import PlanConfig
from gateway.store.base import Store


async def sync_plans(db: Store, plans: tuple[PlanConfig, ...]) -> None:
    """Make the plans table match the config."""
    now = time.time()
    async with db.transaction() as tx:
        for order, plan in enumerate(plans):
            await tx.execute("plan_upsert", {
                "name": plan.name, "price_month": format_price(plan.price_month),
                "monthly_tokens": plan.monthly_tokens, "rpm": plan.rpm, "rpd": plan.rpd,
                "max_keys": plan.max_keys, "max_input_tokens": plan.max_input_tokens,
                "concurrency": plan.concurrency,
                "sort_order": order, "now": now,
            })


def format_price(value: float) -> str:
    """Money as a decimal string: 9 -> "9", 9.9 -> "9.90"."""
    return str(int(value)) if value == int(value) else f"{value:.2f}"
