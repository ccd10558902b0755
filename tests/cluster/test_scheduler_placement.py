"""The real kube-scheduler (built from the same k8s.io/kubernetes as the API server) with the mark the power
operator puts on an overdrawn rack's nodes: `wattscale.io/rack-overdrawn=<budget>:PreferNoSchedule`.

What a user relies on: new replicas go to the rack that is not marked while it has room, they still go to the
marked rack when nothing else fits (a preference, not a hard rule), and no running pod is moved or evicted
when the mark is added. The mark is set by hand here; test_operator_e2e.py has the operator set it.
"""

from __future__ import annotations

from collections.abc import Iterator

import kubernetes.client
import pytest
from conftest import RACK_LABEL, TEST_NODES
from kubeharness.processes import ManagedProcess, wait_until
from kubeharness.scheduler import pod_nodes
from kubeharness.workloads import (
    WORKLOAD_NAMESPACE,
    create_deployment,
    delete_workload,
    wait_for_running_pods,
)

pytestmark = pytest.mark.cluster

OVERDRAWN_TAINT = {"key": "wattscale.io/rack-overdrawn", "value": "rack-a", "effect": "PreferNoSchedule"}
RACK_A = tuple(node.name for node in TEST_NODES if node.labels[RACK_LABEL] == "rack-a")
RACK_B = tuple(node.name for node in TEST_NODES if node.labels[RACK_LABEL] == "rack-b")
_TIMEOUT_SECONDS = 90.0


def _set_taint(api: kubernetes.client.ApiClient, nodes: tuple[str, ...], present: bool) -> None:
    core = kubernetes.client.CoreV1Api(api)
    for name in nodes:
        node = core.read_node(name)
        taints = [
            api.sanitize_for_serialization(t)  # type: ignore[no-untyped-call]
            for t in (node.spec.taints if node.spec else None) or []
            if t.key != OVERDRAWN_TAINT["key"]
        ]
        core.patch_node(name, {"spec": {"taints": [*taints, OVERDRAWN_TAINT] if present else taints}})


@pytest.fixture
def rack_a_marked(admin_api: kubernetes.client.ApiClient) -> Iterator[None]:
    _set_taint(admin_api, RACK_A, present=True)
    try:
        yield
    finally:
        _set_taint(admin_api, RACK_A, present=False)


def _pod_uids(api: kubernetes.client.ApiClient, app: str) -> dict[str, str]:
    pods = kubernetes.client.CoreV1Api(api).list_namespaced_pod(
        WORKLOAD_NAMESPACE, label_selector=f"app={app}"
    )
    return {str(p.metadata.name): str(p.metadata.uid) for p in pods.items if p.metadata is not None}


def _scale(api: kubernetes.client.ApiClient, name: str, replicas: int) -> None:
    kubernetes.client.AppsV1Api(api).patch_namespaced_deployment_scale(
        name, WORKLOAD_NAMESPACE, {"spec": {"replicas": replicas}}
    )


def _gone(api: kubernetes.client.ApiClient, app: str) -> None:
    wait_until(
        lambda: not _pod_uids(api, app),
        timeout_seconds=_TIMEOUT_SECONDS,
        description=f"pods of {app} deleted",
    )


def test_new_replicas_avoid_a_marked_rack_and_running_ones_stay(
    admin_api: kubernetes.client.ApiClient, scheduler: ManagedProcess
) -> None:
    app = "placed"
    create_deployment(admin_api, app, replicas=4, node=None, gpus=1)
    try:
        wait_for_running_pods(admin_api, app, 4)
        before_nodes = pod_nodes(admin_api, WORKLOAD_NAMESPACE, f"app={app}")
        before_uids = _pod_uids(admin_api, app)
        assert set(before_nodes.values()) <= {*RACK_A, *RACK_B}, before_nodes

        _set_taint(admin_api, RACK_A, present=True)
        try:
            _scale(admin_api, app, 8)
            wait_for_running_pods(admin_api, app, 8)
            after_nodes = pod_nodes(admin_api, WORKLOAD_NAMESPACE, f"app={app}")
        finally:
            _set_taint(admin_api, RACK_A, present=False)

        new = {pod: node for pod, node in after_nodes.items() if pod not in before_nodes}
        assert len(new) == 4
        assert set(new.values()) <= set(RACK_B), f"new replicas on a marked node: {new}"
        # The mark moved nothing: every pod that ran before still runs, same object, same node.
        after_uids = _pod_uids(admin_api, app)
        assert {pod: after_uids.get(pod) for pod in before_uids} == before_uids
        assert {pod: after_nodes[pod] for pod in before_nodes} == before_nodes
    finally:
        delete_workload(admin_api, app)
        _gone(admin_api, app)


def test_a_marked_rack_still_takes_replicas_nothing_else_fits(
    admin_api: kubernetes.client.ApiClient, scheduler: ManagedProcess, rack_a_marked: None
) -> None:
    app = "whole-node"
    gpus_per_node = {node.name: node.gpus for node in TEST_NODES}
    # One replica takes a whole node's GPUs: rack-b holds two, the third can only go to the marked rack.
    create_deployment(admin_api, app, replicas=len(RACK_B) + 1, node=None, gpus=gpus_per_node[RACK_B[0]])
    try:
        wait_for_running_pods(admin_api, app, len(RACK_B) + 1)
        placed = sorted(pod_nodes(admin_api, WORKLOAD_NAMESPACE, f"app={app}").values())
        assert [n for n in placed if n in RACK_B] == sorted(RACK_B)
        assert len([n for n in placed if n in RACK_A]) == 1, placed
    finally:
        delete_workload(admin_api, app)
        _gone(admin_api, app)
