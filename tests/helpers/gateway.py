"""Real gateways on loopback for the tests: config, ports, the running app's resources, CLI.

Every test module imports what it shares from here (never from another test module or
from conftest); conftest.py only turns these into fixtures.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.access_log import ACCESS_LOG
from gateway.accounting.keycache import KEY_CACHE
from gateway.accounting.limits import LIMITS
from gateway.accounting.usage import RECORDER
from gateway.accounts.users import create_key, create_user
from gateway.billing.payments import PAYMENTS
from gateway.config import CONFIG, Config, parse_config
from gateway.metrics import METRICS
from gateway.providers.base import PROVIDERS
from gateway.relay.breaker import BREAKERS
from gateway.relay.health_checks import HEALTH
from gateway.remote.hub import REMOTE_HUB
from gateway.reports.health import STARTED_AT
from gateway.store.base import DATABASE
from gateway.streams import STREAMS
from tests.helpers.services import fresh_database_url

ROOT = Path(__file__).resolve().parent.parent.parent
FIXTURES = ROOT / "tests" / "fixtures"

# attribute name -> app key, for `Gateway.<name>` (and the older `gw.state.<name>`)
RESOURCES: dict[str, web.AppKey[Any]] = {
    "config": CONFIG, "db": DATABASE, "keys": KEY_CACHE, "limits": LIMITS,
    "recorder": RECORDER, "providers": PROVIDERS, "breakers": BREAKERS, "health": HEALTH,
    "streams": STREAMS, "metrics": METRICS, "remote": REMOTE_HUB, "payments": PAYMENTS,
    "access_log": ACCESS_LOG, "started_at": STARTED_AT,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_config(tmp_path: Path, data: dict[str, Any] | None = None) -> Config:
    data = dict(data or {})
    database = {"path": str(tmp_path / "llmapi.db")}
    if os.environ.get("LLMAPI_TEST_STORE") == "postgres":  # the suite against PostgreSQL
        database["url"] = fresh_database_url()
    data.setdefault("database", database)
    return parse_config(data, source="test-config", env={}, base_dir=tmp_path)


class Resources:
    """`gw.state.db` etc.: the app's resources by attribute (kept for older tests)."""

    def __init__(self, app: web.Application) -> None:
        object.__setattr__(self, "_app", app)

    def __getattr__(self, name: str) -> Any:
        return self._app[RESOURCES[name]]


class Gateway:
    """A running in-process gateway plus helpers to create users and keys in its database.

    Its resources are attributes: `gw.db`, `gw.keys`, `gw.limits`, `gw.recorder`,
    `gw.providers`, `gw.breakers`, `gw.remote`, `gw.payments`, `gw.config`, ...
    """

    def __init__(self, server: TestServer, app: web.Application) -> None:
        self.server = server
        self.app = app

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def state(self) -> Any:
        return Resources(self.app)

    def __getattr__(self, name: str) -> Any:
        if name in RESOURCES:
            return self.app[RESOURCES[name]]
        raise AttributeError(name)

    async def new_key(self, email: str = "dev@example.com", plan: str = "free") -> str:
        db = self.app[DATABASE]
        if await db.fetch_one("user_by_email", {"email": email}) is None:
            await create_user(db, email, plan=plan)
        return (await create_key(db, email)).raw


GatewayFactory = Callable[..., Any]
"""The `gateway_factory` fixture: `await start(config_dict)` -> Gateway."""


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


def provider_table(name: str, protocol: str, base: str, **extra: Any) -> dict[str, Any]:
    """A [[providers]] entry pointing at a fake upstream."""
    return {"name": name, "protocol": protocol,
            "base_url": base + "/v1" if protocol == "openai" else base,
            "models": {"default": "fake-model", "haiku": "fake-small"}, **extra}


async def fake_stats(base: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(base + "/_fake/stats") as r:
        data: dict[str, Any] = await r.json()
        return data


CHROMIUM = "/usr/bin/chromium"  # Debian's package; Playwright's own browser download is never used
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
