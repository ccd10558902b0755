"""The KEDA objects a managed workload gets, checked against KEDA's and KServe's rules (keda-kserve.md), and
the reconciler that applies, corrects, reports and removes them, against a fake API with SSA semantics."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

import pytest

from poweroperator import keda
from poweroperator.budget import BudgetSpec, parse_budget
from poweroperator.cluster import Applied, Listed
from poweroperator.scaling import INFERENCE_SERVICE, SCALED_OBJECT, ScalingReconciler

SETTINGS = keda.KedaSettings(adapter_url="https://127.0.0.1:6443/")
QUEUE = {
    "name": "queue",
    "type": "prometheus",
    "metadata": {"serverAddress": "http://prom:9090", "query": "sum(q)", "threshold": "4"},
    "replicaTarget": 4,
}
TOKENS = {"name": "tokens", "type": "metrics-api", "metadata": {"url": "http://x/t"}, "replicaTarget": 1000}


def budget(*workloads: dict[str, Any], mode: str = "enforce", name: str = "rack-a") -> BudgetSpec:
    return parse_budget(
        {
            "metadata": {"name": name, "uid": f"uid-{name}", "generation": 1},
            "spec": {
                "nodeSelector": {"matchLabels": {"rack": name}},
                "capWatts": 10_000,
                "mode": mode,
                "workloads": list(workloads),
            },
        }
    )


def managed(
    kind: str = "Deployment", name: str = "llama", namespace: str = "llm", **scaling: Any
) -> dict[str, Any]:
    return {
        "kind": kind,
        "namespace": namespace,
        "name": name,
        "scaling": {"mode": "managed", "maxReplicas": 8, "demand": [QUEUE], **scaling},
    }


def test_the_scaled_object_scales_on_demand_bounded_by_the_budget() -> None:
    spec = budget(managed())
    so = keda.scaled_object(SETTINGS, spec, spec.workloads[0])

    assert so["apiVersion"] == "keda.sh/v1alpha1" and so["metadata"]["name"] == "llama-wattscale"
    assert so["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llama"}
    assert so["spec"]["minReplicaCount"] == 1 <= so["spec"]["maxReplicaCount"] == 8
    triggers = so["spec"]["triggers"]
    names = [t["name"] for t in triggers]
    assert names == ["queue", "wattscale_budget"] and len(set(names)) == len(names)  # KEDA: unique names
    power = triggers[-1]
    assert power["type"] == "metrics-api"
    assert power["metadata"] == {
        "url": "https://127.0.0.1:6443/apis/custom.metrics.k8s.io/v1beta2/namespaces/llm/deployments.apps/llama/"
        "replicas_within_budget",
        "format": "json",
        "valueLocation": "items.0.value",  # the MetricValueList's one item; a Quantity string KEDA parses
        "authMode": "bearer",
    }
    assert power["authenticationRef"] == {"name": "llama-wattscale", "kind": "TriggerAuthentication"}
    for trigger in triggers:  # KEDA's metadata is map[string]string
        assert all(isinstance(v, str) for v in trigger["metadata"].values())
    modifiers = so["spec"]["advanced"]["scalingModifiers"]
    assert modifiers == {
        "formula": "min(queue / 4, wattscale_budget)",
        "target": "1",
        "metricType": "AverageValue",
    }
    assert set(re.findall(r"[a-z_][a-z0-9_]*", modifiers["formula"])) - {"min", "max"} == set(names)
    fallback = so["spec"]["fallback"]
    assert fallback["behavior"] in {
        "static",
        "currentReplicas",
        "currentReplicasIfHigher",
        "currentReplicasIfLower",
        "scalingModifiers",
    }
    assert fallback["behavior"] == "currentReplicas" and fallback["failureThreshold"] == 3
    owner = so["metadata"]["ownerReferences"]
    assert owner == [
        {
            "apiVersion": "wattscale.io/v1alpha1",
            "kind": "PowerBudget",
            "name": "rack-a",
            "uid": "uid-rack-a",
            "controller": True,
            "blockOwnerDeletion": False,
        }
    ]


@pytest.mark.parametrize(
    ("queue", "tokens", "budget_replicas", "expected"),
    [(20, 1000, 10, 5), (4, 6000, 10, 6), (40, 0, 3, 3), (0, 0, 3, 0)],
)
def test_the_formula_takes_the_largest_demand_but_never_more_than_the_budget(
    queue: float, tokens: float, budget_replicas: float, expected: float
) -> None:
    spec = budget(managed(demand=[QUEUE, TOKENS]))
    scaling = spec.workloads[0].scaling
    assert scaling is not None
    formula = keda.formula(scaling)
    assert formula == "min(max(queue / 4, tokens / 1000), wattscale_budget)"
    # min, max and / mean the same in KEDA's expr language as in Python.
    value = eval(
        formula,
        {"min": min, "max": max},
        {"queue": queue, "tokens": tokens, "wattscale_budget": budget_replicas},
    )
    assert value == expected


def test_an_inference_service_is_scaled_through_its_predictor_deployment() -> None:
    spec = budget(managed(kind="InferenceService", name="chat"))
    workload = spec.workloads[0]
    so = keda.scaled_object(SETTINGS, spec, workload)

    assert so["spec"]["scaleTargetRef"]["name"] == "chat-predictor"  # KServe's Deployment name
    assert so["metadata"]["name"] == "chat-predictor-wattscale"
    assert (
        "/inferenceservices.serving.kserve.io/chat/replicas_within_budget"
        in so["spec"]["triggers"][-1]["metadata"]["url"]
    )
    annotation = keda.inference_service_class(workload, managed=True)["metadata"]["annotations"]
    assert annotation == {"serving.kserve.io/autoscalerClass": "external"}  # KServe then creates no HPA


def test_the_trigger_authentication_mints_the_reader_accounts_token() -> None:
    spec = budget(managed())
    auth = keda.trigger_authentication(spec, spec.workloads[0])

    assert auth["spec"] == {
        "boundServiceAccountToken": [{"parameter": "token", "serviceAccountName": "wattscale-power-reader"}]
    }


class FakeKubeObjects:
    """Objects in memory with server-side apply's ownership: what the operator applies is its own; fields
    set by others survive its applies; a field it stops applying goes away. resourceVersion moves only
    when the stored object changes."""

    def __init__(self) -> None:
        self.ours: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.foreign: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.versions: dict[tuple[str, str, str], int] = {}
        self.deleted: list[tuple[str, str, str]] = []

    def stored(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        key = (kind, namespace, name)
        if key not in self.ours and key not in self.foreign:
            return None
        return _merge(self.foreign.get(key, {}), self.ours.get(key, {}))

    def put_foreign(self, kind: str, namespace: str, name: str, obj: dict[str, Any]) -> None:
        key = (kind, namespace, name)
        self.foreign[key] = _merge(self.foreign.get(key, {}), obj)
        self.versions[key] = self.versions.get(key, 0) + 1

    async def apply(self, obj: Mapping[str, Any], *, dry_run: bool) -> Applied:
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        before = self.stored(*key)
        after = _merge(self.foreign.get(key, {}), dict(obj))
        if not dry_run:
            self.ours[key] = copy.deepcopy(dict(obj))
            if after != before:
                self.versions[key] = self.versions.get(key, 0) + 1
        return Applied(existed=before is not None, changed=after != before)

    async def get(self, kind: tuple[str, str], namespace: str, name: str) -> Mapping[str, Any] | None:
        return self.stored(kind[1], namespace, name)

    async def delete(self, kind: tuple[str, str], namespace: str, name: str) -> None:
        key = (kind[1], namespace, name)
        self.ours.pop(key, None)
        self.foreign.pop(key, None)
        self.deleted.append(key)

    async def list_managed(self, kind: tuple[str, str]) -> list[Listed]:
        found = []
        for key in sorted(set(self.ours) | set(self.foreign)):
            obj = self.stored(*key)
            labels = (obj or {}).get("metadata", {}).get("labels") or {}
            if key[0] == kind[1] and labels.get(keda.LABEL_MANAGED_BY) == keda.MANAGED_BY:
                found.append(Listed(key[1], key[2], labels))
        return found


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class Harness:
    def __init__(self) -> None:
        self.objects = FakeKubeObjects()
        self.events: list[tuple[str, str, str]] = []
        self.reconciler = ScalingReconciler(self.objects, SETTINGS, self.event)

    async def event(self, budget: BudgetSpec, reason: str, message: str, warning: bool) -> None:
        self.events.append((budget.name, reason, message))

    def kinds(self) -> set[tuple[str, str, str]]:
        return set(self.objects.ours)


async def test_enforce_creates_the_objects_once_and_corrects_drift() -> None:
    h = Harness()
    spec = budget(managed())

    statuses = await h.reconciler.reconcile([spec])

    assert h.kinds() == {
        ("TriggerAuthentication", "llm", "llama-wattscale"),
        ("ScaledObject", "llm", "llama-wattscale"),
        ("ServiceAccount", "llm", "wattscale-power-reader"),
        ("RoleBinding", "llm", "wattscale-power-reader"),
        ("RoleBinding", "llm", "wattscale-keda-token"),
    }
    assert statuses["rack-a"][0].applied is True
    assert [e[1] for e in h.events] == ["ScaledObjectApplied"]
    token = h.objects.stored("RoleBinding", "llm", "wattscale-keda-token")
    assert token is not None and token["subjects"] == [
        {"kind": "ServiceAccount", "name": "keda-operator", "namespace": "keda"}
    ]

    await h.reconciler.reconcile([spec])
    assert len(h.events) == 1  # nothing changed, nothing reported

    # Someone edits a field we manage (kubectl edit) and sets one we do not: ours is put back, theirs kept.
    key = ("ScaledObject", "llm", "llama-wattscale")
    h.objects.ours[key]["spec"]["maxReplicaCount"] = 50
    h.objects.put_foreign(*key, {"spec": {"cooldownPeriod": 99}})
    assert (h.objects.stored(*key) or {})["spec"]["maxReplicaCount"] == 50

    await h.reconciler.reconcile([spec])

    stored = h.objects.stored(*key)
    assert (
        stored is not None
        and stored["spec"]["maxReplicaCount"] == 8
        and stored["spec"]["cooldownPeriod"] == 99
    )
    assert h.events[-1][1] == "ScaledObjectApplied" and "ScaledObject updated" in h.events[-1][2]


async def test_dry_run_writes_nothing_and_reports_the_plan_once() -> None:
    h = Harness()
    spec = budget(managed(), mode="dryRun")

    statuses = await h.reconciler.reconcile([spec])
    await h.reconciler.reconcile([spec])

    assert h.kinds() == set()
    assert statuses["rack-a"][0].applied is False and "would apply" in statuses["rack-a"][0].message
    assert [e[1] for e in h.events] == ["WouldApplyScaledObject"]


async def test_removing_the_workload_entry_removes_what_was_created() -> None:
    h = Harness()
    await h.reconciler.reconcile([budget(managed(), managed(name="other", namespace="batch"))])

    await h.reconciler.reconcile([budget(managed(name="other", namespace="batch"))])

    assert {key for key in h.kinds() if key[1] == "llm"} == set()
    assert ("ScaledObject", "batch", "other-wattscale") in h.kinds()


async def test_an_unmanaged_workload_has_no_objects_and_a_deleted_budgets_are_removed() -> None:
    h = Harness()
    await h.reconciler.reconcile([budget(managed())])

    unmanaged = {"kind": "Deployment", "namespace": "llm", "name": "llama"}
    await h.reconciler.reconcile([budget(unmanaged)])
    assert h.kinds() == set()

    await h.reconciler.reconcile([budget(managed())])
    await h.reconciler.reconcile([])  # the PowerBudget is gone (the garbage collector would agree)
    assert h.kinds() == set()


async def test_a_dry_run_budget_leaves_what_it_created_when_enforcing_alone() -> None:
    h = Harness()
    await h.reconciler.reconcile([budget(managed())])

    await h.reconciler.reconcile([budget(managed(), mode="dryRun")])

    assert ("ScaledObject", "llm", "llama-wattscale") in h.kinds()


async def test_an_inference_service_gets_the_external_class_and_gets_it_back_when_unmanaged() -> None:
    h = Harness()
    h.objects.put_foreign(
        "InferenceService",
        "llm",
        "chat",
        {"metadata": {"name": "chat", "annotations": {"team": "a"}}, "spec": {}},
    )
    await h.reconciler.reconcile([budget(managed(kind="InferenceService", name="chat"))])

    stored = h.objects.stored(INFERENCE_SERVICE[1], "llm", "chat")
    assert stored is not None
    assert stored["metadata"]["annotations"] == {"team": "a", "serving.kserve.io/autoscalerClass": "external"}
    assert h.objects.stored(SCALED_OBJECT[1], "llm", "chat-predictor-wattscale") is not None

    await h.reconciler.reconcile([budget({"kind": "InferenceService", "namespace": "llm", "name": "chat"})])

    stored = h.objects.stored(INFERENCE_SERVICE[1], "llm", "chat")
    assert stored is not None and stored["metadata"]["annotations"] == {"team": "a"}
    assert h.objects.stored(SCALED_OBJECT[1], "llm", "chat-predictor-wattscale") is None


def _chat_with_kserve_hpa(h: Harness) -> None:
    """InferenceService chat on KServe's default autoscaler: KServe made HPA chat-predictor for it."""
    h.objects.put_foreign("InferenceService", "llm", "chat", {"metadata": {"name": "chat"}, "spec": {}})
    owner = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "name": "chat"}
    h.objects.put_foreign(
        "HorizontalPodAutoscaler",
        "llm",
        "chat-predictor",
        {"metadata": {"name": "chat-predictor", "ownerReferences": [owner]}},
    )


async def test_an_inference_service_scaled_object_waits_until_kserve_removed_its_hpa() -> None:
    # KEDA's admission webhook refuses a ScaledObject for a Deployment another HPA scales (seen with the real
    # webhook): KServe removes its HPA only after autoscalerClass turned external.
    h = Harness()
    _chat_with_kserve_hpa(h)
    spec = budget(managed(kind="InferenceService", name="chat"))

    statuses = await h.reconciler.reconcile([spec])
    await h.reconciler.reconcile([spec])

    assert h.objects.stored(SCALED_OBJECT[1], "llm", "chat-predictor-wattscale") is None
    stored = h.objects.stored(INFERENCE_SERVICE[1], "llm", "chat")
    assert (
        stored is not None
        and stored["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "external"
    )
    (status,) = statuses["rack-a"]
    assert (
        status.applied is False
        and "waiting for KServe to remove its HPA llm/chat-predictor" in status.message
    )
    assert [e[1] for e in h.events] == ["WaitingForKServeHPA"]  # once, and not as a failure

    await h.objects.delete(("autoscaling/v2", "HorizontalPodAutoscaler"), "llm", "chat-predictor")
    statuses = await h.reconciler.reconcile([spec])

    assert h.objects.stored(SCALED_OBJECT[1], "llm", "chat-predictor-wattscale") is not None
    assert statuses["rack-a"][0].applied is True
    assert h.events[-1][1] == "ScaledObjectApplied"


async def test_a_dry_run_inference_service_on_kserves_hpa_reports_the_plan_not_a_failure() -> None:
    h = Harness()
    _chat_with_kserve_hpa(h)
    spec = budget(managed(kind="InferenceService", name="chat"), mode="dryRun")

    statuses = await h.reconciler.reconcile([spec])
    await h.reconciler.reconcile([spec])

    assert h.kinds() == set()
    (status,) = statuses["rack-a"]
    assert status.message == (
        "would apply ScaledObject llm/chat-predictor-wattscale once KServe removes its HPA llm/chat-predictor "
        "(autoscalerClass external)"
    )
    assert [e[1] for e in h.events] == ["WouldApplyScaledObject"]


async def test_a_users_own_hpa_named_like_the_predictor_does_not_hold_the_scaled_object_back() -> None:
    # Only KServe removes its HPA by itself; KEDA's webhook then refuses ours, and that refusal is what is shown.
    h = Harness()
    h.objects.put_foreign("InferenceService", "llm", "chat", {"metadata": {"name": "chat"}, "spec": {}})
    h.objects.put_foreign(
        "HorizontalPodAutoscaler", "llm", "chat-predictor", {"metadata": {"name": "chat-predictor"}}
    )

    await h.reconciler.reconcile([budget(managed(kind="InferenceService", name="chat"))])

    assert h.objects.stored(SCALED_OBJECT[1], "llm", "chat-predictor-wattscale") is not None


async def test_a_missing_inference_service_is_reported_not_created() -> None:
    h = Harness()
    statuses = await h.reconciler.reconcile([budget(managed(kind="InferenceService", name="ghost"))])

    assert statuses["rack-a"][0].applied is False and "not found" in statuses["rack-a"][0].message
    assert ("InferenceService", "llm", "ghost") not in h.kinds()


async def test_a_workload_managed_by_two_budgets_is_owned_by_the_first() -> None:
    h = Harness()
    statuses = await h.reconciler.reconcile(
        [budget(managed(), name="rack-b"), budget(managed(), name="rack-a")]
    )

    assert statuses["rack-a"][0].applied is True
    assert "already managed by PowerBudget rack-a" in statuses["rack-b"][0].message
