"""Informer-style caches of the objects the API resolves selectors against: list once, then watch.

One reflector per resource keeps a dict of `KubeObject`s current. A watch that ends is resumed from
the last resourceVersion; a 410 Gone relists. A resource whose API is not installed (no KServe, no
PowerBudget CRD) counts as synced and empty, and is looked for again later.

The cache runs in the worker process (estimation needs pods, nodes, Deployments and PowerBudgets):
lists and watch events are read as plain JSON into `KubeObject`s, never through the client's typed
models, which cost about 300 us per pod. What changed since the last report travels to the server as
an `IndexDelta`; the server's `MirrorIndex` applies it, so a relist of 10,000 pods costs the API's
event loop only the objects that differ.

Beside each pod's `KubeObject` the pods' reflector keeps, for running pods, a `PodEndpoint` (IP,
named container ports, `prometheus.io/*` annotations) for the collectors that discover their
exporters. It stays in the worker: the server never needs it, and an IP or phase change is no change
to the index (no delta, no estimator pass).

Every reader of these dicts (the pipeline's passes, the collectors' polls, `take_delta`) runs on the
worker's one event loop, as do the watches that change them: a watch event is never applied while a
reader iterates. Anything that reads them from another thread must copy them on the loop first.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from adapter.catalogue import DEPLOYMENTS, INFERENCE_SERVICES, NODES, PODS, POWER_BUDGET_GROUP, POWER_BUDGETS
from adapter.objects import KubeObject, ObjectIndex
from adapter.supervise import Supervisor
from collectors.base import PodEndpoint, PodTargets
from collectors.discovery import ANNOTATION_PREFIX
from collectors.label_selectors import selector_from_object

log = logging.getLogger(__name__)

ListFunction = Callable[..., Awaitable[Any]]
RETRY_SECONDS = 5.0
# An optional API that is absent (the PowerBudget CRD installed after the adapter) is looked for again this
# often: a budget then names its rack within seconds, for one cheap 404 per interval meanwhile.
ABSENT_API_RETRY_SECONDS = 10.0
WATCH_TIMEOUT_SECONDS = 300


def _metadata(raw: Mapping[str, Any]) -> tuple[str, str, dict[str, str]]:
    metadata = raw.get("metadata") or {}
    return (
        str(metadata.get("namespace") or ""),
        str(metadata.get("name") or ""),
        dict(metadata.get("labels") or {}),
    )


def to_kube_object(resource: str, raw: Mapping[str, Any]) -> KubeObject:
    namespace, name, labels = _metadata(raw)
    spec = raw.get("spec") or {}
    if resource == PODS:
        return KubeObject(resource, namespace, name, labels, node=spec.get("nodeName"))
    if resource == DEPLOYMENTS:
        return KubeObject(
            resource,
            namespace,
            name,
            labels,
            pod_selector=selector_from_object(spec.get("selector")),
            replicas=spec.get("replicas"),
        )
    if resource == POWER_BUDGETS:
        return KubeObject(resource, "", name, labels, spec=dict(spec))
    return KubeObject(resource, namespace, name, labels)


def to_pod_endpoint(raw: Mapping[str, Any], pod: KubeObject) -> PodEndpoint | None:
    """Where a running pod can be scraped (`pod` is the same object as a `KubeObject`); None while it
    has no IP or is not Running (pending, or finished: its containers are gone). Readiness is not
    asked: a model server still loading is already drawing power and often already serving
    `/metrics`, and a target that does not answer is only left out of its collector's poll."""
    status = raw.get("status") or {}
    ip = status.get("podIP")
    if status.get("phase") != "Running" or not ip:
        return None
    annotations = (raw.get("metadata") or {}).get("annotations") or {}
    ports: dict[str, int] = {}
    for container in (raw.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            name, number = port.get("name"), port.get("containerPort")
            if name and isinstance(number, int):
                ports.setdefault(str(name), number)
    return PodEndpoint(
        namespace=pod.namespace,
        name=pod.name,
        ip=str(ip),
        node=pod.node or "",
        labels=pod.labels,
        # Only what discovery reads: other annotations (last-applied-configuration...) can be large.
        annotations={str(k): str(v) for k, v in annotations.items() if str(k).startswith(ANNOTATION_PREFIX)},
        ports=ports,
    )


@dataclass(frozen=True, slots=True)
class ResourceSource:
    resource: str
    list_function: Callable[[client.ApiClient], ListFunction]
    optional: bool = False
    """An API that may not be installed (CRDs of KServe and of wattscale itself)."""


def _raw(list_function: ListFunction) -> ListFunction:
    """The list call without the client's typed models: the watch sees no `:return:` docstring and
    hands events over as dicts; a plain list asks for the undecoded response."""

    async def list_raw(**kwargs: Any) -> Any:
        kwargs.setdefault("_preload_content", False)
        return await list_function(**kwargs)

    return list_raw


def default_sources() -> list[ResourceSource]:
    def custom(group: str, version: str, plural: str) -> Callable[[client.ApiClient], ListFunction]:
        def bind(api: client.ApiClient) -> ListFunction:
            objects = client.CustomObjectsApi(api)

            async def list_objects(**kwargs: Any) -> Any:
                return await objects.list_cluster_custom_object(group, version, plural, **kwargs)

            return _raw(list_objects)

        return bind

    return [
        ResourceSource(PODS, lambda api: _raw(client.CoreV1Api(api).list_pod_for_all_namespaces)),
        ResourceSource(NODES, lambda api: _raw(client.CoreV1Api(api).list_node)),
        ResourceSource(
            DEPLOYMENTS, lambda api: _raw(client.AppsV1Api(api).list_deployment_for_all_namespaces)
        ),
        ResourceSource(INFERENCE_SERVICES, custom("serving.kserve.io", "v1beta1", "inferenceservices"), True),
        ResourceSource(POWER_BUDGETS, custom(POWER_BUDGET_GROUP, "v1alpha1", "powerbudgets"), True),
    ]


async def _json(response: Any) -> dict[str, Any]:
    """A list answer: the undecoded response of a real client, or already a dict (tests' fakes)."""
    if isinstance(response, dict):
        return response
    try:
        raw = await response.read()
    finally:
        response.release()
    # Undecoded, the client does not turn an error status into an exception: do it here, so a
    # missing CRD (404) and a Gone (410) are handled like those of the typed call.
    if response.status >= 400:
        raise ApiException(status=response.status, reason=raw[:200].decode(errors="replace"))
    body: dict[str, Any] = json.loads(raw)
    return body


ObjectKey = tuple[str, str, str]
"""(resource, namespace, name)"""


@dataclass(frozen=True, slots=True)
class IndexDelta:
    """Objects changed since the last delta: what the worker sends the server's `MirrorIndex`."""

    upserts: tuple[KubeObject, ...]
    deletes: tuple[ObjectKey, ...]
    synced: bool
    full: bool = False
    """The whole index: the receiver drops every object not in `upserts` (a new worker's first delta)."""


class Reflector:
    def __init__(self, source: ResourceSource, api: client.ApiClient, changed: set[ObjectKey]) -> None:
        self.source = source
        self._list = source.list_function(api)
        self.objects: dict[tuple[str, str], KubeObject] = {}
        self.endpoints: dict[tuple[str, str], PodEndpoint] = {}
        """Pods only: the running ones, for discovery (see the module docstring)."""
        self._keeps_endpoints = source.resource == PODS
        self.synced = asyncio.Event()
        self.changes = 0
        self._changed = changed
        """Shared by the cache's reflectors: keys changed since the cache's last delta."""

    def _replace(
        self, objects: dict[tuple[str, str], KubeObject], endpoints: dict[tuple[str, str], PodEndpoint]
    ) -> None:
        self.endpoints = endpoints
        old = self.objects
        resource = self.source.resource
        differ = [key for key in old.keys() | objects.keys() if old.get(key) != objects.get(key)]
        self._changed.update((resource, namespace, name) for namespace, name in differ)
        # One assignment: readers must never see half a list.
        self.objects = objects
        if differ:
            self.changes += 1

    async def _relist(self) -> str:
        raw = await _json(await self._list())
        objects: dict[tuple[str, str], KubeObject] = {}
        endpoints: dict[tuple[str, str], PodEndpoint] = {}
        for item in raw.get("items") or []:
            obj = to_kube_object(self.source.resource, item)
            objects[(obj.namespace, obj.name)] = obj
            endpoint = to_pod_endpoint(item, obj) if self._keeps_endpoints else None
            if endpoint is not None:
                endpoints[(obj.namespace, obj.name)] = endpoint
        self._replace(objects, endpoints)
        self.synced.set()
        return str((raw.get("metadata") or {}).get("resourceVersion") or "")

    def _apply(self, event_type: str, raw: Mapping[str, Any]) -> str:
        obj = to_kube_object(self.source.resource, raw)
        key = (obj.namespace, obj.name)
        if event_type == "DELETED":
            self.objects.pop(key, None)
            self.endpoints.pop(key, None)
        elif event_type in ("ADDED", "MODIFIED"):
            endpoint = to_pod_endpoint(raw, obj) if self._keeps_endpoints else None
            if endpoint is None:
                self.endpoints.pop(key, None)
            else:
                self.endpoints[key] = endpoint
            if self.objects.get(key) == obj:  # a status-only update: nothing we keep changed
                return str((raw.get("metadata") or {}).get("resourceVersion") or "")
            self.objects[key] = obj
        else:
            return ""
        self.changes += 1
        self._changed.add((self.source.resource, obj.namespace, obj.name))
        return str((raw.get("metadata") or {}).get("resourceVersion") or "")

    async def run(self) -> None:
        resource_version = ""
        while True:
            try:
                if not resource_version:
                    resource_version = await self._relist()
                async with watch.Watch() as stream:
                    async for event in stream.stream(
                        self._list, resource_version=resource_version, timeout_seconds=WATCH_TIMEOUT_SECONDS
                    ):
                        resource_version = self._apply(event["type"], event["raw_object"]) or resource_version
            except asyncio.CancelledError:
                raise
            except ApiException as exc:
                resource_version = ""
                if exc.status == 404 and self.source.optional:
                    self._replace({}, {})
                    self.synced.set()
                    await asyncio.sleep(ABSENT_API_RETRY_SECONDS)
                    continue
                if exc.status == 410:  # Gone: the watch is too old; list again
                    continue
                log.warning(
                    "cache.list_failed", extra={"resource": self.source.resource, "status": exc.status}
                )
                await asyncio.sleep(RETRY_SECONDS)
            except Exception as exc:  # network trouble: keep serving the last known objects, retry
                resource_version = ""
                log.warning(
                    "cache.watch_failed", extra={"resource": self.source.resource, "error": repr(exc)}
                )
                await asyncio.sleep(RETRY_SECONDS)


class KubeObjectCache:
    """An `ObjectIndex` kept current by watches, each kept running by a `Supervisor`."""

    def __init__(self, api: client.ApiClient, sources: Sequence[ResourceSource] | None = None) -> None:
        self._changed: set[ObjectKey] = set()
        self._reflectors = {
            s.resource: Reflector(s, api, self._changed) for s in (sources or default_sources())
        }
        self._sent_full = False

    def synced(self) -> bool:
        return all(reflector.synced.is_set() for reflector in self._reflectors.values())

    def version(self) -> int:
        return sum(reflector.changes for reflector in self._reflectors.values())

    def objects(self, resource: str, namespace: str | None) -> Sequence[KubeObject]:
        reflector = self._reflectors.get(resource)
        if reflector is None:
            return []
        values = list(reflector.objects.values())
        return values if namespace is None else [obj for obj in values if obj.namespace == namespace]

    def pod_targets(self) -> PodTargets | None:
        """The running pods (IP, named ports) for discovery; None when pods are not watched."""
        reflector = self._reflectors.get(PODS)
        if reflector is None:
            return None
        return lambda: list(reflector.endpoints.values())

    def start(self, supervisor: Supervisor) -> None:
        for resource, reflector in self._reflectors.items():
            supervisor.start(f"cache:{resource}", reflector.run)

    def take_delta(self) -> IndexDelta | None:
        """What changed since the last call (everything, the first time); None when nothing did."""
        if not self._sent_full:
            if not self.synced():
                return None
            self._sent_full = True
            self._changed.clear()
            everything = tuple(o for r in self._reflectors.values() for o in r.objects.values())
            return IndexDelta(everything, (), synced=True, full=True)
        if not self._changed:
            return None
        upserts: list[KubeObject] = []
        deletes: list[ObjectKey] = []
        for resource, namespace, name in self._changed:
            obj = self._reflectors[resource].objects.get((namespace, name))
            if obj is None:
                deletes.append((resource, namespace, name))
            else:
                upserts.append(obj)
        self._changed.clear()
        return IndexDelta(tuple(upserts), tuple(deletes), synced=True)


class MirrorIndex:
    """The server's copy of the worker's object cache, kept by `IndexDelta`s; lists built once per change."""

    def __init__(self) -> None:
        self._by_scope: dict[tuple[str, str], dict[str, KubeObject]] = {}
        self._lists: dict[tuple[str, str | None], list[KubeObject]] = {}
        self._synced = False
        self._version = 0

    def synced(self) -> bool:
        return self._synced

    def version(self) -> int:
        return self._version

    def objects(self, resource: str, namespace: str | None) -> Sequence[KubeObject]:
        key = (resource, namespace)
        found = self._lists.get(key)
        if found is None:
            if namespace is not None:
                found = list(self._by_scope.get((resource, namespace), {}).values())
            else:
                found = [o for (r, _), objs in self._by_scope.items() if r == resource for o in objs.values()]
            self._lists[key] = found
        return found

    @staticmethod
    def scopes(objects: Iterable[KubeObject]) -> dict[tuple[str, str], dict[str, KubeObject]]:
        """A whole index, built where it may take a while (the server's receiving thread)."""
        by_scope: dict[tuple[str, str], dict[str, KubeObject]] = {}
        for obj in objects:
            by_scope.setdefault((obj.resource, obj.namespace), {})[obj.name] = obj
        return by_scope

    def apply(
        self, delta: IndexDelta, scopes: dict[tuple[str, str], dict[str, KubeObject]] | None = None
    ) -> None:
        """Apply `delta`; for a full one, `scopes(delta.upserts)` if already built elsewhere."""
        if delta.full:
            self._by_scope = scopes if scopes is not None else self.scopes(delta.upserts)
        else:
            for obj in delta.upserts:
                self._by_scope.setdefault((obj.resource, obj.namespace), {})[obj.name] = obj
        for resource, namespace, name in delta.deletes:
            self._by_scope.get((resource, namespace), {}).pop(name, None)
        self._lists = {}
        self._synced = self._synced or delta.synced
        self._version += 1


@dataclass(frozen=True, slots=True)
class KubeIndexSource:
    """The worker's object index from the cluster: `kubeconfig`, or in-cluster config when None."""

    kubeconfig: Path | None

    def serving_index(self, store: object) -> ObjectIndex:
        return MirrorIndex()

    async def open(self, supervisor: Supervisor) -> KubeObjectCache:
        if self.kubeconfig is not None:
            await config.load_kube_config(config_file=str(self.kubeconfig))
        else:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        api = client.ApiClient()
        cache = KubeObjectCache(api)
        cache.start(supervisor)
        return cache
