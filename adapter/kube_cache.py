"""Informer-style caches of the objects the API resolves selectors against: list once, then watch.

One reflector per resource keeps a dict of `KubeObject`s current. A watch that ends is resumed from
the last resourceVersion; a 410 Gone relists. A resource whose API is not installed (no KServe, no
PowerBudget CRD) counts as synced and empty, and is looked for again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from adapter.catalogue import DEPLOYMENTS, INFERENCE_SERVICES, NODES, PODS, POWER_BUDGET_GROUP, POWER_BUDGETS
from adapter.objects import KubeObject
from adapter.selectors import selector_from_object

log = logging.getLogger(__name__)

ListFunction = Callable[..., Awaitable[Any]]
RETRY_SECONDS = 5.0
ABSENT_API_RETRY_SECONDS = 60.0
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


@dataclass(frozen=True, slots=True)
class ResourceSource:
    resource: str
    list_function: Callable[[client.ApiClient], ListFunction]
    optional: bool = False
    """An API that may not be installed (CRDs of KServe and of wattscale itself)."""


def default_sources() -> list[ResourceSource]:
    def custom(group: str, version: str, plural: str) -> Callable[[client.ApiClient], ListFunction]:
        def bind(api: client.ApiClient) -> ListFunction:
            objects = client.CustomObjectsApi(api)

            async def list_objects(**kwargs: Any) -> Any:
                return await objects.list_cluster_custom_object(group, version, plural, **kwargs)

            return list_objects

        return bind

    return [
        ResourceSource(PODS, lambda api: client.CoreV1Api(api).list_pod_for_all_namespaces),
        ResourceSource(NODES, lambda api: client.CoreV1Api(api).list_node),
        ResourceSource(DEPLOYMENTS, lambda api: client.AppsV1Api(api).list_deployment_for_all_namespaces),
        ResourceSource(INFERENCE_SERVICES, custom("serving.kserve.io", "v1beta1", "inferenceservices"), True),
        ResourceSource(POWER_BUDGETS, custom(POWER_BUDGET_GROUP, "v1alpha1", "powerbudgets"), True),
    ]


class Reflector:
    def __init__(self, source: ResourceSource, api: client.ApiClient) -> None:
        self.source = source
        self._api = api
        self._list = source.list_function(api)
        self.objects: dict[tuple[str, str], KubeObject] = {}
        self.synced = asyncio.Event()
        self.changes = 0

    def _raw(self, item: Any) -> dict[str, Any]:
        if isinstance(item, dict):
            return item
        serialised: dict[str, Any] = self._api.sanitize_for_serialization(item)
        return serialised

    async def _relist(self) -> str:
        response = await self._list()
        raw = self._raw(response)
        objects: dict[tuple[str, str], KubeObject] = {}
        for item in raw.get("items") or []:
            obj = to_kube_object(self.source.resource, item)
            objects[(obj.namespace, obj.name)] = obj
        # One assignment: the pipeline's thread reads these objects and must never see half a list.
        self.objects = objects
        self.changes += 1
        self.synced.set()
        return str((raw.get("metadata") or {}).get("resourceVersion") or "")

    def _apply(self, event_type: str, item: Any) -> str:
        raw = self._raw(item)
        obj = to_kube_object(self.source.resource, raw)
        self.changes += 1
        if event_type == "DELETED":
            self.objects.pop((obj.namespace, obj.name), None)
        elif event_type in ("ADDED", "MODIFIED"):
            self.objects[(obj.namespace, obj.name)] = obj
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
                        if event["type"] == "ERROR":
                            resource_version = ""  # 410 Gone and friends: list again
                            break
                        resource_version = self._apply(event["type"], event["object"]) or resource_version
            except asyncio.CancelledError:
                raise
            except ApiException as exc:
                resource_version = ""
                if exc.status == 404 and self.source.optional:
                    if self.objects:  # the API went away (a CRD deleted): answers built on it are void
                        self.objects = {}
                        self.changes += 1
                    self.synced.set()
                    await asyncio.sleep(ABSENT_API_RETRY_SECONDS)
                    continue
                if exc.status == 410:
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
    """An `ObjectIndex` kept current by watches."""

    def __init__(self, api: client.ApiClient, sources: Sequence[ResourceSource] | None = None) -> None:
        self._reflectors = {s.resource: Reflector(s, api) for s in (sources or default_sources())}
        self._tasks: list[asyncio.Task[None]] = []

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

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(reflector.run(), name=f"cache:{resource}")
            for resource, reflector in self._reflectors.items()
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
