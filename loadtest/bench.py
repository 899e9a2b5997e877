"""Measure what the gateway adds on top of its upstream: direct vs through, in the same run.

    python loadtest/bench.py                      # the full table (about 8 minutes)
    python loadtest/bench.py --compare litellm    # the same, plus LiteLLM's proxy as a row
    python loadtest/bench.py --soak 300           # plus a 5-minute memory soak
    python loadtest/bench.py --profile small-openai   # py-spy on the gateway during a run
    python loadtest/bench.py --quick              # seconds: a smoke run (used by the tests)
    python loadtest/bench.py --shared-store       # plus the gateway on PostgreSQL + Redis

Method
------
Processes. `fake-upstream` (precomputed answers, so it costs next to nothing per request) and
the gateway run as separate processes started here, pinned with `sched_setaffinity` when the
machine has two CPUs or more: the gateway on CPU 0, the fake upstream on CPU 1, and the load
generator on CPU 1 as well (with three or more CPUs it gets the rest to itself). The same
placement serves every row, so "direct" is the fake upstream plus the client on CPU 1, and
"through" adds one process on CPU 0: the ratio through/direct says whether the gateway
keeps up with what its upstream can serve. Rows on CPU 0, one loaded at a time:
`llmapi` (the product defaults), `llmapi-noacct` (`[server] accounting = false`: no limits,
no usage rows; the baseline for the cost of accounting, issue 6), `llmapi-aiohttp` (the
defaults with `[server] upstream_client = "aiohttp"`: the old upstream client, issue 19),
`llmapi-pg-redis` (with `--shared-store`: the defaults on PostgreSQL and Redis, both
started here from Debian's packages, pinned beside the fake upstream; the "Shared store"
table sets it against `llmapi`, SQLite + in-process counters, scenario by scenario),
`aiohttp-floor` and `lean-floor` (loadtest/floor_relay.py: a bare aiohttp-served relay that
forwards bytes and nothing else, with aiohttp's client or the lean one: the floor of this
stack) and, with `--compare litellm`, LiteLLM's proxy (installed into
loadtest/results/litellm-venv) against the same fake upstream.

Gateway config. One user on a plan with 0 everywhere (limits are checked but never trip), the
product defaults otherwise: auth from the key cache, limits, usage rows written behind to
SQLite, metrics, and the access log (to a file). Two providers: `sonnet` models go to the
`openai` protocol provider (full Anthropic <-> OpenAI conversion), `opus` models to the
`anthropic` protocol provider (bytes passed through, usage tapped). "Direct" requests are the
exact bodies the gateway sends upstream (`to_openai_request` for the openai protocol).

Scenarios, each for both protocols: (a) `small`, a non-streamed chat answered in 5 pieces;
(b) `stream50`, a streamed answer of 50 content chunks. Plus `stream100` (openai) to check that
doubling the chunks at most doubles the gateway's CPU per request.

Throughput. `wrk` (Debian package `wrk`, POST bodies from a generated Lua script) with one
thread and `--connections` (32) open connections for `--duration` seconds after a warm-up;
without `wrk` (or with `--no-wrk`) a small aiohttp client with the same number of connections.
Every target runs `--rounds` (2) times, interleaved, and the best run is kept: the machine is
shared, and another process taking CPU only ever makes a run slower. Reported: requests/s,
p50/p99 latency of the whole response, added p50 (through minus direct at the same
concurrency), CPU per request of the serving process (utime+stime deltas from /proc/PID/stat
divided by the requests served), its share of a CPU, its peak RSS (VmHWM from
/proc/PID/status), through/direct throughput, and "other CPU": CPUs' worth of work done
meanwhile by processes outside the benchmark (/proc/stat minus ours), so a disturbed row shows.
A closed loop of 32 connections saturates whatever it drives, so its latency is mostly
queueing; `--paced-rate` (1,000 req/s over the same 32 connections, wrk's `delay()` hook)
measures latency under load below saturation.

Sequential latency. One keep-alive connection per target, interleaved rounds (the order of
the targets rotates every round): each round sends `--seq-requests` requests to each target
in turn; the added latency is the median over rounds of (round median through - round median
direct), so slow drifts of the machine cancel out.

Memory. `--open-streams` (1,000) streams opened through the gateway at once (openai protocol,
slow upstream so they all stay open), the gateway's VmRSS read while all are open. `--soak S`
drives streamed load for S seconds in 10-second slices and reads VmRSS after each slice.

Figures are printed as a table and written as JSON to loadtest/results/ (or `--json PATH`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.protocol.openai_request import OpenAIOptions, to_openai_request  # noqa: E402

RESULTS = ROOT / "loadtest" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
OPENAI_MODEL = "claude-sonnet-4-6"   # -> openai protocol provider (conversion)
PASS_MODEL = "claude-opus-4-6"       # -> anthropic protocol provider (pass-through)
UPSTREAM_MODEL = "fake-model"
LITELLM_KEY = "sk-bench-" + "0f" * 24  # LiteLLM refuses to start without a master key

# The targets of issue 7, checked against what this run measured.
TARGET_SEQ_ADDED_MS = 0.30
TARGET_SMALL_RPS = 3000
TARGET_SMALL_ADDED_MS = 1.0
TARGET_STREAM_RPS = 700
TARGET_PASS_RATIO = 0.85
TARGET_VS_LITELLM = 10.0
TARGET_RSS_MB = 150
TARGET_SOAK_GROWTH = 0.10
TARGET_ACCOUNTING_COST = 0.10
# Issue 19: every feature on for little more than the bare relay costs.
TARGET_CPU_VS_FLOOR = 1.3          # non-stream CPU/request at most 1.3x the aiohttp floor's
TARGET_STREAM50_OPENAI_RPS = 3500  # streamed 50-chunk openai conversion
FLOORS = ("aiohttp-floor", "lean-floor")


# ---------------------------------------------------------------- processes and /proc


def cpu_plan() -> dict[str, set[int] | None]:
    """Which CPUs each process gets: gateway alone, fake upstream and client together."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return {"gateway": None, "upstream": None, "client": None}
    rest = set(cpus[2:]) or {cpus[1]}
    return {"gateway": {cpus[0]}, "upstream": {cpus[1]}, "client": rest}


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes, in seconds (fields 14 and 15 of /proc/PID/stat)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def memory_kb(pids: list[int], field_name: str) -> int:
    """A /proc/PID/status memory field (VmRSS, VmHWM) summed over the processes, in KiB."""
    total = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field_name + ":"):
                    total += int(line.split()[1])
    return total


def busy_seconds() -> float:
    """CPU time the whole machine has spent busy (all CPUs, from /proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def own_seconds() -> float:
    """CPU time of this process and its finished children (wrk, py-spy)."""
    me, kids = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                     resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def descendants(pid: int) -> list[int]:
    """The process and all its children (LiteLLM may fork a worker)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError, IndexError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def tool_path(name: str) -> str:
    """A console script of this virtual environment, else whatever is on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A process started by the benchmark, with where it listens and how to check it is up."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    ready_path: str

    @property
    def pids(self) -> list[int]:
        return descendants(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_process(name: str, argv: list[str], cpus: set[int] | None, log: Path,
                  url: str, ready_path: str, env: dict[str, str] | None = None) -> Server:
    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, **(env or {})}, preexec_fn=pin)
    return Server(name, proc, url, ready_path)


async def wait_ready(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise RuntimeError(f"{server.name} exited with {server.proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(server.url + server.ready_path) as resp:
                    if resp.status < 500:
                        return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{server.name} did not start within {timeout:.0f} s")


# ---------------------------------------------------------------- the gateway's world


def gateway_config(workdir: Path, name: str, port: int, upstream: str, accounting: bool,
                   client: str = "lean", database_url: str = "", redis_url: str = "") -> Path:
    """A config with both protocols against the fake upstream and the benchmark plan (on
    PostgreSQL and Redis when their URLs are given: the shared-store row)."""
    shared = ""
    if database_url:
        shared += f'url = "{database_url}"\n'
    if redis_url:
        shared += f'\n[redis]\nurl = "{redis_url}"\n'
    text = f"""
[server]
host = "127.0.0.1"
port = {port}
accounting = {"true" if accounting else "false"}
upstream_client = "{client}"

[database]
path = "{workdir / 'llmapi.db'}"
{shared}
[routing]
health_interval = 0

[[providers]]
name = "fake-openai"
protocol = "openai"
base_url = "{upstream}/v1"
[providers.models]
sonnet = "{UPSTREAM_MODEL}"
haiku = "{UPSTREAM_MODEL}"

[[providers]]
name = "fake-anthropic"
protocol = "anthropic"
base_url = "{upstream}"
[providers.models]
opus = "{UPSTREAM_MODEL}"

[[plans]]
name = "bench"
monthly_tokens = 0
rpm = 0
rpd = 0
max_keys = 0
max_input_tokens = 0
"""
    path = workdir / f"{name}.toml"
    path.write_text(text)
    return path


async def make_keys(config: Path, users: int, keys_per_user: int) -> list[str]:
    """Users on the benchmark plan and their raw keys (created straight in the database)."""
    from gateway.accounts.users import create_key, create_user
    from gateway.config import load_config
    from gateway.store.factory import open_store

    cfg = load_config(str(config))
    db = await open_store(cfg)  # the SQLite file, or PostgreSQL for the shared-store row
    try:
        from gateway.accounts.plans import sync_plans

        await sync_plans(db, cfg.plans)
        keys = []
        for u in range(users):
            email = f"bench{u}@example.com"
            await create_user(db, email, plan="bench")
            for _ in range(keys_per_user):
                keys.append((await create_key(db, email)).raw)
        return keys
    finally:
        await db.close()


SHARED_ROW = "llmapi-pg-redis"


async def start_shared_store(bench: Bench) -> tuple[str, str]:
    """A throwaway PostgreSQL cluster and redis-server on loopback (the test fixtures'
    starters, tests/helpers/services.py), pinned beside the fake upstream so the gateway's
    CPU is measured alone; returns (database URL, Redis URL)."""
    from tests.helpers.services import PostgresServer, RedisServer

    pg = await asyncio.to_thread(lambda: PostgresServer().start())
    bench.cleanups.append(pg.destroy)
    redis = await asyncio.to_thread(lambda: RedisServer().start())
    bench.cleanups.append(redis.destroy)
    cpus = bench.cpus["upstream"]
    if cpus:
        pids = [*pg_pids(pg.data), *([redis.proc.pid] if redis.proc else [])]
        for pid in pids:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, cpus)  # new backends inherit the postmaster's
    bench.notes.append(f"{SHARED_ROW}: PostgreSQL and Redis on this machine, pinned with the "
                       "fake upstream and the load generator; their CPU is not in the "
                       "gateway's CPU/request")
    return await pg.create_database("bench"), redis.url


def pg_pids(data_dir: Path) -> list[int]:
    """The postmaster (first line of postmaster.pid) and its children."""
    try:
        master = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    return descendants(master)


# ---------------------------------------------------------------- requests


def user_text(directive: dict[str, Any] | None, text: str) -> str:
    return (f"[[fake:{json.dumps(directive, separators=(',', ':'))}]] " if directive else "") + text


def anthropic_body(model: str, stream: bool, directive: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model, "max_tokens": 1024,
        "messages": [{"role": "user", "content": user_text(
            directive, "Write a haiku about a relay that you do not notice.")}],
    }
    if stream:
        body["stream"] = True
    return body


@dataclass(frozen=True)
class Target:
    """Where one row's requests go."""

    name: str
    url: str
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class Scenario:
    name: str
    protocol: str  # openai | anthropic
    stream: bool
    chunks: int
    ingress: str = "anthropic"  # the client API: anthropic | chat | responses

    def body(self) -> dict[str, Any]:
        model = OPENAI_MODEL if self.protocol == "openai" else PASS_MODEL
        directive = {"chunks": self.chunks} if self.chunks != 5 else None
        return anthropic_body(model, self.stream, directive)

    def client_body(self) -> tuple[str, dict[str, Any]]:
        """(path, body) of what the client sends through the gateway."""
        body = self.body()
        if self.ingress == "chat":  # the same request, in Chat Completions shape
            return "/v1/chat/completions", {**body, "model": body["model"]}
        if self.ingress == "responses":
            message = body["messages"][0]["content"]
            return "/v1/responses", {"model": body["model"], "input": message,
                                     "max_output_tokens": body["max_tokens"],
                                     "stream": self.stream}
        return "/v1/messages", body

    def direct(self, upstream: str) -> Target:
        body = self.body()
        if self.protocol == "openai":
            payload = to_openai_request(body, UPSTREAM_MODEL, OpenAIOptions())
            return Target("direct", upstream + "/v1/chat/completions", orjson.dumps(payload),
                          {"Content-Type": "application/json"})
        return Target("direct", upstream + "/v1/messages",
                      orjson.dumps({**body, "model": UPSTREAM_MODEL}),
                      {"Content-Type": "application/json", "anthropic-version": "2023-06-01"})

    def through(self, name: str, base: str, key: str) -> Target:
        path, body = self.client_body()
        if self.ingress != "anthropic":
            return Target(name, base + path, orjson.dumps(body),
                          {"Content-Type": "application/json",
                           "Authorization": f"Bearer {key}"})
        return Target(name, base + path, orjson.dumps(body),
                      {"Content-Type": "application/json", "x-api-key": key,
                       "anthropic-version": "2023-06-01"})


SCENARIOS = (
    Scenario("small-openai", "openai", False, 5),
    Scenario("small-anthropic", "anthropic", False, 5),
    Scenario("stream50-openai", "openai", True, 50),
    Scenario("stream50-anthropic", "anthropic", True, 50),
    # The OpenAI ingress against an openai-protocol upstream, same upstream work as above:
    # chat passes the body through, responses converts both ways.
    Scenario("chat-openai", "openai", False, 5, ingress="chat"),
    Scenario("responses-stream50-openai", "openai", True, 50, ingress="responses"),
)
STREAM100 = Scenario("stream100-openai", "openai", True, 100)


# ---------------------------------------------------------------- load generators


@dataclass
class Load:
    """What one load run saw from the client's side."""

    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    tool: str

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


WRK_SCRIPT = """
local f = assert(io.open("{body}", "rb"))
wrk.body = f:read("*a")
f:close()
wrk.method = "POST"
{headers}
{delay}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests":%d,"us":%d,"errors":%d,"p50":%d,"p99":%d}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def run_wrk(target: Target, connections: int, seconds: float, workdir: Path,
            cpus: set[int] | None, rate: float = 0.0) -> Load:
    """One wrk run (1 thread); its Lua script posts the target's body with its headers.

    With `rate`, each connection waits connections/rate seconds between requests (wrk's
    `delay()` hook), so the offered load stays near `rate` and below saturation."""
    body_path = workdir / f"body-{abs(hash(target.body))}.json"
    body_path.write_bytes(target.body)
    headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in target.headers.items())
    script = workdir / "post.lua"
    # uniform jitter around the mean gap, or the connections fire in lockstep bursts
    delay = (f"function delay() return math.random() * {2 * connections / rate * 1000:.3f} end"
             if rate else "")
    script.write_text(WRK_SCRIPT.format(body=body_path, headers=headers, delay=delay))
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            "--timeout", "10s", "-s", str(script), target.url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60,
                          preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
                          check=False)
    for line in done.stdout.splitlines():
        if line.startswith("WRKJSON "):
            data = json.loads(line[8:])
            return Load(data["requests"], data["errors"], data["us"] / 1e6,
                        data["p50"] / 1000, data["p99"] / 1000, "wrk")
    raise RuntimeError(f"wrk failed: {done.stdout}\n{done.stderr}")


async def run_aiohttp(target: Target, connections: int, seconds: float) -> Load:
    """The fallback load generator: `connections` workers posting in a loop until time is up."""
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        deadline = started + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    async with session.post(target.url, data=target.body,
                                            headers=target.headers) as resp:
                        await resp.read()
                        ok = resp.status == 200
                except aiohttp.ClientError:
                    ok = False
                latencies.append(time.perf_counter() - t0)
                errors += not ok

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    return Load(len(latencies), errors, elapsed, percentile(latencies, 50) * 1000,
                percentile(latencies, 99) * 1000, "aiohttp")


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


# ---------------------------------------------------------------- the benchmark


@dataclass
class Row:
    """One scenario x target throughput figure."""

    scenario: str
    target: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    cpu_ms_per_request: float
    cpu_util: float
    peak_rss_mb: float
    added_p50_ms: float | None = None
    ratio_vs_direct: float | None = None
    tool: str = ""
    foreign_cpu: float = 0.0  # CPUs' worth of work by processes not in the benchmark


@dataclass
class SeqRow:
    scenario: str
    target: str
    p50_ms: float
    added_p50_ms: float | None
    added_p99_ms: float | None


@dataclass
class Bench:
    """The running processes and everything measured so far."""

    args: argparse.Namespace
    workdir: Path
    cpus: dict[str, set[int] | None]
    upstream: Server | None = None
    servers: dict[str, Server] = field(default_factory=dict)  # target name -> process
    keys: list[str] = field(default_factory=list)
    server_keys: dict[str, str] = field(default_factory=dict)  # a gateway on its own database
    rows: list[Row] = field(default_factory=list)
    seq: list[SeqRow] = field(default_factory=list)
    paced_rows: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    cleanups: list[Any] = field(default_factory=list)  # stop PostgreSQL and Redis

    def use_wrk(self) -> bool:
        return not self.args.no_wrk and shutil.which("wrk") is not None

    async def load(self, target: Target, seconds: float) -> Load:
        if self.use_wrk():
            return await asyncio.to_thread(run_wrk, target, self.args.connections, seconds,
                                           self.workdir, self.cpus["client"])
        return await run_aiohttp(target, self.args.connections, seconds)

    def targets(self, scenario: Scenario) -> list[Target]:
        assert self.upstream is not None
        found = [scenario.direct(self.upstream.url)]
        for name, server in self.servers.items():
            if name == "litellm":
                if scenario.ingress == "anthropic":  # compared on the Messages API only
                    found.append(litellm_target(scenario, server.url))
            elif name in FLOORS:  # bytes passed through: the direct body, the floor's port
                direct = scenario.direct(self.upstream.url)
                path = direct.url.removeprefix(self.upstream.url)
                found.append(Target(name, server.url + path, direct.body,
                                    {"Content-Type": "application/json"}))
            else:
                found.append(scenario.through(name, server.url,
                                              self.server_keys.get(name, self.keys[0])))
        return found

    @contextlib.contextmanager
    def focus(self, target: str) -> Iterator[None]:
        """Freeze (SIGSTOP) every other process on the measured CPU while `target` runs:
        an idle competitor still runs timers and background loops (LiteLLM's do)."""
        frozen = [pid for name, server in self.servers.items() if name != target
                  for pid in server.pids]
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in frozen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def all_pids(self) -> list[int]:
        servers = [*self.servers.values(), *([self.upstream] if self.upstream else [])]
        return [pid for server in servers for pid in server.pids]

    def process_of(self, target: str) -> Server:
        assert self.upstream is not None
        return self.upstream if target == "direct" else self.servers[target]

    async def throughput(self, scenario: Scenario, only: tuple[str, ...] = ()) -> None:
        """`--rounds` interleaved runs per target; the best run of each target is kept
        (another process stealing CPU only ever makes a run slower)."""
        best: dict[str, Row] = {}
        targets = [t for t in self.targets(scenario) if not only or t.name in only]
        for round_no in range(self.args.rounds):
            for target in targets:
                if target.name == "litellm" and round_no:
                    continue  # slow to warm and far off: one round says enough
                with self.focus(target.name):
                    row = await self.one_run(scenario, target, profile_round=round_no)
                if target.name not in best or row.rps > best[target.name].rps:
                    best[target.name] = row
        direct = best.get("direct")
        for row in best.values():
            if direct is not None and row is not direct:
                row.added_p50_ms = row.p50_ms - direct.p50_ms
                row.ratio_vs_direct = row.rps / direct.rps if direct.rps else None
            self.rows.append(row)

    async def one_run(self, scenario: Scenario, target: Target, profile_round: int = -1) -> Row:
        server = self.process_of(target.name)
        await self.load(target, self.args.warmup)  # connections, caches and pools warm up
        pids = server.pids
        profiler = (self.start_profiler(scenario, target.name, server, profile_round)
                    if profile_round in (0, 1) else None)
        ours = self.all_pids()
        cpu0, ours0, busy0, own0 = (cpu_seconds(pids), cpu_seconds(ours), busy_seconds(),
                                    own_seconds())
        load = await self.load(target, self.args.duration)
        cpu = cpu_seconds(pids) - cpu0
        foreign = (busy_seconds() - busy0 - (cpu_seconds(ours) - ours0)
                   - (own_seconds() - own0)) / load.seconds if load.seconds else 0.0
        if profiler is not None:
            self.finish_profiler(scenario, profiler, profile_round)
        row = Row(scenario.name, target.name, load.rps, load.p50_ms, load.p99_ms,
                  load.errors, load.requests,
                  cpu * 1000 / load.requests if load.requests else 0.0,
                  cpu / load.seconds if load.seconds else 0.0,
                  memory_kb(pids, "VmHWM") / 1024, tool=load.tool,
                  foreign_cpu=max(0.0, foreign))
        print(f"  {scenario.name:<20} {target.name:<14} {row.rps:9.0f} req/s  "
              f"p50 {row.p50_ms:7.2f} ms  p99 {row.p99_ms:7.2f} ms  "
              f"cpu {row.cpu_ms_per_request:6.3f} ms/req  errors {row.errors}"
              + (f"  (other processes used {foreign:.2f} CPU)" if foreign > 0.1 else ""),
              flush=True)
        return row

    def start_profiler(self, scenario: Scenario, target: str, server: Server,
                       round_no: int) -> subprocess.Popen[bytes] | None:
        """py-spy on the gateway during this run, when `--profile` names the scenario: the
        first round records collapsed stacks (summarised below), the second a flame graph
        (SVG, kept in loadtest/results/). Figures of profiled runs are a little low."""
        if target != "llmapi" or scenario.name not in self.args.profile:
            return None
        return subprocess.Popen(
            [tool_path("py-spy"), "record", "--pid", str(server.proc.pid), "--rate", "250",
             "--format", "raw" if round_no == 0 else "flamegraph", "--nonblocking",
             "--output", str(self.profile_path(scenario, round_no)),
             "--duration", str(max(1, round(self.args.duration)))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def profile_path(self, scenario: Scenario, round_no: int) -> Path:
        if round_no == 0:
            return self.workdir / f"profile-{scenario.name}.txt"
        return RESULTS / f"flame-{scenario.name}-{time.strftime('%Y%m%d-%H%M')}.svg"

    def finish_profiler(self, scenario: Scenario, profiler: subprocess.Popen[bytes],
                        round_no: int) -> None:
        profiler.wait(60)
        out = self.profile_path(scenario, round_no)
        if round_no == 1:
            print(f"  flame graph {out}" if out.exists() else "  flame graph: py-spy failed")
            return
        if out.exists():
            summary = summarize_profile(out.read_text())
            self.extra.setdefault("profiles", {})[scenario.name] = summary
            print(f"  profile {out}")
            for name, own, total in summary[:25]:
                print(f"    self {own:5.1%}  total {total:5.1%}  {name}")

    async def paced(self, scenario: Scenario) -> None:
        """Latency at `--connections` with a fixed offered rate below saturation."""
        direct_p50 = None
        for target in self.targets(scenario):
            if target.name not in ("direct", "llmapi", "llmapi-noacct"):
                continue
            for seconds in (self.args.warmup, self.args.duration):
                with self.focus(target.name):
                    load = await asyncio.to_thread(run_wrk, target, self.args.connections,
                                                   seconds, self.workdir, self.cpus["client"],
                                                   self.args.paced_rate)
            added = None if direct_p50 is None else load.p50_ms - direct_p50
            if target.name == "direct":
                direct_p50 = load.p50_ms
            self.paced_rows.append({"scenario": scenario.name, "target": target.name,
                                    "rps": load.rps, "p50_ms": load.p50_ms,
                                    "p99_ms": load.p99_ms, "added_p50_ms": added,
                                    "errors": load.errors})
            print(f"  {scenario.name:<20} {target.name:<14} {load.rps:7.0f} req/s offered "
                  f"p50 {load.p50_ms:6.2f} ms p99 {load.p99_ms:6.2f} ms"
                  + (f"  added p50 {added:+.3f} ms" if added is not None else ""), flush=True)

    async def sequential(self, scenario: Scenario) -> None:
        """Interleaved rounds over one keep-alive connection per target."""
        targets = self.targets(scenario)
        rounds: dict[str, list[float]] = {t.name: [] for t in targets}
        round_p99: dict[str, list[float]] = {t.name: [] for t in targets}
        sessions = {t.name: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
                    for t in targets}
        try:
            for r in range(self.args.seq_rounds + 1):  # round 0 warms up
                shift = r % len(targets)
                for target in targets[shift:] + targets[:shift]:
                    with self.focus(target.name):
                        times = await timed_requests(sessions[target.name], target,
                                                     self.args.seq_requests)
                    if r:
                        rounds[target.name].append(statistics.median(times))
                        round_p99[target.name].append(percentile(times, 99))
        finally:
            for session in sessions.values():
                await session.close()
        direct = rounds["direct"]
        for target in targets:
            mine = rounds[target.name]
            added = added99 = None
            if target.name != "direct":
                added = statistics.median(a - b for a, b in zip(mine, direct, strict=True))
                added99 = statistics.median(
                    a - b for a, b in zip(round_p99[target.name], round_p99["direct"],
                                          strict=True))
            row = SeqRow(scenario.name, target.name, statistics.median(mine) * 1000,
                         added * 1000 if added is not None else None,
                         added99 * 1000 if added99 is not None else None)
            self.seq.append(row)
            extra = f"  added p50 {row.added_p50_ms:6.3f} ms" if added is not None else ""
            print(f"  {scenario.name:<20} {target.name:<14} p50 {row.p50_ms:6.3f} ms{extra}",
                  flush=True)

    async def open_streams(self, count: int) -> None:
        """Hold `count` converted streams open through the gateway; read its RSS meanwhile."""
        server = self.servers["llmapi"]
        scenario_body = anthropic_body(OPENAI_MODEL, True,
                                       {"chunks": 20, "chunk_delay": 0.3})
        target = Target("llmapi", server.url + "/v1/messages", orjson.dumps(scenario_body),
                        {"Content-Type": "application/json", "x-api-key": self.keys[0]})
        before = memory_kb(server.pids, "VmRSS") / 1024
        with self.focus("llmapi"):
            await self.hold_streams(server, target, count, before)

    async def hold_streams(self, server: Server, target: Target, count: int,
                           before: float) -> None:
        connector = aiohttp.TCPConnector(limit=0)
        results: list[bool] = []
        async with aiohttp.ClientSession(connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=60)) as session:

            async def one() -> None:
                try:
                    async with session.post(target.url, data=target.body,
                                            headers=target.headers) as resp:
                        await resp.read()
                        results.append(resp.status == 200)
                except aiohttp.ClientError:
                    results.append(False)

            tasks = []
            for i in range(count):  # open in batches so the listen backlog never overflows
                tasks.append(asyncio.create_task(one()))
                if i % 100 == 99:
                    await asyncio.sleep(0.05)
            active = await wait_active_streams(server.url, count, timeout=5.0)
            during = memory_kb(server.pids, "VmRSS") / 1024
            await asyncio.gather(*tasks)
        self.extra["open_streams"] = {
            "requested": count, "open_at_sample": active, "rss_before_mb": before,
            "rss_open_mb": during, "completed_ok": sum(results)}
        print(f"  {count} open streams: {active} open at the sample, gateway RSS "
              f"{before:.1f} MB -> {during:.1f} MB; {sum(results)} completed", flush=True)

    async def soak(self, seconds: float) -> None:
        """Streamed load in 10-second slices; VmRSS after each."""
        scenario = SCENARIOS[2]
        server = self.servers["llmapi"]
        target = scenario.through("llmapi", server.url, self.keys[0])
        samples: list[float] = []
        requests = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with self.focus("llmapi"):
                load = await self.load(target,
                                       min(10.0, max(1.0, deadline - time.monotonic())))
            requests += load.requests
            samples.append(memory_kb(server.pids, "VmRSS") / 1024)
        first = samples[0]
        growth = (samples[-1] - first) / first if first else 0.0
        self.extra["soak"] = {"seconds": seconds, "requests": requests, "rss_mb": samples,
                              "growth": growth}
        print(f"  soak {seconds:.0f} s, {requests} requests: RSS {first:.1f} -> "
              f"{samples[-1]:.1f} MB (max {max(samples):.1f}), growth {growth:+.1%}", flush=True)


def summarize_profile(collapsed: str) -> list[tuple[str, float, float]]:
    """Functions by self time (and inclusive time) from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        samples += count
        frames = [f.split(" (")[0] + " (" + f.rsplit("/", 1)[-1].split(":")[0] for f in
                  stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + count
    ranked = sorted(own, key=lambda f: -own[f])
    return [(f, own[f] / samples, total[f] / samples) for f in ranked[:40]] if samples else []


async def timed_requests(session: aiohttp.ClientSession, target: Target, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        async with session.post(target.url, data=target.body, headers=target.headers) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{target.name}: HTTP {resp.status}: "
                                   f"{(await resp.read())[:300]!r}")
        times.append(time.perf_counter() - t0)
    return times


async def wait_active_streams(base: str, want: int, timeout: float) -> int:
    """Poll the gateway's `llmapi_active_streams` gauge until `want` are open (or time out)."""
    deadline = time.monotonic() + timeout
    seen = 0
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            async with session.get(base + "/metrics") as resp:
                for line in (await resp.text()).splitlines():
                    if line.startswith("llmapi_active_streams "):
                        seen = int(float(line.split()[1]))
            if seen >= want:
                break
            await asyncio.sleep(0.1)
    return seen


# ---------------------------------------------------------------- LiteLLM


def litellm_target(scenario: Scenario, base: str) -> Target:
    return Target("litellm", base + "/v1/messages", orjson.dumps(scenario.body()),
                  {"Content-Type": "application/json", "x-api-key": LITELLM_KEY,
                   "Authorization": f"Bearer {LITELLM_KEY}", "anthropic-version": "2023-06-01"})


def ensure_litellm(venv: Path) -> Path:
    """LiteLLM's proxy in its own virtual environment under the results folder."""
    exe = venv / "bin" / "litellm"
    if exe.exists():
        return exe
    print(f"installing litellm[proxy] into {venv} ...", flush=True)
    base = Path(sys.base_prefix) / "bin" / "python3"
    subprocess.run([str(base), "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True)
    return exe


def litellm_config(workdir: Path, upstream: str) -> Path:
    path = workdir / "litellm.yaml"
    path.write_text(f"""model_list:
  - model_name: {OPENAI_MODEL}
    litellm_params:
      model: openai/{UPSTREAM_MODEL}
      api_base: {upstream}/v1
      api_key: x
  - model_name: {PASS_MODEL}
    litellm_params:
      model: anthropic/{UPSTREAM_MODEL}
      api_base: {upstream}
      api_key: x
litellm_settings:
  telemetry: false
  set_verbose: false
  json_logs: false
general_settings:
  master_key: {LITELLM_KEY}
  disable_spend_logs: true
""")
    return path


# ---------------------------------------------------------------- report


def target_checks(bench: Bench) -> list[dict[str, Any]]:
    """Every issue-7 target with what this run measured and whether it was met."""
    def row(scenario: str, target: str) -> Row | None:
        return next((r for r in bench.rows if r.scenario == scenario and r.target == target),
                    None)

    def seq(scenario: str, target: str) -> SeqRow | None:
        return next((r for r in bench.seq if r.scenario == scenario and r.target == target),
                    None)

    checks: list[dict[str, Any]] = []

    def check(name: str, value: float | None, limit: float, higher_is_better: bool,
              unit: str) -> None:
        if value is None:
            return
        met = value >= limit if higher_is_better else value <= limit
        checks.append({"target": name, "measured": round(value, 4), "limit": limit,
                       "unit": unit, "met": met})

    s = seq("small-openai", "llmapi")
    check("sequential added p50, non-stream openai (accounting on)",
          s.added_p50_ms if s else None, TARGET_SEQ_ADDED_MS, False, "ms")
    s = seq("small-anthropic", "llmapi")
    check("sequential added p50, non-stream anthropic (accounting on)",
          s.added_p50_ms if s else None, TARGET_SEQ_ADDED_MS, False, "ms")
    for scen in ("small-openai", "small-anthropic"):
        r = row(scen, "llmapi")
        check(f"throughput {scen} (accounting on)", r.rps if r else None, TARGET_SMALL_RPS,
              True, "req/s")
        paced = next((p for p in bench.paced_rows if p["scenario"] == scen
                      and p["target"] == "llmapi"), None)
        check(f"added p50 at {bench.args.connections} connections, {scen}, "
              f"{bench.args.paced_rate:.0f} req/s offered",
              paced["added_p50_ms"] if paced else None, TARGET_SMALL_ADDED_MS, False, "ms")
        check(f"added p50 at {bench.args.connections} connections, {scen}, saturated",
              r.added_p50_ms if r else None, TARGET_SMALL_ADDED_MS, False, "ms")
    r = row("stream50-openai", "llmapi")
    check("streamed 50 chunks openai (full conversion)", r.rps if r else None,
          TARGET_STREAM_RPS, True, "req/s")
    r = row("stream50-openai", "llmapi")
    check("streamed 50 chunks openai (issue 19)", r.rps if r else None,
          TARGET_STREAM50_OPENAI_RPS, True, "req/s")
    for scen in ("small-openai", "small-anthropic"):
        mine, floor = row(scen, "llmapi"), row(scen, "aiohttp-floor")
        if mine and floor and floor.cpu_ms_per_request:
            check(f"CPU/request vs the aiohttp floor's, {scen} (every feature on)",
                  mine.cpu_ms_per_request / floor.cpu_ms_per_request, TARGET_CPU_VS_FLOOR,
                  False, "x")
    r = row("stream50-anthropic", "llmapi")
    check("pass-through stream vs direct ceiling", r.ratio_vs_direct if r else None,
          TARGET_PASS_RATIO, True, "ratio")
    for scen in (sc.name for sc in SCENARIOS):
        mine, theirs = row(scen, "llmapi"), row(scen, "litellm")
        if mine and theirs and theirs.rps:
            check(f"throughput vs LiteLLM, {scen}", mine.rps / theirs.rps, TARGET_VS_LITELLM,
                  True, "x")
        ms, ts = seq(scen, "llmapi"), seq(scen, "litellm")
        if ms and ts and ms.added_p50_ms is not None and ts.added_p50_ms:
            check(f"added latency vs LiteLLM's, {scen}", ms.added_p50_ms / ts.added_p50_ms,
                  1 / TARGET_VS_LITELLM, False, "fraction")
    for scen in (sc.name for sc in SCENARIOS):
        on, off = row(scen, "llmapi"), row(scen, "llmapi-noacct")
        if on and off and off.rps:
            check(f"accounting cost (throughput), {scen}", 1 - on.rps / off.rps,
                  TARGET_ACCOUNTING_COST, False, "fraction")
        if on and off and on.cpu_ms_per_request:
            # requests per CPU-second: the throughput each would sustain on its own core
            check(f"accounting cost (capacity from CPU/request), {scen}",
                  1 - off.cpu_ms_per_request / on.cpu_ms_per_request,
                  TARGET_ACCOUNTING_COST, False, "fraction")
    opened = bench.extra.get("open_streams")
    if opened:
        check(f"RSS with {opened['requested']} open streams", opened["rss_open_mb"],
              TARGET_RSS_MB, False, "MB")
    soak = bench.extra.get("soak")
    if soak:
        check("RSS growth over the soak", soak["growth"], TARGET_SOAK_GROWTH, False, "fraction")
    r50, r100 = row("stream50-openai", "llmapi"), row("stream100-openai", "llmapi")
    if r50 and r100 and r50.cpu_ms_per_request:
        check("CPU/request, 100 chunks over 50 chunks", r100.cpu_ms_per_request /
              r50.cpu_ms_per_request, 2.0, False, "x")
    return checks


def shared_store_cost(bench: Bench) -> list[dict[str, Any]]:
    """`llmapi-pg-redis` next to `llmapi` (SQLite + in-process counters), per scenario:
    throughput ratio, added sequential p50 (the Redis admission and settle round trips and
    PostgreSQL's usage writes), CPU per request of the gateway."""
    out = []
    for r in bench.rows:
        if r.target != SHARED_ROW:
            continue
        base = next((b for b in bench.rows
                     if b.scenario == r.scenario and b.target == "llmapi"), None)
        seq_s = next((q for q in bench.seq
                      if q.scenario == r.scenario and q.target == SHARED_ROW), None)
        seq_b = next((q for q in bench.seq
                      if q.scenario == r.scenario and q.target == "llmapi"), None)
        if base is None:
            continue
        out.append({
            "scenario": r.scenario, "rps_sqlite": base.rps, "rps_shared": r.rps,
            "throughput_ratio": r.rps / base.rps if base.rps else None,
            "cpu_ms_sqlite": base.cpu_ms_per_request, "cpu_ms_shared": r.cpu_ms_per_request,
            "seq_p50_sqlite_ms": seq_b.p50_ms if seq_b else None,
            "seq_p50_shared_ms": seq_s.p50_ms if seq_s else None,
            "added_seq_p50_ms": (seq_s.p50_ms - seq_b.p50_ms) if seq_s and seq_b else None,
        })
    return out


def print_report(bench: Bench, checks: list[dict[str, Any]]) -> None:
    tool = bench.rows[0].tool if bench.rows else ""
    print(f"\nThroughput ({bench.args.connections} connections, {tool})")
    head = ("scenario", "target", "req/s", "p50 ms", "p99 ms", "added p50", "CPU ms/req",
            "CPU use", "peak RSS MB", "vs direct", "errors", "other CPU")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in bench.rows:
        cells = (r.scenario, r.target, f"{r.rps:.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
                 "" if r.added_p50_ms is None else f"{r.added_p50_ms:+.2f}",
                 f"{r.cpu_ms_per_request:.3f}", f"{r.cpu_util:.0%}", f"{r.peak_rss_mb:.0f}",
                 "" if r.ratio_vs_direct is None else f"{r.ratio_vs_direct:.2f}",
                 str(r.errors), f"{r.foreign_cpu:.2f}")
        print("| " + " | ".join(cells) + " |")
    if any(r.foreign_cpu > 0.1 for r in bench.rows):
        bench.notes.append("other processes used CPU during some runs (column 'other CPU', "
                           "in CPUs): those rows understate what this machine can do")
    if bench.paced_rows:
        print(f"\nPaced latency ({bench.args.paced_rate:.0f} req/s offered, "
              f"{bench.args.connections} connections)")
        print("| scenario | target | req/s | p50 ms | p99 ms | added p50 ms |")
        print("|---|---|---|---|---|---|")
        for p in bench.paced_rows:
            added = "" if p["added_p50_ms"] is None else f"{p['added_p50_ms']:+.3f}"
            print(f"| {p['scenario']} | {p['target']} | {p['rps']:.0f} | {p['p50_ms']:.2f} | "
                  f"{p['p99_ms']:.2f} | {added} |")
    if bench.seq:
        print("\nSequential latency (one connection, interleaved rounds, median of rounds)")
        print("| scenario | target | p50 ms | added p50 ms | added p99 ms |")
        print("|---|---|---|---|---|")
        for s in bench.seq:
            added = "" if s.added_p50_ms is None else f"{s.added_p50_ms:+.3f}"
            added99 = "" if s.added_p99_ms is None else f"{s.added_p99_ms:+.3f}"
            print(f"| {s.scenario} | {s.target} | {s.p50_ms:.3f} | {added} | {added99} |")
    shared = bench.extra.get("shared_store") or []
    if shared:
        print(f"\nShared store: {SHARED_ROW} (PostgreSQL + Redis) vs llmapi (SQLite + "
              "in-process counters), same run; on a shared, loaded machine these are "
              "indicative only")
        print("| scenario | req/s SQLite | req/s shared | ratio | CPU ms/req SQLite | "
              "CPU ms/req shared | seq p50 SQLite | seq p50 shared | added p50 ms |")
        print("|---|---|---|---|---|---|---|---|---|")
        for c in shared:
            def num(v: float | None, fmt: str) -> str:
                return "" if v is None else format(v, fmt)
            print(f"| {c['scenario']} | {c['rps_sqlite']:.0f} | {c['rps_shared']:.0f} | "
                  f"{num(c['throughput_ratio'], '.2f')} | {c['cpu_ms_sqlite']:.3f} | "
                  f"{c['cpu_ms_shared']:.3f} | {num(c['seq_p50_sqlite_ms'], '.3f')} | "
                  f"{num(c['seq_p50_shared_ms'], '.3f')} | "
                  f"{num(c['added_seq_p50_ms'], '+.3f')} |")
    print("\nTargets")
    for c in checks:
        print(f"  [{'met' if c['met'] else 'NOT met'}] {c['target']}: {c['measured']} "
              f"{c['unit']} (target {'>=' if c['limit'] and 'req/s' in c['unit'] else ''}"
              f"{c['limit']})")
    for note in bench.notes:
        print(f"  note: {note}")


# ---------------------------------------------------------------- main


async def run(args: argparse.Namespace) -> dict[str, Any]:
    cpus = cpu_plan()
    if cpus["client"]:
        os.sched_setaffinity(0, cpus["client"])
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1,000 streams need 2,000+ fds
    RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-", dir=RESULTS))
    bench = Bench(args, workdir, cpus)
    if cpus["gateway"] is None:
        bench.notes.append("one CPU only: processes are not pinned, figures are not "
                           "comparable to the targets")
    up_port = free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    py = sys.executable
    servers: list[Server] = []
    try:
        bench.upstream = start_process(
            "fake-upstream", [py, "-m", "gateway", "fake-upstream", "--port", str(up_port)],
            cpus["upstream"], workdir / "fake-upstream.log", upstream, "/_fake/health")
        servers.append(bench.upstream)
        gateways = [("llmapi", True, "lean")]
        if args.accounting_compare:
            gateways.append(("llmapi-noacct", False, "lean"))
        if args.client_compare:
            gateways.append(("llmapi-aiohttp", True, "aiohttp"))
        shared_urls: dict[str, tuple[str, str]] = {}
        if args.shared_store:
            shared_urls[SHARED_ROW] = await start_shared_store(bench)
            gateways.append((SHARED_ROW, True, "lean"))
        for name, accounting, client in gateways:
            port = free_port()
            config = gateway_config(workdir, name, port, upstream, accounting, client,
                                    *shared_urls.get(name, ("", "")))
            if not bench.keys:
                bench.keys = await make_keys(config, 1, 1)
            if name in shared_urls:
                bench.server_keys[name] = (await make_keys(config, 1, 1))[0]
            server = start_process(name, [py, "-m", "gateway", "serve", "--config", str(config)],
                                   cpus["gateway"], workdir / f"{name}.log",
                                   f"http://127.0.0.1:{port}", "/health")
            servers.append(server)
            bench.servers[name] = server
        for floor, client in (("aiohttp-floor", "aiohttp"), ("lean-floor", "lean")):
            if not args.floor:
                break
            port = free_port()
            server = start_process(
                floor, [py, str(ROOT / "loadtest" / "floor_relay.py"), "--port",
                        str(port), "--upstream", upstream, "--client", client],
                cpus["gateway"], workdir / f"{floor}.log", f"http://127.0.0.1:{port}", "/health")
            servers.append(server)
            bench.servers[floor] = server
        if args.compare == "litellm":
            exe = ensure_litellm(RESULTS / "litellm-venv")
            port = free_port()
            server = start_process(
                "litellm", [str(exe), "--config", str(litellm_config(workdir, upstream)),
                            "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
                cpus["gateway"], workdir / "litellm.log", f"http://127.0.0.1:{port}",
                "/health/liveliness",
                # chat/completions like the gateway, not OpenAI's Responses API
                env={"LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False",
                     "LITELLM_USE_CHAT_COMPLETIONS_URL_FOR_ANTHROPIC_MESSAGES": "True",
                     "DISABLE_SCHEMA_UPDATE": "True"})
            servers.append(server)
            bench.servers["litellm"] = server
        for server in servers:
            await wait_ready(server, 180 if server.name == "litellm" else 30)

        print(f"results in {workdir}; load generator: "
              f"{'wrk' if bench.use_wrk() else 'aiohttp client'}; CPUs {cpus}", flush=True)
        chosen = [s for s in SCENARIOS if not args.scenarios or s.name in args.scenarios]
        if args.seq_rounds:
            print("\nsequential latency", flush=True)
            for scenario in chosen:
                await bench.sequential(scenario)
        print("\nthroughput", flush=True)
        for scenario in chosen:
            await bench.throughput(scenario)
        if args.paced_rate and bench.use_wrk():
            print(f"\npaced latency ({args.paced_rate:.0f} req/s offered over "
                  f"{args.connections} connections)", flush=True)
            for scenario in chosen:
                if not scenario.stream:
                    await bench.paced(scenario)
        if not args.quick and not args.scenarios:
            await bench.throughput(STREAM100, only=("direct", "llmapi"))
        if args.open_streams:
            print("\nmemory", flush=True)
            await bench.open_streams(args.open_streams)
        if args.soak:
            await bench.soak(args.soak)
        for name, server in bench.servers.items():
            bench.extra.setdefault("peak_rss_mb", {})[name] = \
                memory_kb(server.pids, "VmHWM") / 1024
    finally:
        for server in reversed(servers):
            server.stop()
        for stop in bench.cleanups:
            with contextlib.suppress(Exception):
                stop()

    checks = target_checks(bench)
    bench.extra["shared_store"] = shared_store_cost(bench)
    print_report(bench, checks)
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "pinning": {
                        k: sorted(v) if v else None for k, v in cpus.items()}},
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "throughput": [asdict(r) for r in bench.rows],
        "sequential": [asdict(s) for s in bench.seq],
        "paced": bench.paced_rows,
        "extra": bench.extra, "targets": checks, "notes": bench.notes,
    }
    out = Path(args.json) if args.json else workdir / "bench.json"
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"\nJSON: {out}")
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each run")
    parser.add_argument("--connections", type=int, default=32, help="open connections")
    parser.add_argument("--rounds", type=int, default=2,
                        help="interleaved throughput runs per target; the best is kept")
    parser.add_argument("--seq-rounds", type=int, default=10, help="interleaved rounds")
    parser.add_argument("--seq-requests", type=int, default=200,
                        help="sequential requests per target per round")
    parser.add_argument("--open-streams", type=int, default=1000,
                        help="streams held open at once for the memory figure (0: skip)")
    parser.add_argument("--soak", type=float, default=0.0,
                        help="seconds of streamed load for the memory soak (0: skip)")
    parser.add_argument("--compare", choices=("litellm",), default=None,
                        help="add a competitor's row (installs it under loadtest/results/)")
    parser.add_argument("--no-accounting-compare", dest="accounting_compare",
                        action="store_false",
                        help="skip the gateway with `accounting = false`")
    parser.add_argument("--scenarios", nargs="*", default=[], metavar="SCENARIO",
                        help="run only these scenarios (default: all)")
    parser.add_argument("--profile", nargs="*", default=[], metavar="SCENARIO",
                        help="record the gateway with py-spy during these scenarios")
    parser.add_argument("--no-floor", dest="floor", action="store_false",
                        help="skip the minimal relays (floor_relay.py, both clients)")
    parser.add_argument("--no-client-compare", dest="client_compare", action="store_false",
                        help="skip the gateway with `upstream_client = \"aiohttp\"`")
    parser.add_argument("--paced-rate", type=float, default=1000.0,
                        help="req/s offered over --connections for the paced latency run "
                             "(wrk only; 0: skip)")
    parser.add_argument("--no-wrk", action="store_true", help="use the aiohttp load generator")
    parser.add_argument("--shared-store", action="store_true",
                        help=f"add the row `{SHARED_ROW}`: the same gateway on PostgreSQL and "
                             "Redis (both started here from Debian's packages)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of a few seconds (tiny durations, no memory test)")
    parser.add_argument("--json", default=None, help="where to write the JSON report")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.seq_rounds, args.seq_requests = 0.3, 0.1, 1, 5
        args.rounds, args.floor, args.client_compare = 1, False, False
        args.open_streams, args.soak, args.connections = 0, 0.0, min(args.connections, 4)
        args.no_wrk = True
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compare == "litellm" and args.quick:
        print("--compare litellm needs a full run; drop --quick", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still stop the servers
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
