"""Collectors -> samples -> estimators -> metric store.

Each collector polls in its own task under its own timeout, so a slow or failing source delays
nobody: its samples simply age out of the window, its values grow older than `max_age_seconds`, and
the API stops serving them (marked stale) while everything else carries on. The pipeline runs in the
worker process (`adapter.worker`), which sends each pass's whole snapshot to the serving process.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
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
from adapter.objects import ObjectIndex
from adapter.selfmetrics import PipelineMetrics
from adapter.settings import RackSettings, Settings
from adapter.store import GroupKey, Key, MetricStore, ObjectRef, ServedLayout, StoredValue
from adapter.supervise import Supervisor
from adapter.value_table import NO_LABELS, ColumnEncoder, FloatArray, ValueGroup, ValueTable, value_group
from collectors.base import Collector, Sample
from collectors.label_selectors import Selector
from estimators.fleet import GROUP_SUMMED, FleetEstimate, GroupTotals, estimate_history, group_totals
from estimators.gauge_model import GaugeModels
from estimators.headroom import ReplicaBudgets
from estimators.series import HistoryView, SampleStore

log = logging.getLogger(__name__)

T = TypeVar("T")

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
    gauge-only GPU's learned power model, which workload each pod belongs to)."""

    def __init__(self, keep_seconds: float) -> None:
        self.keep_seconds = keep_seconds
        self.store = SampleStore()
        self.replica_budgets = ReplicaBudgets()
        self.gauge_models = GaugeModels()
        self.workloads = PodWorkloads()

    def add(self, collector: str, rows: Sequence[SampleRow], received_seconds: float) -> None:
        self.store.add_rows(rows, received_seconds)

    def view(self, now_seconds: float) -> HistoryView:
        """The samples up to `now_seconds`, batches received over `keep_seconds` before it gone."""
        self.store.evict(now_seconds - self.keep_seconds)
        return self.store.view(now_seconds)


def node_racks(
    index: ObjectIndex, racks: Sequence[RackSettings], labelled: Iterable[tuple[str, str]]
) -> dict[str, str]:
    """Node -> rack: the first rack whose node selector matches the node's labels, else the `rack`
    label on the node's samples (`labelled`: the (node, rack) label pairs of the samples)."""
    rack_of = FirstMatch((rack.node_selector, rack.name) for rack in racks)
    mapping: dict[str, str] = {}
    for node in index.objects(NODES, None):
        rack = rack_of.first(node.labels)
        if rack is not None:
            mapping[node.name] = rack
    for node_name, rack_name in labelled:
        mapping.setdefault(node_name, rack_name)
    return mapping


def _selector_anchors(selector: Selector) -> list[tuple[str, str]] | None:
    """(key, value) pairs of which matching labels must hold one: the values of the selector's
    first `=`/`in` requirement. None when it has no such requirement (it must be checked on every set)."""
    for requirement in selector.requirements:
        if requirement.operator in ("=", "in"):
            return [(requirement.key, value) for value in requirement.values]
    return None


class FirstMatch(Generic[T]):
    """Of selectors in order, the first that matches a set of labels: its candidates are found by a
    lookup per label of the set, not by trying every selector (thousands of Deployments or racks)."""

    def __init__(self, selectors: Iterable[tuple[Selector, T]]) -> None:
        self._anchored: dict[tuple[str, str], list[tuple[int, Selector, T]]] = {}
        self._unanchored: list[tuple[int, Selector, T]] = []
        for order, (selector, found) in enumerate(selectors):
            anchors = _selector_anchors(selector)
            if anchors is None:
                self._unanchored.append((order, selector, found))
            for anchor in anchors or ():
                self._anchored.setdefault(anchor, []).append((order, selector, found))

    def first(self, labels: Mapping[str, str]) -> T | None:
        candidates = list(self._unanchored)
        for pair in labels.items():
            candidates.extend(self._anchored.get(pair, ()))
        for _, selector, found in sorted(candidates, key=lambda candidate: candidate[0]):
            if selector.matches(labels):
                return found
        return None


def deployment_of_pods(index: ObjectIndex, pods: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """(namespace, pod) -> name of the first Deployment (in index order) whose selector matches the
    pod's labels."""
    selectors: dict[str, list[tuple[Selector, str]]] = {}
    for deployment in index.objects(DEPLOYMENTS, None):
        if deployment.pod_selector is not None:
            selectors.setdefault(deployment.namespace, []).append((deployment.pod_selector, deployment.name))
    owner_in = {namespace: FirstMatch(found) for namespace, found in selectors.items()}
    labels_of = {(obj.namespace, obj.name): obj.labels for obj in index.objects(PODS, None)}
    owners: dict[tuple[str, str], str] = {}
    # The replicas of one workload carry the same labels (from one template, in one order): match
    # each distinct set once.
    owner_of_labels: dict[tuple[str, tuple[tuple[str, str], ...]], str | None] = {}
    for namespace, pod in pods:
        labels = labels_of.get((namespace, pod), {})
        label_set = (namespace, tuple(labels.items()))
        if label_set not in owner_of_labels:
            matcher = owner_in.get(namespace)
            owner_of_labels[label_set] = matcher.first(labels) if matcher is not None else None
        owner = owner_of_labels[label_set]
        if owner is not None:
            owners[(namespace, pod)] = owner
    return owners


# --------------------------------------------------------------------------------------------------
# Store values: one pass's estimate -> the values served, built column by column (`ValueGroup`s),
# never one Python object per value: tens of thousands of them at fleet scale.

Groups = dict[GroupKey, ValueGroup]
IntArray = npt.NDArray[np.intp]


def _put_column(
    groups: Groups,
    key: GroupKey,
    names: Sequence[str],
    numbers: FloatArray,
    timestamps: npt.ArrayLike,
    windows: npt.ArrayLike,
    label_sets: tuple[Mapping[str, str], ...] = (NO_LABELS,),
    label_ids: npt.ArrayLike = 0,
) -> None:
    """The values of `names` for `key`'s metric, each at the metric's resolution; an object whose
    number is missing or not finite gets no value."""
    resolution = METRICS_BY_NAME[key[2]].resolution
    finite = np.isfinite(numbers)
    if not finite.any():
        return
    # + 0.0 turns rint's -0.0 into the 0.0 that Python's round gives (rint rounds half to even, as round).
    rounded = np.rint(numbers / resolution) * resolution + 0.0
    group = value_group(names, rounded, timestamps, windows, label_sets, label_ids)
    if not finite.all():
        group = group.rows(np.flatnonzero(finite))
    found = groups.get(key)
    groups[key] = group if found is None else found.joined(group)


def _floats(column: pd.Series) -> FloatArray:
    """A column as float64, NaN where it holds no number."""
    if column.dtype == np.float64:
        return column.to_numpy()
    return pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


class _Pods:
    """The estimate's pod rows that name their pod, column by column."""

    def __init__(self, frame: pd.DataFrame) -> None:
        keep = (frame["namespace"].notna() & frame["pod"].notna()).to_numpy()
        self._frame = frame
        self._keep: npt.NDArray[np.bool_] | None = None if keep.all() else keep
        self.namespaces: list[str] = [str(n) for n in self.column("namespace").tolist()]
        self.names: list[str] = [str(p) for p in self.column("pod").tolist()]

    def __len__(self) -> int:
        return len(self.names)

    def has(self, name: str) -> bool:
        return name in self._frame.columns

    def column(self, name: str) -> npt.NDArray[Any]:
        values = self._frame[name].to_numpy()
        return values if self._keep is None else values[self._keep]

    def floats(self, name: str) -> FloatArray:
        values = _floats(self._frame[name])
        return values if self._keep is None else values[self._keep]

    def by_namespace(self) -> list[tuple[str, list[str], slice | IntArray]]:
        """Per namespace (in order of appearance): its pods' names and rows."""
        if len(set(self.namespaces)) <= 1:
            return [(self.namespaces[0], self.names, slice(None))] if self.names else []
        codes, namespaces = pd.factorize(np.asarray(self.namespaces, dtype=object))
        found: list[tuple[str, list[str], slice | IntArray]] = []
        for code, namespace in enumerate(namespaces.tolist()):
            rows = np.flatnonzero(codes == code)
            found.append((str(namespace), [self.names[i] for i in rows.tolist()], rows))
        return found


def _estimate_labels(pods: _Pods) -> tuple[tuple[Mapping[str, str], ...], IntArray]:
    """How each pod's watts per token was estimated: `method`, and `confidence` where it has one;
    as the distinct label sets, and each pod's index into them."""
    no_value = np.full(len(pods), None, dtype=object)
    methods, known_methods = pd.factorize(pods.column("method") if pods.has("method") else no_value)
    confidences, known_confidences = pd.factorize(
        pods.column("confidence") if pods.has("confidence") else no_value
    )
    # -1 (no value) becomes 0: each pair of codes as one number.
    stride = len(known_confidences) + 1
    pairs, label_ids = np.unique((methods + 1) * stride + confidences + 1, return_inverse=True)

    def labels(pair: int) -> Mapping[str, str]:
        method, confidence = divmod(pair, stride)
        named = (
            ("method", known_methods[method - 1] if method else None),
            ("confidence", known_confidences[confidence - 1] if confidence else None),
        )
        return {key: value for key, value in named if isinstance(value, str)}

    return tuple(labels(pair) for pair in pairs.tolist()), label_ids


def _put_pod_values(pods: _Pods, groups: Groups) -> None:
    """Every pod's values."""
    start, end = pods.floats("window_start_seconds"), pods.floats("window_end_seconds")
    # Token figures are as old as the token counter's last read, not as the pass: a server that
    # stopped answering makes its watts per token stale after max age, not max age + window.
    token_end = pods.floats("token_window_end_seconds") if pods.has("token_window_end_seconds") else end
    token_start = (
        pods.floats("token_window_start_seconds") if pods.has("token_window_start_seconds") else start
    )
    token_known = np.isfinite(token_end) & np.isfinite(token_start)
    with np.errstate(invalid="ignore"):  # inf - inf where a window is unknown: NaN, as row by row
        window, token_window = end - start, token_end - token_start
    times = (end, window)
    token_times = (np.where(token_known, token_end, end), np.where(token_known, token_window, window))
    label_sets, label_ids = _estimate_labels(pods)
    numbers = {metric: pods.floats(metric) for metric in POD_METRICS}
    for namespace, names, rows in pods.by_namespace():
        for metric in POD_METRICS:
            ends, windows = token_times if metric in TOKEN_METRICS else times
            labelled = metric == "watts_per_token"
            _put_column(
                groups,
                (PODS, namespace, metric),
                names,
                numbers[metric][rows],
                ends[rows],
                windows[rows],
                label_sets if labelled else (NO_LABELS,),
                label_ids[rows] if labelled else 0,
            )


# Pods -> workloads ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Workloads:
    """A pass's pods grouped into the objects of one resource (Deployments, say)."""

    codes: IntArray
    """Per pod: its object's position in `refs`; -1 for a pod of none."""
    refs: tuple[ObjectRef, ...]
    """Sorted by namespace, then name."""
    runs: tuple[tuple[str, slice, tuple[str, ...]], ...]
    """Per namespace of the store (`ObjectRef.namespace`): its objects' span of `refs`, and names."""

    @classmethod
    def of(cls, resource: str, group_of_pod: Sequence[tuple[str, str] | None]) -> Workloads:
        """From each pod's (namespace, name) of its object, or None."""
        refs = tuple(ObjectRef(resource, *group) for group in sorted({g for g in group_of_pod if g}))
        position = {(ref.namespace, ref.name): i for i, ref in enumerate(refs)}
        codes = np.fromiter((position[g] if g else -1 for g in group_of_pod), np.intp, len(group_of_pod))
        runs = []
        start = 0
        for namespace, members in itertools.groupby(refs, key=lambda ref: ref.namespace):
            names = tuple(ref.name for ref in members)
            runs.append((namespace, slice(start, start + len(names)), names))
            start += len(names)
        return cls(codes, refs, tuple(runs))


def pod_workloads(index: ObjectIndex, namespaces: Sequence[str], pods: Sequence[str]) -> dict[str, Workloads]:
    """Each pod's Deployment (`deployment_of_pods`), InferenceService (its KServe label) and namespace."""
    keys = list(zip(namespaces, pods, strict=True))
    owners = deployment_of_pods(index, keys)
    labels_of = {(obj.namespace, obj.name): obj.labels for obj in index.objects(PODS, None)}
    services = [labels_of.get(key, {}).get(KSERVE_LABEL) for key in keys]
    return {
        DEPLOYMENTS: Workloads.of(
            DEPLOYMENTS, [(ns, owners[(ns, pod)]) if (ns, pod) in owners else None for ns, pod in keys]
        ),
        INFERENCE_SERVICES: Workloads.of(
            INFERENCE_SERVICES,
            [(ns, service) if service else None for (ns, _), service in zip(keys, services, strict=True)],
        ),
        NAMESPACES: Workloads.of(NAMESPACES, [("", ns) for ns in namespaces]),
    }


class PodWorkloads:
    """`pod_workloads`, found again only when the object index or the pods change: most passes see
    the same of both, and finding owners takes milliseconds at fleet scale."""

    def __init__(self) -> None:
        self._found: tuple[ObjectIndex, int, list[str], list[str], dict[str, Workloads]] | None = None

    def of(self, index: ObjectIndex, namespaces: list[str], pods: list[str]) -> dict[str, Workloads]:
        version = index.version()
        if self._found is not None:
            known_index, known_version, known_namespaces, known_pods, workloads = self._found
            if (
                known_index is index
                and known_version == version
                and known_pods == pods
                and known_namespaces == namespaces
            ):
                return workloads
        workloads = pod_workloads(index, namespaces, pods)
        self._found = (index, version, namespaces, pods, workloads)
        return workloads


def _rack_of_workloads(codes: IntArray, count: int, pod_racks: IntArray) -> IntArray:
    """Per workload: the rack (code) most of its pods are on, the first by name on a tie; -1 for none.
    Rack codes are in name order."""
    placed = (codes >= 0) & (pod_racks >= 0)
    racks = int(pod_racks.max(initial=-1)) + 1
    pairs, pods = np.unique(codes[placed] * racks + pod_racks[placed], return_counts=True)
    workload, rack = np.divmod(pairs, max(racks, 1))
    ranked = np.lexsort((rack, -pods, workload))
    first = ranked[np.r_[True, workload[ranked][1:] != workload[ranked][:-1]]] if ranked.size else ranked
    found = np.full(count, -1, dtype=np.intp)
    found[workload[first]] = rack[first]
    return found


# Racks and nodes ---------------------------------------------------------------------------------


class _Racks:
    """The estimate's racks, column by column."""

    def __init__(self, frame: pd.DataFrame) -> None:
        names = [str(rack) for rack in frame["rack"].tolist()] if len(frame) else []
        self.row = {name: i for i, name in enumerate(names)}
        """Rack -> its row (the last, were a rack named twice)."""
        self.columns = {
            column: _floats(frame[column]) if len(frame) else np.zeros(0)
            for column in {*RACK_METRICS.values(), "window_end_seconds"}
        }
        self.labels = tuple({"rack": name} for name in names)
        """Per row, the labels of a node's rack values."""
        self.budget_labels = tuple(
            {"rack": name, "estimated": "true" if bool(estimated) else "false"}
            for name, estimated in zip(names, frame["estimated"].tolist() if len(frame) else [], strict=True)
        )


def _put_node_values(
    nodes: pd.DataFrame,
    racks: _Racks,
    racks_of_nodes: Mapping[str, str],
    window_seconds: float,
    groups: Groups,
) -> None:
    if not len(nodes):
        return
    names = [str(node) for node in nodes["node"].tolist()]
    end = _floats(nodes["window_end_seconds"])
    for metric in ("node_power_watts", "gpu_power_watts"):
        _put_column(groups, (NODES, "", metric), names, _floats(nodes[metric]), end, window_seconds)
    rack_rows = [racks.row.get(racks_of_nodes.get(name, "")) for name in names]
    racked = [i for i, row in enumerate(rack_rows) if row is not None]
    rows = np.asarray([rack_rows[i] for i in racked], dtype=np.intp)
    racked_names = [names[i] for i in racked]
    for metric, column in RACK_METRICS.items():
        _put_column(
            groups,
            (NODES, "", metric),
            racked_names,
            racks.columns[column][rows],
            racks.columns["window_end_seconds"][rows],
            window_seconds,
            racks.labels,
            rows,
        )


def _put_rack_values(racks: _Racks, window_seconds: float, groups: Groups) -> None:
    rows = np.fromiter(racks.row.values(), np.intp, len(racks.row))
    for metric, column in RACK_METRICS.items():
        _put_column(
            groups,
            (POWER_BUDGETS, "", metric),
            list(racks.row),
            racks.columns[column][rows],
            racks.columns["window_end_seconds"][rows],
            window_seconds,
            racks.budget_labels,
            rows,
        )


# Workload values ---------------------------------------------------------------------------------


def _pod_racks(pods: _Pods, racks_of_nodes: Mapping[str, str]) -> tuple[list[str], IntArray]:
    """The racks the pods are on (sorted by name), and each pod's index into them; -1 where unknown."""
    node_codes, nodes = pd.factorize(pods.column("node"), use_na_sentinel=False)
    rack_of_node = [racks_of_nodes.get(str(node)) for node in nodes.tolist()]
    names = sorted({rack for rack in rack_of_node if rack is not None})
    code = {name: i for i, name in enumerate(names)}
    codes = np.fromiter((code[r] if r is not None else -1 for r in rack_of_node), np.intp, len(rack_of_node))
    return names, codes[node_codes]


def _put_workload_values(
    pods: _Pods,
    workloads: Mapping[str, Workloads],
    racks: _Racks,
    racks_of_nodes: Mapping[str, str],
    budgets: ReplicaBudgets,
    groups: Groups,
) -> None:
    columns = {
        name: pods.floats(name) for name in (*GROUP_SUMMED, "window_start_seconds", "window_end_seconds")
    }
    rack_names, pod_racks = _pod_racks(pods, racks_of_nodes)
    for resource, found in workloads.items():
        totals = group_totals(columns, found.codes, len(found.refs))
        window = totals.window_end_seconds - totals.window_start_seconds
        for namespace, span, names in found.runs:
            for metric in POD_METRICS:
                _put_column(
                    groups,
                    (resource, namespace, metric),
                    names,
                    totals.sums[metric][span],
                    totals.window_end_seconds[span],
                    window[span],
                )
        if resource != NAMESPACES:
            rack_of = _rack_of_workloads(found.codes, len(found.refs), pod_racks)
            _put_replicas(
                found,
                totals,
                window,
                [rack_names[r] if r >= 0 else None for r in rack_of.tolist()],
                racks,
                budgets,
                groups,
            )


def _put_replicas(
    workloads: Workloads,
    totals: GroupTotals,
    window: FloatArray,
    rack_of: Sequence[str | None],
    racks: _Racks,
    budgets: ReplicaBudgets,
    groups: Groups,
) -> None:
    """Per workload on a known rack: how many replicas that rack's budget holds (`ReplicaBudgets`)."""
    headroom, overdraw = racks.columns["headroom_watts"], racks.columns["overdraw_watts"]
    found: dict[str, tuple[list[str], list[float], list[int], list[int]]] = {}
    for i, (ref, rack) in enumerate(zip(workloads.refs, rack_of, strict=True)):
        row = racks.row.get(rack) if rack is not None else None
        if row is None:
            continue
        replicas = budgets.update(
            ref,
            headroom_watts=float(headroom[row]),
            overdraw_watts=float(overdraw[row]),
            replica_power_watts=float(totals.peak_power_watts[i]),
            current_replicas=int(totals.pods[i]),
            now_seconds=float(totals.window_end_seconds[i]),
        )
        if replicas is not None:
            names, numbers, workload_rows, rack_rows = found.setdefault(ref.namespace, ([], [], [], []))
            names.append(ref.name)
            numbers.append(replicas)
            workload_rows.append(i)
            rack_rows.append(row)
    for namespace, (names, numbers, workload_rows, rack_rows) in found.items():
        _put_column(
            groups,
            (workloads.refs[0].resource, namespace, "replicas_within_budget"),
            names,
            np.asarray(numbers, dtype=np.float64),
            totals.window_end_seconds[workload_rows],
            window[workload_rows],
            racks.labels,
            rack_rows,
        )


def store_values(
    estimate: FleetEstimate,
    *,
    index: ObjectIndex,
    racks_of_nodes: Mapping[str, str],
    window_seconds: float,
    replica_budgets: ReplicaBudgets | None = None,
    workloads: PodWorkloads | None = None,
) -> ValueTable:
    """The values one pass's estimate gives the store: per pod, workload (Deployment, InferenceService,
    namespace; `workloads` keeps their pods between passes), node and rack."""
    groups: Groups = {}
    budgets = replica_budgets if replica_budgets is not None else ReplicaBudgets()
    pods = _Pods(estimate.pods)
    racks = _Racks(estimate.racks)
    _put_pod_values(pods, groups)
    if len(pods):
        found = (workloads or PodWorkloads()).of(index, pods.namespaces, pods.names)
        _put_workload_values(pods, found, racks, racks_of_nodes, budgets, groups)
    _put_node_values(estimate.nodes, racks, racks_of_nodes, window_seconds, groups)
    _put_rack_values(racks, window_seconds, groups)
    return ValueTable(groups)


def _latest_rack_values(latest: pd.DataFrame, racks_of_nodes: Mapping[str, str]) -> Groups:
    """Each rack's newest PDU reading, on the rack and on each of its nodes."""
    groups: Groups = {}
    if not len(latest):
        return groups
    racks = [str(rack) for rack in latest["rack"].tolist()]
    power, at = _floats(latest["rack_power_latest_watts"]), _floats(latest["oldest_reading_seconds"])
    labels = tuple({"rack": rack} for rack in racks)
    everyone = np.arange(len(racks))
    _put_column(
        groups, (POWER_BUDGETS, "", "rack_power_latest_watts"), racks, power, at, 0.0, labels, everyone
    )
    nodes_of: dict[str, list[str]] = {}
    for node, rack in racks_of_nodes.items():
        nodes_of.setdefault(rack, []).append(node)
    nodes = [(node, row) for row, rack in enumerate(racks) for node in nodes_of.get(rack, ())]
    rows = np.asarray([row for _, row in nodes], dtype=np.intp)
    _put_column(
        groups,
        (NODES, "", "rack_power_latest_watts"),
        [node for node, _ in nodes],
        power[rows],
        at[rows],
        0.0,
        labels,
        rows,
    )
    return groups


def estimate_pass(
    history: SampleHistory,
    *,
    now_seconds: float,
    index: ObjectIndex,
    racks: Sequence[RackSettings],
    window_seconds: float,
) -> ValueTable:
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
        workloads=history.workloads,
    )
    history.replica_budgets.retain(set[object](values.refs("replicas_within_budget")))
    return values.joined(_latest_rack_values(estimate.latest_racks, mapping))


class Estimator(Protocol):
    """Where the sample history lives and the estimator passes run."""

    async def add(self, collector: str, samples: Sequence[Sample], received_seconds: float) -> None: ...

    async def estimate(
        self, *, now_seconds: float, index: ObjectIndex, racks: Sequence[RackSettings], window_seconds: float
    ) -> ValueTable: ...

    async def aclose(self) -> None: ...


class LocalEstimator:
    """History and passes in this process, inline: for tests and small fleets."""

    def __init__(self, keep_seconds: float) -> None:
        self.history = SampleHistory(keep_seconds)

    async def add(self, collector: str, samples: Sequence[Sample], received_seconds: float) -> None:
        self.history.add(collector, sample_rows(samples), received_seconds)

    async def estimate(
        self, *, now_seconds: float, index: ObjectIndex, racks: Sequence[RackSettings], window_seconds: float
    ) -> ValueTable:
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
        self._values = ValueTable({})
        self._encoder = ColumnEncoder()
        self._served_layout: ServedLayout | None = None

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
        values = values.with_retained(
            self._values, since_seconds=now - FORGET_AFTER_MAX_AGES * self._settings.max_age_seconds
        )
        self._values = values
        self._estimated_index_version = index_version
        if self._store is not None:
            self._put_in_store(self._store, values)
        if self._on_pass is not None:
            self._on_pass(values)
        self._metrics.stored_values.set(len(values))
        self._metrics.pipeline_duration.observe(time.perf_counter() - started)
        return len(values)

    def _put_in_store(self, store: MetricStore, values: ValueTable) -> None:
        """As the server takes a pass from the worker: as columns (50,000 values as objects would
        take a quarter of a second)."""
        layout, columns = self._encoder.encode(values)
        if layout is not None:
            self._served_layout = ServedLayout(layout)
        assert self._served_layout is not None
        store.put_columns(self._served_layout, columns)

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
