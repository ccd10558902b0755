"""Collectors -> samples -> estimators -> metric store.

Each collector polls in its own task under its own timeout, so a slow or failing source delays
nobody: its samples simply age out of the window, its values grow older than `max_age_seconds`, and
the API stops serving them (marked stale) while everything else carries on. The pipeline runs in the
worker process (`adapter.worker`), which sends each pass's whole snapshot to the serving process.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from adapter.catalogue import (
    DEPLOYMENTS,
    INFERENCE_SERVICES,
    KSERVE_LABEL,
    METRICS_BY_NAME,
    NAMESPACES,
    NODES,
    PODS,
    POWER_BUDGETS,
)
from adapter.objects import KubeObject, ObjectIndex
from adapter.selfmetrics import PipelineMetrics
from adapter.settings import RackSettings, Settings
from adapter.store import Key, MetricStore, ObjectRef, StoredValue
from adapter.supervise import Supervisor
from collectors.base import Collector, Sample
from collectors.label_selectors import Selector
from estimators.fleet import (
    LATEST_RACK_COLUMNS,
    FleetEstimate,
    aggregate_pods,
    estimate_history,
)
from estimators.gauge_model import GaugeModels
from estimators.headroom import ReplicaBudgets
from estimators.series import HistoryView, SampleStore

log = logging.getLogger(__name__)

TOKEN_METRICS = frozenset({"watts_per_token", "generation_tokens_per_second"})
POD_METRICS = ("gpu_power_watts", "power_watts", "generation_tokens_per_second", "watts_per_token")
FORGET_AFTER_MAX_AGES = 10
RACK_METRICS = {
    "rack_power_watts": "rack_power_watts",
    "rack_power_headroom_watts": "headroom_watts",
    "rack_power_overdraw_watts": "overdraw_watts",
    "rack_power_cap_watts": "cap_watts",
}


SampleRow = tuple[str, float, float, Mapping[str, str]]
"""A `Sample` as (metric, value, timestamp_seconds, labels): pickles seven times faster."""


def sample_rows(samples: Sequence[Sample]) -> list[SampleRow]:
    return [(s.metric, s.value, s.timestamp_seconds, s.labels) for s in samples]


def samples_frame(rows: Sequence[SampleRow]) -> pd.DataFrame:
    """One row per sample: metric, value, timestamp_seconds and a column per label key."""
    return pd.DataFrame.from_records(
        [
            {"metric": metric, "value": value, "timestamp_seconds": at, **labels}
            for metric, value, at, labels in rows
        ],
        columns=None if rows else ["metric", "value", "timestamp_seconds"],
    )


class SampleHistory:
    """Recent batches of every collector, kept per series as they arrive (`estimators.series`); and what
    the passes remember between them (each workload's replica peak and held replica count, each
    gauge-only GPU's learned power model)."""

    def __init__(self, keep_seconds: float) -> None:
        self.keep_seconds = keep_seconds
        self.store = SampleStore()
        self.replica_budgets = ReplicaBudgets()
        self.gauge_models = GaugeModels()

    def add(self, collector: str, rows: Sequence[SampleRow], received_seconds: float) -> None:
        self.store.add_rows(rows, received_seconds)

    def view(self, now_seconds: float) -> HistoryView:
        """The samples up to `now_seconds`, batches received over `keep_seconds` before it gone."""
        self.store.evict(now_seconds - self.keep_seconds)
        return self.store.view(now_seconds)


@dataclass(frozen=True, slots=True)
class _Put:
    values: dict[Key, StoredValue]

    def add(
        self, ref: ObjectRef, metric: str, value: float, end: float, window: float, **labels: str
    ) -> None:
        if value is None or not math.isfinite(value):
            return
        resolution = METRICS_BY_NAME[metric].resolution
        rounded = round(float(value) / resolution) * resolution
        self.values[(ref, metric)] = StoredValue(rounded, float(end), float(window), labels)


def node_racks(
    index: ObjectIndex, racks: Sequence[RackSettings], labelled: Iterable[tuple[str, str]]
) -> dict[str, str]:
    """Node -> rack: the racks' node selectors over node labels, else the `rack` label on the node's
    samples (`labelled`: the (node, rack) label pairs of the samples)."""
    mapping: dict[str, str] = {}
    for node in index.objects(NODES, None):
        rack = next((r.name for r in racks if r.node_selector.matches(node.labels)), None)
        if rack is not None:
            mapping[node.name] = rack
    for node_name, rack_name in labelled:
        mapping.setdefault(node_name, rack_name)
    return mapping


def _selector_anchors(selector: Selector) -> list[tuple[str, str]] | None:
    """(key, value) pairs of which a matching pod must carry one: the values of the selector's
    first `=`/`in` requirement. None when it has no such requirement (it must be checked on every pod)."""
    for requirement in selector.requirements:
        if requirement.operator in ("=", "in"):
            return [(requirement.key, value) for value in requirement.values]
    return None


def deployment_of_pods(index: ObjectIndex, pods: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """(namespace, pod) -> name of the first Deployment (in index order) whose selector matches the
    pod's labels. An index lookup per label of the pod, not a scan of every Deployment per pod."""
    anchored: dict[tuple[str, str, str], list[tuple[int, KubeObject]]] = {}
    unanchored: dict[str, list[tuple[int, KubeObject]]] = {}
    for order, deployment in enumerate(index.objects(DEPLOYMENTS, None)):
        if deployment.pod_selector is None:
            continue
        anchors = _selector_anchors(deployment.pod_selector)
        if anchors is None:
            unanchored.setdefault(deployment.namespace, []).append((order, deployment))
            continue
        for key, value in anchors:
            anchored.setdefault((deployment.namespace, key, value), []).append((order, deployment))
    labels_of = {(obj.namespace, obj.name): obj.labels for obj in index.objects(PODS, None)}
    owners: dict[tuple[str, str], str] = {}
    # The replicas of one workload carry the same labels: match each distinct set once.
    owner_of_labels: dict[tuple[str, frozenset[tuple[str, str]]], str | None] = {}
    for namespace, pod in pods:
        labels = labels_of.get((namespace, pod), {})
        label_set = (namespace, frozenset(labels.items()))
        if label_set not in owner_of_labels:
            owner_of_labels[label_set] = _first_owner(namespace, labels, anchored, unanchored)
        owner = owner_of_labels[label_set]
        if owner is not None:
            owners[(namespace, pod)] = owner
    return owners


def _first_owner(
    namespace: str,
    labels: Mapping[str, str],
    anchored: Mapping[tuple[str, str, str], list[tuple[int, KubeObject]]],
    unanchored: Mapping[str, list[tuple[int, KubeObject]]],
) -> str | None:
    candidates = list(unanchored.get(namespace, ()))
    for key, value in labels.items():
        candidates.extend(anchored.get((namespace, key, value), ()))
    for _, deployment in sorted(candidates, key=lambda candidate: candidate[0]):
        assert deployment.pod_selector is not None
        if deployment.pod_selector.matches(labels):
            return deployment.name
    return None


def _groups(pods: pd.DataFrame, index: ObjectIndex) -> dict[str, pd.Series]:
    """Pod rows -> workload keys "resource|namespace|name", per workload resource; and namespaces."""
    keys = list(zip(pods["namespace"], pods["pod"], strict=True))
    owners = deployment_of_pods(index, keys)
    labels_of = {(obj.namespace, obj.name): obj.labels for obj in index.objects(PODS, None)}
    by_deployment = [f"{ns}|{owners[(ns, pod)]}" if (ns, pod) in owners else None for ns, pod in keys]
    services = [labels_of.get(key, {}).get(KSERVE_LABEL) for key in keys]
    by_service = [
        f"{ns}|{service}" if service else None for (ns, _), service in zip(keys, services, strict=True)
    ]
    return {
        DEPLOYMENTS: pd.Series(by_deployment, index=pods.index, dtype=object),
        INFERENCE_SERVICES: pd.Series(by_service, index=pods.index, dtype=object),
        NAMESPACES: pods["namespace"].astype(object),
    }


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(key): value for key, value in row.items()} for row in frame.to_dict("records")]


NO_LABELS: Mapping[str, str] = {}
"""Shared by every value without labels (read-only, as every `StoredValue.labels`)."""


def _floats(column: pd.Series) -> np.ndarray:
    """A column as float64, NaN where it holds no number."""
    return pd.to_numeric(column, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _rounded(column: pd.Series, metric: str) -> list[float | None]:
    """Each value at the metric's resolution (as `_Put.add` rounds one), None where it is not a finite
    number: a whole column at once, for the per-pod values that are most of a pass."""
    numbers = _floats(column)
    finite = np.isfinite(numbers)
    resolution = METRICS_BY_NAME[metric].resolution
    # + 0.0 turns rint's -0.0 into the 0.0 that Python's round gives.
    rounded = np.rint(np.where(finite, numbers, 0.0) / resolution) * resolution + 0.0
    return [number if ok else None for number, ok in zip(rounded.tolist(), finite.tolist(), strict=True)]


def _estimate_label_sets(pods: pd.DataFrame) -> list[Mapping[str, str]]:
    """Per pod, how its watts per token was estimated: `method`, and `confidence` where it has one;
    one shared mapping per distinct pair."""
    columns = [
        pods[name].tolist() if name in pods.columns else [None] * len(pods)
        for name in ("method", "confidence")
    ]
    shared: dict[tuple[object, object], Mapping[str, str]] = {}
    labels: list[Mapping[str, str]] = []
    for method, confidence in zip(*columns, strict=True):
        found = shared.get((method, confidence))
        if found is None:
            pairs = (("method", method), ("confidence", confidence))
            found = shared[(method, confidence)] = {k: v for k, v in pairs if isinstance(v, str)}
        labels.append(found)
    return labels


def _put_pod_values(pods: pd.DataFrame, values: dict[Key, StoredValue]) -> None:
    """Every pod's values, built column by column: tens of thousands at fleet scale."""
    refs = [
        ObjectRef(PODS, str(namespace), str(pod))
        for namespace, pod in zip(pods["namespace"].tolist(), pods["pod"].tolist(), strict=True)
    ]
    start, end = _floats(pods["window_start_seconds"]), _floats(pods["window_end_seconds"])
    # Token figures are as old as the token counter's last read, not as the pass: a server that
    # stopped answering makes its watts per token stale after max age, not max age + window.
    token_end = _floats(pods["token_window_end_seconds"]) if "token_window_end_seconds" in pods else end
    token_start = (
        _floats(pods["token_window_start_seconds"]) if "token_window_start_seconds" in pods else start
    )
    token_known = np.isfinite(token_end) & np.isfinite(token_start)
    with np.errstate(invalid="ignore"):  # inf - inf where a window is unknown: NaN, as row by row
        window, token_window = end - start, token_end - token_start
    times = (end.tolist(), window.tolist())
    token_times = (
        np.where(token_known, token_end, end).tolist(),
        np.where(token_known, token_window, window).tolist(),
    )
    estimate_labels = _estimate_label_sets(pods)
    columns = [
        (
            metric,
            _rounded(pods[metric], metric),
            *(token_times if metric in TOKEN_METRICS else times),
            estimate_labels if metric == "watts_per_token" else None,
        )
        for metric in POD_METRICS
    ]
    for i, ref in enumerate(refs):
        for metric, numbers, ends, windows, labels in columns:
            number = numbers[i]
            if number is not None:
                values[(ref, metric)] = StoredValue(
                    number, ends[i], windows[i], NO_LABELS if labels is None else labels[i]
                )


def _rack_of_groups(members: pd.DataFrame) -> pd.Series:
    """Group -> the rack most of its pods are on (the first by name on a tie, as `Series.mode`)."""
    counted = members.dropna(subset=["rack"]).groupby(["group", "rack"]).size().reset_index(name="pods")
    ranked = counted.sort_values(["group", "pods", "rack"], ascending=[True, False, True], kind="stable")
    return ranked.drop_duplicates("group").set_index("group")["rack"]


def store_values(
    estimate: FleetEstimate,
    *,
    index: ObjectIndex,
    racks_of_nodes: Mapping[str, str],
    window_seconds: float,
    replica_budgets: ReplicaBudgets | None = None,
) -> dict[Key, StoredValue]:
    put = _Put({})
    budgets = replica_budgets if replica_budgets is not None else ReplicaBudgets()
    pods = estimate.pods.dropna(subset=["namespace", "pod"])
    _put_pod_values(pods, put.values)

    racks = {str(row["rack"]): row for row in _records(estimate.racks)}
    if not pods.empty:
        pod_racks = pods["node"].map(lambda node: racks_of_nodes.get(str(node)))
        for resource, group_of_pod in _groups(pods, index).items():
            members = pd.DataFrame({"group": group_of_pod, "rack": pod_racks, "power": pods["power_watts"]})
            members = members.dropna(subset=["group"])
            # Per group: the rack most of its pods are on, and its hungriest replica's power.
            rack_of = _rack_of_groups(members)
            peak_of = members.groupby("group")["power"].max()
            for row in _records(aggregate_pods(pods, group_of_pod)):
                group = str(row["group"])
                if resource == NAMESPACES:
                    ref = ObjectRef(NAMESPACES, "", group)
                else:
                    namespace, name = group.split("|", 1)
                    ref = ObjectRef(resource, namespace, name)
                end, window = (
                    row["window_end_seconds"],
                    row["window_end_seconds"] - row["window_start_seconds"],
                )
                for metric in POD_METRICS:
                    put.add(ref, metric, row[metric], end, window)
                if resource == NAMESPACES or group not in rack_of.index:
                    continue
                rack = str(rack_of[group])
                if rack not in racks:
                    continue
                replicas = budgets.update(
                    ref,
                    headroom_watts=float(racks[rack]["headroom_watts"]),
                    overdraw_watts=float(racks[rack]["overdraw_watts"]),
                    replica_power_watts=float(peak_of[group]),
                    current_replicas=int(row["pods"]),
                    now_seconds=float(end),
                )
                if replicas is not None:
                    put.add(ref, "replicas_within_budget", replicas, end, window, rack=rack)

    for row in _records(estimate.nodes):
        ref = ObjectRef(NODES, "", str(row["node"]))
        put.add(ref, "node_power_watts", row["node_power_watts"], row["window_end_seconds"], window_seconds)
        put.add(ref, "gpu_power_watts", row["gpu_power_watts"], row["window_end_seconds"], window_seconds)
        node_rack = racks.get(racks_of_nodes.get(str(row["node"]), ""))
        if node_rack is not None:
            for metric, column in RACK_METRICS.items():
                put.add(
                    ref,
                    metric,
                    node_rack[column],
                    node_rack["window_end_seconds"],
                    window_seconds,
                    rack=str(node_rack["rack"]),
                )
    for rack, row in racks.items():
        ref = ObjectRef(POWER_BUDGETS, "", rack)
        estimated = "true" if bool(row["estimated"]) else "false"
        for metric, column in RACK_METRICS.items():
            put.add(
                ref,
                metric,
                row[column],
                row["window_end_seconds"],
                window_seconds,
                rack=rack,
                estimated=estimated,
            )
    return put.values


def estimate_pass(
    history: SampleHistory,
    *,
    now_seconds: float,
    index: ObjectIndex,
    racks: Sequence[RackSettings],
    window_seconds: float,
) -> dict[Key, StoredValue]:
    """Samples -> estimators -> the values of one store snapshot."""
    view = history.view(now_seconds)
    rack_frame = pd.DataFrame(
        {
            "rack": [r.name for r in racks],
            "cap_watts": [r.cap_watts for r in racks],
            "margin_ratio": [r.margin_ratio for r in racks],
        }
    )
    mapping = node_racks(index, racks, history.store.label_pairs("node", "rack"))
    estimate = estimate_history(
        view,
        node_racks=mapping,
        racks=rack_frame,
        window_seconds=window_seconds,
        now_seconds=now_seconds,
        gauge_models=history.gauge_models,
    )
    values = store_values(
        estimate,
        index=index,
        racks_of_nodes=mapping,
        window_seconds=window_seconds,
        replica_budgets=history.replica_budgets,
    )
    history.replica_budgets.retain({ref for ref, metric in values if metric == "replicas_within_budget"})
    for rack, power_watts, at_seconds in estimate.latest_racks[LATEST_RACK_COLUMNS].itertuples(index=False):
        for ref in (
            ObjectRef(POWER_BUDGETS, "", str(rack)),
            *(ObjectRef(NODES, "", n) for n, r in mapping.items() if r == rack),
        ):
            values[(ref, "rack_power_latest_watts")] = StoredValue(
                round(power_watts), float(at_seconds), 0.0, {"rack": str(rack)}
            )
    return values


class Estimator(Protocol):
    """Where the sample history lives and the estimator passes run."""

    async def add(self, collector: str, samples: Sequence[Sample], received_seconds: float) -> None: ...

    async def estimate(
        self, *, now_seconds: float, index: ObjectIndex, racks: Sequence[RackSettings], window_seconds: float
    ) -> dict[Key, StoredValue]: ...

    async def aclose(self) -> None: ...


class LocalEstimator:
    """History and passes in this process, inline: for tests and small fleets."""

    def __init__(self, keep_seconds: float) -> None:
        self.history = SampleHistory(keep_seconds)

    async def add(self, collector: str, samples: Sequence[Sample], received_seconds: float) -> None:
        self.history.add(collector, sample_rows(samples), received_seconds)

    async def estimate(
        self, *, now_seconds: float, index: ObjectIndex, racks: Sequence[RackSettings], window_seconds: float
    ) -> dict[Key, StoredValue]:
        return estimate_pass(
            self.history, now_seconds=now_seconds, index=index, racks=racks, window_seconds=window_seconds
        )

    async def aclose(self) -> None:
        return None


class Pipeline:
    """Polls every collector on its own schedule and runs an estimator pass whenever something arrived.

    A pass runs at most every `estimate_interval_seconds`, and only when a poll brought samples or the
    object index changed since the last one: with nothing new it would compute the same values, and
    an idle adapter should cost next to nothing. Each finished pass goes to `on_pass` (the worker
    sends it to the server) and, when there is one, into `store`.
    """

    def __init__(
        self,
        collectors: Sequence[Collector],
        *,
        index: ObjectIndex,
        settings: Settings,
        metrics: PipelineMetrics,
        store: MetricStore | None = None,
        racks: Callable[[], Sequence[RackSettings]] | None = None,
        estimator: Estimator | None = None,
        on_pass: Callable[[Mapping[Key, StoredValue]], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.collectors = list(collectors)
        self._store = store
        self._index = index
        self._settings = settings
        self._metrics = metrics
        self._racks = racks or (lambda: settings.racks)
        self._clock = clock
        self._on_pass = on_pass
        self.estimator = estimator or LocalEstimator(history_seconds(settings, collectors))
        self._failing: set[str] = set()
        self._arrived = False
        self._estimated_index_version: int | None = None
        self._values: dict[Key, StoredValue] = {}

    async def poll(self, collector: Collector) -> bool:
        """One poll of one collector; failures are counted and logged once per state change."""
        name = collector.name
        self._metrics.collector_runs.labels(name).inc()
        try:
            async with asyncio.timeout(collector.poll_timeout_seconds):
                samples = await collector.collect()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure of a plug-in: mark its metrics stale, keep serving the rest
            error = "TimeoutError" if isinstance(exc, TimeoutError) else type(exc).__name__
            self._metrics.collector_errors.labels(name, error).inc()
            self._metrics.collector_up.labels(name).set(0)
            if name not in self._failing:
                self._failing.add(name)
                log.warning("collector.stale", extra={"collector": name, "error": error, "detail": str(exc)})
            return False
        now = self._clock()
        try:
            await self.estimator.add(name, samples, now)
        except Exception:  # samples the estimator cannot take: this batch is lost, the next is not
            log.exception("estimator.add_failed", extra={"collector": name})
            self._metrics.collector_errors.labels(name, "EstimatorAddFailed").inc()
            return False
        self._arrived = True
        self._metrics.collector_samples.labels(name).set(len(samples))
        self._metrics.collector_last_success.labels(name).set(now)
        self._metrics.collector_up.labels(name).set(1)
        if name in self._failing:
            self._failing.discard(name)
            log.info("collector.recovered", extra={"collector": name})
        return True

    def due(self) -> bool:
        """Whether a pass could give new values: samples arrived, or objects changed."""
        return self._arrived or self._index.version() != self._estimated_index_version

    async def estimate_once(self) -> int:
        """One estimator pass over the history; returns how many values the pass produced."""
        started = time.perf_counter()
        now = self._clock()
        self._arrived = False
        index_version = self._index.version()
        values = await self.estimator.estimate(
            now_seconds=now,
            index=self._index,
            racks=list(self._racks()),
            window_seconds=self._settings.window_seconds,
        )
        # A value whose inputs stopped arriving stays, with its old timestamp, so the API can say
        # "stale" (503) rather than "never heard of it" (404), until it is old enough to forget.
        forget_before = now - FORGET_AFTER_MAX_AGES * self._settings.max_age_seconds
        for key, previous in self._values.items():
            if key not in values and previous.timestamp_seconds >= forget_before:
                values[key] = previous
        self._values = values
        self._estimated_index_version = index_version
        if self._store is not None:
            self._store.put_all(values)
        if self._on_pass is not None:
            self._on_pass(values)
        self._metrics.stored_values.set(len(values))
        self._metrics.pipeline_duration.observe(time.perf_counter() - started)
        return len(values)

    async def _poll_forever(self, collector: Collector) -> None:
        while True:
            started = self._clock()
            await self.poll(collector)
            await asyncio.sleep(max(collector.interval_seconds - (self._clock() - started), 0.0))

    async def _estimate_forever(self) -> None:
        while True:
            if self.due():
                try:
                    await self.estimate_once()
                except Exception:  # a bug in one pass must not stop the next; the old snapshot stays served
                    log.exception("pipeline.estimate_failed")
            await asyncio.sleep(self._settings.estimate_interval_seconds)

    def start(self, supervisor: Supervisor) -> None:
        """Each collector's poll loop and the estimator loop, each kept running by `supervisor`."""
        for collector in self.collectors:
            supervisor.start(f"collector:{collector.name}", functools.partial(self._poll_forever, collector))
        supervisor.start("estimator", self._estimate_forever)

    async def aclose(self) -> None:
        await self.estimator.aclose()
        for collector in self.collectors:
            try:
                await collector.aclose()
            except Exception:
                log.exception("collector.close_failed", extra={"collector": collector.name})


def history_seconds(settings: Settings, collectors: Sequence[Collector]) -> float:
    """Two windows and a poll: counters need a sample from before the window to measure all of it."""
    return 2 * settings.window_seconds + max((c.interval_seconds for c in collectors), default=0.0)
