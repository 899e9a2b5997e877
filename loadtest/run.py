"""Run the Locust scenarios headless against a gateway and fake upstream started here.

    python loadtest/run.py [--users 50] [--spawn-rate 10] [--run-time 60s]

Starts `fake-upstream` and the gateway (accounting on, the benchmark plan with 0 everywhere,
pinned to separate CPUs like bench.py), creates `--key-users` users with `--keys-per-user`
keys each, runs `locust --headless` with loadtest/locustfile.py, writes Locust's CSV stats
(`locust_stats.csv`, `locust_stats_history.csv`, `locust_failures.csv`) and an HTML report to
a new folder under loadtest/results/, then stops everything. Exit status: Locust's (non-zero
when any request failed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import (  # bench.py is a sibling script, not a package
    RESULTS,
    ROOT,
    Server,
    cpu_plan,
    free_port,
    gateway_config,
    make_keys,
    memory_kb,
    start_process,
    tool_path,
    wait_ready,
)


async def prepare(workdir: Path, args: argparse.Namespace) -> tuple[list[Server], Path, str]:
    cpus = cpu_plan()
    py = sys.executable
    up_port, gw_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    fake = start_process("fake-upstream",
                         [py, "-m", "gateway", "fake-upstream", "--port", str(up_port)],
                         cpus["upstream"], workdir / "fake-upstream.log", upstream,
                         "/_fake/health")
    servers = [fake]
    config = gateway_config(workdir, "llmapi", gw_port, upstream, accounting=True)
    keys = await make_keys(config, args.key_users, args.keys_per_user)
    keys_file = workdir / "keys.txt"
    keys_file.write_text("\n".join(keys) + "\n")
    gateway = start_process("llmapi", [py, "-m", "gateway", "serve", "--config", str(config)],
                            cpus["gateway"], workdir / "llmapi.log",
                            f"http://127.0.0.1:{gw_port}", "/health")
    servers.append(gateway)
    for server in servers:
        await wait_ready(server, 30)
    return servers, keys_file, gateway.url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=50, help="simulated developers")
    parser.add_argument("--spawn-rate", type=float, default=10, help="developers started per s")
    parser.add_argument("--run-time", default="60s", help="Locust --run-time (e.g. 60s, 5m)")
    parser.add_argument("--key-users", type=int, default=20, help="accounts to create")
    parser.add_argument("--keys-per-user", type=int, default=3, help="API keys per account")
    args = parser.parse_args()

    RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = RESULTS / time.strftime("locust-%Y%m%d-%H%M%S")
    workdir.mkdir()
    servers, keys_file, url = asyncio.run(prepare(workdir, args))
    cpus = cpu_plan()["client"]
    try:
        argv = [tool_path("locust"), "-f", str(ROOT / "loadtest" / "locustfile.py"),
                "--headless", "--host", url, "--users", str(args.users),
                "--spawn-rate", str(args.spawn_rate), "--run-time", args.run_time,
                "--csv", str(workdir / "locust"), "--csv-full-history",
                "--html", str(workdir / "report.html"), "--stop-timeout", "10",
                "--only-summary"]
        done = subprocess.run(argv, env={**os.environ, "LLMAPI_KEYS_FILE": str(keys_file)},
                              preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus
                              else None, check=False, timeout=_seconds(args.run_time) + 120)
        rss = memory_kb(servers[1].pids, "VmHWM") / 1024
        print(f"\ngateway peak RSS {rss:.1f} MB; CSV stats and report.html in {workdir}")
        return done.returncode
    finally:
        for server in reversed(servers):
            server.stop()


def _seconds(run_time: str) -> float:
    """Locust's --run-time (`90`, `90s`, `5m`, `1h30m`) in seconds."""
    total, number = 0.0, ""
    for char in run_time:
        if char.isdigit():
            number += char
        else:
            total += float(number or 0) * {"s": 1, "m": 60, "h": 3600}[char]
            number = ""
    return total + float(number or 0)


if __name__ == "__main__":
    sys.exit(main())
