"""The served values as Prometheus series, at `/metrics/power`.

A custom prometheus_client collector reads the metric store's current snapshot at each scrape; nothing
is copied or kept here, so the series are exactly what the custom metrics API would answer.

Decisions, and why:
- **Own path, same authorization.** `/metrics/power` grows with the fleet (about four series per pod)
  while `/metrics` (the adapter's health) stays small, so Prometheus can scrape them at different
  intervals and give the big one its own `sample_limit`. It names workloads and pods as the API does,
  so it sits behind the same authentication and SubjectAccessReview (non-resource URL
  `/metrics/power`, verb `get`) as `/metrics`.
- **No sample timestamps.** A value is derived from a window that ends at its newest sample; the API
  says so in `timestamp`. Here the scrape time is used instead: Prometheus marks a series stale when
  it disappears from a scrape only if it carries no explicit timestamp. With one, a value we stop
  serving (its source went silent) would still be returned by queries for five minutes, a wrong number
  served as right. How old the data is, is a series of its own (`wattscale_rack_power_latest_age_seconds`)
  and the self-metrics' `wattscale_collector_last_success_timestamp_seconds`.
- **Stale values dropped.** A value older than `max_age_seconds` is left out, as the API leaves it
  out of a list: the series ends and the alert rules see it as absent, not as a frozen reading.
- **Bounded cardinality.** Per pod: 4 series; per Deployment/InferenceService: 5; per namespace: 4;
  per node: 2; per rack: 7. Pod series stop at `max_pod_series` (default 40,000, i.e. 10,000 pods);
  the pods left out are counted in `wattscale_exposition_pods_omitted`, never silently dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from adapter.catalogue import DEPLOYMENTS, INFERENCE_SERVICES, KINDS, NAMESPACES, NODES, PODS, POWER_BUDGETS
from adapter.store import MetricStore, ObjectRef, StoredValue

POWER_METRICS_PATH = "/metrics/power"
DEFAULT_MAX_POD_SERIES = 40_000


@dataclass(frozen=True, slots=True)
class Family:
    """One exposed series family: the store's metric on one kind of object."""

    name: str
    help: str
    resources: tuple[str, ...]
    metric: str


_WORKLOAD_METRICS = {
    "watts_per_token": "joules per generated token over the window",
    "generation_tokens_per_second": "generated tokens per second over the window",
    "power_watts": "GPU plus CPU/DRAM power over the window",
    "gpu_power_watts": "power of the GPUs assigned over the window",
}

FAMILIES: tuple[Family, ...] = (
    *(
        Family(f"wattscale_pod_{metric}", f"Pod: {meaning}.", (PODS,), metric)
        for metric, meaning in _WORKLOAD_METRICS.items()
    ),
    *(
        Family(
            f"wattscale_workload_{metric}",
            f"Deployment or InferenceService: {meaning}.",
            (DEPLOYMENTS, INFERENCE_SERVICES),
            metric,
        )
        for metric, meaning in _WORKLOAD_METRICS.items()
    ),
    Family(
        "wattscale_workload_replicas_within_budget",
        "Current replicas plus those that fit the rack's headroom.",
        (DEPLOYMENTS, INFERENCE_SERVICES),
        "replicas_within_budget",
    ),
    *(
        Family(f"wattscale_namespace_{metric}", f"Namespace: {meaning}.", (NAMESPACES,), metric)
        for metric, meaning in _WORKLOAD_METRICS.items()
    ),
    Family("wattscale_node_power_watts", "Node power over the window.", (NODES,), "node_power_watts"),
    Family(
        "wattscale_node_gpu_power_watts", "Node's GPU power over the window.", (NODES,), "gpu_power_watts"
    ),
    Family(
        "wattscale_rack_power_watts",
        "Rack power over the window: PDU inlet, else the sum of its nodes.",
        (POWER_BUDGETS,),
        "rack_power_watts",
    ),
    Family(
        "wattscale_rack_power_headroom_watts",
        "Rack cap x (1 - margin) - rack power, never negative.",
        (POWER_BUDGETS,),
        "rack_power_headroom_watts",
    ),
    Family(
        "wattscale_rack_power_overdraw_watts",
        "Rack power - cap x (1 - margin), never negative.",
        (POWER_BUDGETS,),
        "rack_power_overdraw_watts",
    ),
    Family("wattscale_rack_power_cap_watts", "Rack power cap.", (POWER_BUDGETS,), "rack_power_cap_watts"),
    Family(
        "wattscale_rack_power_latest_watts",
        "Sum of the rack's PDUs' newest readings (racks with a PDU).",
        (POWER_BUDGETS,),
        "rack_power_latest_watts",
    ),
)

_LABEL_NAMES = {
    PODS: ("namespace", "pod"),
    DEPLOYMENTS: ("namespace", "kind", "workload"),
    INFERENCE_SERVICES: ("namespace", "kind", "workload"),
    NAMESPACES: ("namespace",),
    NODES: ("node",),
    POWER_BUDGETS: ("rack",),
}


def _object_labels(ref: ObjectRef) -> tuple[str, ...]:
    if ref.resource == PODS:
        return (ref.namespace, ref.name)
    if ref.resource in (DEPLOYMENTS, INFERENCE_SERVICES):
        return (ref.namespace, KINDS[ref.resource][0], ref.name)
    return (ref.name,)


class PowerCollector(Collector):
    """Builds the families from the store's snapshot at each scrape; fresh values only."""

    def __init__(
        self,
        store: MetricStore,
        *,
        clock: Callable[[], float] = time.time,
        max_pod_series: int = DEFAULT_MAX_POD_SERIES,
    ) -> None:
        self._store = store
        self._clock = clock
        self._max_pods = max_pod_series // sum(1 for f in FAMILIES if PODS in f.resources)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if not self._store.ready:
            return
        now = self._clock()
        snapshot = self._store.snapshot()
        pods = sorted(
            {
                (namespace, name)
                for (resource, namespace, _), values in snapshot.groups()
                if resource == PODS
                for name in values
            }
        )
        kept_pods = set(pods[: self._max_pods])
        for family in FAMILIES:
            yield self._family(family, now, kept_pods)
        yield from self._rack_freshness(now)
        omitted = GaugeMetricFamily(
            "wattscale_exposition_pods_omitted",
            "Pods whose series were left out because the exposition reached max_pod_series.",
        )
        omitted.add_metric([], float(len(pods) - len(kept_pods)))
        yield omitted

    def _family(self, family: Family, now: float, kept_pods: set[tuple[str, str]]) -> GaugeMetricFamily:
        label_names = list(_LABEL_NAMES[family.resources[0]])
        with_method = family.resources == (PODS,) and family.metric == "watts_per_token"
        if with_method:  # how the value was made, and for a learned power model how much to trust it
            label_names += ["method", "confidence"]
        gauge = GaugeMetricFamily(family.name, family.help, labels=label_names)
        for ref, value in self._fresh(family, now):
            if ref.resource == PODS and (ref.namespace, ref.name) not in kept_pods:
                continue
            labels = list(_object_labels(ref))
            if with_method:
                labels += [value.labels.get("method", ""), value.labels.get("confidence", "")]
            gauge.add_metric(labels, value.value)
        return gauge

    def _fresh(self, family: Family, now: float) -> Iterable[tuple[ObjectRef, StoredValue]]:
        snapshot = self._store.snapshot()
        for (resource, namespace, metric), values in snapshot.groups():
            if resource not in family.resources or metric != family.metric:
                continue
            for name, value in values.items():
                if self._store.is_fresh(value, now):
                    yield ObjectRef(resource, namespace, name), value

    def _rack_freshness(self, now: float) -> Iterator[GaugeMetricFamily]:
        age = GaugeMetricFamily(
            "wattscale_rack_power_latest_age_seconds",
            "Age of the oldest of the rack's PDUs' newest readings; racks with a PDU. Kept when stale.",
            labels=["rack"],
        )
        estimated = GaugeMetricFamily(
            "wattscale_rack_power_estimated",
            "1 when the rack's power is the sum of its nodes (no PDU reading), 0 when measured at the PDU.",
            labels=["rack"],
        )
        snapshot = self._store.snapshot()
        for name, value in snapshot.group((POWER_BUDGETS, "", "rack_power_latest_watts")).items():
            age.add_metric([name], max(now - value.timestamp_seconds, 0.0))
        for name, value in snapshot.group((POWER_BUDGETS, "", "rack_power_watts")).items():
            if self._store.is_fresh(value, now):
                estimated.add_metric([name], 1.0 if value.labels.get("estimated") == "true" else 0.0)
        yield age
        yield estimated


def power_registry(store: MetricStore, *, clock: Callable[[], float] = time.time) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PowerCollector(store, clock=clock))
    return registry


class PowerExposition:
    """The rendered text, once per store snapshot, in a worker thread.

    Rendering 4,600 series (1,000 pods) takes tens of milliseconds of Python; on the API's event loop
    that would hold every HPA request queued behind a scrape. In a thread the loop keeps answering
    (the server lets threads switch every millisecond), and HA Prometheus pairs share one rendering.
    A rendering is reused for at most the second it was made in, so a pipeline that stopped passing
    cannot keep a value alive past its max age.
    """

    def __init__(self, store: MetricStore, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._registry = power_registry(store, clock=clock)
        self._rendered: tuple[tuple[int, int], bytes] = ((-1, -1), b"")

    async def body(self) -> bytes:
        key = (self._store.generation, int(self._clock()))
        if self._rendered[0] != key:
            self._rendered = (key, await asyncio.to_thread(generate_latest, self._registry))
        return self._rendered[1]
