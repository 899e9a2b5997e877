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


DEPLOY_HAPROXY = Path(__file__).resolve().parent.parent.parent / "deploy" / "haproxy.cfg"


def render_haproxy(text: str, port: int, backends: list[int], socket_path: Path) -> str:
    """deploy/haproxy.cfg with loopback addresses: every `bind` becomes 127.0.0.1:port,
    every backend's `server gwN ...` lines become one line per port given (same names,
    gw1...), the stats socket moves to `socket_path`. Nothing else changes, so the tests
    run the deployed configuration."""
    out: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        indent = line[: len(line) - len(line.lstrip())]
        if stripped.startswith("bind "):
            out.append(f"{indent}bind 127.0.0.1:{port}")
        elif stripped.startswith("stats socket "):
            out.append(f"{indent}stats socket {socket_path} mode 600 level admin")
        elif stripped.startswith("server gw"):
            if stripped.startswith("server gw1 "):
                out.extend(f"{indent}server gw{i + 1} 127.0.0.1:{p}"
                           for i, p in enumerate(backends))
        else:
            out.append(line)
    return "\n".join(out) + "\n"


class Haproxy:
    """A real HAProxy running deploy/haproxy.cfg in front of the given loopback ports
    (health checks on `/health/ready`, SSE unbuffered, remote control hashed by session)."""

    def __init__(self, backends: list[int], config_text: str | None = None) -> None:
        self.port = free_port()
        self.backends = backends
        self.dir = Path(tempfile.mkdtemp(prefix="llmapi-haproxy-"))
        self.socket = self.dir / "admin.sock"
        self.config_text = config_text
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "out.log"

    def start(self) -> Haproxy:
        exe = shutil.which("haproxy")
        if exe is None:
            raise ServiceError("haproxy not found (apt-get install haproxy)")
        text = self.config_text or DEPLOY_HAPROXY.read_text()
        cfg = self.dir / "haproxy.cfg"
        cfg.write_text(render_haproxy(text, self.port, self.backends, self.socket))
        check = subprocess.run([exe, "-c", "-f", str(cfg)], capture_output=True, text=True)
        if check.returncode != 0:
            raise ServiceError(f"haproxy config invalid: {check.stdout} {check.stderr}")
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([exe, "-db", "-f", str(cfg)], stdout=out,
                                         stderr=subprocess.STDOUT)
        wait_port(self.port, 20, "haproxy", self.proc, self.log)
        # the listener can be up a moment before the admin socket exists (seen under load)
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise ServiceError(f"haproxy admin socket {self.socket} never appeared: "
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.01)
        return self

    def command(self, line: str) -> str:
        """One command on the admin socket (`show stat`, `disable server ...`)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.socket))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def server_rows(self, backend: str = "gateways") -> dict[str, dict[str, str]]:
        """`show stat` of one backend: server name -> its CSV fields (status, stot for
        sessions served, scur for current ones, ...)."""
        lines = self.command("show stat").splitlines()
        if not lines or not lines[0].startswith("# "):
            raise ServiceError(f"haproxy stats: unexpected answer {lines[:2]}")
        header = lines[0][2:].split(",")
        rows: dict[str, dict[str, str]] = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == backend and row.get("svname") not in (
                    "FRONTEND", "BACKEND", None):
                rows[row["svname"]] = row
        return rows

    def server_states(self, backend: str = "gateways") -> dict[str, str]:
        """Server name -> HAProxy's status (UP, DOWN, UP 1/2, MAINT, ...) in `backend`."""
        return {name: row["status"] for name, row in self.server_rows(backend).items()}

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
