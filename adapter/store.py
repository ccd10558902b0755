"""The in-memory store of the latest derived values.

The pipeline computes a whole new snapshot and swaps it in with one assignment, so a reader (the API,
the capper) always sees one consistent pass and never waits on a lock. Nothing here queries a source.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from adapter.errors import MetricNotFoundError, NotReadyError, StaleMetricError
from adapter.quantity import format_quantity


@dataclass(frozen=True, slots=True)
class ObjectRef:
    resource: str
    """Group-resource as the URL names it: "pods", "nodes", "deployments.apps"."""
    namespace: str
    """"" for cluster-scoped objects."""
    name: str


@dataclass(frozen=True, slots=True)
class StoredValue:
    value: float
    timestamp_seconds: float
    """Time of the newest sample the value was derived from (not the time of the request)."""
    window_seconds: float
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def quantity(self) -> str:
        return format_quantity(self.value)

    @property
    def timestamp_rfc3339(self) -> str:
        return datetime.fromtimestamp(int(self.timestamp_seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


Key = tuple[ObjectRef, str]


@dataclass(frozen=True, slots=True)
class Snapshot:
    values: Mapping[Key, StoredValue]
    generation: int
    by_metric: Mapping[tuple[str, str, str], Mapping[str, StoredValue]]
    """(resource, namespace, metric) -> name -> value: the wildcard queries' index."""


def _index(values: Mapping[Key, StoredValue]) -> dict[tuple[str, str, str], dict[str, StoredValue]]:
    index: dict[tuple[str, str, str], dict[str, StoredValue]] = defaultdict(dict)
    for (ref, metric), value in values.items():
        index[(ref.resource, ref.namespace, metric)][ref.name] = value
    return dict(index)


class MetricStore:
    def __init__(self, *, max_age_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._snapshot: Snapshot | None = None

    @property
    def ready(self) -> bool:
        return self._snapshot is not None

    @property
    def generation(self) -> int:
        return self._snapshot.generation if self._snapshot else 0

    def put_all(self, values: Mapping[Key, StoredValue]) -> None:
        """Replace everything with one new pass of the pipeline."""
        frozen = dict(values)
        self._snapshot = Snapshot(frozen, self.generation + 1, _index(frozen))

    def snapshot(self) -> Snapshot:
        if self._snapshot is None:
            raise NotReadyError("no metrics estimated yet: the first pipeline pass has not finished")
        return self._snapshot

    def is_fresh(self, value: StoredValue, now_seconds: float | None = None) -> bool:
        now = self._clock() if now_seconds is None else now_seconds
        return now - value.timestamp_seconds <= self.max_age_seconds

    def get(self, ref: ObjectRef, metric: str, *, now_seconds: float | None = None) -> StoredValue:
        value = self.snapshot().values.get((ref, metric))
        if value is None:
            raise MetricNotFoundError.for_object(ref.resource, metric, ref.name)
        if not self.is_fresh(value, now_seconds):
            age = (self._clock() if now_seconds is None else now_seconds) - value.timestamp_seconds
            raise StaleMetricError(
                f"the metric {metric} for {ref.resource} {ref.name} is stale: last sample {age:.0f}s ago, "
                f"max age {self.max_age_seconds:.0f}s"
            )
        return value

    def values_of(self, resource: str, namespace: str, metric: str) -> Mapping[str, StoredValue]:
        """Every object's value of one metric (fresh or not) in one namespace, by object name."""
        return self.snapshot().by_metric.get((resource, namespace, metric), {})

    def objects(self, resource: str, namespace: str | None) -> Iterable[str]:
        if self._snapshot is None:
            return []
        return {
            ref.name
            for ref, _ in self._snapshot.values
            if ref.resource == resource and (namespace is None or ref.namespace == namespace)
        }
