"""Every request on the relay routes leaves an access-log line and a metrics sample, refused
ones included; and nothing a client chooses becomes a Prometheus label without bound."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.accounts.users import set_user_status
from gateway.protocol.openai_response import finish_outcome
from tests.helpers.gateway import Gateway
from tests.helpers.wire import ROUTES, minimal_body

OPEN_PLAN = {"name": "free", "rpm": 0, "rpd": 0, "monthly_tokens": 0, "max_input_tokens": 0,
             "concurrency": 0}


@pytest.fixture
def upstream_client() -> str:
    """Nothing here depends on the upstream HTTP client: one run, not one per client."""
    return "lean"


def capture_access_log(gw: Gateway) -> io.BytesIO:
    sink = io.BytesIO()
    gw.access_log.stream = sink
    return sink


def access_lines(gw: Gateway, sink: io.BytesIO) -> list[dict[str, Any]]:
    gw.access_log.flush()
    return [orjson.loads(line) for line in sink.getvalue().splitlines() if line.strip()]


async def metrics_text(gw: Gateway) -> str:
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/metrics") as r:
        assert r.status == 200
        return await r.text()


def samples(text: str, family: str) -> list[Any]:
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return list(families[family].samples) if family in families else []


async def call(gw: Gateway, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.post(gw.url + path, data=body,
                                                   headers=headers) as r:
        await r.read()
        return r.status, r.headers["request-id"]


@pytest.mark.parametrize("path", ROUTES)
async def test_refused_requests_are_logged_and_counted(gateway_factory: Any, path: str) -> None:
    gw = await gateway_factory({
        "server": {"max_body_bytes": 2000},
        "plans": [{**OPEN_PLAN, "name": "starter", "rpm": 1},
                  {**OPEN_PLAN, "name": "free"}]})
    sink = capture_access_log(gw)
    good = await gw.new_key("good@example.com")
    limited = await gw.new_key("limited@example.com", plan="starter")
    suspended = await gw.new_key("sus@example.com")
    await set_user_status(gw.db, "sus@example.com", "suspended")
    await gw.keys.refresh()
    json_ct = {"content-type": "application/json"}
    body = orjson.dumps(minimal_body(path))
    cases = [
        (400, b'{"model": 5', {"x-api-key": good, **json_ct}),
        (401, body, json_ct),
        (401, body, {"x-api-key": "sk-llmapi-nobody", **json_ct}),
        (403, body, {"x-api-key": suspended, **json_ct}),
        (413, orjson.dumps(minimal_body(path, metadata={"x": "y" * 4000})),
         {"x-api-key": good, **json_ct}),
        (415, body, {"x-api-key": good, "content-encoding": "gzip", **json_ct}),
        (200, body, {"x-api-key": limited, **json_ct}),
        (429, body, {"x-api-key": limited, **json_ct}),
    ]
    seen: dict[str, int] = {}
    for want, data, headers in cases:
        status, request_id = await call(gw, path, data, headers)
        assert status == want, (want, status)
        seen[request_id] = status
    lines = {line["request_id"]: line for line in access_lines(gw, sink)}
    for request_id, status in seen.items():
        assert request_id in lines, f"no access-log line for the {status} ({request_id})"
        line = lines[request_id]
        assert line["http_status"] == status
        assert line["ingress"] == {"/v1/messages": "anthropic",
                                   "/v1/chat/completions": "chat",
                                   "/v1/responses": "responses"}[path]
        if status != 200:
            assert line["status"] == "refused" and line["error_type"]
    for request_id, status in seen.items():  # the key is named once it was accepted
        assert (lines[request_id]["user_id"] is None) == (status in (401, 403, 415))
    assert len(lines) == len(seen)  # one line each, never two
    text = await metrics_text(gw)
    requests = samples(text, "llmapi_requests")
    refused = sum(s.value for s in requests if s.labels["status"] == "refused")
    assert refused == len(cases) - 1
    by_code = {s.labels["code"]: s.value for s in samples(text, "llmapi_refused")}
    assert by_code == {"400": 1, "401": 2, "403": 1, "413": 1, "415": 1, "429": 1}
    durations = samples(text, "llmapi_request_duration_ms")
    counted = sum(s.value for s in durations if s.name.endswith("_count"))
    assert counted == len(cases)


async def test_5000_client_model_names_do_not_grow_the_metrics(gateway_factory: Any) -> None:
    """Client-chosen model names used to become labels: 5,000 names gave a 5.3 MB /metrics.
    The `model` label is the upstream model the config mapped to, so it stays bounded."""
    gw = await gateway_factory({"plans": [OPEN_PLAN]})
    capture_access_log(gw)
    key = await gw.new_key()
    before = len(await metrics_text(gw))
    names = [f"claude-made-up-{i}-{'x' * 40}" for i in range(5000)]
    gate = asyncio.Semaphore(50)

    async def one(s: aiohttp.ClientSession, i: int, name: str) -> int:
        path = ROUTES[i % 3]
        body = orjson.dumps(minimal_body(path, model=name))
        async with gate, s.post(gw.url + path, data=body, headers={
                "x-api-key": key, "content-type": "application/json"}) as r:
            await r.read()
            return r.status

    connector = aiohttp.TCPConnector(limit=50)
    async with aiohttp.ClientSession(connector=connector) as s:
        statuses = await asyncio.gather(*(one(s, i, n) for i, n in enumerate(names)))
    assert set(statuses) == {200}
    text = await metrics_text(gw)
    print(f"/metrics: {before} bytes before, {len(text)} after 5,000 model names")
    assert len(text) < before + 20_000, len(text)
    models = {s.labels["model"] for s in samples(text, "llmapi_requests")}
    assert models == {"demo"}
    assert not any("made-up" in line for line in text.splitlines())


def test_unknown_finish_reasons_share_one_label() -> None:
    from gateway.metrics import INCOMPLETE_FINISH

    for i in range(5000):
        finish_outcome(f"weird_reason_{i}")
    labels = {labels[0] for labels in INCOMPLETE_FINISH.values}
    assert len(labels) <= 6 and "other" in labels


def test_every_metric_caps_its_series() -> None:
    """Defence in depth: whatever a label is fed, a metric never holds more than its cap
    of series; the rest are counted under labels of "other"."""
    from gateway.metrics import MAX_SERIES, Counter, Histogram

    counter = Counter("c", "help", ("a", "b"))
    histogram = Histogram("h", "help", (1.0,), ("a",))
    for i in range(MAX_SERIES * 3):
        counter.inc((str(i), "x"))
        histogram.observe(0.5, (str(i),))
    assert len(counter.values) == MAX_SERIES + 1
    assert counter.values[("other", "other")] == MAX_SERIES * 2
    assert len(histogram.series) == MAX_SERIES + 1
