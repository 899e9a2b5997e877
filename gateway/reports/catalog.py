"""What the public pages say about plans and models, read from the live database and config.

The pricing and docs pages never hard-code a figure: plans come from the `plans` table
(built-in plans plus the config's `[[plans]]`), the model table from `[[providers]]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.config import Config
from gateway.relay.routing import map_model
from gateway.store.base import Store

EXAMPLE_MODELS = ("claude-opus-4-5", "claude-sonnet-4-5", "claude-haiku-4-5")


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """How one client model name is served: the upstream model per provider, in order."""

    client_model: str
    routes: tuple[tuple[str, str], ...]  # (provider, upstream model), first one tried first


@dataclass(frozen=True, slots=True)
class ProviderModels:
    provider: str
    protocol: str
    models: tuple[tuple[str, str], ...]  # (client name or family, upstream model)


async def plans(db: Store) -> list[dict[str, Any]]:
    return [dict(r) for r in await db.fetch_all("plan_all")]


def provider_models(config: Config) -> list[ProviderModels]:
    return [ProviderModels(p.name, p.protocol, tuple(p.models.items()))
            for p in config.providers]


def example_routes(config: Config, names: tuple[str, ...] = EXAMPLE_MODELS) -> list[ModelRoute]:
    routes = []
    for name in names:
        found = []
        for provider in config.providers:
            upstream = map_model(provider, name)
            if upstream is not None:
                found.append((provider.name, upstream))
        routes.append(ModelRoute(name, tuple(found)))
    return routes
