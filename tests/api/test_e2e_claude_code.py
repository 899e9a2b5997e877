"""The Claude Code end-to-end script: its dry path always, the real CLI with LLMAPI_E2E=1.

The dry path starts fake-upstream and a gateway per protocol and sends Claude-Code-shaped
requests with the SDK, so CI exercises the script without the 250 MB npm download.
``LLMAPI_E2E=1 python -m pytest tests/test_e2e_claude_code.py`` also runs the real CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.testing.vendors import VENDORS
from tests.e2e import claude_code_e2e as e2e
from tests.helpers.gateway import ROOT

SCRIPT = ROOT / "tests" / "e2e" / "claude_code_e2e.py"
REAL_CLI = os.environ.get("LLMAPI_E2E") == "1"


def run_script(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def test_script_arguments_default_to_both_protocols() -> None:
    args = e2e.parse_args([])
    assert (args.protocol, args.keep, args.dry_run, args.timeout) == ("both", False, False, 120)
    assert e2e.parse_args(["--protocol", "openai", "--keep", "--dry-run"]).protocol == "openai"
    with pytest.raises(SystemExit) as exc:
        e2e.parse_args(["--protocol", "grpc"])
    assert exc.value.code == 2
    every = e2e.parse_args(["--vendor", "all", "--task", "agent", "--record"])
    assert (every.vendor, every.task, every.record) == ("all", "agent", True)


def test_record_needs_the_real_cli() -> None:
    """--record must never write dry-run (SDK) results as if Claude Code had produced them."""
    done = run_script("--dry-run", "--vendor", "ollama", "--task", "agent", "--record",
                      timeout=180)
    assert done.returncode == 1 and "nothing recorded" in done.stdout


@pytest.mark.parametrize(("protocol", "base_url"), [
    ("openai", "http://127.0.0.1:9001/v1"),
    ("anthropic", "http://127.0.0.1:9001"),
])
def test_generated_gateway_config_points_one_provider_at_the_fake(
        tmp_path: Path, protocol: str, base_url: str) -> None:
    text = e2e.gateway_config(protocol, 9001, 9002, tmp_path / "e2e.db")
    config = parse_config(tomllib.loads(text), source="e2e.toml", env={}, base_dir=tmp_path)
    assert (config.server.host, config.server.port) == ("127.0.0.1", 9002)
    assert config.database_path == tmp_path / "e2e.db"
    [provider] = config.providers
    assert (provider.protocol, provider.base_url) == (protocol, base_url)
    assert dict(provider.models) == {"default": "fake-model"}


def test_native_binary_is_found_in_the_platform_package(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    assert e2e.find_claude_binary(tmp_path) is None
    binary = tmp_path / "node_modules" / "@anthropic-ai" / "claude-code-linux-arm64" / "claude"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert e2e.find_claude_binary(tmp_path) == binary


def test_claude_code_writes_a_file_through_the_gateway_for_both_protocols() -> None:
    dry = run_script("--dry-run", timeout=180)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "PASS openai (dry run, SDK)" in dry.stdout
    assert "PASS anthropic (dry run, SDK)" in dry.stdout
    if REAL_CLI:  # installs @anthropic-ai/claude-code once into the user's cache
        real = run_script(timeout=1800)
        assert real.returncode == 0, real.stdout + real.stderr
        assert "PASS openai:" in real.stdout and "PASS anthropic:" in real.stdout


def test_agent_task_with_thinking_against_strict_vendors() -> None:
    """Read, then Write + Bash in parallel, then the answer, thinking on, and a wrong key that
    fails in under 5 s; dry path for one strict vendor here (tests/api/test_agent_task.py
    covers every profile in-process), the real CLI for every profile with LLMAPI_E2E=1."""
    dry = run_script("--dry-run", "--vendor", "deepseek", "--task", "agent", timeout=180)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "PASS deepseek/openai (dry run, SDK)" in dry.stdout
    assert "PASS deepseek/anthropic (dry run, SDK)" in dry.stdout
    if REAL_CLI:
        for vendor in VENDORS:
            real = run_script("--vendor", vendor, "--task", "agent", timeout=1800)
            assert real.returncode == 0, real.stdout + real.stderr
