"""Shared fixtures: real gateway servers on loopback with real SQLite files in temp dirs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.accounts.users import create_key, create_user
from gateway.app import build_app
from gateway.config import Config, parse_config
from gateway.state import STATE

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_config(tmp_path: Path, data: dict[str, Any] | None = None) -> Config:
    data = dict(data or {})
    data.setdefault("database", {"path": str(tmp_path / "llmapi.db")})
    return parse_config(data, source="test-config", env={}, base_dir=tmp_path)


class Gateway:
    """A running in-process gateway plus helpers to create users and keys in its database."""

    def __init__(self, server: TestServer, app: web.Application) -> None:
        self.server = server
        self.app = app

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def state(self) -> Any:
        return self.app[STATE]

    async def new_key(self, email: str = "dev@example.com", plan: str = "free") -> str:
        db = self.state.db
        if await db.fetch_one("user_by_email", {"email": email}) is None:
            await create_user(db, email, plan=plan)
        return (await create_key(db, email)).raw


GatewayFactory = Callable[..., Any]


@pytest.fixture
async def gateway_factory(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    servers: list[TestServer] = []

    async def start(data: dict[str, Any] | None = None) -> Gateway:
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


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=cwd,
                          timeout=timeout)


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port} after {timeout}s")


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


def provider_table(name: str, protocol: str, base: str, **extra: Any) -> dict[str, Any]:
    """A [[providers]] entry pointing at a fake upstream."""
    return {"name": name, "protocol": protocol,
            "base_url": base + "/v1" if protocol == "openai" else base,
            "models": {"default": "fake-model", "haiku": "fake-small"}, **extra}


async def fake_stats(base: str) -> dict[str, Any]:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(base + "/_fake/stats") as r:
        data: dict[str, Any] = await r.json()
        return data


CHROMIUM = "/usr/bin/chromium"  # Debian's package; Playwright's own browser download is never used
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


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
