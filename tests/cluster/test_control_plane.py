"""The harness itself: the control plane built from source runs the controllers the other tests rely on."""

from __future__ import annotations

import base64
import json

import kubernetes.client
import pytest
from kubeharness.adapter import api_service_available
from kubeharness.binaries import Binaries
from kubeharness.controlplane import ControlPlane
from kubeharness.kubelet import KubeletStandIn
from kubeharness.processes import free_port, wait_until
from kubeharness.workloads import (
    WORKLOAD_NAMESPACE,
    create_deployment,
    delete_workload,
    running_pods,
    wait_for_running_pods,
)

pytestmark = pytest.mark.cluster


def test_servers_report_the_versions_built(control_plane: ControlPlane, cluster_binaries: Binaries) -> None:
    versions = json.loads(control_plane.kubectl("version", "--output=json").stdout)
    assert versions["serverVersion"]["gitVersion"] == cluster_binaries.kubernetes_version
    assert versions["clientVersion"]["gitVersion"] == cluster_binaries.kubernetes_version


def test_deployment_pods_become_ready_and_scale_down_completes(
    admin_api: kubernetes.client.ApiClient, kubelet: KubeletStandIn
) -> None:
    apps = kubernetes.client.AppsV1Api(admin_api)

    def available_replicas() -> int:
        status = apps.read_namespaced_deployment_status("harness-probe", WORKLOAD_NAMESPACE).status
        return int(status.available_replicas or 0) if status else 0

    def one_pod_left() -> list[str] | None:
        names = running_pods(admin_api, "harness-probe")
        return names if len(names) == 1 else None

    def pods_in_fleet() -> set[str]:
        return {pod["name"] for pod in kubelet.fleet()["pods"] if pod["name"].startswith("harness-probe")}

    create_deployment(admin_api, "harness-probe", replicas=2, node="node-2")
    try:
        pods = wait_for_running_pods(admin_api, "harness-probe", 2)
        # The deployment controller counts a replica available only once its pod reports Ready.
        wait_until(
            lambda: available_replicas() == 2,
            timeout_seconds=60,
            description="Deployment harness-probe availableReplicas=2",
        )
        listed = {(pod["name"], pod["node"]) for pod in kubelet.fleet()["pods"]}
        assert {(name, "node-2") for name in pods} <= listed

        apps.patch_namespaced_deployment_scale("harness-probe", WORKLOAD_NAMESPACE, {"spec": {"replicas": 1}})
        remaining = wait_until(one_pod_left, timeout_seconds=60, description="harness-probe down to one pod")
        wait_until(
            lambda: pods_in_fleet() == set(remaining),
            timeout_seconds=30,
            description="the fleet file to drop the deleted pod",
        )
    finally:
        delete_workload(admin_api, "harness-probe")
    assert kubelet.errors == []


def test_api_service_without_a_server_behind_it_is_unavailable(
    admin_api: kubernetes.client.ApiClient, control_plane: ControlPlane
) -> None:
    """The availability check the adapter tests rely on is a real probe, not a formality."""
    port = free_port()  # nothing listens here
    objects = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "nothing-here", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "localhost", "ports": [{"port": port}]},
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": "v1.probe.wattscale.test"},
            "spec": {
                "group": "probe.wattscale.test",
                "version": "v1",
                "service": {"namespace": "default", "name": "nothing-here", "port": port},
                "caBundle": base64.b64encode(control_plane.cluster_ca.cert_pem).decode(),
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
    ]

    def failed_discovery() -> str | None:
        available, detail = api_service_available(admin_api, "v1.probe.wattscale.test")
        return detail if not available and "FailedDiscoveryCheck" in detail else None

    control_plane.apply(objects)
    try:
        reason = wait_until(
            failed_discovery,
            timeout_seconds=60,
            description="APIService v1.probe.wattscale.test Available=False",
        )
        assert f"localhost:{port}" in reason
        answer = control_plane.kubectl("get", "--raw", "/apis/probe.wattscale.test/v1", check=False)
        assert answer.returncode != 0
        assert "unable to handle the request" in answer.stderr or "ServiceUnavailable" in answer.stderr
    finally:
        control_plane.delete(objects)
