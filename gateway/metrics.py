"""A tiny Prometheus registry: counters, gauges and histograms rendered as text format 0.0.4.

Hand-written so the hot path pays only a dict update per sample; `prometheus_client` is
used in the tests to parse what this renders.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping

from aiohttp import web

Labels = tuple[str, ...]

LATENCY_BUCKETS_MS = (0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000,
                      30000, 60000, 120000, 300000)
OVERHEAD_BUCKETS_MS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Labels, values: Labels, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


MAX_SERIES = 1000
"""Label sets one metric holds; any further ones are counted under labels of "other", so no
value a client or an upstream chooses can grow /metrics (or memory) without bound. Labels
are chosen to be bounded anyway (provider and upstream model come from the config); this
is the backstop."""


def _bounded(series: Mapping[Labels, object], labels: Labels) -> Labels:
    if labels in series or len(series) < MAX_SERIES:
        return labels
    return ("other",) * len(labels)


class Counter:
    def __init__(self, name: str, help_text: str, labels: Labels = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, labels
        self.values: dict[Labels, float] = {}

    def inc(self, labels: Labels = (), amount: float = 1.0) -> None:
        values = self.values
        value = values.get(labels)
        if value is None:
            labels = _bounded(values, labels)
            value = values.get(labels, 0.0)
        values[labels] = value + amount

    def render(self) -> Iterable[str]:
        # text format 0.0.4 names a counter family by its sample name, `_total` included
        yield f"# HELP {self.name}_total {self.help}"
        yield f"# TYPE {self.name}_total counter"
        for labels, value in self.values.items():
            yield f"{self.name}_total{_labels(self.label_names, labels)} {_num(value)}"


class Gauge:
    """A gauge whose samples are read at scrape time from a callback."""

    def __init__(self, name: str, help_text: str, labels: Labels,
                 read: Callable[[], Iterable[tuple[Labels, float]]]) -> None:
        self.name, self.help, self.label_names, self.read = name, help_text, labels, read

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        for labels, value in self.read():
            yield f"{self.name}{_labels(self.label_names, labels)} {_num(value)}"


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...],
                 labels: Labels = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, labels
        self.buckets = buckets
        self.series: dict[Labels, list[float]] = {}  # bucket counts..., count, sum

    def observe(self, value: float, labels: Labels = ()) -> None:
        series = self.series.get(labels)
        if series is None:
            labels = _bounded(self.series, labels)
            series = self.series.get(labels)
            if series is None:
                series = self.series[labels] = [0.0] * (len(self.buckets) + 2)
        series[bisect_left(self.buckets, value)] += 1  # one bucket; cumulated at render
        series[-1] += value

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        n = len(self.buckets)
        for labels, series in self.series.items():
            running = 0.0
            for i, bound in enumerate(self.buckets):
                running += series[i]
                le = f'le="{_num(bound)}"'
                yield f"{self.name}_bucket{_labels(self.label_names, labels, le)} {_num(running)}"
            running += series[n]
            inf = 'le="+Inf"'
            yield f"{self.name}_bucket{_labels(self.label_names, labels, inf)} {_num(running)}"
            yield f"{self.name}_count{_labels(self.label_names, labels)} {_num(running)}"
            yield f"{self.name}_sum{_labels(self.label_names, labels)} {_num(series[-1])}"


# Content the gateway could not pass on as sent (a PDF as a file part, as extracted text, or
# only a placeholder): process-wide, because the pure converters in gateway/protocol count it.
CONTENT_DOWNGRADED = Counter("llmapi_content_downgraded",
                             "Content blocks sent in another form than the client's",
                             ("kind", "how"))
# Upstream finish reasons that do not mean a complete answer (or that are unknown).
INCOMPLETE_FINISH = Counter("llmapi_incomplete_finish",
                            "Answers ended by a finish_reason that is not a normal end",
                            ("finish_reason",))


class Metrics:
    """Every metric the gateway exports."""

    def __init__(self) -> None:
        # `model` is the upstream model the config mapped the request to ("none" when no
        # provider was asked), never the client's own name: that one is unbounded.
        self.requests = Counter("llmapi_requests",
                                "Requests to the relay routes by outcome",
                                ("status", "model", "provider"))
        self.refused = Counter("llmapi_refused",
                               "Relay requests refused before any provider was asked",
                               ("ingress", "code"))
        self.attempts = Counter("llmapi_upstream_attempts", "Upstream attempts",
                                ("provider", "outcome"))
        self.failures = Counter("llmapi_upstream_failures", "Failed upstream attempts",
                                ("provider", "reason"))
        self.ttft = Histogram("llmapi_time_to_first_token_ms",
                              "Request start to first byte sent to the client",
                              LATENCY_BUCKETS_MS, ("provider",))
        self.duration = Histogram("llmapi_request_duration_ms", "Total request duration",
                                  LATENCY_BUCKETS_MS, ("provider",))
        self.overhead = Histogram("llmapi_gateway_overhead_ms",
                                  "Time spent in the gateway before the upstream call",
                                  OVERHEAD_BUCKETS_MS)
        self.extra: list[Gauge] = []

    def add_gauge(self, gauge: Gauge) -> None:
        self.extra.append(gauge)

    def render(self) -> str:
        lines: list[str] = []
        metrics: list[Counter | Histogram | Gauge] = [
            self.requests, self.refused, self.attempts, self.failures, self.ttft, self.duration,
            self.overhead, CONTENT_DOWNGRADED, INCOMPLETE_FINISH, *self.extra]
        for metric in metrics:
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


METRICS = web.AppKey("metrics", Metrics)
"""The process's Prometheus registry (app.py: `metrics`)."""
