"""Several real gateway processes on one PostgreSQL database behind a real HAProxy.

The multi-instance tests (tests/scaleout/) run the topology of deploy/: N `python -m gateway
serve` subprocesses sharing one PostgreSQL database (and one Redis when asked), a scripted
`fake-upstream` subprocess as their provider, and HAProxy running deploy/haproxy.cfg with
only its addresses swapped for loopback ones (SSE unbuffered, readiness checks on
`/health/ready`, session-hashed remote control).

    async with Cluster(tmp_path, instances=3, redis=True) as cluster:
        key = await cluster.new_key("a@example.com", plan="open")
        async with session.post(cluster.url + "/v1/messages", headers={"x-api-key": key},
                                json=...) as r: ...
        cluster.kill(1)                   # SIGKILL instance 1 (index into cluster.instances)
        await cluster.wait_backend(1, up=False)  # HAProxy saw it go
        await cluster.restart(1)          # same port, same config, waits for /health/ready
        rows = await cluster.fetch("SELECT count(*) AS n FROM usage_logs")

Everything is torn down on exit, including the database; a part that cannot start raises
`ServiceError` (from tests/helpers/services.py) with its log, so the test fails saying why.
Each instance's log is `cluster.instances[i].log` (its tail is in every start error).

`Cluster.fixture()` is what the `cluster_factory` fixture in tests/conftest.py yields.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from cryptography.fernet import Fernet

from gateway.accounts.users import create_key, create_user
from gateway.config import parse_config
from gateway.store.base import Store
from gateway.store.factory import open_store
from tests.helpers.services import (
    Haproxy,
    RedisServer,
    ServiceError,
    free_port,
    fresh_database_url,
    port_open,
)

ROOT = Path(__file__).resolve().parent.parent.parent

OPEN_PLAN = {"name": "open", "price_month": 0, "monthly_tokens": 0, "rpm": 0, "rpd": 0,
             "max_keys": 20, "max_input_tokens": 0, "concurrency": 0}
"""A plan whose limits are checked but never trip (load and accounting tests)."""


def to_toml(data: Mapping[str, Any]) -> str:
    """Enough TOML for a gateway config: tables, arrays of tables, scalars, lists, inline
    tables one level down (the standard library reads TOML but does not write it)."""
    lines: list[str] = []

    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return repr(value)
        if isinstance(value, str):
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(value, list | tuple):
            return "[" + ", ".join(scalar(v) for v in value) + "]"
        if isinstance(value, Mapping):
            return "{" + ", ".join(f"{k} = {scalar(v)}" for k, v in value.items()) + "}"
        raise TypeError(f"cannot write {value!r} as TOML")

    def table(name: str, body: Mapping[str, Any], array: bool = False) -> None:
        lines.append(f"[[{name}]]" if array else f"[{name}]")
        nested: list[tuple[str, Mapping[str, Any]]] = []
        for key, value in body.items():
            if isinstance(value, Mapping):
                nested.append((key, value))
            else:
                lines.append(f"{key} = {scalar(value)}")
        for key, value in nested:
            table(f"{name}.{key}", value)

    for name, value in data.items():
        if isinstance(value, Mapping):
            table(name, value)
        elif isinstance(value, list | tuple) and value and isinstance(value[0], Mapping):
            for item in value:
                table(name, item, array=True)
        else:
            raise TypeError(f"top-level {name!r} must be a table or an array of tables")
    return "\n".join(lines) + "\n"


def merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`extra` over `base`, tables merged key by key, arrays replaced."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def log_tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


@dataclass
class Instance:
    """One gateway process: its port, config file, log and (while running) process."""

    index: int
    name: str  # gw1, gw2, ...: the HAProxy server name
    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.dir / "gateway.toml"

    @property
    def log(self) -> Path:
        return self.dir / "gateway.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Cluster:
    """N gateways + PostgreSQL (+ Redis) + fake upstream + HAProxy; see the module doc.

    `config` is merged over the generated one for every instance (e.g. `{"plans": [...],
    "server": {"drain_seconds": 2}}`); `upstream_args` go to `fake-upstream` (e.g.
    `["--chunk-delay", "0.01"]`); `upstream_protocol` picks the provider's protocol.
    """

    def __init__(self, tmp: Path, instances: int = 3, redis: bool = False,
                 config: Mapping[str, Any] | None = None, upstream_args: Sequence[str] = (),
                 upstream_protocol: str = "anthropic", start_timeout: float = 60.0) -> None:
        self.tmp = tmp
        self.instances_wanted = instances
        self.redis = redis
        self.config: Mapping[str, Any] = config or {}
        self.upstream_args = upstream_args
        self.upstream_protocol = upstream_protocol
        self.start_timeout = start_timeout
        self.instances: list[Instance] = []
        self.database_url = ""
        self.redis_server: RedisServer | None = None
        self.haproxy: Haproxy | None = None
        self.upstream_port = 0
        self.upstream: subprocess.Popen[bytes] | None = None
        self.session_secret = Fernet.generate_key().decode()
        self._store: Store | None = None
        self._pg: asyncpg.Pool | None = None

    # ---- addresses ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The balancer: where clients go."""
        assert self.haproxy is not None, "cluster not started"
        return f"http://127.0.0.1:{self.haproxy.port}"

    @property
    def upstream_url(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}"

    # ---- start and stop -----------------------------------------------------------------

    async def __aenter__(self) -> Cluster:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.database_url = await loop.run_in_executor(None, fresh_database_url)
        if self.redis:
            self.redis_server = await loop.run_in_executor(None, RedisServer().start)
        await self._start_upstream()
        for i in range(self.instances_wanted):
            directory = self.tmp / f"gw{i + 1}"
            directory.mkdir(parents=True, exist_ok=True)
            self.instances.append(Instance(i, f"gw{i + 1}", free_port(), directory))
        self.haproxy = Haproxy([inst.port for inst in self.instances])
        for inst in self.instances:
            inst.config_path.write_text(to_toml(self.instance_config(inst)))
        # The first instance migrates the database alone; the others then start together
        # (the migration lock makes a simultaneous start safe too: tests/store/).
        await self.start_instance(0)
        await asyncio.gather(*(self.start_instance(i) for i in range(1, len(self.instances))))
        await loop.run_in_executor(None, self.haproxy.start)
        await asyncio.gather(*(self.wait_backend(i, up=True) for i in range(len(self.instances))))

    def instance_config(self, inst: Instance) -> dict[str, Any]:
        """The config file of one instance: same database, Redis, secret and public URL
        (the balancer's), its own port and its own journal file."""
        assert self.haproxy is not None
        base: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "port": inst.port, "access_log": False,
                       "public_url": f"http://127.0.0.1:{self.haproxy.port}",
                       "shutdown_grace": 10},
            "database": {"url": self.database_url, "path": str(inst.dir / "llmapi.db")},
            "web": {"session_secret": self.session_secret},
            "routing": {"health_interval": 0},
            "providers": [{
                "name": "fake", "protocol": self.upstream_protocol,
                "base_url": self.upstream_url + ("/v1" if self.upstream_protocol == "openai"
                                                 else ""),
                "models": {"default": "fake-model", "haiku": "fake-small"}}],
            "plans": [OPEN_PLAN],
        }
        if self.redis_server is not None:
            base["redis"] = {"url": self.redis_server.url}
        return merge(base, self.config)

    async def _start_upstream(self) -> None:
        self.upstream_port = free_port()
        log = self.tmp / "fake-upstream.log"
        with log.open("wb") as out:
            self.upstream = subprocess.Popen(
                [sys.executable, "-m", "gateway", "fake-upstream", "--port",
                 str(self.upstream_port), *self.upstream_args],
                env=self._env(), stdout=out, stderr=subprocess.STDOUT)
        await self._wait(lambda: port_open(self.upstream_port), 30,
                         f"fake-upstream on {self.upstream_port}", self.upstream, log)

    def _env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMAPI_")}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        return {**env, **(extra or {})}

    async def start_instance(self, index: int) -> Instance:
        """Start (or start again) instance `index` and wait until it answers ready."""
        inst = self.instances[index]
        if inst.running:
            raise RuntimeError(f"{inst.name} is already running")
        out = inst.log.open("ab")
        out.write(f"---- start {inst.starts + 1} ----\n".encode())
        out.flush()
        inst.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(inst.config_path)],
            env=self._env(), stdout=out, stderr=subprocess.STDOUT, cwd=inst.dir)
        out.close()
        inst.starts += 1
        await self.wait_ready(index)
        return inst

    async def wait_ready(self, index: int, timeout: float | None = None) -> None:
        """Until the instance itself answers 200 on /health/ready (not through HAProxy)."""
        inst = self.instances[index]

        async def ready() -> bool:
            try:
                async with aiohttp.ClientSession() as s, s.get(
                        inst.url + "/health/ready",
                        timeout=aiohttp.ClientTimeout(total=2)) as r:
                    return r.status == 200
            except (TimeoutError, aiohttp.ClientError, OSError):
                return False

        await self._wait_async(ready, timeout or self.start_timeout, f"{inst.name} ready",
                               inst.proc, inst.log)

    def kill(self, index: int) -> None:
        """SIGKILL: no drain, no flush (the write-behind window of this instance is lost
        until its journal is replayed by the next start)."""
        inst = self.instances[index]
        if inst.proc is not None and inst.proc.poll() is None:
            inst.proc.send_signal(signal.SIGKILL)
            inst.proc.wait(10)

    def terminate(self, index: int) -> None:
        """SIGTERM: the instance drains (readiness 503), then shuts down cleanly."""
        inst = self.instances[index]
        if inst.proc is not None and inst.proc.poll() is None:
            inst.proc.send_signal(signal.SIGTERM)

    async def wait_exit(self, index: int, timeout: float = 60) -> int:
        inst = self.instances[index]
        assert inst.proc is not None
        deadline = time.monotonic() + timeout
        while inst.proc.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{inst.name} still running {timeout}s after the signal: "
                                   f"{log_tail(inst.log)}")
            await asyncio.sleep(0.05)
        return inst.proc.returncode

    async def stop(self, index: int, timeout: float = 60) -> int:
        """SIGTERM and wait for the exit; returns the exit status."""
        self.terminate(index)
        return await self.wait_exit(index, timeout)

    async def restart(self, index: int) -> Instance:
        """Kill if still running, start again on the same port, wait for HAProxy to use it."""
        self.kill(index)
        inst = await self.start_instance(index)
        if self.haproxy is not None and self.haproxy.proc is not None:
            await self.wait_backend(index, up=True)
        return inst

    async def close(self) -> None:
        if self._store is not None:
            with contextlib.suppress(Exception):
                await self._store.close()
            self._store = None
        if self._pg is not None:
            with contextlib.suppress(Exception):
                await self._pg.close()
            self._pg = None
        for inst in self.instances:
            if inst.running:
                assert inst.proc is not None
                inst.proc.terminate()
        for inst in self.instances:
            if inst.proc is not None:
                try:
                    inst.proc.wait(20)
                except subprocess.TimeoutExpired:
                    inst.proc.kill()
                    inst.proc.wait()
        if self.haproxy is not None:
            self.haproxy.destroy()
        if self.upstream is not None and self.upstream.poll() is None:
            self.upstream.terminate()
            try:
                self.upstream.wait(10)
            except subprocess.TimeoutExpired:
                self.upstream.kill()
        if self.redis_server is not None:
            self.redis_server.destroy()
        if self.database_url:
            await _drop_database(self.database_url)

    # ---- the balancer -------------------------------------------------------------------

    def backend_states(self, backend: str = "gateways") -> dict[str, str]:
        """HAProxy's view, from its stats socket: server name -> UP / DOWN / MAINT / ..."""
        assert self.haproxy is not None
        return self.haproxy.server_states(backend)

    async def wait_backend(self, index: int, up: bool, timeout: float = 15,
                           backend: str = "gateways") -> float:
        """Until HAProxy marks instance `index` up (or down); returns the seconds waited."""
        name = self.instances[index].name
        start = time.monotonic()
        want = "UP" if up else "DOWN"
        while True:
            state = self.backend_states(backend).get(name, "?")
            if state.split(" ")[0] == want:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"HAProxy still says {name} is {state} after {timeout}s")
            await asyncio.sleep(0.05)

    # ---- the data -----------------------------------------------------------------------

    async def store(self) -> Store:
        """The gateway's own store on the shared database, opened in the test process (to
        create users and keys with the real code)."""
        if self._store is None:
            config = parse_config(self.instance_config(self.instances[0]),
                                  source="cluster", env={}, base_dir=self.tmp)
            self._store = await open_store(config)
        return self._store

    async def new_key(self, email: str, plan: str = "open") -> str:
        """A user (created if new) on `plan` and a fresh API key for them."""
        db = await self.store()
        if await db.fetch_one("user_by_email", {"email": email}) is None:
            await create_user(db, email, plan=plan)
        return (await create_key(db, email)).raw

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """Raw SQL on the shared database (asyncpg: `$1` parameters)."""
        if self._pg is None:
            self._pg = await asyncpg.create_pool(self.database_url, min_size=1, max_size=2)
        return list(await self._pg.fetch(sql, *args))

    async def fetchval(self, sql: str, *args: Any) -> Any:
        rows = await self.fetch(sql, *args)
        return rows[0][0] if rows else None

    def cli(self, *args: str, index: int = 0, timeout: float = 60,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """`python -m gateway ARGS --config <instance index's config>` (an operator command
        against the shared database)."""
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args, "--config",
             str(self.instances[index].config_path)],
            capture_output=True, text=True, env=self._env(), timeout=timeout, input=stdin)

    async def upstream_stats(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as s, s.get(self.upstream_url + "/_fake/stats") as r:
            data: dict[str, Any] = await r.json()
            return data

    # ---- waiting ------------------------------------------------------------------------

    @staticmethod
    async def _wait(check: Any, timeout: float, what: str,
                    proc: subprocess.Popen[bytes] | None, log: Path) -> None:
        async def once() -> bool:
            return bool(check())

        await Cluster._wait_async(once, timeout, what, proc, log)

    @staticmethod
    async def _wait_async(check: Any, timeout: float, what: str,
                          proc: subprocess.Popen[bytes] | None, log: Path) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise ServiceError(f"{what}: process exited with {proc.returncode}: "
                                   f"{log_tail(log)}")
            if await check():
                return
            await asyncio.sleep(0.05)
        raise ServiceError(f"{what}: not after {timeout}s: {log_tail(log)}")

    @classmethod
    @contextlib.asynccontextmanager
    async def fixture(cls, tmp: Path) -> AsyncIterator[Any]:
        """Yields `start(**kwargs) -> Cluster` (kwargs as the constructor's); every cluster
        started is closed at the end."""
        started: list[Cluster] = []

        async def start(**kwargs: Any) -> Cluster:
            cluster = cls(tmp / f"cluster{len(started)}", **kwargs)
            cluster.tmp.mkdir(parents=True, exist_ok=True)
            started.append(cluster)
            await cluster.start()
            return cluster

        try:
            yield start
        finally:
            for cluster in reversed(started):
                await cluster.close()


async def _drop_database(url: str) -> None:
    """The per-test database goes with the cluster (the shared server stays)."""
    name = url.rsplit("/", 1)[1]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with contextlib.suppress(Exception):
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
