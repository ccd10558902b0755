"""wattscale behind the real aggregation layer: registration, discovery and metric reads via kube-apiserver."""

from __future__ import annotations

import kubernetes.client
import pytest
from kubeharness.adapter import DeployedAdapter, api_service_available
from kubeharness.controlplane import ControlPlane
from kubeharness.metrics import get_raw, item_values, raw_path, wait_for_pod_metric
from kubeharness.processes import wait_until

pytestmark = pytest.mark.cluster

VERSIONS = ["v1beta1", "v1beta2"]
# ~75 W idle and ~400 W at peak batch per H100 in the simulated fleet; half load sits strictly between.
IDLE_GPU_POWER_WATTS = 60
PEAK_GPU_POWER_WATTS = 450


def test_api_services_turn_available(
    adapter: DeployedAdapter, admin_api: kubernetes.client.ApiClient
) -> None:
    assert sorted(adapter.api_services) == ["v1beta1.custom.metrics.k8s.io", "v1beta2.custom.metrics.k8s.io"]
    for name in adapter.api_services:
        available, detail = api_service_available(admin_api, name)
        assert available, f"{name}: {detail}"


def test_group_is_listed_with_v1beta2_preferred(
    adapter: DeployedAdapter, control_plane: ControlPlane
) -> None:
    groups = {group["name"]: group for group in get_raw(control_plane, "/apis")["groups"]}
    group = groups["custom.metrics.k8s.io"]
    assert {v["version"] for v in group["versions"]} == set(VERSIONS)
    assert group["preferredVersion"]["version"] == "v1beta2"


@pytest.mark.parametrize("version", VERSIONS)
def test_discovery_lists_the_metrics(
    version: str, adapter: DeployedAdapter, control_plane: ControlPlane
) -> None:
    document = get_raw(control_plane, f"/apis/custom.metrics.k8s.io/{version}")
    assert document["kind"] == "APIResourceList"
    assert document["groupVersion"] == f"custom.metrics.k8s.io/{version}"
    names = {resource["name"] for resource in document["resources"]}
    for expected in (
        "pods/gpu_power_watts",
        "pods/watts_per_token",
        "deployments.apps/power_watts",
        "nodes/node_power_watts",
        "nodes/rack_power_headroom_watts",
    ):
        assert expected in names, f"{expected} missing from {sorted(names)}"


@pytest.mark.parametrize("version", VERSIONS)
def test_pod_metric_reads_through_the_aggregator(
    version: str, adapter: DeployedAdapter, control_plane: ControlPlane, steady_workload: list[str]
) -> None:
    document = wait_for_pod_metric(control_plane, version, "gpu_power_watts", "phi", steady_workload)
    assert document["kind"] == "MetricValueList"
    assert document["apiVersion"] == f"custom.metrics.k8s.io/{version}"
    values = item_values(document)
    assert sorted(values) == steady_workload
    for pod, watts in values.items():
        assert IDLE_GPU_POWER_WATTS < watts < PEAK_GPU_POWER_WATTS, f"{pod}: {watts} W"
    for item in document["items"]:
        assert item["describedObject"]["kind"] == "Pod"
        assert item["describedObject"]["namespace"] == "llm"
        if version == "v1beta2":
            assert item["metric"]["name"] == "gpu_power_watts"
        else:
            assert item["metricName"] == "gpu_power_watts"


def test_node_metric_reads_through_the_aggregator(
    adapter: DeployedAdapter, control_plane: ControlPlane, steady_workload: list[str]
) -> None:
    node = wait_until(
        lambda: get_raw(control_plane, raw_path("v1beta2", "/nodes/node-1/node_power_watts")),
        timeout_seconds=60,
        description="node_power_watts of node-1",
    )
    assert [item["describedObject"]["kind"] for item in node["items"]] == ["Node"]
    gpus = get_raw(control_plane, raw_path("v1beta2", "/nodes/node-1/gpu_power_watts"))
    node_watts = item_values(node)["node-1"]
    gpu_watts = item_values(gpus)["node-1"]
    # Eight GPUs, two of them busy: more than eight idle GPUs draw, and the node draws at least its GPUs.
    assert gpu_watts > 8 * IDLE_GPU_POWER_WATTS
    assert node_watts >= gpu_watts
