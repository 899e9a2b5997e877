"""10,000 generated bodies per client protocol against a real gateway process on loopback
(tests/helpers/fuzz.py, seeded): zero 5xx answers and zero tracebacks in its log.

The gateway routes by model to every kind of provider, so valid bodies go all the way
through each conversion: an openai-protocol and an anthropic-protocol provider (both the
real fake upstream, its own process) and the built-in demo provider. The seed is printed;
`LLMAPI_FUZZ_SEED=N` replays a run, `LLMAPI_FUZZ_COUNT=N` changes its size."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers.fuzz import bodies
from tests.helpers.gateway import ROOT, free_port, wait_for_port
from tests.helpers.process import GatewayProcess
from tests.helpers.wire import ROUTES

SEED = int(os.environ.get("LLMAPI_FUZZ_SEED", "20261202"))
COUNT = int(os.environ.get("LLMAPI_FUZZ_COUNT", "10000"))
CONCURRENCY = 32


def providers_toml(fake: str) -> str:
    return (
        f'[[providers]]\nname = "oa"\nprotocol = "openai"\nbase_url = "{fake}/v1"\n'
        f'api_key = "k"\n[providers.models]\n"gpt-*" = "fake-model"\no3 = "fake-model"\n'
        f'sonnet = "fake-model"\n'
        f'[[providers]]\nname = "an"\nprotocol = "anthropic"\nbase_url = "{fake}"\n'
        f'api_key = "k"\n[providers.models]\nopus = "fake-model"\nhaiku = "fake-small"\n'
        f'[[providers]]\nname = "demo"\nprotocol = "demo"\n'
        f'[providers.models]\ndefault = "demo"\n'
        f'[routing]\nhealth_interval = 0\nbreaker_failures = 1000000\n')


@pytest.fixture
def fake_upstream() -> Any:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "fake-upstream", "--port",
                             str(port)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_port(port, proc)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.mark.slow  # about 50 s for 30,000 requests on a shared 2-core machine
async def test_fuzzed_bodies_never_get_a_5xx(tmp_path: Path, fake_upstream: str) -> None:
    with GatewayProcess(tmp_path, providers_toml(fake_upstream),
                        "access_log = false\n") as gw:
        url = f"http://127.0.0.1:{gw.port}"
        headers = {"x-api-key": gw.key, "content-type": "application/json"}
        statuses: Counter[tuple[str, int]] = Counter()
        failures: list[str] = []
        queue: asyncio.Queue[tuple[str, int, bytes]] = asyncio.Queue(maxsize=256)

        async def produce() -> None:
            generators = [(path, enumerate(bodies(path, SEED, COUNT))) for path in ROUTES]
            while generators:
                for item in list(generators):
                    path, it = item
                    found = next(it, None)
                    if found is None:
                        generators.remove(item)
                        continue
                    await queue.put((path, *found))
            for _ in range(CONCURRENCY):
                await queue.put(("", -1, b""))

        async def consume(session: aiohttp.ClientSession) -> None:
            while True:
                path, index, body = await queue.get()
                if index < 0:
                    return
                try:
                    async with session.post(url + path, data=body, headers=headers) as r:
                        payload = await r.read()
                        status = r.status
                except aiohttp.ClientError as exc:
                    failures.append(f"{path}#{index}: {type(exc).__name__} {exc} "
                                    f"body={body[:200]!r}")
                    continue
                statuses[(path, status // 100 * 100)] += 1
                if status >= 500:
                    failures.append(f"{path}#{index}: {status} {payload[:300]!r} "
                                    f"body={body[:300]!r}")

        started = time.perf_counter()
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(produce(), *(consume(session) for _ in range(CONCURRENCY)))
        took = time.perf_counter() - started
        log = gw.log()
    total = sum(statuses.values())
    slips = Counter(line.rsplit("(", 1)[-1].rstrip(")") for line in log.splitlines()
                    if "field of an unexpected shape" in line)
    print(f"converter slips answered 400 (to turn into precise checks): {dict(slips)}")
    print(f"fuzz seed {SEED}: {total} requests in {took:.1f} s "
          f"({total / took:.0f}/s); by route and class: {dict(sorted(statuses.items()))}")
    tracebacks = log.split("Traceback (most recent call last):")[1:4]
    assert not failures, f"{len(failures)} failures (seed {SEED}):\n" + "\n".join(
        failures[:20]) + "\n\nfirst tracebacks in the log:\n" + "\n---\n".join(
        t[:3000] for t in tracebacks)
    assert total == COUNT * len(ROUTES)
    for path in ROUTES:  # the bodies went deep, not only into the validators
        assert statuses[(path, 200)] >= COUNT // 10, (path, statuses)
    assert "Traceback" not in log, log[log.index("Traceback") - 500:][:5000]
    assert " ERROR " not in log, [line for line in log.splitlines() if " ERROR " in line][:20]
