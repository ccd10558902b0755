"""The adapter's own Prometheus metrics, on a registry per app so tests and demos never collide.

The serving process keeps `SelfMetrics`; the pipeline (in the worker process) keeps
`PipelineMetrics`, whose families reach the server's `/metrics` with each report the worker sends
(`ForwardedMetrics`), so one scrape still shows the whole adapter.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

_LATENCY_BUCKETS_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_FRESHNESS_BUCKETS_SECONDS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600)


class SelfMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "wattscale_api_requests_total",
            "API requests by route and status code.",
            ["route", "code"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "wattscale_api_request_duration_seconds",
            "API request latency by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS_SECONDS,
            registry=self.registry,
        )
        self.metric_freshness = Histogram(
            "wattscale_metric_freshness_seconds",
            "Age of the served values' newest sample when they were served.",
            buckets=_FRESHNESS_BUCKETS_SECONDS,
            registry=self.registry,
        )
        self.auth_cache = Counter(
            "wattscale_auth_reviews_total",
            "TokenReviews and SubjectAccessReviews sent to the API server.",
            ["kind"],
            registry=self.registry,
        )
        self.internal_restarts = Counter(
            "wattscale_internal_restarts_total",
            "Restarts of internal tasks and processes after they stopped, by component.",
            ["component"],
            registry=self.registry,
        )
        self.forwarded = ForwardedMetrics()
        self.registry.register(self.forwarded)


class ForwardedMetrics(Collector):
    """Metric families collected in another process (the worker), served as they were last reported."""

    def __init__(self) -> None:
        self.families: Sequence[Metric] = ()

    def collect(self) -> Iterable[Metric]:
        return list(self.families)

    def describe(self) -> Iterable[Metric]:
        return []  # names change with what the worker reports: never checked for clashes up front


class PipelineMetrics:
    """What the pipeline records about its collectors and passes."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.collector_runs = Counter(
            "wattscale_collector_runs_total",
            "Polls of each collector.",
            ["collector"],
            registry=self.registry,
        )
        self.collector_errors = Counter(
            "wattscale_collector_errors_total",
            "Failed polls of each collector, by error type.",
            ["collector", "error"],
            registry=self.registry,
        )
        self.collector_last_success = Gauge(
            "wattscale_collector_last_success_timestamp_seconds",
            "When each collector last polled successfully.",
            ["collector"],
            registry=self.registry,
        )
        self.collector_samples = Gauge(
            "wattscale_collector_samples",
            "Samples returned by each collector's last successful poll.",
            ["collector"],
            registry=self.registry,
        )
        self.collector_up = Gauge(
            "wattscale_collector_up",
            "1 when the collector's last poll succeeded, else 0 (its metrics go stale).",
            ["collector"],
            registry=self.registry,
        )
        self.pipeline_duration = Histogram(
            "wattscale_pipeline_duration_seconds",
            "Time of one estimator pass over the sample history.",
            buckets=_LATENCY_BUCKETS_SECONDS,
            registry=self.registry,
        )
        self.stored_values = Gauge(
            "wattscale_stored_values",
            "Values in the metric store after the last pass.",
            registry=self.registry,
        )
        self.auth_cache = Counter(
            "wattscale_auth_reviews_total",
            "TokenReviews and SubjectAccessReviews sent to the API server.",
            ["kind"],
            registry=self.registry,
        )
