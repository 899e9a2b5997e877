"""Throttles hold under concurrency: an attempt is claimed in the database, in one
statement, before the password or code is hashed, so a burst of guesses sent at the same
moment gets no more checks than the limit allows."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from gateway.accounts import codes as email_codes
from gateway.accounts.throttle import ACCOUNT_DELAY_MAX, ACCOUNT_DELAY_STEP, LoginThrottle
from gateway.store.sqlite import open_database
from tests.helpers.gateway import Gateway, GatewayFactory
from tests.helpers.site import PASSWORD, SiteClient, code_from_outbox, make_user

BURST = 200


async def burst(gw: Gateway, path: str, bodies: list[dict[str, str]]) -> list[tuple[int, Any]]:
    """Send every body at once on its own connection (one shared session cookie and CSRF
    token, like one attacker's script); the answers in order."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector,
                                     cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(gw.url + "/api/auth/csrf") as r:
            token = (await r.json())["csrf_token"]
        start = asyncio.Event()

        async def one(body: dict[str, str]) -> tuple[int, Any]:
            await start.wait()
            async with http.post(gw.url + path, json=body,
                                 headers={"X-CSRF-Token": token}) as r:
                return r.status, await r.json(content_type=None)

        tasks = [asyncio.create_task(one(b)) for b in bodies]
        await asyncio.sleep(0)  # let every task reach the start line
        start.set()
        return list(await asyncio.gather(*tasks))


def kinds(answers: list[tuple[int, Any]]) -> Counter[str]:
    return Counter(f"{status} {body['error']['message'][:30]}" for status, body in answers)


async def test_burst_of_wrong_passwords_gets_at_most_the_limit_checked(
        gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory({"web": {"login_failures_per_account": 5,
                                        "login_failures_per_ip": 1000}})
    await make_user(gw, "target@example.com")
    answers = await burst(gw, "/api/auth/login", [
        {"email": "target@example.com", "password": f"guess number {i}"} for i in range(BURST)])
    checked = [a for a in answers if a[0] == 401]
    refused = [a for a in answers if a[0] == 429]
    print(f"\n{BURST} concurrent wrong passwords, limit 5: {len(checked)} checked, "
          f"{len(refused)} refused ({dict(kinds(answers))})")
    assert len(checked) <= 5, kinds(answers)
    assert len(checked) + len(refused) == BURST, kinds(answers)
    assert all("too many failed attempts" in body["error"]["message"] for _, body in refused)
    row = await gw.db.fetch_one("login_failures_by_email",
                                {"email": "target@example.com", "since": 0})
    assert row["failures"] <= 5
    # and the right password from the same client is refused too: the limit is spent
    client = SiteClient(gw)
    try:
        status, _ = await client.json("POST", "/api/auth/login",
                                      {"email": "target@example.com", "password": PASSWORD})
        assert status == 429
    finally:
        await client.close()


async def test_burst_from_one_address_over_many_accounts_is_held_to_the_ip_limit(
        gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory({"web": {"login_failures_per_account": 5,
                                        "login_failures_per_ip": 30}})
    answers = await burst(gw, "/api/auth/login", [
        {"email": f"probe{i}@example.com", "password": "guess"} for i in range(BURST)])
    checked = sum(1 for status, _ in answers if status == 401)
    print(f"\n{BURST} concurrent logins over {BURST} accounts, IP limit 30: {checked} checked")
    assert checked <= 30, kinds(answers)


async def test_burst_of_code_guesses_gets_at_most_five_checked(gateway: Gateway) -> None:
    client = SiteClient(gateway)
    try:
        status, body = await client.json("POST", "/api/auth/register", {
            "email": "pending@example.com", "password": PASSWORD})
        assert status == 202, body
    finally:
        await client.close()
    code = await code_from_outbox(gateway, "pending@example.com")
    wrong = [f"{(int(code) + 1 + i) % 1_000_000:06d}" for i in range(BURST)]
    answers = await burst(gateway, "/api/auth/verify", [
        {"email": "pending@example.com", "code": guess} for guess in wrong])
    said_wrong = [b for _, b in answers if "not right" in b["error"]["message"]]
    locked = [b for _, b in answers if "too many wrong codes" in b["error"]["message"]]
    print(f"\n{BURST} concurrent wrong codes, {email_codes.MAX_ATTEMPTS} attempts allowed: "
          f"{len(said_wrong)} checked, {len(locked)} refused as locked")
    assert all(status == 400 for status, _ in answers)
    assert len(said_wrong) <= email_codes.MAX_ATTEMPTS, kinds(answers)
    assert len(said_wrong) + len(locked) == BURST, kinds(answers)
    left = sorted(int(m.group(1)) for b in said_wrong
                  if (m := re.search(r"attempts left: (\d+)", b["error"]["message"])))
    # each checked guess was counted once, in turn: the "attempts left" figures are distinct
    assert len(set(left)) == len(left) == len(said_wrong), left
    row = await gateway.db.fetch_one("code_latest", {"email": "pending@example.com",
                                                     "purpose": "register"})
    assert row["attempts"] == email_codes.MAX_ATTEMPTS
    # the right code after the burst: the code is used up
    client = SiteClient(gateway)
    try:
        status, body = await client.json("POST", "/api/auth/verify", {
            "email": "pending@example.com", "code": code})
        assert status == 400 and "too many wrong codes" in body["error"]["message"], body
    finally:
        await client.close()


async def test_the_right_code_in_a_burst_is_accepted_at_most_once(gateway: Gateway) -> None:
    """Many browsers typing the right code at once: exactly one verification."""
    client = SiteClient(gateway)
    try:
        status, body = await client.json("POST", "/api/auth/register", {
            "email": "twice@example.com", "password": PASSWORD})
        assert status == 202, body
    finally:
        await client.close()
    code = await code_from_outbox(gateway, "twice@example.com")
    answers = await burst(gateway, "/api/auth/verify",
                          [{"email": "twice@example.com", "code": code}] * 50)
    assert sum(1 for status, _ in answers if status == 200) == 1, kinds(answers)


async def test_an_account_is_slowed_never_locked_by_guesses_from_everywhere(
        tmp_path: Path) -> None:
    """200 addresses guessing one account at once: the per-account figure is checked, the
    rest wait. Then the account is only slowed: however many failures pile up, a check
    from a fresh address is allowed again at most ACCOUNT_DELAY_MAX seconds after the
    latest one, each wait growing by ACCOUNT_DELAY_STEP."""
    db = await open_database(tmp_path / "throttle.db")
    try:
        throttle = LoginThrottle(db, per_account=5, per_ip=30, window=86400)
        now = 1_000_000.0
        claims = await asyncio.gather(*(
            throttle.claim("victim@example.com", f"10.0.{i // 250}.{i % 250}", now)
            for i in range(BURST)))
        assert sum(1 for c in claims if c.attempt) == 5
        assert {c.retry_after for c in claims if not c.attempt} == {ACCOUNT_DELAY_STEP}
        # the waits grow by one step per failure, up to the cap, then stay there
        waits = []
        for n in range(40):
            wait = await throttle.retry_after("victim@example.com", "192.0.2.1", now)
            waits.append(wait)
            assert (await throttle.claim("victim@example.com", "192.0.2.1",
                                         now + wait - 0.5)).attempt == 0
            now += wait
            claim = await throttle.claim("victim@example.com", f"198.51.100.{n}", now)
            assert claim.attempt, (n, wait)
        assert waits[:3] == [ACCOUNT_DELAY_STEP, 2 * ACCOUNT_DELAY_STEP,
                             3 * ACCOUNT_DELAY_STEP]
        assert max(waits) == ACCOUNT_DELAY_MAX and waits[-1] == ACCOUNT_DELAY_MAX
        # the owner's right password, from their own address, after at most the cap
        owner = await throttle.claim("victim@example.com", "203.0.113.7",
                                     now + ACCOUNT_DELAY_MAX)
        assert owner.attempt
    finally:
        await db.close()
