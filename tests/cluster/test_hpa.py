"""The real HPA controller scaling Deployments on wattscale's numbers, and failing the way users see it."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import kubernetes.client
import pytest
from kubeharness.adapter import DeployedAdapter
from kubeharness.controlplane import ControlPlane
from kubeharness.kubelet import KubeletStandIn
from kubeharness.metrics import adapter_request_counts, get_raw, item_values, node_metric, quantity, raw_path
from kubeharness.processes import wait_until
from kubeharness.workloads import (
    INFERENCE_SERVICE_CRD,
    INFERENCE_SERVICE_LABEL,
    WORKLOAD_NAMESPACE,
    create_deployment,
    create_hpa,
    delete_workload,
    desired_replicas,
    hpa_condition,
    hpa_status,
    wait_for_running_pods,
)

pytestmark = pytest.mark.cluster

# Scaling needs a few HPA syncs (2 s each), the adapter's 10 s window to catch up, and pods to start.
_SCALE_TIMEOUT_SECONDS = 150


@pytest.fixture
def workload(
    request: pytest.FixtureRequest, admin_api: kubernetes.client.ApiClient, adapter: DeployedAdapter
) -> Iterator[str]:
    name: str = request.param
    yield name
    delete_workload(admin_api, name)


def _wait_replicas(api: kubernetes.client.ApiClient, name: str, count: int, plane: ControlPlane) -> None:
    wait_until(
        lambda: desired_replicas(api, name) == count,
        timeout_seconds=_SCALE_TIMEOUT_SECONDS,
        description=f"Deployment {name} scaled to {count}",
        on_timeout=lambda: (
            plane.kubectl("describe", "hpa", name, "-n", WORKLOAD_NAMESPACE, check=False).stdout
        ),
    )


def _start(
    api: kubernetes.client.ApiClient,
    kubelet: KubeletStandIn,
    name: str,
    *,
    node: str,
    load: float,
    pod_labels: dict[str, str] | None = None,
) -> None:
    """One Running pod of Deployment <name> on <node>, simulated at <load> of peak batch."""
    kubelet.set_load(WORKLOAD_NAMESPACE, name, load)
    create_deployment(api, name, replicas=1, node=node, pod_labels=pod_labels)
    wait_for_running_pods(api, name, 1)


def _pods_metric(metric: str, average_value: str) -> dict[str, Any]:
    return {
        "type": "Pods",
        "pods": {
            "metric": {"name": metric},
            "target": {"type": "AverageValue", "averageValue": average_value},
        },
    }


def _object_metric(described: dict[str, str], metric: str, value: int) -> dict[str, Any]:
    return {
        "type": "Object",
        "object": {
            "describedObject": described,
            "metric": {"name": metric},
            "target": {"type": "Value", "value": str(value)},
        },
    }


def _current_pods_average(status: dict[str, Any]) -> Decimal | None:
    for metric in status.get("currentMetrics") or []:
        if metric.get("type") == "Pods":
            return quantity(metric["pods"]["current"]["averageValue"])
    return None


@pytest.mark.parametrize("workload", ["llama"], indirect=True)
def test_pods_metric_scales_up_under_load_and_back_down_when_idle(
    workload: str,
    admin_api: kubernetes.client.ApiClient,
    kubelet: KubeletStandIn,
    control_plane: ControlPlane,
) -> None:
    _start(admin_api, kubelet, workload, node="node-1", load=1.0)
    # Between idle (~75 W) and peak (~400 W): full load is well above it, idle well below.
    create_hpa(
        admin_api, workload, min_replicas=1, max_replicas=3, metric=_pods_metric("gpu_power_watts", "250")
    )
    _wait_replicas(admin_api, workload, 3, control_plane)
    status = hpa_status(admin_api, workload)
    average = _current_pods_average(status)
    assert average is not None and average > 250, status
    described = control_plane.kubectl("describe", "hpa", workload, "-n", WORKLOAD_NAMESPACE).stdout
    assert "gpu_power_watts" in described
    assert "/ 250" in described, described
    wait_for_running_pods(admin_api, workload, 3)

    kubelet.set_load(WORKLOAD_NAMESPACE, workload, 0.0)
    _wait_replicas(admin_api, workload, 1, control_plane)
    average = _current_pods_average(hpa_status(admin_api, workload))
    assert average is not None and average < 250
    wait_for_running_pods(admin_api, workload, 1)


@pytest.mark.parametrize("workload", ["mistral"], indirect=True)
def test_object_metric_on_a_node_scales_the_deployment(
    workload: str,
    admin_api: kubernetes.client.ApiClient,
    kubelet: KubeletStandIn,
    control_plane: ControlPlane,
) -> None:
    _start(admin_api, kubelet, workload, node="node-2", load=0.5)
    node_watts = node_metric(control_plane, "node-2", "node_power_watts")
    # A target at half the node's draw: usage/target = 2 with one ready pod, so the HPA wants 2 replicas.
    target_watts = int(node_watts / 2)
    create_hpa(
        admin_api,
        workload,
        min_replicas=1,
        max_replicas=2,
        metric=_object_metric(
            {"apiVersion": "v1", "kind": "Node", "name": "node-2"}, "node_power_watts", target_watts
        ),
    )
    _wait_replicas(admin_api, workload, 2, control_plane)

    def reported() -> dict[str, Any] | None:
        # The status of the HPA's latest sync; one sync may have failed transiently on a busy machine.
        status = hpa_status(admin_api, workload)
        active = hpa_condition(status, "ScalingActive")
        objects = [m for m in status.get("currentMetrics") or [] if m["type"] == "Object"]
        return objects[0]["object"] if active and active["status"] == "True" and objects else None

    current = wait_until(
        reported,
        timeout_seconds=30,
        description="HPA mistral reporting its Object metric",
        on_timeout=lambda: str(hpa_status(admin_api, workload)),
    )
    assert current["describedObject"]["name"] == "node-2"
    assert quantity(current["current"]["value"]) > target_watts
    described = control_plane.kubectl("describe", "hpa", workload, "-n", WORKLOAD_NAMESPACE).stdout
    assert '"node_power_watts" on Node/node-2' in described, described
    assert f"/ {target_watts}" in described, described


@pytest.mark.parametrize("workload", ["gemma-predictor"], indirect=True)
def test_object_metric_on_an_inference_service_scales_its_predictor(
    workload: str,
    admin_api: kubernetes.client.ApiClient,
    kubelet: KubeletStandIn,
    control_plane: ControlPlane,
) -> None:
    control_plane.apply([INFERENCE_SERVICE_CRD])
    control_plane.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/inferenceservices.serving.kserve.io"
    )
    service = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "gemma", "namespace": WORKLOAD_NAMESPACE},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "huggingface"}}}},
    }
    control_plane.apply([service])
    try:
        # KServe labels predictor pods with their InferenceService; the adapter joins them by that label.
        _start(
            admin_api,
            kubelet,
            workload,
            node="node-2",
            load=0.8,
            pod_labels={INFERENCE_SERVICE_LABEL: "gemma"},
        )
        path = raw_path(
            "v1beta2", "/namespaces/llm/inferenceservices.serving.kserve.io/gemma/gpu_power_watts"
        )
        service_watts = wait_until(
            lambda: item_values(get_raw(control_plane, path))["gemma"],
            # The adapter's InferenceService watch retries with backoff until the CRD exists.
            timeout_seconds=120,
            description="gpu_power_watts of InferenceService gemma",
        )
        assert service_watts > 0
        target_watts = int(service_watts / 2)
        create_hpa(
            admin_api,
            workload,
            min_replicas=1,
            max_replicas=2,
            metric=_object_metric(
                {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "name": "gemma"},
                "gpu_power_watts",
                target_watts,
            ),
        )
        _wait_replicas(admin_api, workload, 2, control_plane)
        described = control_plane.kubectl("describe", "hpa", workload, "-n", WORKLOAD_NAMESPACE).stdout
        assert '"gpu_power_watts" on InferenceService/gemma' in described, described
    finally:
        control_plane.delete([service])


@pytest.mark.parametrize("workload", ["qwen"], indirect=True)
def test_unknown_metric_stops_scaling_with_a_clear_condition(
    workload: str,
    admin_api: kubernetes.client.ApiClient,
    kubelet: KubeletStandIn,
    control_plane: ControlPlane,
    adapter: DeployedAdapter,
) -> None:
    _start(admin_api, kubelet, workload, node="node-2", load=0.5)
    not_found_before = adapter_request_counts(control_plane, adapter).get("404", 0.0)
    create_hpa(
        admin_api,
        workload,
        min_replicas=1,
        max_replicas=3,
        metric=_pods_metric("no_such_metric_watts", "1"),
    )

    def scaling_inactive() -> dict[str, Any] | None:
        condition = hpa_condition(hpa_status(admin_api, workload), "ScalingActive")
        return condition if condition is not None and condition["status"] == "False" else None

    condition = wait_until(scaling_inactive, timeout_seconds=60, description="HPA qwen ScalingActive=False")
    assert condition["reason"] == "FailedGetPodsMetric", condition
    assert "no_such_metric_watts" in condition["message"]
    assert desired_replicas(admin_api, workload) == 1

    # The adapter answered the HPA with 404s, and is still up and serving.
    assert adapter_request_counts(control_plane, adapter).get("404", 0.0) > not_found_before
    adapter.process.check_running()
    answer = control_plane.kubectl(
        "get",
        "--raw",
        raw_path("v1beta2", "/namespaces/llm/pods/*/no_such_metric_watts", label_selector="app=qwen"),
        check=False,
    )
    assert answer.returncode != 0
    assert "NotFound" in answer.stderr or "not found" in answer.stderr.lower(), answer.stderr
    get_raw(control_plane, "/apis/custom.metrics.k8s.io/v1beta2")
