"""Send the site's e-mail by SMTP, or keep it in the outbox table and the log.

Without `[mail] smtp_host` every message is stored in `mail_outbox` with status `outbox`
and written to the server log, so sign-up works on a fresh machine and the operator reads
the codes on the admin page. With SMTP, a delivered message keeps only its envelope (the
body, which may hold a code, is dropped); a failed one keeps its body and the error.

Each message is one template in `templates/emails/` with a `subject` and a `body` block,
rendered as plain text (no HTML escaping: nothing here is shown in a browser as HTML).

A message that carries a code is sent with `expires_at`, the moment the code stops
working. From then on the outbox must not show it: `purge_expired` empties its body and
masks the digits in its subject (the envelope stays for the record). It runs before every
outbox read and every send, and once a minute in the site's sweeper (web/site.py), so
a code is readable in the database no longer than it is valid (plus that minute at most).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import aiosmtplib
import jinja2

from gateway.config import MailConfig
from gateway.store.base import Store

log = logging.getLogger("llmapi.mail")


@dataclass(frozen=True, slots=True)
class Mail:
    to: str
    subject: str
    text: str


class Mailer:
    """Renders `templates/emails/NAME.txt` and delivers or stores the result."""

    def __init__(self, config: MailConfig, db: Store, templates_dir: Path,
                 gettext: Callable[[str], str] | None = None,
                 ngettext: Callable[[str, str, int], str] | None = None) -> None:
        self.config = config
        self.db = db
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(templates_dir / "emails"), autoescape=False,
            undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
            extensions=["jinja2.ext.i18n"])
        self._env.policies["ext.i18n.trimmed"] = True
        # The site passes its catalogue lookups (the language of the request being handled,
        # or of the recipient); without them the messages stay in English.
        if gettext is not None and ngettext is not None:
            self._env.install_gettext_callables(  # type: ignore[attr-defined]
                gettext, ngettext, newstyle=True)
        else:
            self._env.install_null_translations(newstyle=True)  # type: ignore[attr-defined]

    def render(self, template: str, to: str, **context: Any) -> Mail:
        tmpl = self._env.get_template(f"{template}.txt")
        ctx = tmpl.new_context({**context, "to": to})
        subject = " ".join("".join(tmpl.blocks["subject"](ctx)).split())
        body = "".join(tmpl.blocks["body"](ctx)).strip() + "\n"
        return Mail(to=to, subject=subject, text=body)

    async def send_template(self, template: str, to: str, *, expires_at: float | None = None,
                            **context: Any) -> int:
        """Render and send; returns the outbox row id. `expires_at`: the message holds a
        code valid until then, and leaves the outbox at that moment."""
        return await self.send(self.render(template, to, **context), expires_at)

    async def send(self, mail: Mail, expires_at: float | None = None) -> int:
        now = time.time()
        await purge_expired(self.db, now)
        if not self.config.smtp_host:
            row_id = await self._store(mail, "outbox", None, None, now, expires_at)
            log.info("mail #%d to %s (no SMTP configured; kept in the outbox): %s\n%s",
                     row_id, mail.to, mail.subject, mail.text)
            return row_id
        try:
            await self._deliver(mail)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            log.warning("mail to %s failed: %s", mail.to, exc)
            return await self._store(mail, "failed", f"{type(exc).__name__}: {exc}", None, now,
                                     expires_at)
        return await self._store(Mail(mail.to, mail.subject, ""), "sent", None, time.time(), now,
                                 expires_at)

    async def _deliver(self, mail: Mail) -> None:
        c = self.config
        message = EmailMessage()
        message["From"] = c.sender
        message["To"] = mail.to
        message["Subject"] = mail.subject
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid(domain=c.sender.rpartition("@")[2].strip(">") or None)
        message.set_content(mail.text)
        await aiosmtplib.send(
            message, hostname=c.smtp_host, port=c.smtp_port,
            username=c.smtp_username or None, password=c.smtp_password or None,
            use_tls=c.security == "tls", start_tls=c.security == "starttls",
            timeout=c.timeout)

    async def _store(self, mail: Mail, status: str, error: str | None, sent_at: float | None,
                     now: float, expires_at: float | None) -> int:
        async with self.db.transaction() as tx:
            row_id = await tx.insert("mail_insert", {
                "to_addr": mail.to, "subject": mail.subject, "body_text": mail.text,
                "status": status, "error": error, "now": now, "sent_at": sent_at})
            if expires_at is not None:
                await tx.execute("mail_set_expiry", {"id": row_id, "expires_at": expires_at})
        return row_id


_DIGITS = re.compile(r"\d{4,}")
EXPIRED_MASK = "••••••"


async def purge_expired(db: Store, now: float | None = None) -> int:
    """Empty every message whose code has expired: body gone, digits in the subject
    masked, expiry cleared (so each is done once). Returns how many were purged."""
    now = time.time() if now is None else now
    # read first: the usual answer is "nothing", and a read takes no write lock
    rows = await db.fetch_all("mail_expired", {"now": now})
    if not rows:
        return 0
    async with db.transaction() as tx:
        for row in rows:
            await tx.execute("mail_purge", {
                "id": row["id"], "subject": _DIGITS.sub(EXPIRED_MASK, row["subject"])})
    return len(rows)
