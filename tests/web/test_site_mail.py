"""E-mail: SMTP delivery keeps only the envelope, failures keep the text, no SMTP = outbox."""

from __future__ import annotations

import asyncio
import email
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.accounts.mail import Mailer
from gateway.config import MailConfig
from gateway.store.sqlite import Database, open_database
from tests.helpers.gateway import free_port
from web.site import TEMPLATES_DIR


class TinySmtp:
    """Just enough SMTP (no TLS, no auth) to receive one message on loopback."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")
            await writer.drain()

        await say("220 tiny ESMTP")
        sender, recipients = "", []
        while line := await reader.readline():
            command = line.decode().strip()
            verb = command.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                await say("250 tiny")
            elif verb == "MAIL":
                sender = command.split(":", 1)[1].strip(" <>")
                await say("250 ok")
            elif verb == "RCPT":
                recipients.append(command.split(":", 1)[1].strip(" <>"))
                await say("250 ok")
            elif verb == "DATA":
                await say("354 go on")
                data = b""
                while (chunk := await reader.readline()) != b".\r\n":
                    data += chunk
                self.messages.append((sender, recipients, data))
                await say("250 queued")
            elif verb == "QUIT":
                await say("221 bye")
                break
            else:
                await say("250 ok")
        writer.close()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(tmp_path / "mail.db")
    yield database
    await database.close()


async def test_without_smtp_mail_goes_to_the_outbox_and_the_log(
        db: Database, caplog: pytest.LogCaptureFixture) -> None:
    mailer = Mailer(MailConfig(), db, TEMPLATES_DIR)
    with caplog.at_level("INFO", logger="llmapi.mail"):
        mail_id = await mailer.send_template("verify_code", "a@example.com", code="123456",
                                             minutes=30, site_url="http://x")
    row = await db.fetch_one("mail_by_id", {"id": mail_id})
    assert row["status"] == "outbox" and "123456" in row["body_text"]
    assert row["subject"] == "Your llmapi code: 123456"
    assert "123456" in caplog.text and "a@example.com" in caplog.text


async def test_smtp_delivery_keeps_only_the_envelope(db: Database) -> None:
    smtp = TinySmtp()
    port = free_port()
    server = await asyncio.start_server(smtp.handle, "127.0.0.1", port)
    try:
        config = MailConfig(smtp_host="127.0.0.1", smtp_port=port, security="none",
                            sender="llmapi <noreply@llmapi.example>", timeout=5)
        mail_id = await Mailer(config, db, TEMPLATES_DIR).send_template(
            "verify_code", "b@example.com", code="654321", minutes=30, site_url="http://x")
    finally:
        server.close()
        await server.wait_closed()
    sender, recipients, data = smtp.messages[0]
    message = email.message_from_bytes(data)
    assert sender == "noreply@llmapi.example" and recipients == ["b@example.com"]
    assert message["Subject"] == "Your llmapi code: 654321"
    assert "654321" in message.get_payload(decode=True).decode()
    row = await db.fetch_one("mail_by_id", {"id": mail_id})
    assert row["status"] == "sent" and row["body_text"] == "" and row["sent_at"]


async def test_unreachable_smtp_is_recorded_as_failed_with_the_text(db: Database) -> None:
    config = MailConfig(smtp_host="127.0.0.1", smtp_port=free_port(), security="none",
                        timeout=2)
    mail_id = await Mailer(config, db, TEMPLATES_DIR).send_template(
        "already_registered", "c@example.com", site_url="http://x")
    row = await db.fetch_one("mail_by_id", {"id": mail_id})
    assert row["status"] == "failed" and row["error"] and "/login" in row["body_text"]
