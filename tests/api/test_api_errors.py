"""Every client-facing error has the Anthropic shape, the right status and a request id."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.helpers.gateway import Gateway


async def post(gw: Gateway, path: str, body: bytes | None, headers: dict[str, str] | None = None,
               method: str = "POST") -> tuple[int, dict[str, Any], aiohttp.typedefs.LooseHeaders]:
    async with aiohttp.ClientSession() as s, s.request(method, gw.url + path, data=body,
                                                       headers=headers or {}) as r:
        return r.status, await r.json(content_type=None), r.headers


def assert_error(status: int, payload: dict[str, Any], want_status: int, want_type: str) -> str:
    assert status == want_status, payload
    assert payload["type"] == "error"
    assert payload["error"]["type"] == want_type
    assert isinstance(payload["error"]["message"], str) and payload["error"]["message"]
    return str(payload["error"]["message"])


GOOD = b'{"model":"claude-sonnet-4-6","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}'


async def test_missing_key_is_authentication_error(gateway: Gateway) -> None:
    status, payload, headers = await post(gateway, "/v1/messages", GOOD)
    assert "x-api-key" in assert_error(status, payload, 401, "authentication_error")
    assert headers["request-id"].startswith("req_")


async def test_unknown_key_is_authentication_error(gateway: Gateway) -> None:
    status, payload, _ = await post(gateway, "/v1/messages", GOOD,
                                    {"x-api-key": "sk-llmapi-not-a-real-key"})
    assert_error(status, payload, 401, "authentication_error")


async def test_bearer_token_is_accepted(gateway: Gateway) -> None:
    key = await gateway.new_key()
    status, payload, headers = await post(gateway, "/v1/messages", GOOD,
                                          {"Authorization": f"Bearer {key}"})
    assert status == 200, payload
    assert payload["type"] == "message"
    assert headers["request-id"].startswith("req_")


async def test_suspended_user_is_permission_error(gateway: Gateway) -> None:
    from gateway.accounts.users import set_user_status

    key = await gateway.new_key("sus@example.com")
    await set_user_status(gateway.db, "sus@example.com", "suspended")
    await gateway.keys.refresh()
    status, payload, _ = await post(gateway, "/v1/messages", GOOD, {"x-api-key": key})
    assert_error(status, payload, 403, "permission_error")


@pytest.mark.parametrize(("body", "field"), [
    (b"{not json", "JSON"),
    (b"", "empty"),
    (b"[1,2]", "object"),
    (b'{"max_tokens":5,"messages":[{"role":"user","content":"x"}]}', "model"),
    (b'{"model":"","max_tokens":5,"messages":[{"role":"user","content":"x"}]}', "model"),
    (b'{"model":"m","messages":[{"role":"user","content":"x"}]}', "max_tokens"),
    (b'{"model":"m","max_tokens":"5","messages":[{"role":"user","content":"x"}]}', "max_tokens"),
    (b'{"model":"m","max_tokens":0,"messages":[{"role":"user","content":"x"}]}', "max_tokens"),
    (b'{"model":"m","max_tokens":5}', "messages"),
    (b'{"model":"m","max_tokens":5,"messages":[]}', "messages"),
    (b'{"model":"m","max_tokens":5,"messages":"hi"}', "messages"),
])
async def test_bad_body_is_invalid_request_naming_the_field(
        gateway: Gateway, body: bytes, field: str) -> None:
    key = await gateway.new_key()
    status, payload, _ = await post(gateway, "/v1/messages", body,
                                    {"x-api-key": key, "content-type": "application/json"})
    assert field in assert_error(status, payload, 400, "invalid_request_error")


async def test_body_over_limit_is_request_too_large(gateway_factory: Any) -> None:
    gw = await gateway_factory({"server": {"max_body_bytes": 1000}})
    key = await gw.new_key()
    body = b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"' + b"x" * 2000 \
        + b'"}]}'
    status, payload, _ = await post(gw, "/v1/messages", body, {"x-api-key": key})
    assert_error(status, payload, 413, "request_too_large")


async def test_unknown_route_is_not_found(gateway: Gateway) -> None:
    status, payload, headers = await post(gateway, "/v1/nothing-here", b"{}")
    assert_error(status, payload, 404, "not_found_error")
    assert headers["request-id"].startswith("req_")


async def test_wrong_method_is_invalid_request(gateway: Gateway) -> None:
    status, payload, _ = await post(gateway, "/v1/messages", None, method="GET")
    assert_error(status, payload, 405, "invalid_request_error")


async def test_unexpected_failure_is_api_error_with_request_id_and_no_trace(
        gateway: Gateway) -> None:
    key = await gateway.new_key()

    async def explode(call: Any) -> Any:
        raise RuntimeError("secret internal detail")

    gateway.providers["demo"].send = explode
    status, payload, headers = await post(gateway, "/v1/messages", GOOD, {"x-api-key": key})
    message = assert_error(status, payload, 500, "api_error")
    assert headers["request-id"] in message
    assert "secret internal detail" not in message and "Traceback" not in message
