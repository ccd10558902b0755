"""What the API knows about Kubernetes objects: names, labels, selectors, replicas.

The API resolves `labelSelector` against an `ObjectIndex`, never by listing from the API server per
request. In a cluster the index is `adapter.kube_cache.KubeObjectCache` (watches); the demo uses a
`StaticObjectIndex` of its simulated fleet; with neither, `StoreObjectIndex` knows the objects the
store has values for, without labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from collectors.base import PodEndpoint, PodTargets
from collectors.label_selectors import Selector


@dataclass(frozen=True, slots=True)
class KubeObject:
    resource: str
    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    pod_selector: Selector | None = None
    """Deployments: `spec.selector`; the pods whose metrics the workload's are made of."""
    replicas: int | None = None
    node: str | None = None
    """Pods: `spec.nodeName`."""
    spec: Mapping[str, Any] = field(default_factory=dict)
    """PowerBudgets: the whole spec (cap, node selector, margin), for the racks they define."""


class ObjectIndex(Protocol):
    def synced(self) -> bool: ...

    def version(self) -> int:
        """Changes whenever any object or label changes, so answers derived from the index can be cached."""
        ...

    def objects(self, resource: str, namespace: str | None) -> Sequence[KubeObject]: ...


@runtime_checkable
class PodDirectory(Protocol):
    """An index that also knows where the cluster's running pods are, for collectors that find their
    exporters among them (`collectors.base.DiscoversPods`). Kept beside the index, never in it: a pod's
    IP and ports matter to scraping only, so their changes neither reach the server nor start a pass."""

    def pod_targets(self) -> PodTargets | None:
        """The running pods, read afresh at every call; None when there is no cluster to look in."""
        ...


class StaticObjectIndex:
    """A fixed set of objects (the demo's fleet, and unit tests), and optionally of running pods."""

    def __init__(self, objects: Iterable[KubeObject], pods: Sequence[PodEndpoint] | None = None) -> None:
        self._by_scope: dict[tuple[str, str | None], list[KubeObject]] = {}
        for obj in objects:
            self._by_scope.setdefault((obj.resource, obj.namespace), []).append(obj)
            self._by_scope.setdefault((obj.resource, None), []).append(obj)
        self._pods = pods

    def pod_targets(self) -> PodTargets | None:
        pods = self._pods
        return None if pods is None else lambda: pods

    def synced(self) -> bool:
        return True

    def version(self) -> int:
        return 0

    def objects(self, resource: str, namespace: str | None) -> Sequence[KubeObject]:
        return self._by_scope.get((resource, namespace), [])


class _NamesSource(Protocol):
    @property
    def generation(self) -> int: ...

    def objects(self, resource: str, namespace: str | None) -> Iterable[str]: ...


class StoreObjectIndex:
    """No cluster and no fleet: the objects are those the store has values for, with no labels."""

    def __init__(self, store: _NamesSource) -> None:
        self._store = store

    def synced(self) -> bool:
        return True

    def version(self) -> int:
        return self._store.generation

    def objects(self, resource: str, namespace: str | None) -> Sequence[KubeObject]:
        return [
            KubeObject(resource, namespace or "", name)
            for name in sorted(self._store.objects(resource, namespace))
        ]
