"""The real KEDA operator and metrics server (github.com/kedacore/keda/v2, built by build.sh) scaling a
Deployment on a number wattscale serves, with a hand-written ScaledObject (no wattscale operator):

ScaledObject (metrics-api trigger, bearer token minted by KEDA for a ServiceAccount) -> KEDA's operator
creates the HPA -> the HPA controller reads `external.metrics.k8s.io` through the aggregator -> KEDA's metrics
server asks KEDA's operator (gRPC, mutual TLS) -> the metrics-api scaler calls wattscale over HTTPS -> the
Deployment's replicas follow the value.

Faults: with KEDA's metrics server down the HPA has no metric and holds the replica count; with wattscale down
KEDA's `fallback` (behavior currentReplicas) holds it too. Both recover when the process comes back.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import kubernetes.client
import pytest
from conftest import POWER_READER_ACCOUNT
from kubeharness.adapter import DeployedAdapter, api_service_available, wait_for_api_service
from kubeharness.controlplane import ControlPlane
from kubeharness.identities import service_account_token
from kubeharness.keda import (
    EXTERNAL_METRICS_API_SERVICE,
    DeployedKeda,
    bound_token_authentication,
    external_metric_path,
    token_minting_grant,
)
from kubeharness.kubelet import KubeletStandIn
from kubeharness.metrics import get_raw, node_metric, node_metric_after, quantity
from kubeharness.processes import wait_until
from kubeharness.workloads import (
    WORKLOAD_NAMESPACE,
    create_deployment,
    delete_workload,
    desired_replicas,
    hpa_condition,
    hpa_status,
    wait_for_running_pods,
)

pytestmark = pytest.mark.cluster

APP = "keda-smoke"
HEATER = "keda-heater"
METERED_NODE = "node-3"  # no other test puts load there, so its power is what this test makes it
AUTH = "wattscale-power"
MAX_REPLICAS = 6
_TIMEOUT_SECONDS = 120.0


@pytest.fixture(scope="module")
def power_reader(
    admin_api: kubernetes.client.ApiClient, control_plane: ControlPlane, keda: DeployedKeda
) -> str:
    """The ServiceAccount KEDA mints tokens for (with a read grant on custom.metrics.k8s.io), the grant that
    lets KEDA mint them, and the TriggerAuthentication naming it."""
    service_account_token(admin_api, WORKLOAD_NAMESPACE, POWER_READER_ACCOUNT, grant_metrics=True)
    control_plane.apply(
        [
            *token_minting_grant(WORKLOAD_NAMESPACE, POWER_READER_ACCOUNT),
            bound_token_authentication(AUTH, WORKLOAD_NAMESPACE, POWER_READER_ACCOUNT),
        ]
    )
    return AUTH


def _scaled_object(adapter: DeployedAdapter, target_watts: Decimal, *, fallback: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "scaleTargetRef": {"name": APP},
        "pollingInterval": 2,
        "minReplicaCount": 1,
        "maxReplicaCount": MAX_REPLICAS,
        "advanced": {
            "horizontalPodAutoscalerConfig": {
                "behavior": {
                    "scaleUp": {"stabilizationWindowSeconds": 0},
                    "scaleDown": {"stabilizationWindowSeconds": 0},
                }
            }
        },
        "triggers": [
            {
                "type": "metrics-api",
                "name": "node_power",
                "metadata": {
                    "url": adapter.metric_url(f"/nodes/{METERED_NODE}/node_power_watts"),
                    "format": "json",
                    "valueLocation": "items.0.value",
                    "targetValue": str(target_watts),
                    "authMode": "bearer",
                },
                "authenticationRef": {"name": AUTH},
            }
        ],
    }
    if fallback:
        spec["fallback"] = {"failureThreshold": 2, "replicas": 1, "behavior": "currentReplicas"}
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": APP, "namespace": WORKLOAD_NAMESPACE},
        "spec": spec,
    }


def _get(plane: ControlPlane, kind: str, name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(
        plane.kubectl("get", kind, name, "-n", WORKLOAD_NAMESPACE, "-o", "json").stdout
    )
    return document


def _condition(document: dict[str, Any], kind: str) -> dict[str, Any]:
    for condition in document.get("status", {}).get("conditions", []):
        if condition["type"] == kind:
            return dict(condition)
    return {}


def _keda_value(plane: ControlPlane, metric: str) -> Decimal:
    """The value KEDA's metrics server gives the HPA (through the aggregator), as kubectl sees it."""
    document = get_raw(plane, external_metric_path(WORKLOAD_NAMESPACE, metric, APP))
    return quantity(document["items"][0]["value"])


def _expected_replicas(value: Decimal, target: Decimal) -> int:
    # AverageValue on an External metric: ceil(total / target), clamped to the ScaledObject's bounds.
    return max(1, min(MAX_REPLICAS, math.ceil(value / target)))


@pytest.fixture
def scaled_app(
    control_plane: ControlPlane,
    admin_api: kubernetes.client.ApiClient,
    adapter: DeployedAdapter,
    kubelet: KubeletStandIn,
    power_reader: str,
) -> Iterator[Decimal]:
    """Deployment APP (one replica) and its ScaledObject, with a target of 2/5 of METERED_NODE's idle power;
    yields the target."""
    # The test before may have just removed a heater from METERED_NODE: idle is a reading whose whole
    # window comes after the fleet last had load there, or the target (and every count) is off.
    wait_until(
        lambda: not _loaded_pods(kubelet, METERED_NODE),
        timeout_seconds=_TIMEOUT_SECONDS,
        description=f"no loaded pod left on {METERED_NODE}",
    )
    idle_watts = node_metric_after(control_plane, METERED_NODE, "node_power_watts", time.time())
    target = (idle_watts * 2 / 5).quantize(Decimal(1))
    create_deployment(admin_api, APP, replicas=1, node="node-2")
    control_plane.apply([_scaled_object(adapter, target, fallback=True)])
    try:
        yield target
    finally:
        control_plane.kubectl("delete", "scaledobject", APP, "-n", WORKLOAD_NAMESPACE, "--ignore-not-found")
        for name in (APP, HEATER):
            delete_workload(admin_api, name)
        wait_until(
            lambda: not _deployments(admin_api, APP, HEATER),
            timeout_seconds=_TIMEOUT_SECONDS,
            description=f"{APP} and {HEATER} deleted",
        )


def _loaded_pods(kubelet: KubeletStandIn, node: str) -> list[str]:
    """The pods the simulated fleet runs with some load on `node`."""
    return [pod["name"] for pod in kubelet.fleet()["pods"] if pod["node"] == node and pod["load"] > 0]


def _deployments(api: kubernetes.client.ApiClient, *names: str) -> list[str]:
    """Which of these Deployments still exist (a foreground deletion ends when the object is gone)."""
    items = kubernetes.client.AppsV1Api(api).list_namespaced_deployment(WORKLOAD_NAMESPACE).items
    return [str(d.metadata.name) for d in items if d.metadata is not None and d.metadata.name in names]


def _hpa_name(plane: ControlPlane) -> str:
    return str(
        wait_until(
            lambda: _get(plane, "scaledobject", APP).get("status", {}).get("hpaName"),
            timeout_seconds=_TIMEOUT_SECONDS,
            description=f"KEDA to create the HPA of ScaledObject {APP}",
        )
    )


def _follows(plane: ControlPlane, api: kubernetes.client.ApiClient, metric: str, target: Decimal) -> int:
    """Wait until the Deployment has the replicas KEDA's current value asks for; return that count."""

    def converged() -> int | None:
        wanted = _expected_replicas(_keda_value(plane, metric), target)
        return wanted if desired_replicas(api, APP) == wanted else None

    return wait_until(
        converged, timeout_seconds=_TIMEOUT_SECONDS, description=f"{APP} replicas to follow {metric}"
    )


def test_keda_scales_a_deployment_on_wattscale_node_power(
    control_plane: ControlPlane,
    admin_api: kubernetes.client.ApiClient,
    kubelet: KubeletStandIn,
    scaled_app: Decimal,
) -> None:
    hpa_name = _hpa_name(control_plane)
    hpa = _get(control_plane, "hpa", hpa_name)
    owner = hpa["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("ScaledObject", APP)
    (metric_spec,) = hpa["spec"]["metrics"]
    assert metric_spec["type"] == "External"
    metric = metric_spec["external"]["metric"]["name"]

    # What KEDA serves is wattscale's number (read by KEDA with the minted token), not something of its own.
    served = _keda_value(control_plane, metric)
    direct = node_metric(control_plane, METERED_NODE, "node_power_watts")
    assert abs(served - direct) <= direct / 10, (served, direct)

    idle_replicas = _follows(control_plane, admin_api, metric, scaled_app)
    assert idle_replicas == 3  # 2.5 targets of power

    # Load on the metered node raises its power; KEDA passes that on and the Deployment grows.
    kubelet.set_load(WORKLOAD_NAMESPACE, HEATER, 1.0)
    create_deployment(admin_api, HEATER, replicas=8, node=METERED_NODE)
    wait_for_running_pods(admin_api, HEATER, 8)
    busy_replicas = wait_until(
        lambda: (n := _follows(control_plane, admin_api, metric, scaled_app)) > idle_replicas and n,
        timeout_seconds=_TIMEOUT_SECONDS,
        description=f"{APP} to scale up with {METERED_NODE}'s power",
    )
    assert busy_replicas <= MAX_REPLICAS
    assert _condition(_get(control_plane, "scaledobject", APP), "Ready").get("status") == "True"


def test_keda_metrics_server_down_the_hpa_holds_then_recovers(
    control_plane: ControlPlane,
    admin_api: kubernetes.client.ApiClient,
    keda: DeployedKeda,
    scaled_app: Decimal,
) -> None:
    hpa_name = _hpa_name(control_plane)
    metric = _get(control_plane, "hpa", hpa_name)["spec"]["metrics"][0]["external"]["metric"]["name"]
    replicas = _follows(control_plane, admin_api, metric, scaled_app)

    keda.metrics_server.stop()
    try:
        failing = wait_until(
            lambda: (
                (c := hpa_condition(hpa_status(admin_api, hpa_name), "ScalingActive"))
                and c["status"] == "False"
                and c
            ),
            timeout_seconds=_TIMEOUT_SECONDS,
            description="HPA ScalingActive=False with KEDA's metrics server down",
        )
        assert failing["reason"] == "FailedGetExternalMetric"
        wait_until(
            lambda: not api_service_available(admin_api, EXTERNAL_METRICS_API_SERVICE)[0],
            timeout_seconds=_TIMEOUT_SECONDS,
            description=f"{EXTERNAL_METRICS_API_SERVICE} Available=False",
        )
        assert desired_replicas(admin_api, APP) == replicas  # no metric: the HPA changes nothing
    finally:
        keda.metrics_server.restart()
    wait_for_api_service(admin_api, EXTERNAL_METRICS_API_SERVICE, keda.metrics_server)
    wait_until(
        lambda: (
            (c := hpa_condition(hpa_status(admin_api, hpa_name), "ScalingActive")) and c["status"] == "True"
        ),
        timeout_seconds=_TIMEOUT_SECONDS,
        description="HPA ScalingActive=True again",
    )
    assert _follows(control_plane, admin_api, metric, scaled_app) == replicas
    served, direct = (
        _keda_value(control_plane, metric),
        node_metric(control_plane, METERED_NODE, "node_power_watts"),
    )
    assert abs(served - direct) <= direct / 10, (served, direct)  # wattscale's number again, not a stale one


def test_wattscale_down_keda_fallback_holds_the_replicas_then_recovers(
    control_plane: ControlPlane,
    admin_api: kubernetes.client.ApiClient,
    adapter: DeployedAdapter,
    keda: DeployedKeda,
    scaled_app: Decimal,
) -> None:
    hpa_name = _hpa_name(control_plane)
    metric = _get(control_plane, "hpa", hpa_name)["spec"]["metrics"][0]["external"]["metric"]["name"]
    replicas = _follows(control_plane, admin_api, metric, scaled_app)

    adapter.process.stop()
    try:
        # Past failureThreshold KEDA reports Fallback=True and serves target x current replicas, so the HPA
        # keeps the count it has (behavior currentReplicas) instead of losing its metric.
        wait_until(
            lambda: _condition(_get(control_plane, "scaledobject", APP), "Fallback").get("status") == "True",
            timeout_seconds=_TIMEOUT_SECONDS,
            description="ScaledObject Fallback=True with wattscale down",
        )
        assert _keda_value(control_plane, metric) == scaled_app * replicas
        assert desired_replicas(admin_api, APP) == replicas
    finally:
        adapter.process.restart()
    for name in adapter.api_services:
        wait_for_api_service(admin_api, name, adapter.process)
    wait_until(
        lambda: _condition(_get(control_plane, "scaledobject", APP), "Fallback").get("status") == "False",
        timeout_seconds=_TIMEOUT_SECONDS,
        description="ScaledObject Fallback=False once wattscale answers again",
    )
    assert _follows(control_plane, admin_api, metric, scaled_app) == replicas
