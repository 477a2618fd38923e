"""The server's Prometheus metrics (prometheus-client), in a registry of its own.

Requests are counted by protocol (``tfserving_rest``...), model, API and the
protocol's own status code.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
        self.requests = Counter(
            "policy_serving_requests",
            "Requests answered, by protocol, model, API (predict, status, metadata...) and "
            "the protocol's status code.",
            ["protocol", "model", "api", "code"],
            registry=self.registry,
        )
        self.errors = Counter(
            "policy_serving_request_errors",
            "Requests answered with an error, by protocol, model, API and status code.",
            ["protocol", "model", "api", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "policy_serving_request_latency_seconds",
            "Time from a request's arrival to its answer, by protocol, model and API.",
            ["protocol", "model", "api"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
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
        self._children: dict[tuple, Any] = {}
        self._shown: dict[str, set[str]] = {}

    def model_label(self, name: str | None) -> str:
        return name if name in self.models else UNKNOWN_MODEL

    def observe(
        self, protocol: str, model: str, api: str, code: Any, seconds: float, error: bool
    ) -> None:
        """Counts one answer; ``code`` is the protocol's status, ``error`` whether it is one."""
        key = (protocol, model, api, code)
        children = self._children.get(key)
        if children is None:
            text = str(code)
            children = self._children[key] = (
                self.requests.labels(protocol, model, api, text),
                self.latency.labels(protocol, model, api),
                self.errors.labels(protocol, model, api, text) if error else None,
            )
        children[0].inc()
        children[1].observe(seconds)
        if children[2] is not None:
            children[2].inc()

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
