"""Operator experience: plans from the config before the server ever ran, lists, delete
with confirmation, --version, one-line start-up errors with exit 2."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.helpers.gateway import ROOT, free_port, run_cli, wait_for_port

PLANS = """
[[plans]]
name = "gold"
price_month = 99
monthly_tokens = 1000000
rpm = 60
rpd = 1000
max_keys = 3
max_input_tokens = 100000
"""


def config(tmp_path: Path, extra: str = "") -> dict[str, str]:
    file = tmp_path / "llmapi.toml"
    file.write_text(f'[database]\npath = "{tmp_path / "db" / "x.db"}"\n{extra}', "utf-8")
    return {"LLMAPI_CONFIG": str(file), "PYTHONPATH": str(ROOT)}


def test_a_config_plan_works_before_the_server_ever_started(tmp_path: Path) -> None:
    env = config(tmp_path, PLANS)
    added = run_cli("users", "add", "g@example.com", "--plan", "gold", env=env)
    assert added.returncode == 0, added.stderr
    listed = run_cli("users", "list", "--plan", "gold", env=env)
    assert "g@example.com" in listed.stdout and "gold" in listed.stdout


def test_an_unknown_plan_lists_the_valid_ones(tmp_path: Path) -> None:
    env = config(tmp_path, PLANS)
    refused = run_cli("users", "add", "x@example.com", "--plan", "platinum", env=env)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "llmapi: unknown plan 'platinum'; the plans are: free, starter, pro, team, gold "
        "(add more with [[plans]])"]


def test_lists_and_delete_with_confirmation(tmp_path: Path) -> None:
    env = config(tmp_path)
    assert run_cli("users", "add", "d@example.com", env=env).returncode == 0
    key = run_cli("keys", "add", "d@example.com", env=env).stdout.strip()
    keys = run_cli("keys", "list", "d@example.com", env=env)
    assert key[:18] in keys.stdout and key not in keys.stdout and "active" in keys.stdout
    # no terminal to confirm on: refused, nothing deleted
    refused = run_cli("users", "delete", "d@example.com", env=env)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert "d@example.com" in run_cli("users", "list", env=env).stdout
    assert run_cli("users", "delete", "d@example.com", "--yes", env=env).returncode == 0
    assert "d@example.com" not in run_cli("users", "list", env=env).stdout
    assert "revoked" in run_cli("keys", "list", env=env).stdout
    assert "deleted" in run_cli("users", "list", "--status", "deleted", env=env).stdout


def test_version() -> None:
    done = run_cli("--version")
    assert done.returncode == 0 and done.stdout.startswith("llmapi ")


def test_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("--port", str(port), env=config(tmp_path), timeout=60)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("llmapi:")]
    assert len(errors) == 1 and f"cannot listen on 127.0.0.1:{port}" in errors[0]
    assert "Traceback" not in done.stderr


def test_unwritable_database_folder_is_one_line_and_exit_2(tmp_path: Path) -> None:
    file = tmp_path / "llmapi.toml"
    file.write_text('[database]\npath = "/proc/llmapi-nowhere/x.db"\n', "utf-8")
    done = run_cli("serve", env={"LLMAPI_CONFIG": str(file)})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        "llmapi: cannot create the database folder /proc/llmapi-nowhere")


def test_zero_config_start_says_what_to_do_next(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "--port", str(port)],
                            cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, proc)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    text = err.decode()
    assert "python -m gateway users add" in text and "python -m gateway keys add" in text
    assert f"export ANTHROPIC_BASE_URL=http://127.0.0.1:{port}" in text
