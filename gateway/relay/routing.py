"""Decide which provider and upstream model serve a request (never how to talk to it).

Model mapping, per provider: the exact client model name, then a family word
(opus / sonnet / haiku) found inside the name, then `default`. Context-size suffixes that
Claude Code appends (`[1m]`, `-1m`) are ignored, so `claude-opus-5-5[1m]` maps like
`claude-opus-5-5`, and model names newer than the config still work.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.config import ProviderConfig, Route, RoutingConfig

FAMILIES = ("opus", "sonnet", "haiku")
_CONTEXT_SUFFIX = re.compile(r"(\[\d+[km]\]|-\d+[km])$", re.IGNORECASE)


@functools.lru_cache(maxsize=1024)
def base_model_name(model: str) -> str:
    """`claude-sonnet-4-6[1m]` -> `claude-sonnet-4-6` (memoized: a regex per provider per
    request otherwise, for the handful of names clients send; bounded against junk names)."""
    return _CONTEXT_SUFFIX.sub("", model.strip())


def model_family(model: str) -> str | None:
    lowered = model.lower()
    for family in FAMILIES:
        if family in lowered:
            return family
    return None


def map_model(provider: ProviderConfig, client_model: str) -> str | None:
    """The upstream model this provider uses for `client_model`, or None if it has none.

    Order: the exact name, then shell-style wildcard keys (`"gpt-*"`, `"*codex*"`) in the
    order configured, then a family word, then `default`: OpenAI-style names such as
    `gpt-5-codex` are mapped like any other."""
    models = provider.models
    name = base_model_name(client_model)
    if name in models:
        return models[name]
    if client_model in models:
        return models[client_model]
    for pattern, upstream in models.items():
        if "*" in pattern and fnmatch.fnmatchcase(name.lower(), pattern.lower()):
            return upstream
    family = model_family(name)
    if family is not None and family in models:
        return models[family]
    return models.get("default")


@dataclass(frozen=True, slots=True)
class Candidate:
    provider: ProviderConfig
    upstream_model: str


def candidates(providers: Sequence[ProviderConfig], client_model: str) -> list[Candidate]:
    """Every provider that can serve the model, in configured priority order."""
    found = []
    for provider in providers:
        upstream = map_model(provider, client_model)
        if upstream is not None:
            found.append(Candidate(provider, upstream))
    return found


def listed_models(providers: Sequence[ProviderConfig]) -> list[str]:
    """Client model names worth advertising in `/v1/models`: the configured exact names,
    plus a current Claude name for every family some provider maps (or maps by default)."""
    names: list[str] = []
    defaults = {"opus": "claude-opus-4-5", "sonnet": "claude-sonnet-4-5",
                "haiku": "claude-haiku-4-5"}
    for provider in providers:
        for key in provider.models:
            if key == "default" or key in FAMILIES or "*" in key:
                continue
            if key not in names:
                names.append(key)
    mapped = {f for p in providers for f in FAMILIES if f in p.models or "default" in p.models}
    names.extend(defaults[f] for f in FAMILIES if f in mapped and defaults[f] not in names)
    return names


def plan_route(config: RoutingConfig, providers: Sequence[ProviderConfig],
               body: dict[str, Any], client_model: str) -> list[Candidate]:
    """Candidates in the order to try them: the smart-routing target first (when a rule
    matches), then every provider that maps the model, in configured order."""
    mapped = candidates(providers, client_model)
    if not config.smart:
        return mapped
    route = smart_route(config, body, client_model)
    if route is None:
        return mapped
    by_name = {p.name: p for p in providers}
    first = Candidate(by_name[route.provider], route.model)
    return [first, *(c for c in mapped if c != first)]


def smart_route(config: RoutingConfig, body: dict[str, Any], client_model: str) -> Route | None:
    """The original product's rule: haiku-class requests and short conversations without
    tools are light work; anything with tools is coding work; the rest follows the map."""
    has_tools = bool(body.get("tools"))
    light = model_family(base_model_name(client_model)) == "haiku" or (
        not has_tools and len(body.get("messages") or ()) <= config.light_max_messages)
    if light and config.light is not None:
        return config.light
    if has_tools and config.coding is not None:
        return config.coding
    return None
