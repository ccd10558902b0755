"""Two adapter replicas behind the APIService: they agree, and the HPA rides out one of them dying.

The replicas share the port (kubeharness.replicas), so the aggregator's connections are spread over
both as over two endpoints of a Service. One is killed with SIGKILL in the middle of an HPA's life.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import kubernetes.client
import pytest
from kubeharness.adapter import DeployedAdapter
from kubeharness.controlplane import ControlPlane
from kubeharness.kubelet import KubeletStandIn
from kubeharness.metrics import item_values
from kubeharness.processes import ManagedProcess, wait_until
from kubeharness.replicas import ReplicaAnswer, api_requests, ask_one_replica, start_second_replica
from kubeharness.workloads import (
    WORKLOAD_NAMESPACE,
    create_deployment,
    create_hpa,
    delete_workload,
    hpa_condition,
    hpa_status,
    wait_for_running_pods,
)

pytestmark = pytest.mark.cluster

APP = "failover"
PODS_ROUTE = "/apis/{group}/{version}"  # how the adapter's request counter names every metric route
SYNCS_AFTER_THE_KILL = 15  # the HPA syncs every 2 s in the harness


@pytest.fixture
def two_replicas(adapter: DeployedAdapter, control_plane: ControlPlane) -> Iterator[ManagedProcess]:
    replica = start_second_replica(adapter, control_plane)
    try:
        yield replica
    finally:
        replica.stop()


@pytest.fixture
def failover_workload(admin_api: kubernetes.client.ApiClient, kubelet: KubeletStandIn) -> Iterator[list[str]]:
    kubelet.set_load(WORKLOAD_NAMESPACE, APP, 0.5)
    create_deployment(admin_api, APP, replicas=2, node="node-2")
    try:
        yield wait_for_running_pods(admin_api, APP, 2)
    finally:
        delete_workload(admin_api, APP)


def _answers_from_both(
    adapter: DeployedAdapter, plane: ControlPlane, path: str
) -> dict[float, ReplicaAnswer]:
    """One answer from each replica: new connections land on either, so ask until both have answered."""
    seen: dict[float, ReplicaAnswer] = {}

    def both() -> bool:
        answer = ask_one_replica(adapter, plane, path)
        seen[answer.replica] = answer
        return len(seen) == 2

    wait_until(both, timeout_seconds=60, description="answers from both replicas")
    return seen


def _warnings(api: kubernetes.client.ApiClient, hpa: str) -> int:
    """Failed HPA syncs so far: the count of every Warning event on the HPA."""
    events = kubernetes.client.CoreV1Api(api).list_namespaced_event(
        WORKLOAD_NAMESPACE,
        field_selector=f"involvedObject.kind=HorizontalPodAutoscaler,involvedObject.name={hpa}",
    )
    return sum(event.count or 1 for event in events.items if event.type == "Warning")


def test_both_replicas_give_the_same_answers(
    adapter: DeployedAdapter,
    control_plane: ControlPlane,
    two_replicas: ManagedProcess,
    failover_workload: list[str],
) -> None:
    path = adapter.metric_url(
        f"/namespaces/llm/pods/*/gpu_power_watts?labelSelector=app%3D{APP}"
    ).removeprefix(adapter.url)

    def agreeing() -> dict[float, dict[str, Decimal]] | None:
        answers = _answers_from_both(adapter, control_plane, path)
        if any(answer.status != 200 for answer in answers.values()):
            return None  # the new replica's first window is not estimated yet
        values = {replica: item_values(json.loads(answer.body)) for replica, answer in answers.items()}
        first, second = values.values()
        if set(first) != set(failover_workload) or set(second) != set(first):
            return None
        return (
            values
            if all(abs(first[pod] - second[pod]) <= Decimal("0.05") * first[pod] for pod in first)
            else None
        )

    # Both estimate the same fleet over the same 10 s window; within one window of the second starting,
    # they agree to within 5% (their polls are not at the same instants).
    values = wait_until(agreeing, timeout_seconds=60, description="both replicas agreeing")
    assert len(values) == 2


def test_hpa_keeps_its_metrics_when_a_replica_is_killed(
    adapter: DeployedAdapter,
    control_plane: ControlPlane,
    admin_api: kubernetes.client.ApiClient,
    two_replicas: ManagedProcess,
    failover_workload: list[str],
) -> None:
    metric: dict[str, Any] = {
        "type": "Pods",
        "pods": {
            "metric": {"name": "gpu_power_watts"},
            "target": {"type": "AverageValue", "averageValue": "100k"},
        },
    }
    create_hpa(admin_api, APP, min_replicas=2, max_replicas=2, metric=metric)
    try:

        def active() -> bool:
            status = hpa_status(admin_api, APP)
            condition = hpa_condition(status, "ScalingActive")
            return bool(condition and condition["status"] == "True" and status.get("currentMetrics"))

        wait_until(active, timeout_seconds=120, description="the HPA reading gpu_power_watts")
        # The aggregator's connections reach both replicas before one dies.
        wait_until(
            lambda: all(
                api_requests(answer.metrics, PODS_ROUTE) > 0
                for answer in _answers_from_both(adapter, control_plane, "/livez").values()
            ),
            timeout_seconds=90,
            description="metric requests answered by both replicas",
        )
        failed_before = _warnings(admin_api, APP)
        served_before = api_requests(ask_one_replica(adapter, control_plane, "/livez").metrics, PODS_ROUTE)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(two_replicas.pid, signal.SIGKILL)  # a crash: no goodbye to open connections

        # Every connection now reaches the survivor; wait for it to serve the HPA's next syncs.
        wait_until(
            lambda: (
                api_requests(ask_one_replica(adapter, control_plane, "/livez").metrics, PODS_ROUTE)
                >= served_before + SYNCS_AFTER_THE_KILL
            ),
            timeout_seconds=120,
            description=f"{SYNCS_AFTER_THE_KILL} HPA syncs served by the surviving replica",
        )
        failed = _warnings(admin_api, APP) - failed_before
        assert failed <= 1, control_plane.kubectl("describe", "hpa", APP, "-n", WORKLOAD_NAMESPACE).stdout
        condition = hpa_condition(hpa_status(admin_api, APP), "ScalingActive")
        assert condition is not None and condition["status"] == "True", condition
        adapter.process.check_running()
    finally:
        kubernetes.client.AutoscalingV2Api(admin_api).delete_namespaced_horizontal_pod_autoscaler(
            APP, WORKLOAD_NAMESPACE
        )
