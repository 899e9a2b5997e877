"""Count failed logins per account and per IP address, and say when to refuse the next one.

A sliding window (`[web] login_window`, 15 minutes by default): once an address has
`login_failures_per_account` failures in the window, or an IP `login_failures_per_ip`,
further attempts are refused until the oldest failure leaves the window. Failures live in
SQLite, so a restart does not reset them. A successful login clears the account's count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.config import WebConfig
from gateway.store.base import Store


@dataclass(frozen=True, slots=True)
class LoginThrottle:
    db: Store
    per_account: int
    per_ip: int
    window: int

    @classmethod
    def from_config(cls, db: Store, config: WebConfig) -> LoginThrottle:
        return cls(db, config.login_failures_per_account, config.login_failures_per_ip,
                   config.login_window)

    async def retry_after(self, email: str, ip: str, now: float | None = None) -> int:
        """Seconds until a login for this account from this IP may be tried (0: now)."""
        now = time.time() if now is None else now
        since = now - self.window
        wait = 0.0
        for query, params, limit in (
            ("login_failures_by_email", {"email": email, "since": since}, self.per_account),
            ("login_failures_by_ip", {"ip": ip, "since": since}, self.per_ip),
        ):
            row = await self.db.fetch_one(query, params)
            if row is not None and row["failures"] >= limit:
                wait = max(wait, row["oldest"] + self.window - now)
        return max(0, int(wait + 0.999))

    async def record_failure(self, email: str, ip: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        async with self.db.transaction() as tx:
            await tx.insert("login_failure_insert", {"email": email, "ip": ip, "now": now})
            await tx.execute("login_failures_prune", {"before": now - max(self.window, 86400)})

    async def clear(self, email: str) -> None:
        await self.db.execute("login_failures_clear_email", {"email": email})
