"""The /docs section per OpenAI client: the exact lines a user copies are well-formed for the
client that reads them (TOML for Codex, YAML for Continue, Python, JavaScript), name this
server's base URL with /v1, have a copy button each, read the same in both languages, and
the Python lines, run as they are against a live gateway, get answers through both routes.
"""

from __future__ import annotations

import asyncio
import html
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import yaml

from tests.helpers.gateway import ROOT, GatewayFactory, provider_table
from tests.helpers.site import SiteClient

BLOCKS = ("openai-base", "openai-codex-config", "openai-codex-run", "openai-cursor-url",
          "openai-cline", "openai-continue", "openai-aider", "openai-py", "openai-node")


def commands(page: str) -> dict[str, str]:
    """id -> the text a copy button copies (the <pre>'s text, as the browser has it)."""
    found = {}
    for ident, body in re.findall(r'<pre id="(openai-[\w-]+)"[^>]*><code>(.*?)</code></pre>',
                                  page, re.S):
        assert f'data-copy="{ident}"' in page, f"no copy button for {ident}"
        found[ident] = html.unescape(body)
    return found


async def test_each_client_gets_exact_lines_in_both_languages(
        gateway_factory: GatewayFactory, fake_factory: Any, tmp_path: Path) -> None:
    base_fake, _ = await fake_factory()
    gw = await gateway_factory({"providers": [provider_table(
        "fake", "openai", base_fake, models={"default": "fake-model"})]})
    client = SiteClient(gw)
    try:
        _, en, _ = await client.get("/docs?lang=en")
        _, zh, _ = await client.get("/docs?lang=zh-CN")
    finally:
        await client.close()
    base = gw.config.public_url + "/v1"
    lines = commands(en)
    assert set(lines) == set(BLOCKS)
    assert commands(zh) == lines  # the lines are the same in both languages
    assert 'href="#openai-clients"' in en and "Codex CLI、Cursor 及其他 OpenAI 客户端" in zh
    assert "Codex CLI, Cursor and other OpenAI clients" in en

    assert lines["openai-base"] == lines["openai-cursor-url"] == base
    codex = tomllib.loads(lines["openai-codex-config"])
    provider = codex["model_providers"][codex["model_provider"]]
    assert provider == {"name": "llmapi", "base_url": base, "env_key": "LLMAPI_API_KEY",
                        "wire_api": "responses"}
    assert codex["model"] == "qwen3-coder-plus"
    assert lines["openai-codex-run"].splitlines() == [
        f"export {provider['env_key']}=sk-llmapi-...", "codex"]
    cline = dict(line.split(": ", 1) for line in lines["openai-cline"].splitlines())
    assert cline == {"Base URL": base, "API Key": "sk-llmapi-...",
                     "Model ID": "qwen3-coder-plus"}
    model = yaml.safe_load(lines["openai-continue"])["models"][0]
    assert model == {"name": "llmapi", "provider": "openai", "model": "qwen3-coder-plus",
                     "apiBase": base, "apiKey": "sk-llmapi-..."}
    assert lines["openai-aider"].splitlines() == [
        f"export OPENAI_API_BASE={base}", "export OPENAI_API_KEY=sk-llmapi-...",
        "aider --model openai/qwen3-coder-plus"]
    node = tmp_path / "client.mjs"
    node.write_text(lines["openai-node"], encoding="utf-8")
    checked = subprocess.run(["node", "--check", str(node)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert f'baseURL: "{base}"' in lines["openai-node"]

    # the Python lines, unchanged but for this test server's address and a real key
    key = await gw.new_key("docs@example.com")
    script = lines["openai-py"]
    assert f'base_url="{base}"' in script and 'api_key="sk-llmapi-..."' in script
    script = script.replace(base, gw.url + "/v1").replace("sk-llmapi-...", key)
    proc = await asyncio.create_subprocess_exec(  # the gateway runs in this event loop
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    answers = out.decode().strip().splitlines()
    assert len(answers) == 2 and all("fake upstream" in a for a in answers), answers
