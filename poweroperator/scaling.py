"""Reconcile the KEDA objects of every managed workload (rendered by `poweroperator.keda`).

Each reconcile: server-side apply every object a managed workload of an enforce budget needs (drift in
the fields we manage is put back; fields other managers set are left alone), delete what the operator
created and no longer needs (a workload removed or unmanaged; the garbage collector covers a deleted
PowerBudget through the ownerReferences), and hand an InferenceService's autoscaler class back once it
is no longer managed. A dryRun budget writes nothing: every object is applied with `dryRun=All`, so the
API server validates it, and what would change is reported (Event + status.workloads).

An InferenceService's ScaledObject waits while KServe's own HPA of the predictor exists: KEDA's admission
webhook refuses a second autoscaler for a Deployment, and KServe removes its HPA only after the class
turned external (under a dryRun budget, never).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from poweroperator import keda
from poweroperator.budget import BudgetSpec, Workload
from poweroperator.cluster import Applied, Listed, ObjectError

log = logging.getLogger(__name__)

SCALED_OBJECT = (keda.KEDA_API, "ScaledObject")
TRIGGER_AUTHENTICATION = (keda.KEDA_API, "TriggerAuthentication")
SERVICE_ACCOUNT = ("v1", "ServiceAccount")
ROLE_BINDING = ("rbac.authorization.k8s.io/v1", "RoleBinding")
INFERENCE_SERVICE = ("serving.kserve.io/v1beta1", "InferenceService")
HPA = ("autoscaling/v2", "HorizontalPodAutoscaler")
PER_WORKLOAD = (TRIGGER_AUTHENTICATION, SCALED_OBJECT)
PER_NAMESPACE = (SERVICE_ACCOUNT, ROLE_BINDING)
NAMESPACE_OBJECT_NAMES = {keda.READER_ACCOUNT, keda.TOKEN_BINDING}


class KubeObjects(Protocol):
    async def apply(self, obj: Mapping[str, Any], *, dry_run: bool) -> Applied: ...

    async def get(self, kind: tuple[str, str], namespace: str, name: str) -> Mapping[str, Any] | None: ...

    async def delete(self, kind: tuple[str, str], namespace: str, name: str) -> None: ...

    async def list_managed(self, kind: tuple[str, str]) -> list[Listed]:
        """Objects of this kind, in all namespaces, labelled managed-by wattscale-operator."""
        ...


@dataclass(frozen=True, slots=True)
class WorkloadStatus:
    workload: Workload
    scaled_object: str
    applied: bool
    message: str

    def as_status(self) -> dict[str, Any]:
        return {
            "kind": self.workload.kind,
            "namespace": self.workload.namespace,
            "name": self.workload.name,
            "scaledObject": self.scaled_object,
            "applied": self.applied,
            "message": self.message,
        }


_REPORTED_ONCE = frozenset({"WouldApplyScaledObject", "WaitingForKServeHPA"})

EventSink = Callable[[BudgetSpec, str, str, bool], Awaitable[None]]
"""(budget, reason, message, warning)."""


@dataclass(slots=True)
class ScalingReconciler:
    objects: KubeObjects
    settings: keda.KedaSettings
    event: EventSink
    reported: dict[tuple[str, str, str], str] = field(default_factory=dict)
    """Last message reported per (budget, namespace, name): an Event only when it changes."""

    async def reconcile_all(
        self, budgets: Sequence[BudgetSpec], runtime: Mapping[str, Any], now: float
    ) -> None:
        """The loop's hook: reconcile, then hand each budget its status.workloads."""
        statuses = await self.reconcile(budgets)
        for name, items in statuses.items():
            if name in runtime:
                runtime[name].workloads = [item.as_status() for item in items]

    async def reconcile(self, budgets: Sequence[BudgetSpec]) -> dict[str, list[WorkloadStatus]]:
        statuses: dict[str, list[WorkloadStatus]] = {b.name: [] for b in budgets}
        claimed: dict[tuple[str, str], str] = {}
        for budget in sorted(budgets, key=lambda b: b.name):
            for workload in budget.workloads:
                if workload.scaling is None:
                    continue
                place = (workload.namespace, keda.scaled_object_name(workload))
                if place in claimed:
                    statuses[budget.name].append(
                        WorkloadStatus(
                            workload, place[1], False, f"already managed by PowerBudget {claimed[place]}"
                        )
                    )
                    continue
                claimed[place] = budget.name
                statuses[budget.name].append(await self._workload(budget, workload))
        enforced = [b for b in budgets if b.enforce]
        await self._namespaces(enforced)
        await self._prune({b.name for b in budgets}, {b.name for b in enforced}, claimed)
        return statuses

    async def _workload(self, budget: BudgetSpec, workload: Workload) -> WorkloadStatus:
        name = keda.scaled_object_name(workload)
        dry_run = not budget.enforce
        try:
            changed = []
            kserve_hpa = None
            if workload.kind == "InferenceService":
                if await self.objects.get(INFERENCE_SERVICE, workload.namespace, workload.name) is None:
                    return WorkloadStatus(
                        workload, name, False, "InferenceService not found; nothing applied"
                    )
                result = await self.objects.apply(
                    keda.inference_service_class(workload, managed=True), dry_run=dry_run
                )
                changed += ["autoscalerClass annotation"] if result.changed else []
                kserve_hpa = await self._kserve_hpa(workload)
            for obj in keda.workload_objects(self.settings, budget, workload):
                if kserve_hpa is not None and obj["kind"] == SCALED_OBJECT[1]:
                    continue  # KEDA's admission webhook refuses a second autoscaler for the Deployment
                result = await self.objects.apply(obj, dry_run=dry_run)
                if result.changed:
                    changed.append(f"{obj['kind']} {'updated' if result.existed else 'created'}")
        except ObjectError as exc:
            await self._report(budget, workload, "ScaledObjectFailed", str(exc), warning=True)
            return WorkloadStatus(workload, name, False, str(exc))
        if kserve_hpa is not None:
            return await self._waiting_for_kserve(budget, workload, kserve_hpa, dry_run=dry_run)
        verb = "would apply" if dry_run else "applied"
        message = f"{verb} ScaledObject {workload.namespace}/{name}" + (
            f" ({', '.join(changed)})" if changed else ""
        )
        if changed:
            reason = "WouldApplyScaledObject" if dry_run else "ScaledObjectApplied"
            await self._report(budget, workload, reason, message, warning=False)
        return WorkloadStatus(workload, name, not dry_run, message)

    async def _kserve_hpa(self, workload: Workload) -> str | None:
        """The HPA KServe made for the predictor (named after it, owned by the InferenceService) while it
        still exists: KServe deletes it once autoscalerClass is external, not at once."""
        target = keda.target_deployment(workload)
        hpa = await self.objects.get(HPA, workload.namespace, target)
        owners = (hpa or {}).get("metadata", {}).get("ownerReferences") or []
        owned = any(o.get("kind") == "InferenceService" and o.get("name") == workload.name for o in owners)
        return f"{workload.namespace}/{target}" if owned else None

    async def _waiting_for_kserve(
        self, budget: BudgetSpec, workload: Workload, hpa: str, *, dry_run: bool
    ) -> WorkloadStatus:
        name = keda.scaled_object_name(workload)
        if dry_run:  # the class is not changed, so KServe keeps its HPA: say what enforcing would do
            message = (
                f"would apply ScaledObject {workload.namespace}/{name} once KServe removes its HPA {hpa} "
                "(autoscalerClass external)"
            )
            await self._report(budget, workload, "WouldApplyScaledObject", message, warning=False)
        else:
            message = f"waiting for KServe to remove its HPA {hpa} before applying ScaledObject {name}"
            await self._report(budget, workload, "WaitingForKServeHPA", message, warning=False)
        return WorkloadStatus(workload, name, False, message)

    async def _report(
        self, budget: BudgetSpec, workload: Workload, reason: str, message: str, *, warning: bool
    ) -> None:
        key = (budget.name, workload.namespace, workload.name)
        if self.reported.get(key) == f"{reason}: {message}" and reason in _REPORTED_ONCE:
            return  # the same plan or wait is reported once, not every period
        self.reported[key] = f"{reason}: {message}"
        log.info(
            "operator.scaling." + reason,
            extra={"budget": budget.name, "workload": workload.key, "detail": message},
        )
        await self.event(budget, reason, message, warning)

    async def _namespaces(self, enforced: Sequence[BudgetSpec]) -> None:
        owners: dict[str, list[BudgetSpec]] = {}
        for budget in enforced:
            for workload in budget.workloads:
                budgets = owners.setdefault(workload.namespace, [])
                # Once per budget: two managed workloads of one budget in a namespace made a duplicate
                # ownerReference, which server-side apply refuses (so the reader account never existed).
                if workload.scaling is not None and all(b.name != budget.name for b in budgets):
                    budgets.append(budget)
        for namespace, budgets in sorted(owners.items()):
            for obj in keda.namespace_objects(self.settings, namespace, budgets):
                try:
                    await self.objects.apply(obj, dry_run=False)
                except ObjectError as exc:
                    log.warning(
                        "operator.scaling.namespace_failed", extra={"namespace": namespace, "error": str(exc)}
                    )

    async def _prune(
        self, known: set[str], enforced: set[str], claimed: Mapping[tuple[str, str], str]
    ) -> None:
        """Delete what we created and no longer need; leave what a dryRun or invalid budget owns alone."""
        needed_namespaces = {ns for (ns, _), budget in claimed.items() if budget in enforced}
        for kind in PER_WORKLOAD:
            for item in await self._list(kind):
                budget = item.labels.get(keda.LABEL_BUDGET, "")
                owner_gone = budget not in known
                if (item.namespace, item.name) in claimed or not (owner_gone or budget in enforced):
                    continue
                await self._delete(kind, item)
                if kind == SCALED_OBJECT and item.labels.get(keda.LABEL_KIND) == "inferenceservice":
                    await self._release_inference_service(item)
        for kind in PER_NAMESPACE:
            for item in await self._list(kind):
                if item.name in NAMESPACE_OBJECT_NAMES and item.namespace not in needed_namespaces:
                    await self._delete(kind, item)

    async def _list(self, kind: tuple[str, str]) -> list[Listed]:
        try:
            return await self.objects.list_managed(kind)
        except ObjectError as exc:  # e.g. KEDA not installed: nothing of ours can exist there
            log.warning("operator.scaling.list_failed", extra={"kind": kind[1], "error": str(exc)})
            return []

    async def _delete(self, kind: tuple[str, str], item: Listed) -> None:
        try:
            await self.objects.delete(kind, item.namespace, item.name)
            log.info(
                "operator.scaling.deleted",
                extra={"kind": kind[1], "namespace": item.namespace, "object": item.name},
            )
        except ObjectError as exc:
            log.warning(
                "operator.scaling.delete_failed",
                extra={"kind": kind[1], "object": item.name, "error": str(exc)},
            )

    async def _release_inference_service(self, item: Listed) -> None:
        name = item.labels.get(keda.LABEL_NAME, "")
        workload = Workload(kind="InferenceService", namespace=item.namespace, name=name, priority=0)
        try:
            if await self.objects.get(INFERENCE_SERVICE, item.namespace, name) is not None:
                await self.objects.apply(keda.inference_service_class(workload, managed=False), dry_run=False)
        except ObjectError as exc:
            log.warning("operator.scaling.release_failed", extra={"object": name, "error": str(exc)})
