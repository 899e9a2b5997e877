"""The `Lease` seam: jobs that must run once across instances (gateway/store/lease.py).

On a real PostgreSQL: exactly one of several contenders holds a lease, the holder keeps it
from round to round, and when the holder goes (closed, its backend killed) another takes
over at its next round. Then three real gateway processes behind HAProxy: only one runs the
payment reconciler and the remote-session sweeper, and a kill -9 of that one hands both jobs
to a survivor within a few seconds.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.accounts.users import create_user
from gateway.remote.sessions import create_session
from gateway.store.lease import Jobs, LocalLease, PgLease, lock_key
from tests.helpers.cluster import Cluster
from tests.helpers.services import fresh_database_url


async def test_local_lease_is_always_held() -> None:
    lease = LocalLease()
    assert await lease.holds("a") and await lease.holds("b")
    assert lease.held() == {"a", "b"}


def test_lock_keys_are_stable_and_distinct() -> None:
    assert lock_key("payments.reconcile") == lock_key("payments.reconcile")
    assert lock_key("payments.reconcile") != lock_key("remote.sweep")
    assert -(2**63) <= lock_key("x") < 2**63


async def test_one_holder_among_contenders_and_takeover() -> None:
    url = fresh_database_url()
    leases = [PgLease(url) for _ in range(5)]
    try:
        first = await asyncio.gather(*(lease.holds("job") for lease in leases))
        assert first.count(True) == 1, first
        holder = first.index(True)
        for _ in range(3):  # the holder keeps it round after round; nobody else wins
            again = await asyncio.gather(*(lease.holds("job") for lease in leases))
            assert again == first
        # names are independent: another job may have another holder
        other = await asyncio.gather(*(lease.holds("other") for lease in leases))
        assert other.count(True) == 1

        await leases[holder].close()  # a clean stop gives the lease up
        rest = [lease for i, lease in enumerate(leases) if i != holder]
        taken = await asyncio.gather(*(lease.holds("job") for lease in rest))
        assert taken.count(True) == 1
        new_holder = rest[taken.index(True)]

        # The holder's backend killed (what a crashed machine looks like to PostgreSQL):
        # the lock is gone with the session; the holder finds out on its next round.
        pid = new_holder._conn.get_server_pid()  # type: ignore[union-attr]
        admin = await asyncpg.connect(url)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        # Whoever asks next may win it (the old holder too, on a new session), but never
        # two: the dead session's lock is gone, the survivors race for it once.
        third = await asyncio.gather(*(lease.holds("job") for lease in rest))
        assert third.count(True) == 1, third
        assert sum("job" in lease.held() for lease in leases) == 1
    finally:
        for lease in leases:
            await lease.close()


async def test_an_unreachable_database_means_not_held() -> None:
    lease = PgLease("postgresql://nobody:x@127.0.0.1:1/none", connect_timeout=1)
    assert await lease.holds("job") is False
    assert lease.held() == frozenset()
    await lease.close()


async def test_jobs_run_only_where_the_lease_is_held() -> None:
    url = fresh_database_url()
    runners = [Jobs(PgLease(url)) for _ in range(3)]
    calls = [0, 0, 0]

    def job(i: int) -> Any:
        async def once() -> None:
            calls[i] += 1
        return once

    tasks = [asyncio.create_task(r.run("tick", 0.02, job(i))) for i, r in enumerate(runners)]
    try:
        deadline = time.monotonic() + 10
        while sum(calls) < 20 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert sum(calls) >= 20
        assert sorted(calls)[:2] == [0, 0], calls
        assert [r.rounds["tick"] for r in runners] == calls
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for r in runners:
            await r.lease.close()


async def job_rounds(url: str) -> dict[str, tuple[int, bool]]:
    """`llmapi_job_rounds` of one instance: job -> (rounds, held)."""
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        text = await r.text()
    found: dict[str, tuple[int, bool]] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "llmapi_job_rounds":
            for sample in family.samples:
                found[sample.labels["job"]] = (int(sample.value),
                                               sample.labels["held"] == "1")
    return found


@pytest.mark.slow
async def test_three_instances_run_each_job_once_and_hand_over_on_kill_9(
        cluster_factory: Any) -> None:
    cluster: Cluster = await cluster_factory(instances=3, config={
        "alipay": {"reconcile_interval": 0.2}, "remote": {"sweep_interval": 0.2}})
    jobs = ("payments.reconcile", "remote.sweep")

    async def snapshot() -> list[dict[str, tuple[int, bool]]]:
        return [await job_rounds(inst.url) if inst.running else {}
                for inst in cluster.instances]

    async def wait_rounds(minimum: int, among: list[int]) -> list[dict[str, tuple[int, bool]]]:
        deadline = time.monotonic() + 15
        while True:
            snap = await snapshot()
            if all(sum(snap[i].get(j, (0, False))[0] for i in among) >= minimum
                   for j in jobs):
                return snap
            assert time.monotonic() < deadline, snap
            await asyncio.sleep(0.1)

    snap = await wait_rounds(10, [0, 1, 2])
    holders = {}
    for job in jobs:
        ran = [i for i in range(3) if snap[i][job][0] > 0]
        assert len(ran) == 1, (job, snap)
        assert snap[ran[0]][job][1] is True
        holders[job] = ran[0]

    # the work itself happens: an expired session is ended by the holder's sweep
    db = await cluster.store()
    user = await create_user(db, "lease@example.com", plan="open")
    session = await create_session(db, user, 0.0001)
    deadline = time.monotonic() + 10
    while (await cluster.fetchval("SELECT ended_at FROM remote_sessions WHERE id = $1",
                                  session.id)) is None:
        assert time.monotonic() < deadline, "the expired session was never swept"
        await asyncio.sleep(0.1)
    assert await cluster.fetchval("SELECT status FROM remote_sessions WHERE id = $1",
                                  session.id) == "expired"

    victim = holders["remote.sweep"]
    before = {j: sum(snap[i][j][0] for i in range(3) if i != victim) for j in jobs}
    cluster.kill(victim)
    killed_at = time.monotonic()
    survivors = [i for i in range(3) if i != victim]
    deadline = killed_at + 10
    while True:
        snap = await snapshot()
        now_runs = {j: sum(snap[i][j][0] for i in survivors) for j in jobs}
        if all(now_runs[j] > before[j] + 2 for j in ("remote.sweep",)):
            break
        assert time.monotonic() < deadline, snap
        await asyncio.sleep(0.05)
    took = time.monotonic() - killed_at
    ran = [i for i in survivors if snap[i]["remote.sweep"][1]]
    assert len(ran) == 1, snap
    print(f"remote.sweep lease taken over {took:.2f}s after kill -9 of its holder")
    assert took < 5
