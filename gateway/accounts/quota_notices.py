"""E-mail a user once per period when they reach 80 % and 100 % of their monthly tokens.

The hot path never waits for this: usage is counted in memory and written behind by the
usage recorder (gateway/accounting/usage.py), and this watcher reads the written counters
(`subscriptions.tokens_used`) every `CHECK_INTERVAL` seconds. Each warning is *claimed*
first with one INSERT into `quota_notices`, whose primary key (user, period, threshold)
lets exactly one claim win however many watchers race for it — two tasks, two processes,
two instances on one PostgreSQL — and the row outlives a restart, so a warning is never
sent twice. The mail goes out only after the claim: a crash between the two loses that
one warning (at most once, never twice), which is the right way round for a nag.

A user who goes from below 80 % to 100 % within one check gets the 100 % mail only. The
mail is written in the language the user last read the site in (`users.language`, kept
by web/site.py), else the site's default language, and goes through the site's `Mailer`
(SMTP, or the outbox the admin page shows).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

from gateway.accounts.mail import Mailer
from gateway.store.base import Store

log = logging.getLogger("llmapi.quota")

THRESHOLDS = (80, 100)
CHECK_INTERVAL = 2.0   # seconds between two looks at the written counters
BATCH = 200            # warnings claimed per look at most (the rest wait for the next)
TEMPLATE = "quota_warning"


class QuotaNotices:
    """Finds users past a threshold, claims each warning once, and mails it."""

    def __init__(self, db: Store, mailer: Mailer, site_url: str, default_language: str,
                 in_language: Callable[[str], AbstractContextManager[None]],
                 interval: float = CHECK_INTERVAL) -> None:
        self.db = db
        self.mailer = mailer
        self.site_url = site_url
        self.default_language = default_language
        self.in_language = in_language
        self.interval = interval
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Look now instead of at the next interval (tests, and after a bulk change)."""
        self._wake.set()

    async def check(self, now: float | None = None) -> int:
        """One look: claim and send every warning that is due; returns how many were sent
        by this call (a warning another watcher claimed first is not counted)."""
        now = time.time() if now is None else now
        due = await self.db.fetch_all("quota_due", {"now": now, "limit": BATCH})
        sent = 0
        for row in due:
            if await self._claim(row, now):
                await self._send(row)
                sent += 1
        return sent

    async def _claim(self, row: Any, now: float) -> bool:
        claimed = await self.db.execute("quota_notice_claim", {
            "user_id": row["user_id"], "period_start": row["period_start"],
            "threshold": row["threshold"], "tokens_used": row["tokens_used"], "now": now})
        return claimed == 1

    async def _send(self, row: Any) -> None:
        language = row["language"] or self.default_language
        threshold = int(row["threshold"])
        with self.in_language(language):
            mail = self.mailer.render(
                TEMPLATE, row["email"], threshold=threshold, plan=row["plan"],
                used=f"{int(row['tokens_used']):,}", total=f"{int(row['monthly_tokens']):,}",
                resets=datetime.fromtimestamp(row["period_end"], UTC).strftime(
                    "%Y-%m-%d %H:%M UTC"),
                site_url=self.site_url)
        mail_id = await self.mailer.send(mail)
        await self.db.execute("quota_notice_sent", {
            "mail_id": mail_id, "user_id": row["user_id"],
            "period_start": row["period_start"], "threshold": threshold})
        log.info("quota warning %d%% for user %d (mail #%d)", threshold, row["user_id"],
                 mail_id)

    async def run(self) -> None:
        """Check every `interval` seconds (or when woken) until cancelled. A failed look
        (database away, SMTP refusing) is logged and retried at the next one: it must not
        end the loop, and the warnings it did not claim are still due."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("quota warnings: this check failed; retrying in %.0f s",
                              self.interval)
