"""The operator's command line, run as real subprocesses against real SQLite files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anthropic

from tests.helpers.gateway import free_port, run_cli, wait_for_port


def write_config(tmp_path: Path, extra: str = "") -> Path:
    config = tmp_path / "llmapi.toml"
    config.write_text(f'[database]\npath = "{tmp_path / "db.sqlite"}"\n{extra}')
    return config


def test_users_add_then_keys_add_prints_only_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    added = run_cli("users", "add", "ops@example.com", "--plan", "pro", "--config", str(config))
    assert added.returncode == 0, added.stderr
    made = run_cli("--config", str(config), "keys", "add", "ops@example.com", "--name", "laptop")
    assert made.returncode == 0, made.stderr
    lines = made.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sk-llmapi-")
    assert len(lines[0]) >= len("sk-llmapi-") + 43  # 32 random bytes, url-safe base64


def test_key_from_cli_works_against_served_gateway(tmp_path: Path, spawn) -> None:  # type: ignore[no-untyped-def]
    config = write_config(tmp_path)
    env = {"LLMAPI_CONFIG": str(config)}
    assert run_cli("users", "add", "a@example.com", "--plan", "pro", env=env).returncode == 0
    key = run_cli("keys", "add", "a@example.com", env=env).stdout.strip()
    port = free_port()
    proc = spawn("serve", "--port", str(port), env=env)
    wait_for_port(port, proc)
    sdk = anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key=key, max_retries=0)
    reply = sdk.messages.create(model="claude-sonnet-4-6", max_tokens=50,
                                messages=[{"role": "user", "content": "hi"}])
    assert reply.content[0].type == "text"
    # keys revoke from another process takes effect on the running server
    assert run_cli("keys", "revoke", key[:18], env=env).returncode == 0
    deadline = time.monotonic() + 1.5
    refused = False
    while time.monotonic() < deadline and not refused:
        try:
            sdk.messages.create(model="claude-sonnet-4-6", max_tokens=5,
                                messages=[{"role": "user", "content": "hi"}])
        except anthropic.AuthenticationError:
            refused = True
        time.sleep(0.05)
    assert refused


def test_zero_config_gateway_answers_the_sdk(tmp_path: Path, spawn) -> None:  # type: ignore[no-untyped-def]
    """A fresh directory, no config: `python -m gateway` serves the demo provider."""
    env = {k: v for k, v in os.environ.items() if k != "LLMAPI_CONFIG"}
    if port_is_free(8080):
        port, args = 8080, ()  # the true zero-argument start
    else:  # a developer machine may use 8080 already: same start, explicit port
        port = free_port()
        args = ("serve", "--port", str(port))
    started = time.monotonic()
    proc = spawn(*args, cwd=tmp_path, env=env)
    wait_for_port(port, proc)
    assert (tmp_path / "data" / "llmapi.db").exists()
    assert run_cli("users", "add", "new@example.com", cwd=tmp_path, env=env).returncode == 0
    key = run_cli("keys", "add", "new@example.com", cwd=tmp_path, env=env).stdout.strip()
    sdk = anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key=key, max_retries=0)
    reply = sdk.messages.create(model="claude-haiku-4-5", max_tokens=50,
                                messages=[{"role": "user", "content": "hi"}])
    assert "demo provider" in reply.content[0].text
    assert time.monotonic() - started < 15


def port_is_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[server]\nport = "eighty"\n')
    result = run_cli("--config", str(config), "serve")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(config) in lines[0] and "server.port" in lines[0] and "integer" in lines[0]


def test_config_syntax_error_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text("[server\nport = 1\n")
    result = run_cli("serve", env={"LLMAPI_CONFIG": str(config)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(config) in result.stderr


def test_missing_config_file_is_exit_2(tmp_path: Path) -> None:
    result = run_cli("--config", str(tmp_path / "nope.toml"), "users", "add", "x@example.com")
    assert result.returncode == 2 and "nope.toml" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_user_for_keys_add_is_exit_2(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = run_cli("--config", str(config), "keys", "add", "ghost@example.com")
    assert result.returncode == 2 and "ghost@example.com" in result.stderr
    assert result.stdout == ""


def test_plan_max_keys_is_enforced(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    env = {"LLMAPI_CONFIG": str(config)}
    assert run_cli("users", "add", "f@example.com", env=env).returncode == 0
    assert run_cli("keys", "add", "f@example.com", env=env).returncode == 0
    second = run_cli("keys", "add", "f@example.com", env=env)
    assert second.returncode == 2 and "free" in second.stderr
