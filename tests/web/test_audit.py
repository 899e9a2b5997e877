"""Audit: the operator's CLI writes entries like the admin pages do, and the audit page
filters by actor, action, target and date range — as a plain GET form and through HTMX."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.helpers.gateway import Gateway, GatewayFactory, run_cli
from tests.helpers.site import SiteClient, signed_in

ROW = re.compile(r"<tr><td data-label=")


def cli(config: Path, *args: str, user: str = "alice") -> str:
    """Run one operator command as OS user `user`; returns its stderr."""
    done = run_cli(*args, "--config", str(config), env={"LOGNAME": user, "USER": user})
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


async def entries(gw: Gateway) -> list[dict[str, Any]]:
    rows = await gw.db.fetch_all("audit_recent", {
        "actor": "", "action": "", "target": "", "since": 0, "until": 1e18,
        "limit": 1000, "offset": 0})
    return [dict(r) for r in reversed(rows)]  # oldest first


async def start(gateway_factory: GatewayFactory, tmp_path: Path) -> tuple[Gateway, Path]:
    """A gateway and a config file for the CLI on the same database (SQLite or, with
    LLMAPI_TEST_STORE=postgres, PostgreSQL)."""
    gw = await gateway_factory()
    database = gw.config.database
    config = tmp_path / "llmapi.toml"
    line = (f'url = "{database.url}"' if database.url
            else f'path = "{gw.config.database_path}"')
    config.write_text(f"[database]\n{line}\n", encoding="utf-8")
    return gw, config


async def test_every_cli_change_is_audited_with_cli_and_the_os_user(
        gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    gw, config = await start(gateway_factory, tmp_path)
    cli(config, "users", "add", "ann@example.com", "--plan", "starter")
    cli(config, "users", "plan", "ann@example.com", "pro")
    cli(config, "users", "suspend", "ann@example.com", user="bob")
    cli(config, "users", "activate", "ann@example.com")
    out = cli(config, "keys", "add", "ann@example.com", "--name", "laptop")
    prefix = re.search(r"key (\S+)\.\.\. for", out).group(1)  # type: ignore[union-attr]
    cli(config, "keys", "revoke", prefix)
    cli(config, "users", "add", "gone@example.com")
    cli(config, "users", "delete", "gone@example.com", "--yes")
    # a refused command changes nothing and writes nothing
    refused = run_cli("users", "plan", "nobody@example.com", "pro", "--config", str(config))
    assert refused.returncode == 2

    ann = await gw.db.fetch_one("user_by_email", {"email": "ann@example.com"})
    gone = await gw.db.fetch_one("user_by_id", {"id": ann["id"] + 1})
    ann_target = f"user:{ann['id']} (ann@example.com)"
    got = [(e["actor_email"], e["actor_id"], e["action"], e["target"], e["detail"])
           for e in await entries(gw)]
    assert got == [
        ("cli:alice", None, "user.create", ann_target, "plan starter"),
        ("cli:alice", None, "user.plan", ann_target, "plan starter -> pro"),
        ("cli:bob", None, "user.suspend", ann_target, "status active -> suspended"),
        ("cli:alice", None, "user.activate", ann_target, "status suspended -> active"),
        ("cli:alice", None, "key.create", ann_target, f"key {prefix} (laptop)"),
        ("cli:alice", None, "key.revoke", ann_target, f"key {prefix}"),
        ("cli:alice", None, "user.create", f"user:{gone['id']} (gone@example.com)",
         "plan free"),
        # the deleted account's address is erased: the entry keeps only its id
        ("cli:alice", None, "user.delete", f"user:{gone['id']} (deleted)",
         "keys revoked, personal data erased"),
    ]
    # the customer's admin page lists them, as it lists the admin pages' own entries
    admin = await signed_in(gw, "root@example.com", admin=True)
    try:
        status, html, _ = await admin.get(f"/admin/users/{ann['id']}")
        assert status == 200
        for action in ("user.create", "user.plan", "user.suspend", "key.revoke"):
            assert action in html
        assert "cli:bob" in html and "cli:alice" in html
    finally:
        await admin.close()


def day(offset: int) -> str:
    return (datetime.now(UTC) + timedelta(days=offset)).date().isoformat()


async def test_the_audit_page_filters_with_and_without_javascript(
        gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    gw, config = await start(gateway_factory, tmp_path)
    cli(config, "users", "add", "ann@example.com", "--plan", "starter")
    cli(config, "users", "plan", "ann@example.com", "pro")
    admin = await signed_in(gw, "root@example.com", admin=True)
    try:
        victim = await gw.db.fetch_one("user_by_email", {"email": "ann@example.com"})
        await admin.get("/admin/users")
        status, _, _ = await admin.post(f"/admin/users/{victim['id']}/status",
                                        {"status": "suspended", "confirm": "1",
                                         "back": "/admin/users"})
        assert status == 303
        # an old entry, ten days back, about an order (the date filters must find it alone)
        await gw.db.insert("audit_insert", {
            "actor_id": None, "actor_email": "system", "action": "order.refund",
            "target": "20261120ORDER_1%", "detail": "", "ip": "",
            "now": time.time() - 10 * 86400})

        async def rows(query: str, htmx: bool = False) -> tuple[int, str]:
            headers = {"HX-Request": "true", "HX-Target": "audit-results"} if htmx else {}
            status, html, _ = await admin.get("/admin/audit" + query, headers=headers)
            assert status == 200, html
            return len(ROW.findall(html)), html

        assert (await rows(""))[0] == 4
        count, html = await rows("?actor=CLI")                     # case-insensitive
        assert count == 2 and "root@example.com</span>" not in html
        count, html = await rows("?actor=root%40example.com&action=user.suspend")
        assert count == 1 and "status active -&gt; suspended" in html
        assert (await rows("?action=user.plan"))[0] == 1
        assert (await rows(f"?target=user%3A{victim['id']}+"))[0] == 3
        assert (await rows("?target=ANN%40example"))[0] == 3
        assert (await rows("?target=%25"))[0] == 1   # a literal %, not a wildcard
        assert (await rows("?target=_"))[0] == 1     # a literal _, not any character
        assert (await rows(f"?from={day(0)}&to={day(0)}"))[0] == 3
        assert (await rows(f"?to={day(-5)}"))[0] == 1
        assert (await rows(f"?from={day(-11)}&to={day(-9)}&action=order.refund"))[0] == 1
        assert (await rows(f"?from={day(1)}"))[0] == 0
        count, html = await rows("?from=2026-13-45&actor=cli")  # a bad date is no bound
        assert count == 2
        count, html = await rows("?actor=nobody")
        assert count == 0 and "No entry matches these filters." in html
        # the form keeps what was asked, and offers every action the log holds
        _, html = await rows(f"?actor=cli&action=user.plan&from={day(-1)}")
        assert 'value="cli"' in html and f'value="{day(-1)}"' in html
        assert '<option value="user.plan" selected>' in html
        for action in ("order.refund", "user.create", "user.suspend"):
            assert f'<option value="{action}"' in html
        # HTMX asks for the results only: the fragment, no page around it
        count, html = await rows("?actor=cli", htmx=True)
        assert count == 2 and html.lstrip().startswith('<div id="audit-results">')
        assert "<html" not in html and "<form" not in html
        # the JSON twin takes the same filters
        status, data = await admin.json("GET", "/api/admin/audit?actor=cli&action=user.plan")
        assert status == 200 and [e["action"] for e in data["entries"]] == ["user.plan"]
        # Chinese page, same filters
        count, html = await rows("?actor=cli&lang=zh-CN")
        assert count == 2 and "起始日期" in html and "清除筛选" in html
    finally:
        await admin.close()


async def test_page_links_keep_the_filters(gateway_factory: GatewayFactory,
                                           tmp_path: Path) -> None:
    gw, _config = await start(gateway_factory, tmp_path)
    now = time.time()
    for n in range(60):
        await gw.db.insert("audit_insert", {
            "actor_id": None, "actor_email": "cli:alice", "action": "user.plan",
            "target": f"user:{n} (u{n}@example.com)", "detail": "", "ip": "", "now": now - n})
    await gw.db.insert("audit_insert", {
        "actor_id": None, "actor_email": "system", "action": "order.refund", "target": "x",
        "detail": "", "ip": "", "now": now})
    admin: SiteClient = await signed_in(gw, "root@example.com", admin=True)
    try:
        status, html, _ = await admin.get("/admin/audit?actor=cli")
        assert status == 200 and len(ROW.findall(html)) == 50
        older = re.search(r'href="([^"]+)" rel="next"', html)
        assert older and older.group(1) == "/admin/audit?actor=cli&amp;page=2"
        status, html, _ = await admin.get("/admin/audit?actor=cli&page=2")
        assert len(ROW.findall(html)) == 10 and "order.refund</code>" not in html
    finally:
        await admin.close()
