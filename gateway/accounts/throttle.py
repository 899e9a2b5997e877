"""Login throttling: every password check is claimed in the database before it is made.

The rule (window `[web] login_window`, 15 minutes by default), counted over the rows of
`login_failures`, each one a password check that was claimed and did not succeed:

- per address and client (`login_failures_per_account`, 5): that client gets no more
  checks of that account until the oldest leaves the window. This is the limit a single
  guesser meets.
- per client (`login_failures_per_ip`, 30): one address probing many accounts is refused.
- per account, from anywhere: beyond `login_failures_per_account` failures the account is
  never locked, it is slowed down. Each further check must wait `ACCOUNT_DELAY_STEP`
  seconds more than the previous one after the latest failure, up to `ACCOUNT_DELAY_MAX`.
  A crowd of guessers (many addresses) gets about one guess a minute per account, and
  the owner signing in from their own address waits at most that long, even under attack.

Why claim first: the check costs an scrypt hash (~50 ms), so counting failures after it
let 200 guesses sent at once all be checked against a limit of 5. `claim` is one
`INSERT ... SELECT ... WHERE <every limit holds>` inside a write transaction (SQLite's
single writer; PostgreSQL's advisory write lock across instances), so the count and the
claim cannot be split by another request. A successful login deletes its claim.

The client is the address `web.responses.client_ip` reports: the peer, or behind a trusted
reverse proxy the address it forwarded (`[server] trusted_proxies`, gateway/forwarding.py).
Failures live in the database, so a restart does not reset them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.config import WebConfig
from gateway.store.base import Store

ACCOUNT_DELAY_STEP = 2   # seconds added per failure beyond the per-account figure
ACCOUNT_DELAY_MAX = 60   # the longest an account is ever slowed down between checks


@dataclass(frozen=True, slots=True)
class Claim:
    """A password check that may go ahead (`attempt` is its row), or `retry_after`
    seconds to wait when a limit holds it back."""

    attempt: int = 0
    retry_after: int = 0


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

    def _params(self, email: str, ip: str, now: float) -> dict[str, object]:
        return {"email": email, "ip": ip, "now": now, "since": now - self.window,
                "window": self.window,
                "per_pair": self.per_account, "per_ip": self.per_ip,
                "per_account": self.per_account, "step": ACCOUNT_DELAY_STEP,
                "max_delay": ACCOUNT_DELAY_MAX}

    async def claim(self, email: str, ip: str, now: float | None = None) -> Claim:
        """Claim one password check for `email` from `ip`, counted as a failure until
        `succeeded` says otherwise; or say how long to wait."""
        now = time.time() if now is None else now
        params = self._params(email, ip, now)
        async with self.db.transaction() as tx:
            row = await tx.fetch_one("login_attempt_claim", params)
            if row is not None:
                await tx.execute("login_failures_prune",
                                 {"before": now - max(self.window, 86400)})
                return Claim(attempt=int(row["id"]))
        # refused: at least a second even if the limit freed up since (the next try claims)
        return Claim(retry_after=max(1, await self.retry_after(email, ip, now)))

    async def retry_after(self, email: str, ip: str, now: float | None = None) -> int:
        """Seconds until a check of this account from this client may be claimed (0: now).
        Read without the write lock: it only words the refusal."""
        now = time.time() if now is None else now
        row = await self.db.fetch_one("login_attempt_wait", self._params(email, ip, now))
        wait = float(row["wait"] or 0) if row is not None else 0.0
        return max(1, int(wait + 0.999)) if wait > 0 else 0

    async def succeeded(self, claim: Claim, email: str, ip: str) -> None:
        """The password was right: the claim and this client's failures on the account go;
        failures from other addresses stay counted."""
        await self.db.execute("login_attempt_succeeded",
                              {"id": claim.attempt, "email": email, "ip": ip})
