"""Fixtures over tests/helpers: real gateway servers on loopback, real SQLite files in temp
dirs, subprocesses, fake upstreams, one Chromium per module."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from gateway.app import build_app
from tests.helpers.cluster import Cluster
from tests.helpers.gateway import (  # noqa: F401  (re-exported for older test modules)
    CHROMIUM,
    CHROMIUM_ARGS,
    FIXTURES,
    ROOT,
    Gateway,
    GatewayFactory,
    fake_stats,
    free_port,
    make_config,
    provider_table,
    run_cli,
    wait_for_port,
)


@pytest.fixture
def upstream_client() -> str:
    """The providers' HTTP client; tests/api and tests/relay run under each one."""
    return "lean"


@pytest.fixture
async def gateway_factory(tmp_path: Path, upstream_client: str) -> AsyncIterator[GatewayFactory]:
    servers: list[TestServer] = []

    async def start(data: dict[str, Any] | None = None) -> Gateway:
        data = dict(data or {})
        data["server"] = {"upstream_client": upstream_client, **data.get("server", {})}
        app = build_app(make_config(tmp_path, data))
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return Gateway(server, app)

    yield start
    for server in reversed(servers):
        await server.close()


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory) -> Gateway:
    gw: Gateway = await gateway_factory()
    return gw


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `python -m gateway ...` subprocesses; all are stopped at the end of the test."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", *args], cwd=cwd,
                                env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
async def fake_factory() -> AsyncIterator[Callable[..., Any]]:
    """Start scripted fake upstreams in this event loop; yields a starter returning the
    base URL and the server (for its stats)."""
    from gateway.testing.fake_upstream import FakeSettings
    from gateway.testing.fake_upstream import build_app as build_fake

    servers: list[TestServer] = []

    async def start(**settings: Any) -> tuple[str, TestServer]:
        server = TestServer(build_fake(FakeSettings(port=0, **settings)), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/"), server

    yield start
    for server in servers:
        await server.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Any]:
    """One headless Chromium per test module. Playwright gives every launch a fresh
    temporary profile (user-data-dir) of its own."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM,
                                                    args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


# Markers by place: every test under tests/browser/ drives Chromium; these take long.
SLOW_MODULES = ("tests/api/test_e2e_claude_code.py", "tests/loadtest/")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        where = Path(str(item.fspath)).relative_to(ROOT).as_posix()
        if where.startswith("tests/browser/"):
            item.add_marker(pytest.mark.browser)
        if where.startswith(SLOW_MODULES):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def pg_url() -> str:
    """A fresh, empty PostgreSQL database on the run's shared cluster (real server from
    Debian's package, started on first use; a failure to start fails the test)."""
    from tests.helpers.services import fresh_database_url

    return fresh_database_url()


@pytest.fixture
def redis_server() -> Iterator[Any]:
    """A real redis-server of its own on a free loopback port (no persistence)."""
    from tests.helpers.services import RedisServer

    server = RedisServer().start()
    yield server
    server.destroy()


@pytest.fixture
async def cluster_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """`await cluster_factory(instances=3, redis=False, config={...})` -> a started
    `Cluster` (tests/helpers/cluster.py): N gateway processes on one PostgreSQL behind
    HAProxy; all torn down at the end of the test."""
    async with Cluster.fixture(tmp_path) as start:
        yield start
