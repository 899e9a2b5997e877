"""deploy/ agrees with itself and with what the tests run.

The compose file cannot be started here (no container engine), so this checks what can be
checked without one: HAProxy accepts deploy/haproxy.cfg; the harness runs exactly that
file with only addresses swapped; the gateway configs parse with the real parser; the drain
time covers HAProxy's checks; no secret has a default; the compose file names every part.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from gateway.config import parse_config
from tests.helpers.services import DEPLOY_HAPROXY, render_haproxy

DEPLOY = Path(__file__).resolve().parent.parent.parent / "deploy"
ENV = {"LLMAPI_DATABASE_URL": "postgresql://llmapi:x@postgres:5432/llmapi",
       "LLMAPI_SESSION_SECRET": "a" * 43 + "=", "LLMAPI_PROVIDER_DEEPSEEK_API_KEY": "k"}


def test_haproxy_accepts_the_deploy_config(tmp_path: Path) -> None:
    exe = shutil.which("haproxy")
    assert exe, "haproxy not installed (apt-get install haproxy)"
    text = DEPLOY_HAPROXY.read_text().replace("/run/haproxy/admin.sock",
                                              str(tmp_path / "admin.sock"))
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text)
    run = subprocess.run([exe, "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_tests_run_the_deploy_config_with_only_addresses_swapped(tmp_path: Path) -> None:
    original = DEPLOY_HAPROXY.read_text().splitlines()
    rendered = render_haproxy(DEPLOY_HAPROXY.read_text(), 9999, [1001, 1002, 1003],
                              tmp_path / "s.sock").splitlines()

    def kept(lines: list[str]) -> list[str]:
        return [ln for ln in lines if not re.match(r"\s*(bind |server gw|stats socket )", ln)]

    assert kept(original) == kept(rendered)
    assert sum(ln.strip().startswith("server gw") for ln in rendered) == 6  # 2 backends x 3
    for needed in ("option httpchk GET /health/ready", "http-check expect status 200",
                   "option http-no-delay", "balance hash var(txn.session)",
                   "hash-type consistent", "option redispatch", "timeout tunnel"):
        assert any(needed in ln for ln in original), needed
    assert not any(ln.strip().startswith("compression") for ln in original)  # buffers SSE


def check_interval() -> float:
    """Seconds HAProxy needs to take a draining server out: inter x fall."""
    text = DEPLOY_HAPROXY.read_text()
    inter = re.search(r"inter (\d+)ms", text)
    fall = re.search(r"fall (\d+)", text)
    assert inter and fall
    return int(inter.group(1)) / 1000 * int(fall.group(1))


@pytest.mark.parametrize("path", ["gateway.toml", "systemd/gw1.toml"])
def test_gateway_configs_parse_and_drain_longer_than_the_checks(path: str) -> None:
    data = tomllib.loads((DEPLOY / path).read_text())
    config = parse_config(data, source=path, env=ENV, base_dir=DEPLOY)
    assert config.server.drain_seconds > check_interval()
    assert config.database.postgres and config.redis.url
    assert config.server.public_url.startswith("https://")
    assert config.server.trusted_proxies
    assert "password" not in (DEPLOY / path).read_text().lower().replace(
        "llmapi_database_url", "")  # secrets come from the environment


def test_compose_names_every_part_and_defaults_no_secret() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "gw1", "gw2", "gw3", "haproxy"}
    raw = (DEPLOY / "compose.yaml").read_text()
    # every secret is required (${VAR:?...}), none has a default (${VAR:-...})
    for var in ("POSTGRES_PASSWORD", "LLMAPI_SESSION_SECRET",
                "LLMAPI_PROVIDER_DEEPSEEK_API_KEY"):
        assert re.search(r"\$\{" + var + r":\?", raw), var
    assert ":-" not in raw
    for gw in ("gw1", "gw2", "gw3"):
        assert "/health/ready" in " ".join(services[gw]["healthcheck"]["test"])
        assert services[gw]["stop_signal"] == "SIGTERM"
        assert any(v.endswith(":/var/lib/llmapi") for v in services[gw]["volumes"])
    assert "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in \
        services["haproxy"]["volumes"]
    proxy_ip = services["haproxy"]["networks"]["llmapi"]["ipv4_address"]
    gateway = parse_config(tomllib.loads((DEPLOY / "gateway.toml").read_text()),
                           env=ENV, base_dir=DEPLOY)
    assert proxy_ip in gateway.server.trusted_proxies
    assert "NOT EXERCISED HERE" in raw


def test_systemd_unit_stops_with_sigterm_after_the_drain() -> None:
    unit = (DEPLOY / "systemd" / "llmapi@.service").read_text()
    assert "KillSignal=SIGTERM" in unit
    stop = int(re.search(r"TimeoutStopSec=(\d+)", unit).group(1))  # type: ignore[union-attr]
    config = parse_config(tomllib.loads((DEPLOY / "systemd/gw1.toml").read_text()),
                          env=ENV, base_dir=DEPLOY)
    assert stop > config.server.drain_seconds + config.server.shutdown_grace
    assert "--config /etc/llmapi/%i.toml" in unit
