"""`store_values` builds the store's values column by column; row by row (as it did before, kept
here as the reference) gives exactly the same values, each group of objects in the same order, on
randomised fleets with missing, infinite and tied numbers."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import pytest

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
from adapter.objects import KubeObject, ObjectIndex, StaticObjectIndex
from adapter.pipeline import (
    POD_METRICS,
    RACK_METRICS,
    TOKEN_METRICS,
    PodWorkloads,
    deployment_of_pods,
    store_values,
)
from adapter.selectors import parse_selector
from adapter.store import GroupKey, Key, ObjectRef, StoredValue
from estimators.fleet import FleetEstimate, aggregate_pods
from estimators.headroom import ReplicaBudgets


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


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(key): value for key, value in row.items()} for row in frame.to_dict("records")]


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


def _estimate_labels(row: Mapping[str, Any]) -> dict[str, str]:
    return {name: row[name] for name in ("method", "confidence") if isinstance(row.get(name), str)}


def row_by_row_store_values(
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
    for row in _records(pods):
        ref = ObjectRef(PODS, str(row["namespace"]), str(row["pod"]))
        end = row["window_end_seconds"]
        window = end - row["window_start_seconds"]
        # Token figures are as old as the token counter's last read, not as the pass: a server that
        # stopped answering makes its watts per token stale after max age, not max age + window.
        token_end = row.get("token_window_end_seconds", end)
        token_start = row.get("token_window_start_seconds", row["window_start_seconds"])
        token_known = isinstance(token_end, float) and math.isfinite(token_end) and math.isfinite(token_start)
        for metric in POD_METRICS:
            extra = _estimate_labels(row) if metric == "watts_per_token" else {}
            if metric in TOKEN_METRICS and token_known:
                put.add(ref, metric, row[metric], token_end, token_end - token_start, **extra)
            else:
                put.add(ref, metric, row[metric], end, window, **extra)

    racks = {str(row["rack"]): row for row in _records(estimate.racks)}
    if not pods.empty:
        pod_racks = pods["node"].map(lambda node: racks_of_nodes.get(str(node)))
        for resource, group_of_pod in _groups(pods, index).items():
            members = pd.DataFrame({"group": group_of_pod, "rack": pod_racks, "power": pods["power_watts"]})
            members = members.dropna(subset=["group"])
            # Per group: the rack most of its pods are on, and its hungriest replica's power.
            rack_of = members.dropna(subset=["rack"]).groupby("group")["rack"].agg(lambda r: r.mode().iloc[0])
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


def _maybe(rng: np.random.Generator, values: np.ndarray, missing: float) -> np.ndarray:
    """`values` with some NaN, and a few infinities."""
    values = values.astype(float)
    values[rng.random(len(values)) < missing] = np.nan
    values[rng.random(len(values)) < missing / 4] = np.inf
    return values


def random_fleet(seed: int) -> tuple[FleetEstimate, ObjectIndex, dict[str, str]]:
    rng = np.random.default_rng(seed)
    pods, nodes, deployments = int(rng.integers(1, 300)), int(rng.integers(1, 40)), int(rng.integers(1, 12))
    node_names = [f"node-{n}" for n in range(nodes)]
    racks_of_nodes = {name: f"rack-{rng.integers(0, 4)}" for name in node_names if rng.random() < 0.8}
    namespaces = rng.choice(["llm", "batch", None], pods, p=[0.6, 0.35, 0.05])
    names = [f"pod-{i}" if rng.random() > 0.02 else None for i in range(pods)]
    start = rng.uniform(0.0, 100.0, pods)
    end = start + rng.choice([15.0, 60.0, 0.25], pods)
    token_end = _maybe(rng, end - rng.uniform(0.0, 5.0, pods), 0.2)
    frame = {
        "namespace": namespaces,
        "pod": names,
        "node": rng.choice(node_names, pods),
        "window_start_seconds": start,
        "window_end_seconds": end,
        "method": rng.choice(["energy_counter", "gauge_model", None], pods),
        "confidence": rng.choice(["high", "low", None], pods),
        "energy_joules": _maybe(rng, rng.uniform(0.0, 3e4, pods), 0.1),
        "generation_tokens": _maybe(rng, rng.choice([0.0, 10.0, 5e4], pods), 0.1),
    }
    for metric in POD_METRICS:
        # Half on and near rounding ties (zero and negative zero among them), half spread out.
        ties = rng.choice([0.0, -0.0, -0.0004, 0.0005, 0.0015, 2.5, -1.5], pods) + rng.integers(0, 3, pods)
        spread = rng.uniform(-1.0, 1e4, pods)
        frame[metric] = _maybe(rng, np.where(rng.random(pods) < 0.5, ties, spread), 0.15)
    if rng.random() < 0.7:
        frame["token_window_end_seconds"] = token_end
        frame["token_window_start_seconds"] = _maybe(rng, token_end - 60.0, 0.1)
    pod_frame = pd.DataFrame(frame)
    if rng.random() < 0.5:
        pod_frame["confidence"] = pod_frame["confidence"].astype(object)
    rack_names = sorted(set(racks_of_nodes.values()))
    rack_frame = pd.DataFrame(
        {
            "rack": rack_names,
            "rack_power_watts": rng.uniform(0.0, 5e4, len(rack_names)),
            "estimated": rng.random(len(rack_names)) < 0.5,
            "cap_watts": 40_000.0,
            "margin_watts": 1_000.0,
            "headroom_watts": _maybe(rng, rng.uniform(-5e3, 5e4, len(rack_names)), 0.1),
            "overdraw_watts": rng.uniform(0.0, 5e3, len(rack_names)),
            "window_end_seconds": rng.uniform(0.0, 100.0, len(rack_names)),
        }
    )
    node_frame = pd.DataFrame(
        {
            "node": node_names,
            "node_power_watts": _maybe(rng, rng.uniform(0.0, 8e3, nodes), 0.1),
            "gpu_power_watts": _maybe(rng, rng.uniform(0.0, 6e3, nodes), 0.1),
            "window_end_seconds": rng.uniform(0.0, 100.0, nodes),
            "estimated": rng.random(nodes) < 0.5,
        }
    )
    objects = [
        KubeObject(
            PODS,
            str(namespace),
            str(name),
            {"app": f"app-{rng.integers(0, deployments)}"}
            | ({KSERVE_LABEL: f"svc-{rng.integers(0, 3)}"} if rng.random() < 0.3 else {}),
        )
        for namespace, name in zip(namespaces, names, strict=True)
        if namespace is not None and name is not None
    ]
    objects += [
        KubeObject(DEPLOYMENTS, namespace, f"app-{d}", pod_selector=parse_selector(f"app=app-{d}"))
        for d in range(deployments)
        for namespace in ("llm", "batch")
    ]
    estimate = FleetEstimate(pod_frame, node_frame, rack_frame, pd.DataFrame())
    return estimate, StaticObjectIndex(objects), racks_of_nodes


def _same(found: StoredValue, expected: StoredValue) -> bool:
    return (
        found.value == expected.value
        and math.copysign(1.0, found.value) == math.copysign(1.0, expected.value)
        and type(found.value) is float
        and (found.timestamp_seconds == expected.timestamp_seconds or math.isnan(expected.timestamp_seconds))
        and found.window_seconds == expected.window_seconds
        and dict(found.labels) == dict(expected.labels)
    )


def _objects_by_group(values: Mapping[Key, StoredValue]) -> dict[GroupKey, list[str]]:
    """(resource, namespace, metric) -> its objects' names, in order: the order a list answers in."""
    found: dict[GroupKey, list[str]] = {}
    for ref, metric in values:
        found.setdefault((ref.resource, ref.namespace, metric), []).append(ref.name)
    return found


@pytest.mark.parametrize("seed", range(40))
def test_column_values_equal_row_by_row_values(seed: int) -> None:
    estimate, index, racks_of_nodes = random_fleet(seed)
    options: dict[str, Any] = {"index": index, "racks_of_nodes": racks_of_nodes, "window_seconds": 60.0}
    expected_budgets, found_budgets, workloads = ReplicaBudgets(), ReplicaBudgets(), PodWorkloads()
    for _ in range(2):  # the second pass also sees the first's replica peaks, and reuses the workloads
        expected = row_by_row_store_values(estimate, replica_budgets=expected_budgets, **options)
        found = store_values(estimate, replica_budgets=found_budgets, workloads=workloads, **options)
        assert len(found) == len(expected)
        assert _objects_by_group(found) == _objects_by_group(expected)
        different = [key for key in expected if not _same(found[key], expected[key])]
        assert not different, [(key, found[key], expected[key]) for key in different[:5]]


class FakeVersionedIndex:
    """An object index whose objects can be replaced, its version counting the replacements."""

    def __init__(self, objects: list[KubeObject]) -> None:
        self.index, self.changes = StaticObjectIndex(objects), 0

    def replace(self, objects: list[KubeObject]) -> None:
        self.index, self.changes = StaticObjectIndex(objects), self.changes + 1

    def synced(self) -> bool:
        return True

    def version(self) -> int:
        return self.changes

    def objects(self, resource: str, namespace: str | None) -> Sequence[KubeObject]:
        return self.index.objects(resource, namespace)


def test_workloads_are_found_again_when_the_object_index_changes() -> None:
    estimate, static_index, racks_of_nodes = random_fleet(0)
    index = FakeVersionedIndex(
        list(static_index.objects(PODS, None)) + list(static_index.objects(DEPLOYMENTS, None))
    )
    options: dict[str, Any] = {
        "racks_of_nodes": racks_of_nodes,
        "window_seconds": 60.0,
        "workloads": PodWorkloads(),
    }
    before = store_values(estimate, index=index, **options)
    deployments = {ref.name for ref, _ in before if ref.resource == DEPLOYMENTS}
    assert deployments
    # Every Deployment renamed: the next pass (same pods) serves the new names only.
    index.replace(
        list(static_index.objects(PODS, None))
        + [replace(d, name=f"{d.name}-v2") for d in static_index.objects(DEPLOYMENTS, None)]
    )
    after = store_values(estimate, index=index, **options)
    renamed = {ref.name for ref, _ in after if ref.resource == DEPLOYMENTS}
    assert renamed == {f"{name}-v2" for name in deployments}
    assert dict(after) == dict(store_values(estimate, index=index, **options | {"workloads": PodWorkloads()}))
