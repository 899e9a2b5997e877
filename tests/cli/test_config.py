"""Config parsing: defaults, environment secrets, plan overrides and precise errors."""

from __future__ import annotations

import fnmatch
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway import config as config_module
from gateway.config import ConfigError, load_config, parse_config
from tests.helpers.gateway import ROOT

PROVIDER = {"name": "dashscope", "protocol": "openai", "base_url": "https://x.example/v1",
            "models": {"default": "qwen3-coder-plus"}}


def test_defaults_are_demo_provider_on_loopback() -> None:
    config = parse_config({}, env={})
    assert config.server.host == "127.0.0.1" and config.server.port == 8080
    assert [p.name for p in config.providers] == ["demo"]
    assert config.database.path == "data/llmapi.db"
    assert {p.name for p in config.plans} == {"free", "starter", "pro", "team"}


def test_builtin_plan_figures() -> None:
    plans = {p.name: p for p in parse_config({}, env={}).plans}
    assert (plans["free"].monthly_tokens, plans["free"].rpm, plans["free"].max_keys,
            plans["free"].max_input_tokens, plans["free"].price_month) == (50_000, 10, 1, 64_000, 0)
    assert (plans["starter"].monthly_tokens, plans["starter"].rpm, plans["starter"].max_keys,
            plans["starter"].price_month) == (2_000_000, 30, 3, 9)
    assert (plans["pro"].monthly_tokens, plans["pro"].rpm, plans["pro"].max_keys) == (
        10_000_000, 60, 5)
    assert (plans["team"].monthly_tokens, plans["team"].rpm, plans["team"].max_keys,
            plans["team"].price_month) == (50_000_000, 120, 10, 99)


def test_plan_override_keeps_unset_fields_and_adds_new_plans() -> None:
    config = parse_config({"plans": [{"name": "team", "rpm": 500},
                                     {"name": "bench", "rpm": 0, "monthly_tokens": 0}]}, env={})
    plans = {p.name: p for p in config.plans}
    assert plans["team"].rpm == 500 and plans["team"].monthly_tokens == 50_000_000
    assert plans["bench"].rpm == 0


def test_provider_key_from_environment_wins() -> None:
    config = parse_config({"providers": [dict(PROVIDER, api_key="from-file")]},
                          env={"LLMAPI_PROVIDER_DASHSCOPE_API_KEY": "from-env"})
    assert config.providers[0].api_key == "from-env"
    assert "from-env" not in repr(config.providers[0])


def test_provider_timeouts() -> None:
    config = parse_config({"providers": [dict(PROVIDER, timeout=60, connect_timeout=3,
                                              first_byte_timeout=20)]}, env={})
    p = config.providers[0]
    assert (p.timeout, p.connect_timeout, p.first_byte_timeout) == (60, 3, 20)


def test_upstream_client_defaults_to_lean_and_a_provider_may_override_it() -> None:
    config = parse_config({"providers": [PROVIDER, dict(PROVIDER, name="other",
                                                       upstream_client="lean")],
                           "server": {"upstream_client": "aiohttp"}}, env={})
    assert [p.upstream_client for p in config.providers] == ["aiohttp", "lean"]
    assert parse_config({"providers": [PROVIDER]}, env={}).providers[0].upstream_client == "lean"


@pytest.mark.parametrize(("data", "key", "problem"), [
    ({"server": {"port": "x"}}, "server.port", "integer"),
    ({"server": {"upstream_client": "httpx"}}, "server.upstream_client", "one of"),
    ({"providers": [dict(PROVIDER, upstream_client="curl")]}, "providers[0].upstream_client",
     "one of"),
    ({"server": {"port": 70000}}, "server.port", "65535"),
    ({"server": {"prot": 1}}, "server.prot", "unknown key"),
    ({"providers": [dict(PROVIDER, protocol="grpc")]}, "providers[0].protocol", "one of"),
    ({"providers": [dict(PROVIDER, base_url="ftp://x")]}, "providers[0].base_url", "URL"),
    ({"providers": [dict(PROVIDER, models={})]}, "providers[0].models", "at least one"),
    ({"providers": [dict(PROVIDER, timeout=0)]}, "providers[0].timeout", "greater than 0"),
    ({"providers": [PROVIDER, PROVIDER]}, "providers[1].name", "duplicate"),
    ({"plans": [{"name": "team", "rpm": -1}]}, "plans[0].rpm", "negative"),
    ({"bogus": {}}, "bogus", "unknown key"),
])
def test_mistakes_name_the_key(data: dict, key: str, problem: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="my.toml", env={})
    assert info.value.key == key
    assert problem in info.value.problem
    assert str(info.value).startswith("my.toml: ")


def test_load_config_reads_llmapi_config(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('[server]\nport = 9999\n')
    assert load_config(env={"LLMAPI_CONFIG": str(file)}).server.port == 9999


# -- provider presets (issue 13) ---------------------------------------------------------


def _one_provider(table: dict[str, object]) -> object:
    from gateway.config import parse_config

    return parse_config({"providers": [table]}, source="t", env={}).providers[0]


def test_preset_fills_base_url_protocol_reasoning_and_limits() -> None:
    provider = _one_provider({"name": "ds", "preset": "deepseek"})
    assert provider.protocol == "openai"  # type: ignore[attr-defined]
    assert provider.base_url == "https://api.deepseek.com"  # type: ignore[attr-defined]
    assert provider.reasoning == "deepseek"  # type: ignore[attr-defined]
    assert provider.models == {"default": "deepseek-chat"}  # type: ignore[attr-defined]
    assert provider.max_output_tokens["deepseek-chat"] == 8192  # type: ignore[attr-defined]


def test_preset_follows_the_protocol_and_stays_overridable() -> None:
    provider = _one_provider({"name": "ds", "preset": "deepseek", "protocol": "anthropic",
                              "models": {"default": "deepseek-v4-pro"},
                              "max_output_tokens": {"deepseek-chat": 4000}})
    assert provider.base_url == "https://api.deepseek.com/anthropic"  # type: ignore[attr-defined]
    assert provider.models == {"default": "deepseek-v4-pro"}  # type: ignore[attr-defined]
    assert provider.max_output_tokens["deepseek-chat"] == 4000  # type: ignore[attr-defined]


def test_unknown_preset_and_missing_endpoint_are_config_errors() -> None:
    from gateway.config import ConfigError

    with pytest.raises(ConfigError, match="preset"):
        _one_provider({"name": "x", "preset": "nope"})
    with pytest.raises(ConfigError, match="no anthropic endpoint"):
        _one_provider({"name": "x", "preset": "openai", "protocol": "anthropic"})


def test_parsing_touches_no_file(tmp_path: Path) -> None:
    """Files the config names are read when their service opens, never while parsing:
    every file-system audit event during `parse_config` of a config naming files (that do
    not even exist) fails the test."""
    data = {"database": {"path": "db/llmapi.db"},
            "providers": [PROVIDER],
            "alipay": {"app_id": "2021000000000000", "private_key_path": "nope/app.pem",
                       "alipay_public_key_path": "/nonexistent/alipay.pem"}}
    watched = ("open", "os.listdir", "os.scandir", "os.mkdir", "os.remove", "os.rename",
               "os.chmod", "shutil.copyfile", "tempfile.mkstemp")
    events: list[tuple[str, object]] = []
    listening = [True]

    def hook(event: str, args: tuple[object, ...]) -> None:
        if listening[0] and event in watched:
            events.append((event, args[0] if args else None))

    sys.addaudithook(hook)  # hooks cannot be removed: this one goes quiet after the parse
    try:
        config = parse_config(data, env={}, base_dir=tmp_path)
    finally:
        listening[0] = False
    assert events == []
    assert config.alipay.private_key_path == tmp_path / "nope" / "app.pem"


# --- every key the parser accepts is in the README's config reference ------------------

# One table of each kind the parser reads, so its conditional readers run too. "*" stands
# for a name the operator chooses (a model, a currency); keys under it are still keys.
EVERY_TABLE: dict[str, object] = {
    "providers": [{"name": "p", "protocol": "openai", "base_url": "https://x.example/v1",
                   "models": {"*": "m"}, "max_output_tokens": {"*": 10},
                   "pricing": {"*": {"input": 1.0, "output": 2.0, "cached_input": 0.5}}}],
    "plans": [{"name": "gold"}],
    "routing": {"light": {"provider": "p", "model": "m"},
                "coding": {"provider": "p", "model": "m"}},
}


def accepted_keys() -> set[str]:
    """Every dotted key the parser asks for (and so does not refuse as unknown), recorded
    from its own readers while it parses; `providers[0].x` is written `providers.x`."""
    found: set[str] = set()
    finish = config_module._Reader.finish

    def recording(self: Any) -> None:
        prefix = re.sub(r"\[\d+\]", "", self.prefix)
        found.update(f"{prefix}.{name}" if prefix else name for name in self.seen)
        finish(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(config_module._Reader, "finish", recording)
        parse_config(EVERY_TABLE, env={})
    return {key for key in found if not key.endswith(".*")}


def readme_reference_keys() -> set[str]:
    """The dotted keys of the TOML blocks in the README's "Config file reference"."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Config file reference\n", 1)[1].split("\n## ", 1)[0]
    keys: set[str] = set()

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                walk(prefix, item)
        elif isinstance(value, dict):
            for name, inner in value.items():
                key = f"{prefix}.{name}" if prefix else name
                keys.add(key)
                walk(key, inner)

    for block in re.findall(r"```toml\n(.*?)```", section, re.S):
        walk("", tomllib.loads(block))
    return keys


def test_every_config_key_is_in_the_readme_reference() -> None:
    documented = readme_reference_keys()
    accepted = accepted_keys()
    assert len(accepted) > 80  # the recorder saw the whole parser, not one table
    missing = sorted(k for k in accepted
                     if not any(fnmatch.fnmatchcase(d, k) for d in documented))
    assert missing == [], "add these keys to the README's Config file reference"
    unknown = sorted(d for d in documented
                     if not any(fnmatch.fnmatchcase(d, k) or d.startswith(k + ".")
                                for k in accepted))
    assert unknown == [], "the README documents keys the parser refuses"
