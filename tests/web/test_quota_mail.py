"""Quota e-mails: one at 80 % and one at 100 % per period, whatever races to send them.

The requests go through the real /v1/messages hot path (demo provider), so the counters
the watcher reads are the ones the usage recorder really wrote; the races are real tasks
on real SQLite connections (two gateways on one database file stand for two processes).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from gateway.accounts.mail import Mailer
from gateway.accounts.quota_notices import QuotaNotices
from gateway.accounts.users import add_month
from gateway.store.factory import open_store
from tests.helpers.gateway import Gateway, GatewayFactory, free_port
from tests.helpers.payment import wait_until
from tests.helpers.site import MESSAGE, SiteClient, make_user
from web import i18n
from web.site import SITE, TEMPLATES_DIR

LIMIT = 100_000
PLANS = {"plans": [{"name": "tiny", "price_month": 5, "monthly_tokens": LIMIT, "rpm": 0,
                    "rpd": 0, "max_keys": 5, "concurrency": 0},
                   {"name": "open", "price_month": 50, "monthly_tokens": 0, "rpm": 0,
                    "rpd": 0, "max_keys": 5, "concurrency": 0}]}


async def quota_mails(gw: Gateway, email: str) -> list[dict[str, Any]]:
    """The quota warnings sent to `email`, oldest first (the only mail with /billing)."""
    rows = await gw.db.fetch_all("mail_recent", {"limit": 10_000})
    return sorted((dict(r) for r in rows
                   if r["to_addr"] == email and "/billing" in r["body_text"]),
                  key=lambda r: int(r["id"]))


async def charge(gw: Gateway, email: str, tokens: int) -> int:
    """Put `tokens` on the user's written counter (as earlier usage would have)."""
    user = await gw.db.fetch_one("user_by_email", {"email": email})
    await gw.db.execute("seed_subscription_charge",
                        {"user_id": user["id"], "tokens": tokens, "requests": 0})
    return int(user["id"])


async def used(gw: Gateway, user_id: int) -> int:
    sub = await gw.db.fetch_one("subscription_by_user", {"user_id": user_id})
    return int(sub["tokens_used"])


def same_database(gw: Gateway) -> dict[str, Any]:
    """Config for another gateway on `gw`'s database (file or PostgreSQL)."""
    database = gw.config.database
    return {**PLANS, "database": {"url": database.url} if database.url else
            {"path": str(gw.config.database_path)}}


def watcher(gw: Gateway) -> QuotaNotices:
    return gw.app[SITE].quota


async def test_fifty_concurrent_requests_crossing_80_percent_send_exactly_one_mail(
        gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(PLANS)
    email = "crowd@example.com"
    key = await gw.new_key(email, plan="tiny")
    user_id = await charge(gw, email, LIMIT * 80 // 100 - 200)  # just under 80 %
    before = await used(gw, user_id)

    async with aiohttp.ClientSession() as http:
        async def one() -> int:
            async with http.post(gw.url + "/v1/messages", json=MESSAGE,
                                 headers={"x-api-key": key}) as r:
                await r.read()
                return r.status

        # the watcher is also woken while the requests land, so it races them too
        async def poke() -> None:
            for _ in range(20):
                watcher(gw).wake()
                await asyncio.sleep(0)

        statuses, _ = await asyncio.gather(asyncio.gather(*(one() for _ in range(50))), poke())
    assert statuses == [200] * 50
    await gw.recorder.flush()
    after = await used(gw, user_id)
    assert before < LIMIT * 0.8 <= after < LIMIT, (before, after)

    # every possible sender at once: 50 checks on this gateway's watcher, 50 on a second
    # watcher with its own connection to the same database (as another process would
    # have; only its watcher, so no second usage recorder replays this one's journal)
    other_db = await open_store(gw.config)
    try:
        other = QuotaNotices(other_db, Mailer(gw.config.mail, other_db, TEMPLATES_DIR),
                             gw.config.public_url, "en", i18n.using)
        sent = await asyncio.gather(*(w.check() for w in (watcher(gw), other)
                                      for _ in range(50)))
    finally:
        await other_db.close()
    watcher(gw).wake()
    await wait_until(lambda: _notice_mailed(gw, user_id, 80), timeout=30)
    assert sum(sent) <= 1
    mails = await quota_mails(gw, email)
    assert len(mails) == 1, mails
    assert "80%" in mails[0]["subject"] and f"{LIMIT:,}" in mails[0]["body_text"]
    notices = await gw.db.fetch_all("quota_notices_of_user", {"user_id": user_id})
    assert [(n["threshold"], n["mail_id"] == mails[0]["id"]) for n in notices] == [(80, True)]


async def _notice_mailed(gw: Gateway, user_id: int, threshold: int) -> bool:
    notices = await gw.db.fetch_all("quota_notices_of_user", {"user_id": user_id})
    return any(n["threshold"] == threshold and n["mail_id"] for n in notices)


async def test_a_restart_does_not_send_the_warning_again(
        gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(PLANS)
    email = "restart@example.com"
    await make_user(gw, email, plan="tiny")
    user_id = await charge(gw, email, LIMIT * 85 // 100)
    assert await watcher(gw).check() == 1
    await gw.server.close()  # the process goes away; the database file stays

    again = await gateway_factory(same_database(gw))  # a fresh start, same database
    assert await watcher(again).check() == 0
    watcher(again).wake()
    await asyncio.sleep(0)
    assert len(await quota_mails(again, email)) == 1
    # still one after the restarted watcher's own loop had its turn
    await wait_until(lambda: _loop_ran(again))
    assert len(await quota_mails(again, email)) == 1
    assert await used(again, user_id) >= LIMIT * 0.8


async def _loop_ran(gw: Gateway) -> bool:
    return await watcher(gw).check() == 0


async def test_crossing_100_percent_sends_the_second_warning_and_a_jump_sends_only_it(
        gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(PLANS)
    await make_user(gw, "steps@example.com", plan="tiny")
    await make_user(gw, "jump@example.com", plan="tiny")
    steps = await charge(gw, "steps@example.com", LIMIT * 81 // 100)
    jump = await charge(gw, "jump@example.com", LIMIT)  # 0 -> 100 % between two looks
    assert await watcher(gw).check() == 2
    await charge(gw, "steps@example.com", LIMIT)
    assert await watcher(gw).check() == 1
    assert await watcher(gw).check() == 0

    steps_mails = await quota_mails(gw, "steps@example.com")
    assert [("80%" in m["subject"], "all of" in m["subject"]) for m in steps_mails] == [
        (True, False), (False, True)]
    jump_mails = await quota_mails(gw, "jump@example.com")
    assert len(jump_mails) == 1 and "all of this month's tokens" in jump_mails[0]["subject"]
    assert "refused" in jump_mails[0]["body_text"]
    assert [n["threshold"] for n in await gw.db.fetch_all(
        "quota_notices_of_user", {"user_id": jump})] == [100]
    assert len(await gw.db.fetch_all("quota_notices_of_user", {"user_id": steps})) == 2


async def test_a_new_period_warns_again_and_unlimited_or_suspended_users_never(
        gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(PLANS)
    await make_user(gw, "monthly@example.com", plan="tiny")
    await make_user(gw, "free-for-all@example.com", plan="tiny")
    await make_user(gw, "suspended@example.com", plan="tiny")
    user_id = await charge(gw, "monthly@example.com", LIMIT * 9 // 10)
    assert await watcher(gw).check() == 1
    # the next month: a new period with the same figure (as a payment or roll-over writes)
    sub = await gw.db.fetch_one("subscription_by_user", {"user_id": user_id})
    start = sub["period_end"]
    await gw.db.execute("subscription_add", {
        "user_id": user_id, "period_start": start, "period_end": add_month(start),
        "tokens": LIMIT * 9 // 10, "requests": 1})
    assert await watcher(gw).check(now=start + 60) == 1
    assert len(await quota_mails(gw, "monthly@example.com")) == 2

    other = await gw.db.fetch_one("user_by_email", {"email": "free-for-all@example.com"})
    await gw.db.execute("subscription_set_plan", {"user_id": other["id"], "plan": "open",
                                                  "now": 0})
    await charge(gw, "free-for-all@example.com", 10**9)  # no monthly limit: nothing to warn
    await charge(gw, "suspended@example.com", LIMIT)
    await gw.db.execute("user_set_status", {"email": "suspended@example.com",
                                            "status": "suspended", "now": 0})
    assert await watcher(gw).check() == 0
    assert await quota_mails(gw, "suspended@example.com") == []
    assert await quota_mails(gw, "free-for-all@example.com") == []


async def test_the_mail_speaks_the_language_the_user_last_read_the_site_in(
        gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory({**PLANS, "site": {"default_language": "en"}})
    await make_user(gw, "zh@example.com", plan="tiny")
    await make_user(gw, "en@example.com", plan="tiny")
    client = SiteClient(gw)
    try:
        await client.log_in("zh@example.com")
        status, _text, _ = await client.get("/dashboard?lang=zh-CN")
        assert status == 200
    finally:
        await client.close()
    row = await gw.db.fetch_one("user_by_email", {"email": "zh@example.com"})
    assert row["language"] == "zh-CN"
    await charge(gw, "zh@example.com", LIMIT)
    await charge(gw, "en@example.com", LIMIT * 8 // 10)
    assert await watcher(gw).check() == 2
    (zh,) = await quota_mails(gw, "zh@example.com")
    assert zh["subject"] == "本月 token 已全部用完", zh
    assert "请求会被拒绝" in zh["body_text"] and "100,000" in zh["body_text"]
    (en,) = await quota_mails(gw, "en@example.com")
    assert en["subject"] == "You have used 80% of this month's tokens", en
    assert "80,000 of the 100,000 tokens your plan tiny includes" in en["body_text"]
    assert "/dashboard" in en["body_text"] and "/billing" in en["body_text"]


async def test_smtp_down_keeps_the_warning_in_the_outbox_as_failed_and_never_resends(
        gateway_factory: GatewayFactory) -> None:
    """At most once: with the mail server refusing connections the claimed warning is kept
    as a failed mail (its text and the error, for the operator), and later looks do not
    send it again."""
    closed = free_port()  # nothing listens here
    gw = await gateway_factory({**PLANS, "mail": {"smtp_host": "127.0.0.1",
                                                  "smtp_port": closed, "security": "none",
                                                  "timeout": 2}})
    await make_user(gw, "offline@example.com", plan="tiny")
    await charge(gw, "offline@example.com", LIMIT * 8 // 10)
    assert await watcher(gw).check() == 1
    assert await watcher(gw).check() == 0
    (mail,) = await quota_mails(gw, "offline@example.com")
    assert mail["status"] == "failed" and mail["error"], mail
    assert "80,000" in mail["body_text"]
