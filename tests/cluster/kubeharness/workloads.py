"""Deployments and HPAs for the tests, built with the official client's models."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import kubernetes.client

from kubeharness.processes import wait_until

WORKLOAD_NAMESPACE = "llm"
_TIMEOUT_SECONDS = 60.0


def ensure_namespace(api: kubernetes.client.ApiClient, name: str) -> None:
    body = kubernetes.client.V1Namespace(metadata=kubernetes.client.V1ObjectMeta(name=name))
    with contextlib.suppress(kubernetes.client.ApiException):
        kubernetes.client.CoreV1Api(api).create_namespace(body)

    def default_account() -> bool:
        # Pods are refused until the serviceaccount controller has made `default` in the namespace.
        kubernetes.client.CoreV1Api(api).read_namespaced_service_account("default", name)
        return True

    wait_until(
        default_account, timeout_seconds=_TIMEOUT_SECONDS, description=f"ServiceAccount {name}/default"
    )


def create_deployment(
    api: kubernetes.client.ApiClient,
    name: str,
    *,
    replicas: int,
    node: str | None,
    namespace: str = WORKLOAD_NAMESPACE,
    pod_labels: Mapping[str, str] | None = None,
    gpus: int = 0,
) -> None:
    """A model-server-like Deployment pinned to `node`, or placed by the kube-scheduler (which must then be
    running) when `node` is None; its pods carry label app=<name> and `pod_labels`, and each asks for `gpus`
    nvidia.com/gpu."""
    labels = {"app": name}
    gpu_request = {"nvidia.com/gpu": str(gpus)} if gpus else None
    body = kubernetes.client.V1Deployment(
        metadata=kubernetes.client.V1ObjectMeta(name=name, labels=labels),
        spec=kubernetes.client.V1DeploymentSpec(
            replicas=replicas,
            selector=kubernetes.client.V1LabelSelector(match_labels=labels),
            template=kubernetes.client.V1PodTemplateSpec(
                metadata=kubernetes.client.V1ObjectMeta(labels={**labels, **(pod_labels or {})}),
                spec=kubernetes.client.V1PodSpec(
                    node_name=node,
                    # Never pulled: the kubelet stand-in marks the pods Running without a runtime.
                    containers=[
                        kubernetes.client.V1Container(
                            name="server",
                            image="registry.invalid/llm:test",
                            resources=kubernetes.client.V1ResourceRequirements(
                                requests=gpu_request, limits=gpu_request
                            ),
                        )
                    ],
                ),
            ),
        ),
    )
    kubernetes.client.AppsV1Api(api).create_namespaced_deployment(namespace, body)


# The part of KServe's CRD the tests need: the API server stores InferenceServices like the real thing, and
# the adapter joins their pods by the label KServe puts on predictor pods.
INFERENCE_SERVICE_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "inferenceservices.serving.kserve.io"},
    "spec": {
        "group": "serving.kserve.io",
        "scope": "Namespaced",
        "names": {
            "kind": "InferenceService",
            "listKind": "InferenceServiceList",
            "plural": "inferenceservices",
            "singular": "inferenceservice",
        },
        "versions": [
            {
                "name": "v1beta1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                },
            }
        ],
    },
}
INFERENCE_SERVICE_LABEL = "serving.kserve.io/inferenceservice"


def delete_workload(api: kubernetes.client.ApiClient, name: str, namespace: str = WORKLOAD_NAMESPACE) -> None:
    """Delete the workload's HPA and Deployment, and wait until the Deployment is gone (foreground: its
    pods first), so the next test that uses the name never meets the old one being deleted."""
    apps = kubernetes.client.AppsV1Api(api)
    with contextlib.suppress(kubernetes.client.ApiException):
        kubernetes.client.AutoscalingV2Api(api).delete_namespaced_horizontal_pod_autoscaler(name, namespace)
    with contextlib.suppress(kubernetes.client.ApiException):
        apps.delete_namespaced_deployment(name, namespace, propagation_policy="Foreground")
    wait_until_deleted(
        lambda: apps.read_namespaced_deployment(name, namespace), f"Deployment {namespace}/{name}"
    )


def wait_until_deleted(
    read: Callable[[], object], what: str, timeout_seconds: float = _TIMEOUT_SECONDS
) -> None:
    """Wait until `read` (a read of one object) answers 404."""

    def gone() -> bool:
        try:
            read()
        except kubernetes.client.ApiException as exc:
            return exc.status == 404
        return False

    wait_until(gone, timeout_seconds=timeout_seconds, description=f"{what} deleted")


def running_pods(
    api: kubernetes.client.ApiClient, app: str, namespace: str = WORKLOAD_NAMESPACE
) -> list[str]:
    pods = kubernetes.client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"app={app}")
    return sorted(
        str(pod.metadata.name)
        for pod in pods.items
        if pod.metadata is not None
        and pod.metadata.deletion_timestamp is None
        and pod.status is not None
        and pod.status.phase == "Running"
    )


def wait_for_running_pods(
    api: kubernetes.client.ApiClient, app: str, count: int, namespace: str = WORKLOAD_NAMESPACE
) -> list[str]:
    def all_running() -> list[str] | None:
        names = running_pods(api, app, namespace)
        return names if len(names) == count else None

    return wait_until(
        all_running,
        timeout_seconds=_TIMEOUT_SECONDS,
        description=f"{count} Running pods with app={app}",
    )


def desired_replicas(api: kubernetes.client.ApiClient, name: str, namespace: str = WORKLOAD_NAMESPACE) -> int:
    spec = kubernetes.client.AppsV1Api(api).read_namespaced_deployment_scale(name, namespace).spec
    return int(spec.replicas or 0) if spec else 0


def create_hpa(
    api: kubernetes.client.ApiClient,
    name: str,
    *,
    metric: dict[str, Any],
    min_replicas: int,
    max_replicas: int,
    namespace: str = WORKLOAD_NAMESPACE,
) -> None:
    """An autoscaling/v2 HPA on Deployment <name> with one metric (given in the API's own JSON shape)."""
    no_delay = {"stabilizationWindowSeconds": 0}
    body: Any = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "metrics": [metric],
            "behavior": {"scaleUp": no_delay, "scaleDown": no_delay},
        },
    }
    kubernetes.client.AutoscalingV2Api(api).create_namespaced_horizontal_pod_autoscaler(namespace, body)


def hpa_status(
    api: kubernetes.client.ApiClient, name: str, namespace: str = WORKLOAD_NAMESPACE
) -> dict[str, Any]:
    """The HPA's status as plain JSON (camelCase keys, as kubectl shows it)."""
    hpa = kubernetes.client.AutoscalingV2Api(api).read_namespaced_horizontal_pod_autoscaler_status(
        name, namespace
    )
    document: dict[str, Any] = api.sanitize_for_serialization(hpa)  # type: ignore[no-untyped-call]
    return dict(document.get("status", {}))


def hpa_condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in status.get("conditions", []):
        if condition.get("type") == kind:
            return dict(condition)
    return None
