"""Model mapping and smart routing decide which provider and upstream model serve a request."""

from __future__ import annotations

from typing import Any

from gateway.config import parse_config
from gateway.relay.routing import base_model_name, listed_models, map_model, plan_route

QWEN = {"name": "qwen", "protocol": "openai", "base_url": "http://127.0.0.1:1/v1",
        "models": {"claude-sonnet-4-6": "qwen-exact", "opus": "qwen-max", "haiku": "qwen-plus",
                   "default": "qwen-coder"}}
DEEPSEEK = {"name": "deepseek", "protocol": "anthropic", "base_url": "http://127.0.0.1:2",
            "models": {"sonnet": "deepseek-chat"}}


def config(routing: dict[str, Any] | None = None) -> Any:
    data: dict[str, Any] = {"providers": [QWEN, DEEPSEEK]}
    if routing is not None:
        data["routing"] = routing
    return parse_config(data, env={})


def test_exact_name_then_family_then_default() -> None:
    qwen = config().providers[0]
    assert map_model(qwen, "claude-sonnet-4-6") == "qwen-exact"
    assert map_model(qwen, "claude-opus-5-5") == "qwen-max"  # newer than any table
    assert map_model(qwen, "claude-3-5-haiku-latest") == "qwen-plus"
    assert map_model(qwen, "claude-sonnet-4-5") == "qwen-coder"  # no sonnet key: default
    assert map_model(qwen, "gpt-whatever") == "qwen-coder"


def test_context_suffixes_are_ignored() -> None:
    qwen = config().providers[0]
    assert base_model_name("claude-sonnet-4-6[1m]") == "claude-sonnet-4-6"
    assert base_model_name("claude-opus-4-8-1m") == "claude-opus-4-8"
    assert map_model(qwen, "claude-sonnet-4-6[1m]") == "qwen-exact"
    assert map_model(qwen, "claude-sonnet-4-6-1m") == "qwen-exact"


def test_provider_without_a_mapping_is_not_a_candidate() -> None:
    cfg = config()
    body = {"messages": [{"role": "user", "content": "x"}] * 9, "tools": [{"name": "t"}]}
    names = [c.provider.name for c in plan_route(cfg.routing, cfg.providers, body,
                                                 "claude-opus-4-5")]
    assert names == ["qwen"]  # deepseek maps only sonnet
    both = plan_route(cfg.routing, cfg.providers, body, "claude-sonnet-4-6")
    assert [(c.provider.name, c.upstream_model) for c in both] == [
        ("qwen", "qwen-exact"), ("deepseek", "deepseek-chat")]


SMART = {"light": {"provider": "deepseek", "model": "deepseek-light"},
         "coding": {"provider": "qwen", "model": "qwen3-coder-plus"}}


def route(cfg: Any, model: str, messages: int, tools: bool) -> list[tuple[str, str]]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "x"}] * messages}
    if tools:
        body["tools"] = [{"name": "Read", "input_schema": {}}]
    return [(c.provider.name, c.upstream_model)
            for c in plan_route(cfg.routing, cfg.providers, body, model)]


def test_smart_routing_is_off_without_a_routing_table() -> None:
    assert route(config(), "claude-haiku-4-5", 1, False) == [("qwen", "qwen-plus")]


def test_haiku_goes_to_the_light_route_first() -> None:
    cfg = config(SMART)
    assert route(cfg, "claude-haiku-4-5", 30, True)[0] == ("deepseek", "deepseek-light")


def test_short_conversation_without_tools_is_light() -> None:
    cfg = config({**SMART, "light_max_messages": 3})
    assert route(cfg, "claude-sonnet-4-6", 3, False)[0] == ("deepseek", "deepseek-light")
    assert route(cfg, "claude-sonnet-4-6", 4, False)[0] == ("qwen", "qwen-exact")


def test_requests_with_tools_take_the_coding_route_then_fail_over_by_mapping() -> None:
    cfg = config(SMART)
    assert route(cfg, "claude-sonnet-4-6", 10, True) == [
        ("qwen", "qwen3-coder-plus"), ("qwen", "qwen-exact"), ("deepseek", "deepseek-chat")]


def test_models_list_reflects_the_mapping() -> None:
    names = listed_models(config().providers)
    assert "claude-sonnet-4-6" in names
    assert any("opus" in n for n in names) and any("haiku" in n for n in names)
