"""The KEDA objects the operator owns for a managed workload, rendered as plain dicts (no I/O).

For each managed workload: one ScaledObject whose triggers are the user's demand triggers plus a
`metrics-api` trigger reading the adapter's `replicas_within_budget` for the workload, combined by
`advanced.scalingModifiers` into `min(max_i(demand_i / replicaTarget_i), wattscale_budget)`, and the
TriggerAuthentication that gives that trigger a bound ServiceAccount token. Per namespace: the
ServiceAccount whose token KEDA mints, its read grant on custom.metrics.k8s.io, and KEDA's grant to mint
it. The contract (names, labels, URL) is in poweroperator/README.md; the cluster tests rely on it.

InferenceServices: KServe's own `keda` autoscaler class can only emit prometheus/graphite/opentelemetry
triggers, with no scalingModifiers or fallback, and reverts edits to the ScaledObject it owns; so the
operator sets `serving.kserve.io/autoscalerClass: external` (KServe then creates no autoscaler) and owns
a ScaledObject on the predictor Deployment `<isvc>-predictor` itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from poweroperator.budget import GROUP, KIND, POWER_TRIGGER, VERSION, BudgetSpec, Scaling, Workload

FIELD_MANAGER = "wattscale-operator"
MANAGED_BY = "wattscale-operator"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_BUDGET = "wattscale.io/power-budget"
LABEL_KIND = "wattscale.io/workload-kind"
LABEL_NAME = "wattscale.io/workload-name"
READER_ACCOUNT = "wattscale-power-reader"
"""The ServiceAccount, in each managed workload's namespace, whose token KEDA sends to the adapter."""
READER_CLUSTER_ROLE = "wattscale-power-reader"
TOKEN_BINDING = "wattscale-keda-token"
TOKEN_CLUSTER_ROLE = "wattscale-keda-token-creator"
AUTOSCALER_CLASS = "serving.kserve.io/autoscalerClass"
KEDA_API = "keda.sh/v1alpha1"
METRIC = "replicas_within_budget"
RESOURCES = {"Deployment": "deployments.apps", "InferenceService": "inferenceservices.serving.kserve.io"}
"""The adapter's resource name for each workload kind (adapter/catalogue.py serves the metric on both)."""


@dataclass(frozen=True, slots=True)
class KedaSettings:
    adapter_url: str
    """Where KEDA reaches the adapter, e.g. https://wattscale.wattscale.svc:443."""
    keda_namespace: str = "keda"
    keda_service_account: str = "keda-operator"


def target_deployment(workload: Workload) -> str:
    return f"{workload.name}-predictor" if workload.kind == "InferenceService" else workload.name


def scaled_object_name(workload: Workload) -> str:
    return f"{target_deployment(workload)}-wattscale"


def power_trigger_url(settings: KedaSettings, workload: Workload) -> str:
    base = settings.adapter_url.rstrip("/")
    resource = RESOURCES[workload.kind]
    return (
        f"{base}/apis/custom.metrics.k8s.io/v1beta2/namespaces/{workload.namespace}/{resource}/"
        f"{workload.name}/{METRIC}"
    )


def formula(scaling: Scaling) -> str:
    """Replicas wanted: the largest demand in replicas, never more than the budget allows."""
    terms = [f"{d.name} / {d.replica_target:g}" for d in scaling.demand]
    demand = terms[0] if len(terms) == 1 else f"max({', '.join(terms)})"
    return f"min({demand}, {POWER_TRIGGER})"


def owner_reference(budget: BudgetSpec, *, controller: bool) -> dict[str, Any]:
    reference: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": budget.name,
        "uid": budget.uid,
    }
    if controller:
        # blockOwnerDeletion needs delete permission on the owner; the operator only reads budgets.
        reference.update(controller=True, blockOwnerDeletion=False)
    return reference


def workload_labels(budget: BudgetSpec, workload: Workload) -> dict[str, str]:
    return {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_BUDGET: budget.name,
        LABEL_KIND: workload.kind.lower(),
        LABEL_NAME: workload.name,
    }


def _metadata(budget: BudgetSpec, workload: Workload) -> dict[str, Any]:
    return {
        "name": scaled_object_name(workload),
        "namespace": workload.namespace,
        "labels": workload_labels(budget, workload),
        "ownerReferences": [owner_reference(budget, controller=True)],
    }


def trigger_authentication(budget: BudgetSpec, workload: Workload) -> dict[str, Any]:
    return {
        "apiVersion": KEDA_API,
        "kind": "TriggerAuthentication",
        "metadata": _metadata(budget, workload),
        "spec": {"boundServiceAccountToken": [{"parameter": "token", "serviceAccountName": READER_ACCOUNT}]},
    }


def _demand_trigger(trigger: Any) -> dict[str, Any]:
    rendered: dict[str, Any] = {
        "name": trigger.name,
        "type": trigger.type,
        "metadata": dict(trigger.metadata),
    }
    if trigger.authentication_ref:
        rendered["authenticationRef"] = dict(trigger.authentication_ref)
    return rendered


def scaled_object(settings: KedaSettings, budget: BudgetSpec, workload: Workload) -> dict[str, Any]:
    scaling = workload.scaling
    if scaling is None:
        raise ValueError(f"{workload.key} is not managed")
    power = {
        "name": POWER_TRIGGER,
        "type": "metrics-api",
        "metadata": {
            "url": power_trigger_url(settings, workload),
            "format": "json",
            "valueLocation": "items.0.value",
            "authMode": "bearer",
        },
        "authenticationRef": {"name": scaled_object_name(workload), "kind": "TriggerAuthentication"},
    }
    return {
        "apiVersion": KEDA_API,
        "kind": "ScaledObject",
        "metadata": _metadata(budget, workload),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": target_deployment(workload),
            },
            "minReplicaCount": scaling.min_replicas,
            "maxReplicaCount": scaling.max_replicas,
            "pollingInterval": scaling.polling_interval_seconds,
            # A trigger that keeps failing (wattscale down, a demand source down) holds the replica count.
            "fallback": {
                "failureThreshold": scaling.fallback_failure_threshold,
                "replicas": scaling.min_replicas,
                "behavior": "currentReplicas",
            },
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {
                        "scaleDown": {"stabilizationWindowSeconds": scaling.scale_down_stabilization_seconds},
                        # One replica per poll: two workloads on one rack cannot both spend the same
                        # headroom for longer than one poll before the adapter's answer accounts for it.
                        "scaleUp": {
                            "stabilizationWindowSeconds": 0,
                            "policies": [
                                {
                                    "type": "Pods",
                                    "value": 1,
                                    "periodSeconds": scaling.polling_interval_seconds,
                                }
                            ],
                        },
                    }
                },
                "scalingModifiers": {
                    "formula": formula(scaling),
                    "target": "1",
                    "metricType": "AverageValue",
                },
            },
            "triggers": [*(_demand_trigger(d) for d in scaling.demand), power],
        },
    }


def workload_objects(settings: KedaSettings, budget: BudgetSpec, workload: Workload) -> list[dict[str, Any]]:
    """What one managed workload needs, in the order to apply it (the auth before its user)."""
    return [trigger_authentication(budget, workload), scaled_object(settings, budget, workload)]


def namespace_objects(
    settings: KedaSettings, namespace: str, owners: Iterable[BudgetSpec]
) -> list[dict[str, Any]]:
    """The reader account and its two grants, shared by every managed workload of the namespace; owned by
    every budget with one there, so the garbage collector removes them with the last such budget."""
    references = [owner_reference(b, controller=False) for b in sorted(owners, key=lambda b: b.name)]

    def metadata(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "namespace": namespace,
            "labels": {LABEL_MANAGED_BY: MANAGED_BY},
            "ownerReferences": references,
        }

    def binding(name: str, role: str, subject: Mapping[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": metadata(name),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [dict(subject)],
        }

    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata(READER_ACCOUNT)},
        binding(
            READER_ACCOUNT,
            READER_CLUSTER_ROLE,
            {"kind": "ServiceAccount", "name": READER_ACCOUNT, "namespace": namespace},
        ),
        binding(
            TOKEN_BINDING,
            TOKEN_CLUSTER_ROLE,
            {
                "kind": "ServiceAccount",
                "name": settings.keda_service_account,
                "namespace": settings.keda_namespace,
            },
        ),
    ]


def inference_service_class(workload: Workload, *, managed: bool) -> dict[str, Any]:
    """The only field the operator sets on an InferenceService, applied with its own field manager: the
    annotation while managed; applying without it hands the field back (SSA removes what only we set)."""
    annotations = {AUTOSCALER_CLASS: "external"} if managed else {}
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": workload.name, "namespace": workload.namespace, "annotations": annotations},
    }
