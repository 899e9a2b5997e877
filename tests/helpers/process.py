"""A real `python -m gateway serve` process for tests that need the server's own signal
handling, shutdown sequence or log output, with its stderr captured to a file.

Usage: `with GatewayProcess(tmp_path, providers_toml) as gw: ...` gives `gw.port`,
`gw.key` (a key of a user on an unlimited plan), `gw.log()` (stderr so far), `gw.proc`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from tests.helpers.gateway import ROOT, free_port, run_cli, wait_for_port

UNLIMITED_PLAN = ('[[plans]]\nname = "free"\nrpm = 0\nrpd = 0\nmonthly_tokens = 0\n'
                  'max_input_tokens = 0\nconcurrency = 0\n')


class GatewayProcess:
    def __init__(self, tmp_path: Path, extra_toml: str = "", server_toml: str = "") -> None:
        self.port = free_port()
        self.db = tmp_path / "gateway.db"
        self.config = tmp_path / "gateway.toml"
        self.config.write_text(
            f'[server]\nport = {self.port}\n{server_toml}\n'
            f'[database]\npath = "{self.db}"\n{UNLIMITED_PLAN}{extra_toml}')
        self.stderr_path = tmp_path / "gateway.stderr"
        self.env = {"LLMAPI_CONFIG": str(self.config), "PYTHONPATH": str(ROOT)}
        self.key = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> GatewayProcess:
        added = run_cli("users", "add", "proc@example.com", env=self.env)
        assert added.returncode == 0, added.stderr
        made = run_cli("keys", "add", "proc@example.com", env=self.env)
        assert made.returncode == 0, made.stderr
        self.key = made.stdout.strip()
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], cwd=ROOT,
                                     env={**os.environ, **self.env},
                                     stdout=subprocess.DEVNULL, stderr=self._stderr)
        wait_for_port(self.port, self.proc)
        return self

    def log(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_bytes().decode("utf-8", "replace")

    def terminate(self) -> float:
        """SIGTERM; returns the time of sending it (perf_counter)."""
        assert self.proc is not None
        sent = time.perf_counter()
        os.kill(self.proc.pid, signal.SIGTERM)
        return sent

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        self._stderr.close()
