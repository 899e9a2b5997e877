"""Real PostgreSQL, Redis and HAProxy for the tests, from Debian's packages.

Each starts in its own temporary directory on a free loopback port and is stopped by the
fixture that started it. A part that cannot start raises `ServiceError` with the reason
(and the server's log), so the test fails saying why; nothing here skips.

PostgreSQL refuses to run as root, so when the tests run as root the cluster is created
and started as the Debian `postgres` user (`runuser`), in a directory that user owns.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PG_BIN_DIRS = [Path(f"/usr/lib/postgresql/{v}/bin") for v in (17, 16, 15, 14, 13)]


class ServiceError(RuntimeError):
    """A real server the test needs could not be started."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None,
              log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"{what} exited with {proc.returncode}: {_tail(log)}")
        if port_open(port):
            return
        time.sleep(0.05)
    raise ServiceError(f"{what} not listening on 127.0.0.1:{port} after {timeout}s: "
                       f"{_tail(log)}")


def _tail(log: Path | None) -> str:
    if log is None or not log.exists():
        return "(no log)"
    return log.read_text(errors="replace")[-2000:]


def pg_bin(name: str) -> str:
    for directory in PG_BIN_DIRS:
        if (directory / name).exists():
            return str(directory / name)
    found = shutil.which(name)
    if found is None:
        raise ServiceError(f"PostgreSQL's {name} not found (apt-get install postgresql)")
    return found


class PostgresServer:
    """One throwaway cluster; `url(db)` gives a DSN with the generated password."""

    def __init__(self) -> None:
        self.port = free_port()
        self.password = secrets.token_urlsafe(18)
        self.user = "llmapi"
        self.dir = Path(tempfile.mkdtemp(prefix="llmapi-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self._run_as: str | None = None

    def _cmd(self, *args: str) -> list[str]:
        if self._run_as:
            return ["runuser", "-u", self._run_as, "--", *args]
        return list(args)

    def start(self) -> PostgresServer:
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise ServiceError("running as root and there is no 'postgres' user to run "
                                   "PostgreSQL as (apt-get install postgresql)") from None
            self._run_as = "postgres"
            shutil.chown(self.dir, "postgres")
            os.chmod(self.dir, 0o700)
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password)
        if self._run_as:
            shutil.chown(pwfile, "postgres")
        init = subprocess.run(
            self._cmd(pg_bin("initdb"), "-D", str(self.data), "-U", self.user,
                      "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8",
                      "--locale=C.UTF-8", "--no-sync"),
            capture_output=True, text=True, timeout=120)
        if init.returncode != 0:
            raise ServiceError(f"initdb failed: {init.stderr[-2000:]}")
        pwfile.unlink()
        self._pg_ctl_start()
        return self

    def _pg_ctl_start(self) -> None:
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                f"-c unix_socket_directories='' -c fsync=off -c synchronous_commit=off "
                f"-c full_page_writes=off -c max_connections=200")
        run = subprocess.run(
            self._cmd(pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o",
                      opts, "-w", "-t", "60", "start"),
            capture_output=True, text=True, timeout=90)
        if run.returncode != 0:
            raise ServiceError(f"pg_ctl start failed: {run.stderr[-1000:]} {_tail(self.log)}")
        wait_port(self.port, 30, "PostgreSQL", log=self.log)

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(self._cmd(pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w",
                                 "stop"), capture_output=True, timeout=60)

    def restart(self) -> None:
        self.stop()
        self._pg_ctl_start()

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    async def create_database(self, name: str) -> str:
        import asyncpg

        conn = await asyncpg.connect(self.url())
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url(name)


class RedisServer:
    """`redis-server --port N --save ''` in a temp dir (no persistence: a restart empties
    it, which is what the rebuild tests want)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="llmapi-redis-"))
        self.log = self.dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise ServiceError("redis-server not found (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--logfile", str(self.log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, 20, "redis-server", self.proc, self.log)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None
        deadline = time.monotonic() + 10
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


HAPROXY_TEMPLATE = """\
global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    timeout tunnel 1h
    option http-buffer-request
    retries 2
    option redispatch
frontend fe
    bind 127.0.0.1:{port}
    default_backend gateways
backend gateways
    balance roundrobin
    option httpchk GET /ready
    http-check expect status 200
    default-server inter 300ms fall 2 rise 2
{servers}
"""


class Haproxy:
    """A real HAProxy in front of the given ports, health-checking `/ready`."""

    def __init__(self, backends: list[int]) -> None:
        self.port = free_port()
        self.backends = backends
        self.dir = Path(tempfile.mkdtemp(prefix="llmapi-haproxy-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Haproxy:
        exe = shutil.which("haproxy")
        if exe is None:
            raise ServiceError("haproxy not found (apt-get install haproxy)")
        servers = "\n".join(f"    server gw{i} 127.0.0.1:{p} check"
                            for i, p in enumerate(self.backends))
        cfg = self.dir / "haproxy.cfg"
        cfg.write_text(HAPROXY_TEMPLATE.format(port=self.port, servers=servers))
        log = self.dir / "out.log"
        check = subprocess.run([exe, "-c", "-f", str(cfg)], capture_output=True, text=True)
        if check.returncode != 0:
            raise ServiceError(f"haproxy config invalid: {check.stdout} {check.stderr}")
        with log.open("wb") as out:
            self.proc = subprocess.Popen([exe, "-db", "-f", str(cfg)], stdout=out,
                                         stderr=subprocess.STDOUT)
        wait_port(self.port, 20, "haproxy", self.proc, log)
        return self

    def destroy(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


_shared_pg: PostgresServer | None = None
_db_counter = 0


def shared_postgres() -> PostgresServer:
    """One cluster for the whole test run (each test gets its own database in it)."""
    global _shared_pg
    if _shared_pg is None:
        import atexit

        _shared_pg = PostgresServer().start()
        atexit.register(_shared_pg.destroy)
    return _shared_pg


def fresh_database_url() -> str:
    """A new empty database on the shared cluster (callable from sync or async code)."""
    import asyncio
    import threading

    global _db_counter
    _db_counter += 1
    name = f"t{os.getpid()}_{_db_counter}"
    server = shared_postgres()
    result: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(asyncio.run(server.create_database(name)))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise ServiceError(f"cannot create database {name}: {errors[0]}")
    return result[0]
