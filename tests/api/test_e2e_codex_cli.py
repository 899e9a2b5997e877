"""The Codex CLI end-to-end script: its dry path always, the real CLI with LLMAPI_E2E=1.

The dry path starts fake-upstream and a gateway per protocol and sends Codex-shaped
Responses requests with the openai SDK, so CI exercises the script without the 400 MB npm
download. ``LLMAPI_E2E=1 python -m pytest tests/api/test_e2e_codex_cli.py`` also runs the
real CLI (installed once into the user's cache).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.e2e import codex_cli_e2e as e2e
from tests.helpers.gateway import ROOT

SCRIPT = ROOT / "tests" / "e2e" / "codex_cli_e2e.py"
REAL_CLI = os.environ.get("LLMAPI_E2E") == "1"


def run_script(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def test_codex_config_names_the_gateway_as_a_responses_provider() -> None:
    config = tomllib.loads(e2e.codex_config("http://127.0.0.1:9001"))
    provider = config["model_providers"]["llmapi"]
    assert config["model_provider"] == "llmapi"
    assert provider["base_url"] == "http://127.0.0.1:9001/v1"
    assert (provider["wire_api"], provider["env_key"]) == ("responses", "LLMAPI_API_KEY")
    assert config["features"] == {"plugins": False, "apps": False}


def test_native_binary_is_found_in_the_platform_package(tmp_path: Path) -> None:
    assert e2e.find_codex_binary(tmp_path) is None
    arch = "arm64" if os.uname().machine in ("aarch64", "arm64") else "x64"
    binary = (tmp_path / "node_modules" / "@openai" / f"codex-linux-{arch}" / "vendor"
              / "target" / "bin" / "codex")
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    assert e2e.find_codex_binary(tmp_path) == binary


def test_codex_runs_a_command_through_the_gateway_for_both_protocols() -> None:
    dry = run_script("--dry-run", timeout=180)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "PASS openai (dry run, SDK)" in dry.stdout
    assert "PASS anthropic (dry run, SDK)" in dry.stdout
    if REAL_CLI:
        real = run_script(timeout=1800)
        assert real.returncode == 0, real.stdout + real.stderr
        assert "PASS openai:" in real.stdout and "PASS anthropic:" in real.stdout


def test_codex_applies_a_patch_through_the_gateway_for_both_protocols() -> None:
    """--task patch: the free-form apply_patch tool, a custom_tool_call, its output back."""
    dry = run_script("--dry-run", "--task", "patch", timeout=180)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "PASS openai (dry run, SDK)" in dry.stdout
    assert "PASS anthropic (dry run, SDK)" in dry.stdout
    if REAL_CLI:
        # a name from Codex's catalogue: only those get the free-form apply_patch tool
        real = run_script("--task", "patch", "--model", "gpt-5.5", timeout=1800)
        assert real.returncode == 0, real.stdout + real.stderr
        assert "PASS openai:" in real.stdout and "PASS anthropic:" in real.stdout
