"""The server's Prometheus metrics (prometheus-client), in a registry of its own.

Requests are counted by protocol (``tfserving_rest``...), model, API and the
protocol's own status code. Those counts and their latency histogram are plain
numbers bumped on the event loop's thread, read by a collector of ours when
``/metrics`` is scraped: prometheus-client's counters and histograms take a lock and
walk their buckets in Python on every request (~8 us of a ~80 us request, measured).
"""

from __future__ import annotations

import bisect
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.utils import floatToGoString

__all__ = ["ServerMetrics"]

# Predict answers in well under a millisecond; the buckets resolve that and the tail.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: the model label of requests naming a model that is not served (bounded label values)
UNKNOWN_MODEL = "_unknown"


class ServerMetrics:
    """Requests, errors, latency, batch sizes, and the versions in service."""

    def __init__(self, models: list[str]):
        self.registry = CollectorRegistry(auto_describe=True)
        self.models = frozenset(models)
        self._requests = _RequestCollector()
        self.registry.register(self._requests)
        #: ``observe(protocol, model, api, code, seconds, error)`` counts one answer
        #: (``code``: the protocol's status, ``error``: whether it is one); on the event
        #: loop's thread only
        self.observe = self._requests.observe
        self.batch_rows = Histogram(
            "policy_serving_batch_rows",
            "Rows per merged action call (request batching only).",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.versions = Gauge(
            "policy_serving_model_versions",
            "Versions in service per model.",
            ["model"],
            registry=self.registry,
        )
        self.train_step = Gauge(
            "policy_serving_model_train_step",
            "Train step of each version in service (-1: none recorded).",
            ["model", "version"],
            registry=self.registry,
        )
        self.load_failures = Counter(
            "policy_serving_version_load_failures",
            "Versions that failed to load or check (the versions in service stayed).",
            ["model"],
            registry=self.registry,
        )
        self.connections_closed = Counter(
            "policy_serving_connections_closed",
            "Connections the server closed: over --max-connections (limit), or not "
            "delivering a whole request within --read-timeout-seconds (read_timeout).",
            ["reason"],
            registry=self.registry,
        )
        self.trust_refusals = Counter(
            "policy_serving_trust_refusals",
            "Versions the trust policy refused (unsigned, another key, changed files); the "
            "versions in service stayed. Also counted in version_load_failures.",
            ["model"],
            registry=self.registry,
        )
        self._shown: dict[str, set[str]] = {}
        self._budget = _BudgetCollector()
        self.registry.register(self._budget)

    def show_budget(self, budget: Any) -> None:
        """Shows a ``core.RequestBudget``'s bytes reserved and refusals when scraped."""
        self._budget.budget = budget

    def set_versions(self, model: str, versions: dict[int, Any]) -> None:
        """Shows the versions in service (and their train steps) of one model."""
        self.versions.labels(model).set(len(versions))
        shown = self._shown.setdefault(model, set())
        for version, loaded in versions.items():
            step = loaded.train_step
            self.train_step.labels(model, str(version)).set(-1 if step is None else step)
        for gone in shown - {str(v) for v in versions}:
            self.train_step.remove(model, gone)
        self._shown[model] = {str(v) for v in versions}


_LABELS = ["protocol", "model", "api", "code"]


class _BudgetCollector:
    """The request-memory budget (``core.RequestBudget``: plain numbers bumped on the
    event loop, read here when scraped): ``policy_serving_buffered_request_bytes`` (a
    gauge: reserved now), ``policy_serving_max_buffered_request_bytes`` (the limit) and
    ``policy_serving_buffer_refusals`` (a counter by port)."""

    def __init__(self) -> None:
        self.budget: Any = None

    def describe(self) -> list:
        return []

    def collect(self) -> Any:
        budget = self.budget
        if budget is None:
            return []
        reserved = GaugeMetricFamily(
            "policy_serving_buffered_request_bytes",
            "Request bytes buffered now (reserved from --max-buffered-bytes), both ports.",
            value=budget.reserved,
        )
        limit = GaugeMetricFamily(
            "policy_serving_max_buffered_request_bytes",
            "The server's --max-buffered-bytes.",
            value=budget.limit,
        )
        refusals = CounterMetricFamily(
            "policy_serving_buffer_refusals",
            "Requests refused at once because --max-buffered-bytes was taken by other "
            "requests (HTTP 503, gRPC RESOURCE_EXHAUSTED), by port.",
            labels=["port"],
        )
        for port, count in budget.refused.items():
            refusals.add_metric([port], count)
        return [reserved, limit, refusals]


class _RequestCollector:
    """Requests, errors and latency by protocol, model, API (and code), as
    ``policy_serving_requests``, ``policy_serving_request_errors`` (counters) and
    ``policy_serving_request_latency_seconds`` (a histogram of ``LATENCY_BUCKETS``)."""

    def __init__(self) -> None:
        #: (protocol, model, api, code) -> [answers, is an error, its latency entry]
        self._answers: dict[tuple, list] = {}
        #: (protocol, model, api) -> [seconds in all, then the count per bucket, +Inf last]
        self._latency: dict[tuple, list] = {}

    def observe(
        self, protocol: str, model: str, api: str, code: Any, seconds: float, error: bool
    ) -> None:
        entry = self._answers.get((protocol, model, api, code))
        if entry is None:
            latency = self._latency.setdefault(
                (protocol, model, api), [0.0] + [0] * (len(LATENCY_BUCKETS) + 1)
            )
            entry = self._answers[(protocol, model, api, code)] = [0, error, latency]
        entry[0] += 1
        latency = entry[2]
        latency[0] += seconds
        latency[bisect.bisect_left(LATENCY_BUCKETS, seconds) + 1] += 1

    def describe(self) -> list:
        return []

    def collect(self) -> Any:
        requests = CounterMetricFamily(
            "policy_serving_requests",
            "Requests answered, by protocol, model, API (predict, status, metadata...) and "
            "the protocol's status code.",
            labels=_LABELS,
        )
        errors = CounterMetricFamily(
            "policy_serving_request_errors",
            "Requests answered with an error, by protocol, model, API and status code.",
            labels=_LABELS,
        )
        for (protocol, model, api, code), (count, error, _) in list(self._answers.items()):
            labels = [protocol, model, api, str(code)]
            requests.add_metric(labels, count)
            if error:
                errors.add_metric(labels, count)
        latency = HistogramMetricFamily(
            "policy_serving_request_latency_seconds",
            "Time from a request's arrival to its answer, by protocol, model and API.",
            labels=_LABELS[:3],
        )
        bounds = [floatToGoString(b) for b in LATENCY_BUCKETS] + ["+Inf"]
        for labels, entry in list(self._latency.items()):
            total, cumulative, buckets = entry[0], 0, []
            for bound, count in zip(bounds, entry[1:], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric(list(labels), buckets, total)
        return [requests, errors, latency]
