"""Load and validate the TOML config file into typed, frozen settings.

Configuration is data: the rest of the gateway reads these dataclasses and never the raw
TOML. Every mistake in the file becomes one `ConfigError` that names the file, the key and
what is wrong, so the CLI can print one line and exit 2 instead of a traceback.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")

PROTOCOLS = ("openai", "anthropic", "demo")
REASONING_STYLES = ("dashscope", "deepseek", "kimi", "glm", "openai", "openrouter", "ollama",
                    "vllm")


@dataclass(frozen=True, slots=True)
class Preset:
    """What a `preset = "..."` provider starts from; every key stays overridable.

    Base URLs, reasoning styles and limits are the vendors' documented ones (docs/vendors.md
    names the page for each)."""

    base_urls: Mapping[str, str]          # protocol -> base URL
    protocol: str = "openai"
    reasoning: str | None = None
    models: Mapping[str, str] = field(default_factory=dict)
    max_output_tokens: Mapping[str, int] = field(default_factory=dict)
    send_top_k: bool = False
    send_files: bool = False


PRESETS: dict[str, Preset] = {
    # api-docs.deepseek.com: OpenAI format at https://api.deepseek.com, Anthropic format at
    # /anthropic; thinking on by default, switched by `thinking: {type}`.
    "deepseek": Preset({"openai": "https://api.deepseek.com",
                        "anthropic": "https://api.deepseek.com/anthropic"},
                       reasoning="deepseek", models={"default": "deepseek-chat"},
                       max_output_tokens={"deepseek-chat": 8192, "deepseek-reasoner": 65536}),
    # Alibaba Model Studio: compatible-mode/v1 (OpenAI), apps/anthropic (Claude Code).
    "dashscope": Preset({"openai": "https://dashscope.aliyuncs.com/compatible-mode/v1",
                         "anthropic": "https://dashscope.aliyuncs.com/apps/anthropic"},
                        reasoning="dashscope", models={"default": "qwen3-coder-plus"},
                        max_output_tokens={"default": 65536}, send_top_k=True),
    # platform.moonshot.ai: /v1 (OpenAI) and /anthropic.
    "kimi": Preset({"openai": "https://api.moonshot.ai/v1",
                    "anthropic": "https://api.moonshot.ai/anthropic"},
                   reasoning="kimi", models={"default": "kimi-k2.6"},
                   max_output_tokens={"default": 32768}),
    # docs.z.ai / open.bigmodel.cn: api/paas/v4 (OpenAI) and api/anthropic.
    "glm": Preset({"openai": "https://open.bigmodel.cn/api/paas/v4",
                   "anthropic": "https://open.bigmodel.cn/api/anthropic"},
                  reasoning="glm", models={"default": "glm-5.1"},
                  max_output_tokens={"default": 32768}),
    # openrouter.ai/docs: /api/v1/chat/completions and /api/v1/messages.
    "openrouter": Preset({"openai": "https://openrouter.ai/api/v1",
                          "anthropic": "https://openrouter.ai/api"},
                         reasoning="openrouter", send_files=True),
    # vLLM's OpenAI-compatible server (vllm serve), default port 8000.
    # Reasoning "vllm": chat_template_kwargs.enable_thinking=false turns Qwen3 thinking off.
    "vllm": Preset({"openai": "http://127.0.0.1:8000/v1"}, reasoning="vllm", send_top_k=True),
    # Ollama: /v1 is OpenAI-compatible; /v1/messages Anthropic-compatible; port 11434.
    # Reasoning "ollama": reasoning_effort "none" turns thinking off on /v1.
    "ollama": Preset({"openai": "http://127.0.0.1:11434/v1",
                      "anthropic": "http://127.0.0.1:11434"}, reasoning="ollama"),
    # OpenAI: reasoning models take max_completion_tokens and reasoning_effort.
    "openai": Preset({"openai": "https://api.openai.com/v1"}, reasoning="openai",
                     send_files=True),
}

# Upstream HTTP clients (gateway/providers/http.py); the first is the default.
UPSTREAM_CLIENTS = ("lean", "aiohttp")


class ConfigError(Exception):
    """A config file problem, already phrased for the operator."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        super().__init__(f"{source}: {key}: {problem}")
        self.source = source
        self.key = key
        self.problem = problem


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""
    max_body_bytes: int = 32 * 1024 * 1024
    shutdown_grace: float = 30.0
    drain_seconds: float = 0.0  # on SIGTERM: readiness 503 this long before closing the port
    access_log: bool = True
    accounting: bool = True  # false: no limits, no usage rows (benchmark baseline only)
    # addresses (or networks) of reverse proxies whose X-Forwarded-For / Forwarded we believe
    trusted_proxies: tuple[str, ...] = ()
    metrics_token: str = field(default="", repr=False)  # "": /metrics is open
    upstream_client: str = "lean"  # providers' default HTTP client (see UPSTREAM_CLIENTS)


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    path: str = "data/llmapi.db"
    # PostgreSQL instead of the SQLite file: several instances share it (docs/scale-out.md).
    # LLMAPI_DATABASE_URL wins over the file, so the password need not be committed.
    url: str = ""

    @property
    def postgres(self) -> bool:
        return bool(self.url)


REDIS_POLICIES = ("fail_open", "fail_closed")


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """Shared counters, revocation and remote fan-out for several instances."""

    url: str = ""  # empty: counters stay in this process's memory (one instance)
    # While Redis is unreachable: "fail_open" admits requests, counted in memory only and
    # checked against the local figures; "fail_closed" refuses them with 503.
    on_error: str = "fail_open"
    timeout: float = 0.5  # seconds one admission may wait on Redis before the policy applies


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Price per million tokens in the provider's currency."""

    input: float = 0.0
    output: float = 0.0
    cached_input: float = 0.0


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    protocol: str
    base_url: str = ""
    api_key: str = field(default="", repr=False)
    timeout: float = 300.0
    connect_timeout: float = 10.0
    first_byte_timeout: float = 120.0
    idle_timeout: float = 120.0
    queue_timeout: float = 300.0
    upstream_client: str = "lean"  # "lean" (gateway/providers/lean_client.py) or "aiohttp"
    models: Mapping[str, str] = field(default_factory=dict)
    max_output_tokens: Mapping[str, int] = field(default_factory=dict)
    reasoning: str | None = None
    reasoning_model: str | None = None
    send_top_k: bool = False
    send_files: bool = False
    preset: str = ""
    inject_cache_control: bool = False
    normalize_prompt_cache: bool = False
    count_tokens: bool = False
    currency: str = "CNY"
    pricing: Mapping[str, ModelPrice] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PlanConfig:
    name: str
    price_month: float = 0.0
    monthly_tokens: int = 0
    rpm: int = 0
    rpd: int = 0
    max_keys: int = 1
    max_input_tokens: int = 0
    concurrency: int = 0  # requests in flight per user and per key; 0 = unlimited


# --- The site: [web], [mail] and [google] (accounts, e-mail, optional Google sign-in) ---

MAIL_SECURITY = ("starttls", "tls", "none")
GOOGLE_JWKS_URL = "https://www.googleapis.com/oauth2/v3/certs"
GOOGLE_AUTH_URL = "https://accounts.google.com/o/oauth2/v2/auth"
GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")


@dataclass(frozen=True, slots=True)
class WebConfig:
    """Sessions and sign-in rules of the site."""

    session_secret: str = field(default="", repr=False)  # Fernet key; "" = generated file
    session_max_age: int = 30 * 86400                      # seconds a sign-in lasts
    registration: bool = True                              # False: only the CLI adds users
    login_failures_per_account: int = 5                    # within login_window
    login_failures_per_ip: int = 30                        # within login_window
    login_window: int = 900                                # seconds


SITE_LANGUAGES = ("zh-CN", "en")


@dataclass(frozen=True, slots=True)
class SiteConfig:
    """What the public site looks like before a visitor says otherwise."""

    default_language: str = "en"      # when neither ?lang=, the cookie nor Accept-Language decide
    legal_dir: str = ""               # folder of terms.md, privacy.md, refunds.md; "" = built-in
    recommended_plan: str = ""        # marked on the landing and pricing; "" = middle paid plan
    # Yuan per unit of each provider currency, set by the operator (e.g. {"USD": 7.1}): the
    # margin report converts upstream cost with these and states them. CNY is always 1.
    exchange_rates: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MailConfig:
    """Outgoing e-mail; without `smtp_host` messages stay in the outbox table and the log."""

    smtp_host: str = ""
    smtp_port: int = 587
    smtp_username: str = ""
    smtp_password: str = field(default="", repr=False)
    security: str = "starttls"                             # starttls | tls | none
    sender: str = "llmapi <noreply@localhost>"             # the `from` key
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class GoogleConfig:
    """Optional Google sign-in; off while `client_id` is empty."""

    client_id: str = ""
    jwks_url: str = GOOGLE_JWKS_URL
    auth_url: str = GOOGLE_AUTH_URL
    issuers: tuple[str, ...] = GOOGLE_ISSUERS
    keys_max_age: float = 3600.0                           # when the key URL sends no max-age

    @property
    def enabled(self) -> bool:
        return bool(self.client_id)


DEFAULT_TRIGGERS = ("remote control", "start remote control", "enable remote control",
                    "开启远程控制", "远程控制")


@dataclass(frozen=True, slots=True)
class RemoteConfig:
    """Remote control of a Claude Code terminal from a phone."""

    enabled: bool = True
    triggers: tuple[str, ...] = DEFAULT_TRIGGERS
    session_hours: float = 2.0
    buffer_bytes: int = 64 * 1024         # output kept for viewers who connect late
    max_message_bytes: int = 256 * 1024   # largest WebSocket message accepted
    messages_per_second: float = 200.0    # per connection, with bursts of twice that
    sweep_interval: float = 30.0          # seconds between expiry sweeps and room checks


ALIPAY_GATEWAY = "https://openapi.alipay.com/gateway.do"
NOTIFY_PATH = "/api/payment/notify"


@dataclass(frozen=True, slots=True)
class AlipayConfig:
    """Alipay face-to-face (QR) payment; off while `app_id` is empty."""

    app_id: str = ""
    private_key_path: Path | None = None        # the app's RSA private key (signs requests)
    alipay_public_key_path: Path | None = None  # Alipay's public key (verifies answers)
    gateway_url: str = ALIPAY_GATEWAY
    notify_url: str = ""                        # "" = <public_url>/api/payment/notify
    order_timeout: float = 900.0                # seconds an unpaid order stays open
    reconcile_after: float = 60.0               # ask Alipay about orders pending this long
    reconcile_interval: float = 30.0            # seconds between reconciliation rounds
    timeout: float = 15.0                       # one HTTP call to Alipay

    @property
    def enabled(self) -> bool:
        return bool(self.app_id)


@dataclass(frozen=True, slots=True)
class Route:
    """A smart-routing target: this provider, this upstream model."""

    provider: str
    model: str


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    light: Route | None = None
    coding: Route | None = None
    light_max_messages: int = 4
    max_attempts: int = 4          # upstream attempts per request, all providers together
    retry_backoff: float = 0.05    # base of the jittered backoff before retrying a provider
    max_retry_after: float = 5.0   # honour an upstream retry-after up to this many seconds
    breaker_failures: int = 5      # consecutive failures that open a provider's breaker
    breaker_cooldown: float = 30.0
    health_interval: float = 30.0  # seconds between health probes; 0 turns them off

    @property
    def smart(self) -> bool:
        return self.light is not None or self.coding is not None


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    providers: tuple[ProviderConfig, ...] = ()
    plans: tuple[PlanConfig, ...] = ()
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    web: WebConfig = field(default_factory=WebConfig)
    site: SiteConfig = field(default_factory=SiteConfig)
    mail: MailConfig = field(default_factory=MailConfig)
    google: GoogleConfig = field(default_factory=GoogleConfig)
    remote: RemoteConfig = field(default_factory=RemoteConfig)
    alipay: AlipayConfig = field(default_factory=AlipayConfig)
    source: str = "<defaults>"
    base_dir: Path = field(default_factory=Path.cwd)

    @property
    def database_path(self) -> Path:
        """The SQLite file, relative paths taken from the directory the gateway runs in."""
        path = Path(self.database.path)
        return path if path.is_absolute() else self.base_dir / path

    @property
    def data_dir(self) -> Path:
        """Folder for the database and generated secrets."""
        return self.database_path.parent

    @property
    def public_url(self) -> str:
        return self.server.public_url or f"http://{self.server.host}:{self.server.port}"

    @property
    def alipay_notify_url(self) -> str:
        """Where Alipay posts payment notifications (`[alipay] notify_url` or derived)."""
        return self.alipay.notify_url or self.public_url + NOTIFY_PATH


DEMO_PROVIDER = ProviderConfig(
    name="demo", protocol="demo", models={"default": "demo"}, first_byte_timeout=5.0
)


class _Reader:
    """Typed access to one TOML table that reports mistakes with the full dotted key."""

    def __init__(self, source: str, prefix: str, table: Any) -> None:
        if not isinstance(table, dict):
            raise ConfigError(source, prefix, "must be a table")
        self.source = source
        self.prefix = prefix
        self.table: dict[str, Any] = table
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.source, self.key(name), problem)

    def get(self, name: str, kind: type[T], default: T) -> T:
        self.seen.add(name)
        if name not in self.table:
            return default
        value = self.table[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(name, f"must be {_kind_name(kind)}, got {value!r}")
        return value

    def non_negative(self, name: str, kind: type[T], default: T) -> T:
        value = self.get(name, kind, default)
        if value < 0:  # type: ignore[operator]
            raise self.error(name, f"must not be negative, got {value!r}")
        return value

    def positive(self, name: str, kind: type[T], default: T) -> T:
        value = self.get(name, kind, default)
        if value <= 0:  # type: ignore[operator]
            raise self.error(name, f"must be greater than 0, got {value!r}")
        return value

    def sub(self, name: str) -> _Reader:
        self.seen.add(name)
        return _Reader(self.source, self.key(name), self.table.get(name, {}))

    def finish(self) -> None:
        """Unknown keys are almost always typos: refuse them rather than ignore them."""
        unknown = sorted(set(self.table) - self.seen)
        if unknown:
            raise self.error(unknown[0], "unknown key")


def _kind_name(kind: type[Any]) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            dict: "a table", list: "a list"}.get(kind, kind.__name__)


_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def _networks(r: _Reader, name: str) -> tuple[str, ...]:
    """A list of IP addresses or CIDR networks, each checked here so a typo fails start-up."""
    values = r.get(name, list, [])
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except (TypeError, ValueError):
            raise r.error(name, f"must list IP addresses or networks, got {value!r}") from None
    return tuple(values)


def _server(r: _Reader) -> ServerConfig:
    d = ServerConfig()
    server = ServerConfig(
        host=r.get("host", str, d.host),
        port=r.get("port", int, d.port),
        public_url=r.get("public_url", str, d.public_url).rstrip("/"),
        max_body_bytes=r.positive("max_body_bytes", int, d.max_body_bytes),
        shutdown_grace=r.non_negative("shutdown_grace", float, d.shutdown_grace),
        drain_seconds=r.non_negative("drain_seconds", float, d.drain_seconds),
        access_log=r.get("access_log", bool, d.access_log),
        accounting=r.get("accounting", bool, d.accounting),
        trusted_proxies=_networks(r, "trusted_proxies"),
        metrics_token=r.get("metrics_token", str, d.metrics_token),
        upstream_client=r.get("upstream_client", str, d.upstream_client),
    )
    if server.upstream_client not in UPSTREAM_CLIENTS:
        raise r.error("upstream_client", f"must be one of {', '.join(UPSTREAM_CLIENTS)}, "
                      f"got {server.upstream_client!r}")
    if not 0 <= server.port <= 65535:
        raise r.error("port", f"must be between 0 and 65535, got {server.port}")
    if server.public_url and not server.public_url.startswith(("http://", "https://")):
        raise r.error("public_url", "must start with http:// or https://")
    r.finish()
    return server


def _provider(r: _Reader, env: Mapping[str, str],
              upstream_client: str = UPSTREAM_CLIENTS[0]) -> ProviderConfig:
    name = r.get("name", str, "")
    if not _NAME.match(name):
        raise r.error("name", "must be a lower-case name like \"dashscope\"")
    preset_name = r.get("preset", str, "")
    if preset_name and preset_name not in PRESETS:
        raise r.error("preset", f"must be one of {', '.join(PRESETS)}, got {preset_name!r}")
    preset = PRESETS.get(preset_name) or Preset({})
    protocol = r.get("protocol", str, preset.protocol)
    if protocol not in PROTOCOLS:
        raise r.error("protocol", f"must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if preset_name and protocol != "demo" and protocol not in preset.base_urls \
            and "base_url" not in r.table:
        raise r.error("protocol", f"preset {preset_name!r} has no {protocol} endpoint; "
                      f"use {' or '.join(preset.base_urls)}, or set base_url")
    base_url = r.get("base_url", str, preset.base_urls.get(protocol, "")).rstrip("/")
    if protocol != "demo" and not base_url.startswith(("http://", "https://")):
        raise r.error("base_url", "must be an http:// or https:// URL")
    env_key = f"LLMAPI_PROVIDER_{name.upper().replace('-', '_')}_API_KEY"
    api_key = env.get(env_key) or r.get("api_key", str, "")
    r.seen.add("api_key")

    models_r = r.sub("models")
    models = {k: models_r.get(k, str, "") for k in models_r.table} or dict(preset.models)
    for k, v in models.items():
        if not v:
            raise models_r.error(k, "must be a non-empty upstream model name")
    limits_r = r.sub("max_output_tokens")
    limits = {**preset.max_output_tokens,
              **{k: limits_r.positive(k, int, 1) for k in limits_r.table}}

    pricing_r = r.sub("pricing")
    pricing: dict[str, ModelPrice] = {}
    for model in pricing_r.table:
        p = pricing_r.sub(model)
        pricing[model] = ModelPrice(
            input=p.non_negative("input", float, 0.0),
            output=p.non_negative("output", float, 0.0),
            cached_input=p.non_negative("cached_input", float, p.table.get("input", 0.0)),
        )
        p.finish()

    reasoning = r.get("reasoning", str, preset.reasoning or "") or None
    if reasoning is not None and reasoning not in REASONING_STYLES:
        raise r.error("reasoning", f"must be one of {', '.join(REASONING_STYLES)}")
    d = ProviderConfig(name=name, protocol=protocol)
    timeout = r.positive("timeout", float, d.timeout)
    provider = ProviderConfig(
        name=name,
        protocol=protocol,
        base_url=base_url,
        api_key=api_key,
        timeout=timeout,
        connect_timeout=r.positive("connect_timeout", float, min(d.connect_timeout, timeout)),
        first_byte_timeout=r.positive("first_byte_timeout", float,
                                      min(d.first_byte_timeout, timeout)),
        idle_timeout=r.positive("idle_timeout", float, min(d.idle_timeout, timeout)),
        queue_timeout=r.positive("queue_timeout", float, min(d.queue_timeout, timeout)),
        upstream_client=r.get("upstream_client", str, upstream_client),
        models=models or {"default": "default"} if protocol == "demo" else models,
        max_output_tokens=limits,
        reasoning=reasoning,
        reasoning_model=r.get("reasoning_model", str, "") or None,
        send_top_k=r.get("send_top_k", bool, preset.send_top_k),
        send_files=r.get("send_files", bool, preset.send_files),
        preset=preset_name,
        inject_cache_control=r.get("inject_cache_control", bool, False),
        normalize_prompt_cache=r.get("normalize_prompt_cache", bool, False),
        count_tokens=r.get("count_tokens", bool, protocol == "anthropic"),
        currency=r.get("currency", str, d.currency),
        pricing=pricing,
    )
    if provider.upstream_client not in UPSTREAM_CLIENTS:
        raise r.error("upstream_client", f"must be one of {', '.join(UPSTREAM_CLIENTS)}, "
                      f"got {provider.upstream_client!r}")
    if protocol != "demo" and not provider.models:
        raise r.error("models", "must map at least one client model (e.g. default = \"...\")")
    r.finish()
    return provider


def _plan(r: _Reader, base: PlanConfig | None) -> PlanConfig:
    name = r.get("name", str, "")
    if not _NAME.match(name):
        raise r.error("name", "must be a lower-case name like \"team\"")
    d = base or PlanConfig(name=name)
    plan = PlanConfig(
        name=name,
        price_month=r.non_negative("price_month", float, d.price_month),
        monthly_tokens=r.non_negative("monthly_tokens", int, d.monthly_tokens),
        rpm=r.non_negative("rpm", int, d.rpm),
        rpd=r.non_negative("rpd", int, d.rpd),
        max_keys=r.non_negative("max_keys", int, d.max_keys),
        max_input_tokens=r.non_negative("max_input_tokens", int, d.max_input_tokens),
        concurrency=r.non_negative("concurrency", int, d.concurrency),
    )
    r.finish()
    return plan


def _web(r: _Reader, env: Mapping[str, str]) -> WebConfig:
    d = WebConfig()
    secret = env.get("LLMAPI_SESSION_SECRET") or r.get("session_secret", str, "")
    r.seen.add("session_secret")
    if secret and not _is_fernet_key(secret):
        raise r.error("session_secret", "must be 32 bytes in url-safe base64 (44 characters); "
                      "leave it out to have one generated into the data folder")
    web = WebConfig(
        session_secret=secret,
        session_max_age=r.positive("session_max_age", int, d.session_max_age),
        registration=r.get("registration", bool, d.registration),
        login_failures_per_account=r.positive("login_failures_per_account", int,
                                              d.login_failures_per_account),
        login_failures_per_ip=r.positive("login_failures_per_ip", int, d.login_failures_per_ip),
        login_window=r.positive("login_window", int, d.login_window),
    )
    r.finish()
    return web


def _is_fernet_key(secret: str) -> bool:
    try:
        return len(base64.urlsafe_b64decode(secret.encode("ascii"))) == 32
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return False


def _mail(r: _Reader, env: Mapping[str, str]) -> MailConfig:
    d = MailConfig()
    security = r.get("security", str, d.security)
    if security not in MAIL_SECURITY:
        raise r.error("security", f"must be one of {', '.join(MAIL_SECURITY)}, got {security!r}")
    port = r.get("smtp_port", int, 465 if security == "tls" else d.smtp_port)
    if not 0 < port <= 65535:
        raise r.error("smtp_port", f"must be between 1 and 65535, got {port}")
    sender = r.get("from", str, d.sender)
    if "@" not in sender:
        raise r.error("from", f"must be an e-mail address, got {sender!r}")
    mail = MailConfig(
        smtp_host=r.get("smtp_host", str, ""),
        smtp_port=port,
        smtp_username=r.get("smtp_username", str, ""),
        smtp_password=env.get("LLMAPI_SMTP_PASSWORD") or r.get("smtp_password", str, ""),
        security=security,
        sender=sender,
        timeout=r.positive("timeout", float, d.timeout),
    )
    r.seen.add("smtp_password")
    r.finish()
    return mail


def _google(r: _Reader) -> GoogleConfig:
    d = GoogleConfig()
    issuers = r.get("issuers", list, list(d.issuers))
    if not issuers or not all(isinstance(i, str) and i for i in issuers):
        raise r.error("issuers", "must be a non-empty list of strings")
    google = GoogleConfig(
        client_id=r.get("client_id", str, ""),
        jwks_url=r.get("jwks_url", str, d.jwks_url),
        auth_url=r.get("auth_url", str, d.auth_url),
        issuers=tuple(issuers),
        keys_max_age=r.positive("keys_max_age", float, d.keys_max_age),
    )
    for name in ("jwks_url", "auth_url"):
        if not getattr(google, name).startswith(("http://", "https://")):
            raise r.error(name, "must be an http:// or https:// URL")
    r.finish()
    return google


def _route(r: _Reader, name: str, providers: dict[str, ProviderConfig]) -> Route | None:
    if name not in r.table:
        r.seen.add(name)
        return None
    t = r.sub(name)
    route = Route(provider=t.get("provider", str, ""), model=t.get("model", str, ""))
    if route.provider not in providers:
        raise t.error("provider", f"no provider named {route.provider!r} is configured")
    if not route.model:
        raise t.error("model", "must name the upstream model for this route")
    t.finish()
    return route


def _site(r: _Reader) -> SiteConfig:
    d = SiteConfig()
    language = r.get("default_language", str, d.default_language)
    if language not in SITE_LANGUAGES:
        raise r.error("default_language", f"must be one of {', '.join(SITE_LANGUAGES)}")
    site = SiteConfig(default_language=language, legal_dir=r.get("legal_dir", str, d.legal_dir),
                      recommended_plan=r.get("recommended_plan", str, d.recommended_plan),
                      exchange_rates=_exchange_rates(r.sub("exchange_rates")))
    r.finish()
    return site


_CURRENCY = re.compile(r"^[A-Z]{3}$")


def _exchange_rates(r: _Reader) -> dict[str, float]:
    """`[site.exchange_rates]`: ISO 4217 code -> yuan per unit, each greater than 0."""
    rates: dict[str, float] = {}
    for code in r.table:
        if not _CURRENCY.match(code):
            raise r.error(code, "must be an ISO 4217 currency code like USD")
        rates[code] = r.positive(code, float, 1.0)
    r.finish()
    return rates


def _database(r: _Reader, env: Mapping[str, str]) -> DatabaseConfig:
    path = r.get("path", str, DatabaseConfig().path)
    if not path:
        raise r.error("path", "must not be empty")
    url = r.get("url", str, "")
    url = env.get("LLMAPI_DATABASE_URL") or url
    r.finish()
    if url and not url.startswith(("postgresql://", "postgres://")):
        # never echo the value: it may carry a password
        raise r.error("url", "must start with postgresql:// (SQLite is chosen by `path`)")
    return DatabaseConfig(path=path, url=url)


def _redis(r: _Reader, env: Mapping[str, str]) -> RedisConfig:
    d = RedisConfig()
    url = r.get("url", str, d.url)
    url = env.get("LLMAPI_REDIS_URL") or url
    on_error = r.get("on_error", str, d.on_error)
    timeout = r.positive("timeout", float, d.timeout)
    r.finish()
    if url and not url.startswith(("redis://", "rediss://", "unix://")):
        raise r.error("url", "must start with redis://, rediss:// or unix://")
    if on_error not in REDIS_POLICIES:
        raise r.error("on_error", f"must be one of {', '.join(REDIS_POLICIES)}, "
                                  f"got {on_error!r}")
    return RedisConfig(url=url, on_error=on_error, timeout=timeout)


def _remote(r: _Reader) -> RemoteConfig:
    d = RemoteConfig()
    triggers = r.get("triggers", list, list(d.triggers))
    if not all(isinstance(t, str) and t.strip() for t in triggers):
        raise r.error("triggers", "must be a list of non-empty phrases")
    remote = RemoteConfig(
        enabled=r.get("enabled", bool, d.enabled),
        triggers=tuple(t.strip().lower() for t in triggers),
        session_hours=r.positive("session_hours", float, d.session_hours),
        buffer_bytes=r.positive("buffer_bytes", int, d.buffer_bytes),
        max_message_bytes=r.positive("max_message_bytes", int, d.max_message_bytes),
        messages_per_second=r.positive("messages_per_second", float, d.messages_per_second),
        sweep_interval=r.positive("sweep_interval", float, d.sweep_interval),
    )
    r.finish()
    return remote


def _alipay(r: _Reader, base_dir: Path) -> AlipayConfig:
    """Paths only: the key files are read when the payment service opens
    (`gateway.billing.alipay.read_keys`), so parsing a config touches no file."""
    d = AlipayConfig()
    app_id = r.get("app_id", str, "").strip()
    paths: dict[str, Path | None] = {}
    for name in ("private_key_path", "alipay_public_key_path"):
        value = r.get(name, str, "")
        if not value:
            if app_id:
                raise r.error(name, "must name a key file when app_id is set")
            paths[name] = None
            continue
        paths[name] = Path(value) if Path(value).is_absolute() else base_dir / value
    alipay = AlipayConfig(
        app_id=app_id,
        private_key_path=paths["private_key_path"],
        alipay_public_key_path=paths["alipay_public_key_path"],
        gateway_url=r.get("gateway_url", str, d.gateway_url),
        notify_url=r.get("notify_url", str, d.notify_url).strip(),
        order_timeout=r.positive("order_timeout", float, d.order_timeout),
        reconcile_after=r.non_negative("reconcile_after", float, d.reconcile_after),
        reconcile_interval=r.positive("reconcile_interval", float, d.reconcile_interval),
        timeout=r.positive("timeout", float, d.timeout),
    )
    for name in ("gateway_url", "notify_url"):
        value = getattr(alipay, name)
        if value and not value.startswith(("http://", "https://")):
            raise r.error(name, "must be an http:// or https:// URL")
    r.finish()
    return alipay


def _routing(r: _Reader, providers: dict[str, ProviderConfig]) -> RoutingConfig:
    d = RoutingConfig()
    routing = RoutingConfig(
        light=_route(r, "light", providers),
        coding=_route(r, "coding", providers),
        light_max_messages=r.non_negative("light_max_messages", int, d.light_max_messages),
        max_attempts=r.positive("max_attempts", int, d.max_attempts),
        retry_backoff=r.non_negative("retry_backoff", float, d.retry_backoff),
        max_retry_after=r.non_negative("max_retry_after", float, d.max_retry_after),
        breaker_failures=r.positive("breaker_failures", int, d.breaker_failures),
        breaker_cooldown=r.non_negative("breaker_cooldown", float, d.breaker_cooldown),
        health_interval=r.non_negative("health_interval", float, d.health_interval),
    )
    r.finish()
    return routing


BUILTIN_PLANS: tuple[PlanConfig, ...] = (
    PlanConfig("free", price_month=0, monthly_tokens=50_000, rpm=10, rpd=0, max_keys=1,
               max_input_tokens=64_000, concurrency=4),
    PlanConfig("starter", price_month=9, monthly_tokens=2_000_000, rpm=30, max_keys=3,
               concurrency=8),
    PlanConfig("pro", price_month=29, monthly_tokens=10_000_000, rpm=60, max_keys=5,
               concurrency=16),
    PlanConfig("team", price_month=99, monthly_tokens=50_000_000, rpm=120, max_keys=10,
               concurrency=32),
)


def parse_config(data: dict[str, Any], source: str = "<config>",
                 env: Mapping[str, str] | None = None, base_dir: Path | None = None) -> Config:
    """Turn a parsed TOML document into `Config`, raising `ConfigError` on the first mistake."""
    env = os.environ if env is None else env
    root = _Reader(source, "", data)
    server = _server(root.sub("server"))
    db_r = root.sub("database")
    database = _database(db_r, env)
    redis = _redis(root.sub("redis"), env)

    providers: list[ProviderConfig] = []
    for i, table in enumerate(root.get("providers", list, [])):
        providers.append(_provider(_Reader(source, f"providers[{i}]", table), env,
                                   server.upstream_client))
    names = [p.name for p in providers]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(source, f"providers[{i}].name", f"duplicate provider {name!r}")

    plans = {p.name: p for p in BUILTIN_PLANS}
    for i, table in enumerate(root.get("plans", list, [])):
        reader = _Reader(source, f"plans[{i}]", table)
        plan_name = table.get("name") if isinstance(table, dict) else None
        plan = _plan(reader, plans.get(plan_name) if isinstance(plan_name, str) else None)
        plans[plan.name] = plan
    web = _web(root.sub("web"), env)
    site = _site(root.sub("site"))
    mail = _mail(root.sub("mail"), env)
    google = _google(root.sub("google"))
    final_providers = tuple(providers) or (DEMO_PROVIDER,)
    routing = _routing(root.sub("routing"), {p.name: p for p in final_providers})
    remote = _remote(root.sub("remote"))
    alipay = _alipay(root.sub("alipay"), base_dir or Path.cwd())
    root.finish()
    return Config(
        server=server,
        database=database,
        redis=redis,
        providers=final_providers,
        routing=routing,
        plans=tuple(plans.values()),
        web=web,
        site=site,
        mail=mail,
        google=google,
        remote=remote,
        alipay=alipay,
        source=source,
        base_dir=base_dir or Path.cwd(),
    )


def load_config(path: str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the config named by `path` or `LLMAPI_CONFIG`; built-in defaults when neither."""
    env = os.environ if env is None else env
    path = path or env.get("LLMAPI_CONFIG") or None
    if path is None:
        return parse_config({}, source="<defaults>", env=env)
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(str(file), "(file)", f"cannot be read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(str(file), "(file)", "is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(file), "(syntax)", str(exc)) from None
    return parse_config(data, source=str(file), env=env, base_dir=Path.cwd())


def override_server(config: Config, host: str | None, port: int | None) -> Config:
    """Apply `--host/--port` from the command line on top of the file."""
    from dataclasses import replace

    server = replace(config.server, host=host or config.server.host,
                     port=config.server.port if port is None else port)
    return replace(config, server=server)


CONFIG = web.AppKey("config", Config)
"""The parsed config, set by `build_app` before anything opens."""
