"""Everything the capper asks of the Kubernetes API, behind one small protocol so the loop can be unit
tested with a fake and run for real with `KubeCluster` (kubernetes_asyncio).

Rack power and headroom are read from the custom metrics API exactly as any client would
(`/apis/custom.metrics.k8s.io/v1beta2/powerbudgets.wattscale.io/<name>/<metric>`), so the capper needs
no access to the adapter's internals and works against any replica of it.

Replica ceilings are written only where nothing reconciles them back: an InferenceService's
`spec.predictor.maxReplicas` (KServe derives its HPA or ScaledObject from it), or the `maxReplicaCount`
of a ScaledObject that KServe does not own. The value configured before the first clamp is kept in an
annotation and written back when headroom returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from collectors.label_selectors import Selector, SelectorError, selector_from_object
from poweroperator.budget import GROUP, KIND, PLURAL, VERSION, BudgetSpec, Workload

AGENT_URL_ANNOTATION = "wattscale.io/agent-url"
CONFIGURED_MAX_ANNOTATION = "wattscale.io/configured-max-replicas"
EVENT_NAMESPACE = "default"
"""Events about a cluster-scoped object live in the default namespace (as kubectl describe expects)."""
MERGE_PATCH = "application/merge-patch+json"
"""Passed explicitly: for a dict body the client would otherwise send it as a JSON Patch (its stubs do not
declare `_content_type`, hence the ignores below)."""


class ClusterError(Exception):
    """The API refused or failed a request the capper needs; the message is for the budget's lastError."""


class MetricNotServedError(ClusterError):
    """The custom metrics API has no such value (404): no PDU reports for this rack. A stale value
    (503) is not this: it says the rack's newest reading is too old to act on."""


@dataclass(frozen=True, slots=True)
class NodeTarget:
    name: str
    agent_url: str


@dataclass(frozen=True, slots=True)
class RackReading:
    power_watts: float
    headroom_watts: float
    timestamp_seconds: float


@dataclass(frozen=True, slots=True)
class ReplicaTarget:
    workload: Workload
    resource: str
    """"inferenceservices" or "scaledobjects"."""
    name: str
    max_replicas: int
    min_replicas: int
    configured_max_replicas: int
    """What the owner configured before any clamp (the annotation, else the current max)."""


class Cluster(Protocol):
    async def power_budgets(self) -> list[Mapping[str, Any]]: ...

    async def nodes(self, selector: Selector) -> list[NodeTarget]: ...

    async def workload_pods(self, workload: Workload) -> set[tuple[str, str]]: ...

    async def rack_power(self, budget: str) -> RackReading: ...

    async def patch_status(self, budget: str, status: Mapping[str, Any]) -> None: ...

    async def emit_event(
        self, budget: BudgetSpec, *, reason: str, message: str, warning: bool = False
    ) -> None: ...

    async def replica_target(self, workload: Workload) -> ReplicaTarget: ...

    async def set_max_replicas(self, target: ReplicaTarget, ceiling: int) -> None: ...


def _seconds(stamp: object) -> float:
    if isinstance(stamp, datetime):
        return stamp.timestamp()
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()


def _quantity(text: object) -> float:
    from kubernetes.utils import parse_quantity

    return float(parse_quantity(str(text)))  # type: ignore[no-untyped-call]


LATEST_RACK_POWER = "rack_power_latest_watts"
"""The PDUs' newest readings: a loop that acts every second must not act on a 60 s average."""


def _pod_selector(workload: Workload, deployment: client.V1Deployment) -> str:
    """The Deployment's own `spec.selector`; none (or a malformed one) would list the wrong pods."""
    raw = deployment.spec.selector.to_dict() if deployment.spec and deployment.spec.selector else {}
    try:
        selector = selector_from_object(raw)  # to_dict() spells match_labels/match_expressions: both read
    except SelectorError as exc:
        raise ClusterError(f"pods of {workload.key}: spec.selector.{exc}") from exc
    if selector.empty:
        raise ClusterError(f"pods of {workload.key}: the Deployment has no pod selector")
    return str(selector)


class KubeCluster:
    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        agent_url_template: str,
        identity: str = "wattscale-operator",
    ) -> None:
        self._api_client = api_client
        self._core = client.CoreV1Api(api_client)
        self._apps = client.AppsV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._agent_url_template = agent_url_template
        self._identity = identity

    async def power_budgets(self) -> list[Mapping[str, Any]]:
        try:
            listed = await self._custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        except ApiException as exc:
            raise ClusterError(f"list {PLURAL}.{GROUP}: HTTP {exc.status}") from exc
        return list(listed.get("items") or [])

    async def nodes(self, selector: Selector) -> list[NodeTarget]:
        try:
            listed = await self._core.list_node(label_selector=str(selector))
        except ApiException as exc:
            raise ClusterError(f"list nodes {str(selector)!r}: HTTP {exc.status}") from exc
        targets = []
        for node in listed.items:
            annotations = node.metadata.annotations or {}
            url = annotations.get(AGENT_URL_ANNOTATION)
            if not url:
                addresses = {a.type: a.address for a in (node.status.addresses or [])} if node.status else {}
                url = self._agent_url_template.format(
                    node_name=node.metadata.name, node_ip=addresses.get("InternalIP", node.metadata.name)
                )
            targets.append(NodeTarget(node.metadata.name, url))
        return sorted(targets, key=lambda t: t.name)

    async def rack_nodes(self, selector: Selector) -> list[str]:
        return [node.name for node in await self.nodes(selector)]

    async def nodes_tainted(self, key: str) -> dict[str, str]:
        try:
            listed = await self._core.list_node()
        except ApiException as exc:
            raise ClusterError(f"list nodes: HTTP {exc.status}") from exc
        return {
            node.metadata.name: taint.value or ""
            for node in listed.items
            for taint in (node.spec.taints or [] if node.spec else [])
            if taint.key == key
        }

    async def set_taint(self, node: str, key: str, value: str | None, effect: str) -> None:
        """Read-modify-write with the resourceVersion: a taint the kubelet or another controller added
        meanwhile is never lost (409, retried next period)."""
        try:
            current = await self._core.read_node(node)
            taints = [
                t.to_dict() for t in (current.spec.taints or [] if current.spec else []) if t.key != key
            ]
            if value is not None:
                taints.append({"key": key, "value": value, "effect": effect})
            body = {
                "metadata": {"resourceVersion": current.metadata.resource_version},
                "spec": {"taints": taints},
            }
            await self._core.patch_node(node, body, _content_type=MERGE_PATCH)  # type: ignore[call-arg]
        except ApiException as exc:
            raise ClusterError(f"taint node {node}: HTTP {exc.status}") from exc

    async def workload_pods(self, workload: Workload) -> set[tuple[str, str]]:
        try:
            if workload.kind == "InferenceService":
                selector = f"serving.kserve.io/inferenceservice={workload.name}"
            else:
                deployment = await self._apps.read_namespaced_deployment(workload.name, workload.namespace)
                selector = _pod_selector(workload, deployment)
            pods = await self._core.list_namespaced_pod(workload.namespace, label_selector=selector)
        except ApiException as exc:
            if exc.status == 404:
                return set()
            raise ClusterError(f"pods of {workload.key}: HTTP {exc.status}") from exc
        return {(workload.namespace, pod.metadata.name) for pod in pods.items}

    async def _custom_metric(self, budget: str, metric: str) -> tuple[float, float]:
        path = f"/apis/custom.metrics.k8s.io/v1beta2/{PLURAL}.{GROUP}/{budget}/{metric}"
        try:
            body = await self._api_client.call_api(
                path,
                "GET",
                header_params={"Accept": "application/json"},
                response_types_map={200: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
            )
        except ApiException as exc:
            error = MetricNotServedError if exc.status == 404 else ClusterError
            raise error(f"GET {path}: HTTP {exc.status}") from exc
        items = body.get("items") or []
        if not items:
            raise ClusterError(f"GET {path}: no value")
        return _quantity(items[0]["value"]), _seconds(items[0]["timestamp"])

    async def rack_power(self, budget: str) -> RackReading:
        try:
            power, stamp = await self._custom_metric(budget, LATEST_RACK_POWER)
        except MetricNotServedError:
            # No PDU on this rack: the window average. A PDU gone silent answers 503 (stale), which
            # must not fall back to an average that still holds its older readings, or to the sum of
            # the nodes, which misses what they do not measure: the loop holds on the aging value.
            power, stamp = await self._custom_metric(budget, "rack_power_watts")
        headroom, _ = await self._custom_metric(budget, "rack_power_headroom_watts")
        return RackReading(power_watts=power, headroom_watts=headroom, timestamp_seconds=stamp)

    async def patch_status(self, budget: str, status: Mapping[str, Any]) -> None:
        try:
            await self._custom.patch_cluster_custom_object_status(  # type: ignore[call-arg]
                GROUP, VERSION, PLURAL, budget, {"status": dict(status)}, _content_type=MERGE_PATCH
            )
        except ApiException as exc:
            raise ClusterError(f"patch status of {KIND} {budget}: HTTP {exc.status}") from exc

    async def emit_event(
        self, budget: BudgetSpec, *, reason: str, message: str, warning: bool = False
    ) -> None:
        now = datetime.now(UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{budget.name}.", namespace=EVENT_NAMESPACE),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind=KIND, name=budget.name, uid=budget.uid or None
            ),
            reason=reason,
            message=message,
            type="Warning" if warning else "Normal",
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=client.V1EventSource(component="wattscale-operator"),
            reporting_component="wattscale.io/operator",
            reporting_instance=self._identity,
        )
        try:
            await self._core.create_namespaced_event(EVENT_NAMESPACE, event)
        except ApiException as exc:
            raise ClusterError(f"create event {reason}: HTTP {exc.status}") from exc

    async def replica_target(self, workload: Workload) -> ReplicaTarget:
        if workload.kind == "InferenceService":
            group, version, resource, name = (
                "serving.kserve.io",
                "v1beta1",
                "inferenceservices",
                workload.name,
            )
        elif workload.scaled_object:
            group, version, resource, name = "keda.sh", "v1alpha1", "scaledobjects", workload.scaled_object
        else:
            raise ClusterError(f"{workload.key}: no InferenceService or scaledObject to clamp")
        try:
            obj = await self._custom.get_namespaced_custom_object(
                group, version, workload.namespace, resource, name
            )
        except ApiException as exc:
            raise ClusterError(f"get {resource} {workload.namespace}/{name}: HTTP {exc.status}") from exc
        metadata, spec = obj.get("metadata") or {}, obj.get("spec") or {}
        if resource == "scaledobjects":
            owners = [o.get("kind") for o in metadata.get("ownerReferences") or []]
            if "InferenceService" in owners:
                raise ClusterError(
                    f"scaledobject {workload.namespace}/{name} is owned by KServe, which reverts any edit; "
                    "clamp the InferenceService instead"
                )
            current_max, current_min = (
                int(spec.get("maxReplicaCount", 100)),
                int(spec.get("minReplicaCount", 0)),
            )
        else:
            predictor = spec.get("predictor") or {}
            current_min = int(predictor.get("minReplicas", 1))
            current_max = int(predictor.get("maxReplicas", current_min))
        annotation = (metadata.get("annotations") or {}).get(CONFIGURED_MAX_ANNOTATION)
        configured = int(annotation) if annotation and str(annotation).isdigit() else current_max
        return ReplicaTarget(workload, resource, name, current_max, current_min, configured)

    async def set_max_replicas(self, target: ReplicaTarget, ceiling: int) -> None:
        restoring = ceiling >= target.configured_max_replicas
        annotations = {CONFIGURED_MAX_ANNOTATION: None if restoring else str(target.configured_max_replicas)}
        value = target.configured_max_replicas if restoring else ceiling
        if target.resource == "inferenceservices":
            group, version = "serving.kserve.io", "v1beta1"
            spec: dict[str, Any] = {"predictor": {"maxReplicas": value}}
        else:
            group, version = "keda.sh", "v1alpha1"
            spec = {"maxReplicaCount": value}
        body = {"metadata": {"annotations": annotations}, "spec": spec}
        ns = target.workload.namespace
        try:
            await self._custom.patch_namespaced_custom_object(  # type: ignore[call-arg]
                group, version, ns, target.resource, target.name, body, _content_type=MERGE_PATCH
            )
        except ApiException as exc:
            raise ClusterError(f"patch {target.resource} {ns}/{target.name}: HTTP {exc.status}") from exc


APPLY_PATCH = "application/apply-patch+yaml"


class ObjectError(Exception):
    """The API refused or failed a request on an object; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Applied:
    existed: bool
    changed: bool
    """The object differs from what was there (in dryRun: would differ)."""


@dataclass(frozen=True, slots=True)
class Listed:
    namespace: str
    name: str
    labels: Mapping[str, str]


_PATHS: dict[tuple[str, str], tuple[str, str]] = {
    ("keda.sh/v1alpha1", "ScaledObject"): ("/apis/keda.sh/v1alpha1", "scaledobjects"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"): ("/apis/keda.sh/v1alpha1", "triggerauthentications"),
    ("v1", "ServiceAccount"): ("/api/v1", "serviceaccounts"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"): ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
    ("serving.kserve.io/v1beta1", "InferenceService"): (
        "/apis/serving.kserve.io/v1beta1",
        "inferenceservices",
    ),
}


class KubeObjectClient:
    """Server-side apply, get, delete and list of the namespaced objects the operator owns (scaling.KubeObjects)."""

    def __init__(self, api_client: client.ApiClient, *, field_manager: str) -> None:
        self._api = api_client
        self._field_manager = field_manager

    async def _call(
        self, path: str, method: str, *, query: list[tuple[str, str]] | None = None, body: Any = None
    ) -> Any:
        headers = {"Accept": "application/json"}
        if method == "PATCH":
            headers["Content-Type"] = APPLY_PATCH
        try:
            return await self._api.call_api(
                path,
                method,
                query_params=query or [],
                header_params=headers,
                body=body,
                response_types_map={200: "object", 201: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
            )
        except ApiException as exc:
            if exc.status == 404 and method in ("GET", "DELETE"):
                return None
            raise ObjectError(f"{method} {path}: HTTP {exc.status}: {_reason(exc)}") from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ObjectError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _path(kind: tuple[str, str], namespace: str, name: str) -> str:
        prefix, plural = _PATHS[kind]
        return f"{prefix}/namespaces/{namespace}/{plural}/{name}"

    async def get(self, kind: tuple[str, str], namespace: str, name: str) -> Mapping[str, Any] | None:
        found: Mapping[str, Any] | None = await self._call(self._path(kind, namespace, name), "GET")
        return found

    async def apply(self, obj: Mapping[str, Any], *, dry_run: bool) -> Applied:
        kind = (str(obj["apiVersion"]), str(obj["kind"]))
        metadata = obj["metadata"]
        path = self._path(kind, metadata["namespace"], metadata["name"])
        before = await self._call(path, "GET")
        query = [("fieldManager", self._field_manager), ("force", "true")]
        if dry_run:
            query.append(("dryRun", "All"))
        after = await self._call(path, "PATCH", query=query, body=dict(obj))
        if before is None:
            return Applied(existed=False, changed=True)
        if dry_run:  # nothing was stored, so the resourceVersion cannot tell: compare what we manage
            return Applied(existed=True, changed=_differs(obj, before))
        return Applied(
            existed=True,
            changed=before["metadata"].get("resourceVersion") != after["metadata"].get("resourceVersion"),
        )

    async def delete(self, kind: tuple[str, str], namespace: str, name: str) -> None:
        await self._call(self._path(kind, namespace, name), "DELETE")

    async def list_managed(self, kind: tuple[str, str]) -> list[Listed]:
        from poweroperator.keda import LABEL_MANAGED_BY, MANAGED_BY

        prefix, plural = _PATHS[kind]
        listed = await self._call(
            f"{prefix}/{plural}", "GET", query=[("labelSelector", f"{LABEL_MANAGED_BY}={MANAGED_BY}")]
        )
        if listed is None:  # the kind is not installed (no KEDA): nothing of ours exists
            return []
        return [
            Listed(
                item["metadata"].get("namespace", ""),
                item["metadata"]["name"],
                item["metadata"].get("labels") or {},
            )
            for item in listed.get("items") or []
        ]


def _reason(exc: ApiException) -> str:
    import json

    try:
        return str(json.loads(exc.body or b"").get("message", ""))[:300]
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason or "")


def _differs(desired: object, current: object) -> bool:
    """Whether any field we set differs from the stored object (ignoring fields only others set)."""
    if isinstance(desired, Mapping):
        if not isinstance(current, Mapping):
            return True
        return any(_differs(value, current.get(key)) for key, value in desired.items())
    if isinstance(desired, list):
        return (
            not isinstance(current, list)
            or len(desired) != len(current)
            or any(_differs(d, c) for d, c in zip(desired, current, strict=True))
        )
    return bool(desired != current)
