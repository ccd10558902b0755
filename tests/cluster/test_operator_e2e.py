"""`wattscale operator` end to end on real peers: kube-apiserver + aggregator, the HPA controller, the real KEDA
operator and metrics server, the real KServe controller (Standard mode) and the real kube-scheduler.

PowerBudget with a managed Deployment and a managed InferenceService -> the operator creates their ScaledObjects
(demand trigger + wattscale's power trigger, combined by scalingModifiers) -> KEDA creates the HPAs -> the HPA
controller reads KEDA's external metrics -> KEDA reads the demand (a ConfigMap, KEDA's kubernetes-resource
scaler) and wattscale's `replicas_within_budget` -> the workloads scale up on demand; then the rack's power
rises (more load in the simulated fleet the adapter reads) and the replicas come down to what the budget allows;
the load goes and they scale up again. With two racks, the operator marks the overdrawn rack's nodes and new
replicas (of a Deployment scaled by hand here) land on the other rack; nothing is evicted; the mark goes when
headroom returns. Stale rack power (the fleet source unreadable past max_age_seconds): wattscale stops
serving the budget, KEDA's fallback holds the replica count although demand rises, and scaling resumes once
power is fresh again.

The contract these tests are written against is poweroperator/README.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml
from conftest import FLEET_FILE, RACK_LABEL, TEST_NODES
from kubeharness.adapter import DeployedAdapter
from kubeharness.controlplane import ControlPlane
from kubeharness.identities import service_account_token
from kubeharness.keda import DeployedKeda, load_documents
from kubeharness.kubeconfig import write_kubeconfig
from kubeharness.kubelet import KubeletStandIn
from kubeharness.metrics import get_raw, node_metric, quantity
from kubeharness.processes import WATTSCALE_CLI, ManagedProcess, free_port, wait_until
from kubeharness.scheduler import pod_nodes
from kubeharness.workloads import (
    WORKLOAD_NAMESPACE,
    create_deployment,
    delete_workload,
    desired_replicas,
    wait_for_running_pods,
)

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "apiservice" / "powerbudget-crd.yaml"
OPERATOR_MANIFESTS = REPO / "apiservice" / "operator"
OPERATOR_RBAC = (
    "serviceaccount.yaml",
    "clusterrole.yaml",
    "clusterrolebinding.yaml",
    "clusterrole-keda-access.yaml",
    "role.yaml",
    "rolebinding.yaml",
)
DEMAND = "demand"  # ConfigMap: one key per workload, the replicas its demand asks for
DEPLOYMENT = "llama"
ISVC = "chat"
PREDICTOR = f"{ISVC}-predictor"
HEATER = "e2e-heater"
REPLICA_PEAK_WATTS = 800
RACK_B = tuple(node.name for node in TEST_NODES if node.labels[RACK_LABEL] == "rack-b")
RACK_A = tuple(node.name for node in TEST_NODES if node.labels[RACK_LABEL] == "rack-a")
OVERDRAWN_TAINT_KEY = "wattscale.io/rack-overdrawn"
_TIMEOUT_SECONDS = 180.0
_RECOVERY_TIMEOUT_SECONDS = 360.0


@pytest.fixture(scope="module")
def power_budget_crd(control_plane: ControlPlane) -> None:
    crd = yaml.safe_load(CRD_PATH.read_text(encoding="utf-8"))
    control_plane.apply([crd], "--force-conflicts")
    control_plane.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd['metadata']['name']}"
    )


@pytest.fixture(scope="module")
def operator(
    control_plane: ControlPlane,
    adapter: DeployedAdapter,
    keda: DeployedKeda,
    kserve: ManagedProcess,
    scheduler: ManagedProcess,
    power_budget_crd: None,
) -> Iterator[ManagedProcess]:
    """`wattscale operator` as its own ServiceAccount, with the RBAC its manifests ship (apiservice/operator)."""
    rbac = load_documents([OPERATOR_MANIFESTS / name for name in OPERATOR_RBAC])
    control_plane.apply(rbac, "--force-conflicts")
    (account,) = [doc["metadata"] for doc in rbac if doc["kind"] == "ServiceAccount"]
    token = service_account_token(
        control_plane.api_client(), account["namespace"], account["name"], grant_metrics=False
    )
    kubeconfig = write_kubeconfig(
        control_plane.workdir / "operator.kubeconfig",
        server=control_plane.api_url,
        ca_pem=control_plane.cluster_ca.cert_pem,
        user=f"system:serviceaccount:{account['namespace']}:{account['name']}",
        token=token,
    )
    process = ManagedProcess(
        "wattscale operator",
        [
            *WATTSCALE_CLI,
            "operator",
            "--kubeconfig",
            str(kubeconfig),
            "--identity",
            "operator-e2e",
            "--lease-namespace",
            account["namespace"],
            "--adapter-url",
            adapter.url,
            "--reconcile-period-seconds",
            "2",
            "--placement-after-seconds",
            "4",
            "--metrics-address",
            "127.0.0.1",
            "--metrics-port",
            str(free_port()),
        ],
        control_plane.workdir / "logs" / "wattscale-operator.log",
        env={"KUBERNETES_SERVICE_HOST": "", "KUBERNETES_SERVICE_PORT": ""},
    )
    try:
        yield process
    finally:
        process.stop()


def _set_demand(plane: ControlPlane, **replicas: int) -> None:
    plane.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": DEMAND, "namespace": WORKLOAD_NAMESPACE},
                "data": {key: str(value) for key, value in replicas.items()},
            }
        ],
        "--force-conflicts",
    )


def _managed(kind: str, name: str, max_replicas: int) -> dict[str, Any]:
    return {
        "kind": kind,
        "namespace": WORKLOAD_NAMESPACE,
        "name": name,
        "priorityClass": "high",
        "replicaPeakPowerWatts": REPLICA_PEAK_WATTS,
        "scaling": {
            "mode": "managed",
            "minReplicas": 1,
            "maxReplicas": max_replicas,
            "pollingIntervalSeconds": 2,
            "scaleDownStabilizationSeconds": 0,
            "fallbackFailureThreshold": 2,
            "demand": [
                {
                    "name": "queue",
                    "type": "kubernetes-resource",
                    "metadata": {
                        "resourceKind": "ConfigMap",
                        "resourceName": DEMAND,
                        "key": name,
                        "targetValue": "1",
                    },
                    "replicaTarget": 1,
                }
            ],
        },
    }


def _budget(rack: str, cap_watts: float, workloads: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "wattscale.io/v1alpha1",
        "kind": "PowerBudget",
        "metadata": {"name": rack},
        "spec": {
            "nodeSelector": {"matchLabels": {RACK_LABEL: rack}},
            "capWatts": cap_watts,
            "mode": "enforce",
            "workloads": workloads,
        },
    }


def _nodes_power(plane: ControlPlane, nodes: tuple[str, ...]) -> float:
    """What these nodes draw now, as wattscale serves it (a rack is only a rack once a PowerBudget names it)."""
    return float(sum(node_metric(plane, node, "node_power_watts") for node in nodes))


def _within_budget(plane: ControlPlane, resource: str, name: str) -> int:
    path = f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{WORKLOAD_NAMESPACE}/{resource}/{name}/replicas_within_budget"
    return int(quantity(get_raw(plane, path)["items"][0]["value"]))


def _get(
    plane: ControlPlane, kind: str, name: str, namespace: str | None = WORKLOAD_NAMESPACE
) -> dict[str, Any]:
    scope = ["-n", namespace] if namespace else []
    document: dict[str, Any] = json.loads(plane.kubectl("get", kind, name, *scope, "-o", "json").stdout)
    return document


def _replicas_reach(
    api: kubernetes.client.ApiClient,
    name: str,
    count: int,
    operator: ManagedProcess,
    timeout_seconds: float = _TIMEOUT_SECONDS,
) -> None:
    def reached() -> bool:
        operator.check_running()
        return desired_replicas(api, name) == count

    wait_until(
        reached,
        timeout_seconds=timeout_seconds,
        description=f"{name} at {count} replicas",
        on_timeout=operator.tail,
    )


@pytest.fixture
def managed_workloads(
    control_plane: ControlPlane, admin_api: kubernetes.client.ApiClient, kubelet: KubeletStandIn
) -> Iterator[None]:
    """Deployment llama on rack-b, InferenceService chat whose predictor the scheduler puts on rack-b, both
    at half load, and demand for one replica each."""
    _set_demand(control_plane, **{DEPLOYMENT: 1, ISVC: 1})
    kubelet.set_load(WORKLOAD_NAMESPACE, DEPLOYMENT, 0.5)
    kubelet.set_load(WORKLOAD_NAMESPACE, f"isvc.{PREDICTOR}", 0.5)
    create_deployment(admin_api, DEPLOYMENT, replicas=1, node=RACK_B[0])
    control_plane.apply(
        [
            {
                "apiVersion": "serving.kserve.io/v1beta1",
                "kind": "InferenceService",
                "metadata": {
                    "name": ISVC,
                    "namespace": WORKLOAD_NAMESPACE,
                    "annotations": {"serving.kserve.io/deploymentMode": "Standard"},
                },
                "spec": {
                    "predictor": {
                        "minReplicas": 1,
                        "maxReplicas": 4,
                        "nodeSelector": {RACK_LABEL: "rack-b"},
                        "model": {"modelFormat": {"name": "huggingface"}},
                    }
                },
            }
        ]
    )
    try:
        wait_until(
            lambda: desired_replicas(admin_api, PREDICTOR) >= 1,
            timeout_seconds=_TIMEOUT_SECONDS,
            description=f"KServe's Deployment {PREDICTOR}",
        )
        yield
    finally:
        control_plane.kubectl(
            "delete", "powerbudget", "rack-a", "rack-b", "--ignore-not-found", "--wait=true"
        )
        control_plane.kubectl(
            "delete",
            "inferenceservice",
            ISVC,
            "-n",
            WORKLOAD_NAMESPACE,
            "--ignore-not-found",
            "--cascade=foreground",  # its predictor Deployment first: a later test reuses the name
            "--wait=true",
        )
        delete_workload(admin_api, DEPLOYMENT)
        delete_workload(admin_api, HEATER)


def test_a_dry_run_budget_previews_an_inference_service_that_kserves_hpa_still_scales(
    control_plane: ControlPlane, operator: ManagedProcess, managed_workloads: None
) -> None:
    # KServe made its own HPA for the predictor; KEDA's admission webhook refuses a second autoscaler for the
    # Deployment, and a dryRun budget never changes the class that would make KServe remove it.
    kserve_hpa = wait_until(
        partial(_get, control_plane, "hpa", PREDICTOR),
        timeout_seconds=_TIMEOUT_SECONDS,
        description=f"KServe's HPA {PREDICTOR}",
    )
    assert kserve_hpa["metadata"]["ownerReferences"][0]["kind"] == "InferenceService"
    preview = _budget("rack-b", 1e6, [_managed("InferenceService", ISVC, max_replicas=4)])
    preview["spec"]["mode"] = "dryRun"
    control_plane.apply([preview], "--force-conflicts")

    def reported() -> list[dict[str, Any]] | None:
        operator.check_running()
        workloads = _get(control_plane, "powerbudget", "rack-b", None).get("status", {}).get("workloads")
        return workloads or None

    (status,) = wait_until(
        reported, timeout_seconds=_TIMEOUT_SECONDS, description="status.workloads", on_timeout=operator.tail
    )
    assert status["applied"] is False
    assert status["message"] == (
        f"would apply ScaledObject {WORKLOAD_NAMESPACE}/{PREDICTOR}-wattscale once KServe removes its HPA "
        f"{WORKLOAD_NAMESPACE}/{PREDICTOR} (autoscalerClass external)"
    )
    uid = _get(control_plane, "powerbudget", "rack-b", None)["metadata"]["uid"]
    events = json.loads(
        control_plane.kubectl(
            "get", "events", "-A", "--field-selector", f"involvedObject.uid={uid}", "-o", "json"
        ).stdout
    )["items"]
    assert {e["reason"] for e in events} == {"WouldApplyScaledObject"}, events
    # A preview changes nothing: KServe keeps scaling its predictor.
    assert _get(control_plane, "hpa", PREDICTOR)["metadata"]["uid"] == kserve_hpa["metadata"]["uid"]
    annotations = _get(control_plane, "inferenceservice", ISVC)["metadata"].get("annotations", {})
    assert "serving.kserve.io/autoscalerClass" not in annotations


def test_operator_scales_managed_workloads_on_demand_within_the_rack_budget(
    control_plane: ControlPlane,
    admin_api: kubernetes.client.ApiClient,
    kubelet: KubeletStandIn,
    operator: ManagedProcess,
    managed_workloads: None,
) -> None:
    # A cap with room for about four more replicas at their modelled peak over what rack-b draws now.
    idle = _nodes_power(control_plane, RACK_B)
    cap = idle + 4.5 * REPLICA_PEAK_WATTS
    control_plane.apply(
        [
            _budget(
                "rack-b",
                cap,
                [
                    _managed("Deployment", DEPLOYMENT, max_replicas=4),
                    _managed("InferenceService", ISVC, max_replicas=4),
                ],
            )
        ],
        "--force-conflicts",
    )

    # The operator's objects, owned by the PowerBudget; KEDA's HPAs owned by them.
    for target in (DEPLOYMENT, PREDICTOR):
        scaled = wait_until(
            partial(_get, control_plane, "scaledobject", f"{target}-wattscale"),
            timeout_seconds=_TIMEOUT_SECONDS,
            description=f"ScaledObject {target}-wattscale",
            on_timeout=operator.tail,
        )
        assert scaled["metadata"]["ownerReferences"][0]["kind"] == "PowerBudget"
        assert scaled["spec"]["scaleTargetRef"]["name"] == target
        assert {t["name"] for t in scaled["spec"]["triggers"]} == {"queue", "wattscale_budget"}
        hpa = wait_until(
            partial(_get, control_plane, "hpa", f"keda-hpa-{target}-wattscale"),
            timeout_seconds=_TIMEOUT_SECONDS,
            description=f"KEDA's HPA for {target}",
        )
        assert hpa["spec"]["metrics"][0]["external"]["metric"]["name"] == "composite-metric"
    isvc = _get(control_plane, "inferenceservice", ISVC)
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "external"

    # Demand rises: both scale up to it (the budget has room).
    _set_demand(control_plane, **{DEPLOYMENT: 2, ISVC: 2})
    _replicas_reach(admin_api, DEPLOYMENT, 2, operator)
    _replicas_reach(admin_api, PREDICTOR, 2, operator)

    # The rack's power rises (eight busy pods on its other node): the budget allows fewer replicas than the
    # demand, and the workloads come down to what it allows.
    _set_demand(control_plane, **{DEPLOYMENT: 4, ISVC: 4})
    kubelet.set_load(WORKLOAD_NAMESPACE, HEATER, 1.0)
    create_deployment(admin_api, HEATER, replicas=8, node=RACK_B[1])
    wait_for_running_pods(admin_api, HEATER, 8)

    # Each workload has its own KEDA HPA, so each comes down on its own sync: wait for both.
    def capped() -> bool:
        operator.check_running()
        allowed = _within_budget(control_plane, "deployments.apps", DEPLOYMENT)
        predictor_allowed = _within_budget(control_plane, "inferenceservices.serving.kserve.io", ISVC)
        return (
            allowed < 4
            and desired_replicas(admin_api, DEPLOYMENT) <= max(allowed, 1)
            and desired_replicas(admin_api, PREDICTOR) <= max(predictor_allowed, 1)
        )

    wait_until(
        capped,
        timeout_seconds=_TIMEOUT_SECONDS,
        description=f"{DEPLOYMENT} and {PREDICTOR} held to what the budget allows",
        on_timeout=operator.tail,
    )
    assert desired_replicas(admin_api, DEPLOYMENT) < 4

    # The load goes: headroom returns and both scale up to their demand again, once the budget has had room
    # for another replica for a while (the adapter's hysteresis, estimators.headroom.ReplicaBudgets).
    delete_workload(admin_api, HEATER)
    _replicas_reach(admin_api, DEPLOYMENT, 4, operator, timeout_seconds=_RECOVERY_TIMEOUT_SECONDS)
    _replicas_reach(admin_api, PREDICTOR, 4, operator, timeout_seconds=_RECOVERY_TIMEOUT_SECONDS)


def test_operator_steers_new_replicas_away_from_an_overdrawn_rack_and_evicts_nothing(
    control_plane: ControlPlane,
    admin_api: kubernetes.client.ApiClient,
    kubelet: KubeletStandIn,
    operator: ManagedProcess,
) -> None:
    app = "spread"
    kubelet.set_load(WORKLOAD_NAMESPACE, app, 0.5)
    create_deployment(admin_api, app, replicas=2, node=None, gpus=1)
    try:
        wait_for_running_pods(admin_api, app, 2)
        before = pod_nodes(admin_api, WORKLOAD_NAMESPACE, f"app={app}")
        # rack-a far over its cap, rack-b with room to spare.
        control_plane.apply(
            [
                _budget("rack-a", 100, []),
                _budget("rack-b", _nodes_power(control_plane, RACK_B) + 20 * REPLICA_PEAK_WATTS, []),
            ],
            "--force-conflicts",
        )

        def rack_a_marked() -> bool:
            operator.check_running()
            nodes = (
                kubernetes.client.CoreV1Api(admin_api).list_node(label_selector=f"{RACK_LABEL}=rack-a").items
            )
            return all(
                any(
                    t.key == OVERDRAWN_TAINT_KEY and t.effect == "PreferNoSchedule"
                    for t in ((n.spec.taints if n.spec else None) or [])
                )
                for n in nodes
            )

        wait_until(
            rack_a_marked,
            timeout_seconds=_TIMEOUT_SECONDS,
            description="the operator to mark rack-a's nodes PreferNoSchedule",
            on_timeout=operator.tail,
        )
        # The status says so too (written on the operator's status period, after the taint).
        placement = wait_until(
            lambda: (
                (
                    p := _get(control_plane, "powerbudget", "rack-a", namespace=None)
                    .get("status", {})
                    .get("placement")
                )
                and p["overdrawn"]
                and p
            ),
            timeout_seconds=_TIMEOUT_SECONDS,
            description="PowerBudget rack-a status.placement overdrawn",
            on_timeout=operator.tail,
        )
        assert sorted(placement["taintedNodes"]) == sorted(RACK_A)

        # More replicas (a rollout, an autoscaler): the scheduler puts the new ones on rack-b.
        kubernetes.client.AppsV1Api(admin_api).patch_namespaced_deployment_scale(
            app, WORKLOAD_NAMESPACE, {"spec": {"replicas": 6}}
        )
        wait_for_running_pods(admin_api, app, 6)
        after = pod_nodes(admin_api, WORKLOAD_NAMESPACE, f"app={app}")
        new = {pod: node for pod, node in after.items() if pod not in before}
        assert set(new.values()) <= set(RACK_B), new
        assert {pod: after.get(pod) for pod in before} == before  # nothing evicted or moved

        # Headroom returns on rack-a: the mark goes.
        control_plane.apply([_budget("rack-a", 1e9, [])], "--force-conflicts")
        wait_until(
            lambda: not rack_a_marked(),
            timeout_seconds=_TIMEOUT_SECONDS,
            description="the operator to clear rack-a's mark",
            on_timeout=operator.tail,
        )
    finally:
        control_plane.kubectl(
            "delete", "powerbudget", "rack-a", "rack-b", "--ignore-not-found", "--wait=true"
        )
        delete_workload(admin_api, app)


def test_stale_rack_power_keda_fallback_holds_the_replicas_until_power_is_fresh_again(
    control_plane: ControlPlane,
    admin_api: kubernetes.client.ApiClient,
    kubelet: KubeletStandIn,
    operator: ManagedProcess,
    managed_workloads: None,
) -> None:
    idle = _nodes_power(control_plane, RACK_B)
    control_plane.apply(
        [
            _budget(
                "rack-b", idle + 10 * REPLICA_PEAK_WATTS, [_managed("Deployment", DEPLOYMENT, max_replicas=4)]
            )
        ],
        "--force-conflicts",
    )
    _set_demand(control_plane, **{DEPLOYMENT: 2, ISVC: 1})
    _replicas_reach(admin_api, DEPLOYMENT, 2, operator)
    scaled_object = f"{DEPLOYMENT}-wattscale"

    # The power source breaks (the simulated fleet file the adapter's collector reads is unreadable): once its
    # samples are older than max_age_seconds, wattscale stops serving the rack's power and the workload's
    # budget instead of serving old numbers as current.
    fleet = control_plane.workdir / FLEET_FILE
    fleet.write_text("{ not json: the power source is broken")

    def budget_unserved() -> bool:
        done = control_plane.kubectl(
            "get",
            "--raw",
            f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{WORKLOAD_NAMESPACE}/deployments.apps/"
            f"{DEPLOYMENT}/replicas_within_budget",
            check=False,
        )
        return done.returncode != 0 or not json.loads(done.stdout).get("items")

    try:
        wait_until(
            budget_unserved, timeout_seconds=_RECOVERY_TIMEOUT_SECONDS, description="stale budget unserved"
        )
        # KEDA's power trigger fails; past failureThreshold the ScaledObject falls back to the current count.
        _set_demand(control_plane, **{DEPLOYMENT: 4, ISVC: 1})
        wait_until(
            lambda: any(
                c["type"] == "Fallback" and c["status"] == "True"
                for c in _get(control_plane, "scaledobject", scaled_object)
                .get("status", {})
                .get("conditions", [])
            ),
            timeout_seconds=_TIMEOUT_SECONDS,
            description=f"{scaled_object} Fallback=True on stale rack power",
            on_timeout=operator.tail,
        )
        assert desired_replicas(admin_api, DEPLOYMENT) == 2  # held, although demand now asks for 4
    finally:
        kubelet.set_load(WORKLOAD_NAMESPACE, DEPLOYMENT, 0.5)  # rewrites the fleet file whole
    _replicas_reach(admin_api, DEPLOYMENT, 4, operator, timeout_seconds=_RECOVERY_TIMEOUT_SECONDS)
