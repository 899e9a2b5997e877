"""Hygiene: /metrics behind `[server] metrics_token`, a private database file, codes that
leave the outbox when they expire, `users add --password -`, and `Cache-Control: no-store`
on everything that depends on who is signed in."""

from __future__ import annotations

import asyncio
import fcntl
import os
import stat
import subprocess
import sys
import termios
import time
from pathlib import Path

import aiohttp
import pytest

from gateway.accounts import codes as email_codes
from gateway.accounts.mail import purge_expired
from gateway.accounts.users import verify_password
from tests.helpers.gateway import ROOT, Gateway, GatewayFactory, run_cli
from tests.helpers.site import PASSWORD, SiteClient, code_from_outbox, signed_in

TOKEN = "metrics-secret-0123456789"


# --- /metrics -------------------------------------------------------------------------

async def get_metrics(gw: Gateway, headers: dict[str, str] | None = None
                      ) -> tuple[int, str, dict[str, str]]:
    async with aiohttp.ClientSession() as http, http.get(gw.url + "/metrics",
                                                         headers=headers or {}) as r:
        return r.status, await r.text(), dict(r.headers)


async def test_metrics_are_open_without_a_token(gateway: Gateway) -> None:
    status, text, _ = await get_metrics(gateway)
    assert status == 200 and "llmapi_" in text


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong"},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Bearer {TOKEN[:-1]}"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": TOKEN},
    {"x-api-key": TOKEN},
    {"Authorization": "Bearer "},
])
async def test_metrics_refuse_anything_but_the_token(gateway_factory: GatewayFactory,
                                                      headers: dict[str, str]) -> None:
    gw = await gateway_factory({"server": {"metrics_token": TOKEN}})
    status, text, got = await get_metrics(gw, headers)
    assert status == 401, text
    assert '"type":"authentication_error"' in text.replace(" ", "")
    assert got.get("WWW-Authenticate", "").startswith("Bearer")
    assert "llmapi_" not in text


async def test_metrics_with_the_token_and_poison_values(gateway_factory: GatewayFactory
                                                        ) -> None:
    gw = await gateway_factory({"server": {"metrics_token": TOKEN}})
    for scheme in ("Bearer", "bearer", "BEARER"):
        status, text, _ = await get_metrics(gw, {"Authorization": f"{scheme} {TOKEN}"})
        assert status == 200 and "llmapi_" in text
    # a non-ASCII header value must be a 401, not a 500 (compare_digest refuses str)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.server.port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\xc3\xa9"
                 b"\r\nConnection: close\r\n\r\n")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    # a burst of wrong tokens: every one refused, none slips through
    async with aiohttp.ClientSession() as http:
        async def one(i: int) -> int:
            async with http.get(gw.url + "/metrics",
                                headers={"Authorization": f"Bearer {TOKEN[:i % 20]}"}) as r:
                await r.read()
                return r.status
        statuses = await asyncio.gather(*(one(i) for i in range(200)))
    assert set(statuses) == {401}


# --- the database file ------------------------------------------------------------------

async def test_database_files_are_private(gateway_factory: GatewayFactory) -> None:
    old = os.umask(0o022)  # the usual umask: SQLite alone would make the files 0644
    try:
        gw = await gateway_factory()
        await gw.new_key("perm@example.com")  # writes: the WAL and shared-memory files exist
        path = Path(gw.config.database_path)
        for file in (path, path.with_name(path.name + "-wal"),
                     path.with_name(path.name + "-shm")):
            assert file.exists(), file
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, (file, oct(file.stat().st_mode))
    finally:
        os.umask(old)


def test_database_created_by_the_cli_is_private(tmp_path: Path) -> None:
    config = tmp_path / "llmapi.toml"
    db = tmp_path / "cli.db"
    config.write_text(f'[database]\npath = "{db}"\n')
    done = run_cli("users", "add", "ops@example.com", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


# --- codes in the outbox ---------------------------------------------------------------------

async def test_a_code_is_not_readable_in_the_outbox_once_it_expired(gateway: Gateway) -> None:
    client = SiteClient(gateway)
    admin = await signed_in(gateway, "root@example.com", admin=True)
    try:
        await client.get("/register")
        status, _, _ = await client.post("/register", {"email": "late@example.com",
                                                       "password": PASSWORD})
        assert status == 303
        code = await code_from_outbox(gateway, "late@example.com")
        row = await gateway.db.fetch_one("mail_latest_to", {"to_addr": "late@example.com"})
        code_row = await gateway.db.fetch_one("code_latest_active", {
            "email": "late@example.com", "purpose": "register"})
        # readable exactly as long as the code: the row expires with it
        assert abs(row["expires_at"] - code_row["expires_at"]) < 5
        assert row["expires_at"] >= code_row["expires_at"]
        status, text, _ = await admin.get(f"/admin/outbox/{row['id']}")
        assert status == 200 and code in text

        # time passes beyond the code's validity (both rows moved back, as a clock would)
        for table, column in (("mail_outbox", "to_addr"), ("email_codes", "email")):
            await gateway.db.conn.execute(
                f"UPDATE {table} SET created_at = created_at - ?, expires_at = expires_at - ?"
                f" WHERE {column} = ?", (email_codes.CODE_TTL + 1, email_codes.CODE_TTL + 1,
                                         "late@example.com"))
        status, text, _ = await admin.get(f"/admin/outbox/{row['id']}")
        assert status == 200 and code not in text
        status, text, _ = await admin.get("/admin/outbox")
        assert status == 200 and code not in text
        status, body = await admin.json("GET", "/api/admin/outbox")
        assert code not in str(body)
        stored = await gateway.db.fetch_one("mail_by_id", {"id": row["id"]})
        assert code not in stored["body_text"] and code not in stored["subject"]
        assert stored["to_addr"] == "late@example.com"  # the envelope stays
    finally:
        await client.close()
        await admin.close()


async def test_expired_codes_are_purged_without_anyone_reading_them(gateway: Gateway) -> None:
    async def stored(to: str, subject: str, body: str, created: float,
                     expires_at: float | None) -> int:
        mail_id = await gateway.db.insert("mail_insert", {
            "to_addr": to, "subject": subject, "body_text": body, "status": "outbox",
            "error": None, "now": created, "sent_at": None})
        if expires_at is not None:
            await gateway.db.execute("mail_set_expiry", {"id": mail_id,
                                                         "expires_at": expires_at})
        return mail_id

    now = time.time()
    mailer_row = await stored("x@example.com", "Your llmapi code: 424242", "    424242\n",
                              now - 3600, now - 1)
    fresh = await stored("y@example.com", "Your llmapi code: 515151", "    515151\n",
                         now, now + 600)
    plain = await stored("z@example.com", "Welcome", "hello 123456", now - 86400, None)
    assert await purge_expired(gateway.db) == 1
    gone = await gateway.db.fetch_one("mail_by_id", {"id": mailer_row})
    assert gone["body_text"] == "" and "424242" not in gone["subject"]
    assert "515151" in (await gateway.db.fetch_one("mail_by_id", {"id": fresh}))["body_text"]
    assert (await gateway.db.fetch_one("mail_by_id", {"id": plain}))["body_text"] \
        == "hello 123456"
    assert await purge_expired(gateway.db) == 0


# --- users add --password - ------------------------------------------------------------

def _config(tmp_path: Path) -> Path:
    config = tmp_path / "llmapi.toml"
    config.write_text(f'[database]\npath = "{tmp_path / "users.db"}"\n')
    return config


def _stored_hash(tmp_path: Path, email: str) -> str:
    done = subprocess.run([sys.executable, "-c", (
        "import asyncio, sys\n"
        "from gateway.store.sqlite import open_database\n"
        "async def main():\n"
        "    db = await open_database(__import__('pathlib').Path(sys.argv[1]))\n"
        f"    row = await db.fetch_one('user_by_email', {{'email': {email!r}}})\n"
        "    print(row['password_hash'])\n"
        "    await db.close()\n"
        "asyncio.run(main())\n"), str(tmp_path / "users.db")], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_users_add_reads_the_password_from_standard_input(tmp_path: Path) -> None:
    config = _config(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "users", "add", "in@example.com", "--password", "-",
         "--config", str(config)], input="a password from a pipe\n", capture_output=True,
        text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "a password from a pipe" not in done.stdout + done.stderr
    assert verify_password("a password from a pipe", _stored_hash(tmp_path, "in@example.com"))


@pytest.mark.parametrize("piped", ["", "\n", "short\n"])
def test_users_add_refuses_an_empty_or_short_password(tmp_path: Path, piped: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "users", "add", "bad@example.com", "--password", "-",
         "--config", str(_config(tmp_path))], input=piped, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "password" in done.stderr and "Traceback" not in done.stderr


def test_users_add_prompts_on_a_terminal_without_echo(tmp_path: Path) -> None:
    """On a terminal `--password -` asks twice through getpass (no echo), like passwd."""
    master, slave = os.openpty()

    def controlling_terminal() -> None:
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "users", "add", "tty@example.com", "--password", "-",
         "--config", str(_config(tmp_path))], stdin=slave, stdout=slave, stderr=slave,
        preexec_fn=controlling_terminal, env={**os.environ, "PYTHONPATH": str(ROOT)})
    os.close(slave)
    seen = b""

    def read_until(marker: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + 30
        while marker not in seen:
            assert time.monotonic() < deadline, seen
            try:
                seen += os.read(master, 1024)
            except OSError:  # the child closed the terminal
                raise AssertionError(seen) from None

    try:
        read_until(b"Password: ")
        os.write(master, b"typed on a terminal\n")
        read_until(b"Again: ")
        os.write(master, b"typed on a terminal\n")
        assert proc.wait(60) == 0, seen
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert b"typed on a terminal" not in seen  # getpass turned echo off
    assert verify_password("typed on a terminal", _stored_hash(tmp_path, "tty@example.com"))


def test_a_password_on_the_command_line_is_warned_about(tmp_path: Path) -> None:
    done = run_cli("users", "add", "argv@example.com", "--password", PASSWORD,
                   "--config", str(_config(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert "--password -" in done.stderr and PASSWORD not in done.stderr


# --- Cache-Control ---------------------------------------------------------------------

SIGNED_IN_PATHS = ["/dashboard", "/settings", "/orders", "/billing", "/remote",
                   "/dashboard/fragments/overview", "/dashboard/fragments/keys",
                   "/api/auth/me", "/api/dashboard/overview", "/api/dashboard/keys",
                   "/admin", "/admin/users", "/admin/outbox", "/api/admin/stats",
                   "/pricing", "/"]


async def test_everything_a_signed_in_user_sees_is_no_store(gateway: Gateway) -> None:
    client = await signed_in(gateway, "cache@example.com", admin=True)
    try:
        for path in SIGNED_IN_PATHS:
            status, _, headers = await client.get(path, headers={"HX-Request": "true"}
                                                  if "fragments" in path else None)
            assert status == 200, path
            assert headers.get("Cache-Control") == "no-store", path
    finally:
        await client.close()


async def test_error_pages_for_a_signed_in_user_are_no_store(gateway: Gateway) -> None:
    """The error page is rendered for this visitor (its header shows the signed-in
    menu): a 404, a 403 on an admin page, a 405."""
    client = await signed_in(gateway, "errors@example.com")
    try:
        for method, path, expected in (("GET", "/no-such-page", 404),
                                       ("GET", "/admin", 403), ("GET", "/logout", 405)):
            async with client.http.request(method, gateway.url + path,
                                           allow_redirects=False) as r:
                assert r.status == expected, path
                assert r.headers.get("Cache-Control") == "no-store", path
    finally:
        await client.close()


async def test_auth_answers_are_no_store(gateway: Gateway) -> None:
    await signed_in(gateway, "auth@example.com")  # the account
    client = SiteClient(gateway)
    try:
        await client.get("/login")
        _, _, headers = await client.post("/login", {"email": "auth@example.com",
                                                     "password": PASSWORD})
        assert headers.get("Cache-Control") == "no-store"
        for path in ("/api/auth/csrf", "/api/auth/me"):
            async with client.http.get(gateway.url + path) as r:
                assert r.headers.get("Cache-Control") == "no-store", path
        async with client.http.post(gateway.url + "/api/auth/login", json={
                "email": "auth@example.com", "password": "wrong one"},
                headers={"X-CSRF-Token": await client.refresh_csrf()}) as r:
            assert r.status == 401 and r.headers.get("Cache-Control") == "no-store"
    finally:
        await client.close()


async def test_public_pages_and_static_files_stay_cacheable(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as anonymous:
        for path in ("/pricing", "/blog", "/robots.txt"):
            async with anonymous.get(gateway.url + path) as r:
                assert r.status == 200
                assert "no-store" not in r.headers.get("Cache-Control", ""), path
    client = await signed_in(gateway, "static@example.com")
    try:
        _, text, _ = await client.get("/dashboard")
        css = next(part.split('"')[0] for part in text.split('href="')
                   if part.startswith("/static/") and ".css" in part.split('"')[0])
        async with client.http.get(gateway.url + css) as r:
            assert r.status == 200
            assert "no-store" not in r.headers.get("Cache-Control", "")
    finally:
        await client.close()
