"""KEDA's admission webhooks (cmd/webhooks of github.com/kedacore/keda/v2, built by build.sh) in the API
server's path, as a default KEDA install has them: every ScaledObject the suite writes, the wattscale
operator's included, is validated by KEDA before it is stored.

KEDA refuses a ScaledObject for a Deployment that another ScaledObject, or an HPA of someone else, already
scales (two autoscalers on one Deployment fight over its replicas); the refusal reaches the client as the API
server's answer, with KEDA's message, and nothing is stored. What the wattscale operator renders for a managed
workload (poweroperator.keda: scalingModifiers over demand and power triggers, fallback, a bound-token
TriggerAuthentication) passes KEDA's validation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import kubernetes.client
import pytest
from kubeharness.controlplane import ControlPlane
from kubeharness.keda import SCALED_OBJECT_WEBHOOK, DeployedKeda, dry_run_create
from kubeharness.kubelet import KubeletStandIn
from kubeharness.processes import wait_until
from kubeharness.workloads import (
    WORKLOAD_NAMESPACE,
    create_deployment,
    create_hpa,
    delete_workload,
    wait_until_deleted,
)

from poweroperator import keda as operator_keda
from poweroperator.budget import parse_budget

pytestmark = pytest.mark.cluster

TARGET = "webhook-target"
MANAGED = "webhook-managed"  # another Deployment: KEDA's HPA for TARGET outlives its ScaledObject a moment
FIRST, SECOND = "webhook-first", "webhook-second"
_TIMEOUT_SECONDS = 60.0


def _scaled_object(name: str, target: str) -> dict[str, Any]:
    """A ScaledObject on Deployment `target` with a cron trigger (no peer to reach, nothing to fail)."""
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": WORKLOAD_NAMESPACE},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicaCount": 1,
            "maxReplicaCount": 2,
            "triggers": [
                {
                    "type": "cron",
                    "name": "office_hours",
                    "metadata": {
                        "timezone": "UTC",
                        "start": "0 8 * * *",
                        "end": "0 18 * * *",
                        "desiredReplicas": "2",
                    },
                }
            ],
        },
    }


def _create(plane: ControlPlane, document: dict[str, Any]) -> str:
    """`kubectl create` that is expected to be refused; the API server's message."""
    done = plane.kubectl("create", "-f", "-", stdin=json.dumps(document), check=False)
    assert done.returncode != 0, f"{document['metadata']['name']} was admitted: {done.stdout}"
    return done.stderr


def _refusal_in_effect(plane: ControlPlane, document: dict[str, Any], message: str) -> bool:
    """Whether a dry run of `document` is refused with `message`: KEDA's webhook decides from its informer
    cache, which sees the first autoscaler a moment after the API server stored it."""
    done = dry_run_create(plane, document)
    return done.returncode != 0 and message in done.stderr


def _refused_once_known(
    plane: ControlPlane, keda: DeployedKeda, document: dict[str, Any], message: str, known: str
) -> str:
    """Wait until KEDA's webhook knows `known` (a dry run of `document` is refused with `message`), then
    create `document` for real; the refusal's message."""
    wait_until(
        lambda: _refusal_in_effect(plane, document, message),
        timeout_seconds=_TIMEOUT_SECONDS,
        description=f"KEDA's webhook to know {known}",
        on_timeout=keda.webhooks.tail,
    )
    return _create(plane, document)


def _exists(plane: ControlPlane, name: str) -> bool:
    done = plane.kubectl("get", "scaledobject", name, "-n", WORKLOAD_NAMESPACE, check=False)
    if done.returncode != 0 and "NotFound" not in done.stderr:
        raise AssertionError(done.stderr)
    return done.returncode == 0


@pytest.fixture
def target(
    control_plane: ControlPlane,
    admin_api: kubernetes.client.ApiClient,
    kubelet: KubeletStandIn,
    keda: DeployedKeda,
) -> Iterator[str]:
    """Deployment TARGET (one idle replica); its ScaledObjects and HPA go with it."""
    create_deployment(admin_api, TARGET, replicas=1, node="node-1")
    try:
        yield TARGET
    finally:
        control_plane.kubectl(
            "delete", "scaledobject", FIRST, SECOND, "-n", WORKLOAD_NAMESPACE, "--ignore-not-found", "--wait"
        )
        delete_workload(admin_api, TARGET)
        autoscaling = kubernetes.client.AutoscalingV2Api(admin_api)
        wait_until_deleted(
            lambda: autoscaling.read_namespaced_horizontal_pod_autoscaler(
                f"keda-hpa-{FIRST}", WORKLOAD_NAMESPACE
            ),
            f"KEDA's HPA keda-hpa-{FIRST}",
        )


def test_keda_webhook_refuses_a_second_scaled_object_for_a_deployment_keda_scales(
    control_plane: ControlPlane, keda: DeployedKeda, target: str
) -> None:
    created = keda.scaled_object_validations(WORKLOAD_NAMESPACE, "create")
    control_plane.apply([_scaled_object(FIRST, target)])
    # The first one was admitted by KEDA's webhook, not merely stored: KEDA counted its validation.
    assert keda.scaled_object_validations(WORKLOAD_NAMESPACE, "create") == created + 1

    message = f"the workload '{target}' of type 'apps/v1.Deployment' is already managed by the ScaledObject '{FIRST}'"
    refusal = _refused_once_known(
        control_plane, keda, _scaled_object(SECOND, target), message, f"ScaledObject {FIRST}"
    )
    assert f'admission webhook "{SCALED_OBJECT_WEBHOOK}" denied the request: {message}' in refusal
    assert not _exists(control_plane, SECOND)
    assert _exists(control_plane, FIRST)


def test_keda_webhook_refuses_a_scaled_object_for_a_deployment_an_hpa_scales(
    control_plane: ControlPlane, admin_api: kubernetes.client.ApiClient, keda: DeployedKeda, target: str
) -> None:
    create_hpa(
        admin_api,
        target,
        metric={
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
        },
        min_replicas=1,
        max_replicas=2,
    )
    message = f"the workload '{target}' of type 'apps/v1.Deployment' is already managed by the hpa '{target}'"
    refusal = _refused_once_known(
        control_plane, keda, _scaled_object(FIRST, target), message, f"HPA {target}"
    )
    assert f'admission webhook "{SCALED_OBJECT_WEBHOOK}" denied the request: {message}' in refusal
    assert not _exists(control_plane, FIRST)


QUEUE = {
    "name": "queue",
    "type": "kubernetes-resource",
    "metadata": {"resourceKind": "ConfigMap", "resourceName": "demand", "key": "queue", "targetValue": "1"},
    "replicaTarget": 4,
}
TOKENS = {
    "name": "tokens",
    "type": "metrics-api",
    "metadata": {"url": "http://127.0.0.1:1/tokens", "valueLocation": "value", "targetValue": "1"},
    "replicaTarget": 1000,
}


@pytest.mark.parametrize(
    "demand", [[QUEUE], [QUEUE, TOKENS]], ids=["one-demand-trigger", "two-demand-triggers"]
)
def test_keda_webhook_admits_what_the_wattscale_operator_renders(
    control_plane: ControlPlane, keda: DeployedKeda, demand: list[dict[str, Any]]
) -> None:
    budget = parse_budget(
        {
            "metadata": {
                "name": "rack-webhook",
                "uid": "00000000-0000-0000-0000-000000000001",
                "generation": 1,
            },
            "spec": {
                "nodeSelector": {"matchLabels": {"wattscale.io/rack": "rack-webhook"}},
                "capWatts": 10_000,
                "mode": "enforce",
                "workloads": [
                    {
                        "kind": "Deployment",
                        "namespace": WORKLOAD_NAMESPACE,
                        "name": MANAGED,
                        "scaling": {"mode": "managed", "maxReplicas": 8, "demand": demand},
                    }
                ],
            },
        }
    )
    settings = operator_keda.KedaSettings(adapter_url="https://wattscale.wattscale.svc:443")
    validated = keda.scaled_object_validations(WORKLOAD_NAMESPACE, "create")
    for document in operator_keda.workload_objects(settings, budget, budget.workloads[0]):
        done = dry_run_create(control_plane, document)
        assert done.returncode == 0, f"KEDA refused the operator's {document['kind']}:\n{done.stderr}"
    # The ScaledObject went through KEDA's validation (a dry run is validated like a create).
    assert keda.scaled_object_validations(WORKLOAD_NAMESPACE, "create") == validated + 1
