"""The long-lived resources of one gateway process, stored under one typed app key."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from gateway.access_log import AccessLog
from gateway.accounting.keycache import KeyCache
from gateway.accounting.limits import Limits
from gateway.accounting.usage import NoopRecorder, UsageRecorder
from gateway.billing.payments import Payments
from gateway.config import Config
from gateway.metrics import Metrics
from gateway.providers.base import Provider
from gateway.relay.breaker import Breaker
from gateway.relay.health_checks import HealthChecker
from gateway.remote.hub import RemoteHub
from gateway.store.sqlite import Database


@dataclass(slots=True)
class GatewayState:
    config: Config
    db: Database
    keys: KeyCache
    limits: Limits | None  # None when accounting is off (benchmark baseline)
    recorder: UsageRecorder | NoopRecorder
    health: HealthChecker
    providers: dict[str, Provider] = field(default_factory=dict)
    breakers: dict[str, Breaker] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    # open client streams -> monotonic time of their last write (keep-alive pings, gauge)
    streams: dict[web.StreamResponse, float] = field(default_factory=dict)
    remote: RemoteHub | None = None
    access_log: AccessLog | None = None  # None when `[server] access_log = false`
    payments: Payments | None = None
    started_at: float = 0.0


STATE = web.AppKey("state", GatewayState)
CONFIG = web.AppKey("config", Config)
REQUEST_ID = web.RequestKey("request_id", str)
