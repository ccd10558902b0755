"""The real KServe controller (github.com/kserve/kserve cmd/manager, built by build.sh) in Standard (raw
Deployment) mode, with its admission webhooks, the Hugging Face ClusterServingRuntime and the real
kube-scheduler placing the predictor pods.

What the power operator builds on: an InferenceService becomes Deployment `<isvc>-predictor` whose pods carry
`serving.kserve.io/inferenceservice`; with `serving.kserve.io/autoscalerClass: external` KServe makes no HPA
(with the default class it does) and leaves the Deployment's replica count to whoever scales it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from typing import Any

import kubernetes.client
import pytest
from kubeharness.controlplane import ControlPlane
from kubeharness.kubelet import KubeletStandIn
from kubeharness.processes import ManagedProcess, wait_until
from kubeharness.workloads import INFERENCE_SERVICE_LABEL, WORKLOAD_NAMESPACE, desired_replicas

pytestmark = pytest.mark.cluster

EXTERNAL = "chat-external"
DEFAULT_CLASS = "chat-hpa"
_TIMEOUT_SECONDS = 120.0


def inference_service(name: str, annotations: dict[str, str], min_replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": WORKLOAD_NAMESPACE, "annotations": annotations},
        "spec": {
            "predictor": {
                "minReplicas": min_replicas,
                "maxReplicas": 4,
                "model": {
                    "modelFormat": {"name": "huggingface"},
                    "args": ["--model_id=meta-llama/Llama-3.1-8B"],
                },
            }
        },
    }


@pytest.fixture
def two_services(
    control_plane: ControlPlane, kserve: ManagedProcess, scheduler: ManagedProcess, kubelet: KubeletStandIn
) -> Iterator[None]:
    control_plane.apply(
        [
            inference_service(
                EXTERNAL,
                {
                    "serving.kserve.io/deploymentMode": "Standard",
                    "serving.kserve.io/autoscalerClass": "external",
                },
            ),
            inference_service(DEFAULT_CLASS, {"serving.kserve.io/deploymentMode": "Standard"}),
        ]
    )
    try:
        yield
    finally:
        for name in (EXTERNAL, DEFAULT_CLASS):
            # Foreground: the InferenceService goes only after its predictor Deployment, so the next test's
            # service of the same name never finds the old Deployment still being collected.
            control_plane.kubectl(
                "delete",
                "inferenceservice",
                name,
                "-n",
                WORKLOAD_NAMESPACE,
                "--ignore-not-found",
                "--cascade=foreground",
                "--wait=true",
            )


def _get(plane: ControlPlane, kind: str, name: str) -> dict[str, Any] | None:
    done = plane.kubectl("get", kind, name, "-n", WORKLOAD_NAMESPACE, "-o", "json", check=False)
    return json.loads(done.stdout) if done.returncode == 0 else None


def _running_pods(api: kubernetes.client.ApiClient, isvc: str) -> list[kubernetes.client.V1Pod] | None:
    """The predictor pods of `isvc` that run, or None while there are none."""
    pods = kubernetes.client.CoreV1Api(api).list_namespaced_pod(
        WORKLOAD_NAMESPACE, label_selector=f"{INFERENCE_SERVICE_LABEL}={isvc}"
    )
    return [p for p in pods.items if p.status is not None and p.status.phase == "Running"] or None


def test_kserve_reconciles_inference_services_into_predictor_deployments(
    control_plane: ControlPlane, admin_api: kubernetes.client.ApiClient, two_services: None
) -> None:
    for isvc in (EXTERNAL, DEFAULT_CLASS):
        deployment = wait_until(
            partial(_get, control_plane, "deployment", f"{isvc}-predictor"),
            timeout_seconds=_TIMEOUT_SECONDS,
            description=f"KServe to create Deployment {isvc}-predictor",
        )
        owner = deployment["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"]) == ("InferenceService", isvc)
        template = deployment["spec"]["template"]
        assert template["metadata"]["labels"][INFERENCE_SERVICE_LABEL] == isvc
        # The runtime KServe picked for modelFormat huggingface is the one installed from its config/.
        assert [c["name"] for c in template["spec"]["containers"]] == ["kserve-container"]
        # Placed by the real scheduler, run by the kubelet stand-in.
        pods = wait_until(
            partial(_running_pods, admin_api, isvc),
            timeout_seconds=_TIMEOUT_SECONDS,
            description=f"a Running predictor pod of {isvc}",
        )
        assert all(p.spec is not None and p.spec.node_name for p in pods)

    # The default class gets KServe's HPA; `external` gets none, once KServe has reconciled it as well.
    wait_until(
        lambda: _get(control_plane, "hpa", f"{DEFAULT_CLASS}-predictor"),
        timeout_seconds=_TIMEOUT_SECONDS,
        description=f"KServe's HPA for {DEFAULT_CLASS}",
    )
    wait_until(
        lambda: (
            (isvc := _get(control_plane, "inferenceservice", EXTERNAL))
            and any(
                c["type"] == "PredictorReady" and c["status"] == "True"
                for c in isvc["status"].get("conditions", [])
            )
        ),
        timeout_seconds=_TIMEOUT_SECONDS,
        description=f"{EXTERNAL} PredictorReady",
    )
    assert _get(control_plane, "hpa", f"{EXTERNAL}-predictor") is None


def test_kserve_leaves_an_external_class_predictors_replicas_alone(
    control_plane: ControlPlane, admin_api: kubernetes.client.ApiClient, two_services: None
) -> None:
    name = f"{EXTERNAL}-predictor"
    wait_until(
        lambda: _get(control_plane, "deployment", name),
        timeout_seconds=_TIMEOUT_SECONDS,
        description=f"Deployment {name}",
    )
    # What KEDA's HPA does: write the scale subresource.
    kubernetes.client.AppsV1Api(admin_api).patch_namespaced_deployment_scale(
        name, WORKLOAD_NAMESPACE, {"spec": {"replicas": 3}}
    )
    # A change KServe must carry into the Deployment: once it is there, KServe has reconciled since.
    control_plane.kubectl(
        "label",
        "inferenceservice",
        EXTERNAL,
        "-n",
        WORKLOAD_NAMESPACE,
        "wattscale.test/revision=2",
        "--overwrite",
    )
    wait_until(
        lambda: (
            (d := _get(control_plane, "deployment", name))
            and d["metadata"].get("labels", {}).get("wattscale.test/revision") == "2"
        ),
        timeout_seconds=_TIMEOUT_SECONDS,
        description=f"KServe to carry the new label into {name}",
    )
    assert desired_replicas(admin_api, name) == 3
