"""The long-lived resources of one gateway process, stored under one typed app key."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from gateway.config import Config
from gateway.keycache import KeyCache
from gateway.providers.base import Provider
from gateway.storage import Database


@dataclass(slots=True)
class GatewayState:
    config: Config
    db: Database
    keys: KeyCache
    providers: dict[str, Provider] = field(default_factory=dict)
    started_at: float = 0.0


STATE = web.AppKey("state", GatewayState)
CONFIG = web.AppKey("config", Config)
REQUEST_ID = web.RequestKey("request_id", str)
