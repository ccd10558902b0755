"""The in-memory store of the latest derived values.

The pipeline computes a whole new snapshot and swaps it in with one assignment, so a reader (the API,
the capper) always sees one consistent pass and never waits on a lock. Nothing here queries a source.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
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
        return _rfc3339(int(self.timestamp_seconds))


@functools.lru_cache(maxsize=1024)
def _rfc3339(seconds: int) -> str:
    """Cached: the values of one pass share a handful of timestamps, and a large answer renders each
    of them hundreds of times."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


Key = tuple[ObjectRef, str]


GroupKey = tuple[str, str, str]
"""(resource, namespace, metric): the wildcard queries' unit."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    values: Mapping[Key, StoredValue]
    generation: int
    by_metric: Mapping[GroupKey, Mapping[str, StoredValue]]
    """(resource, namespace, metric) -> name -> value: the wildcard queries' index."""

    def lookup(self, ref: ObjectRef, metric: str) -> StoredValue | None:
        return self.values.get((ref, metric))

    def group(self, key: GroupKey) -> Mapping[str, StoredValue]:
        return self.by_metric.get(key, {})

    def groups(self) -> Iterable[tuple[GroupKey, Mapping[str, StoredValue]]]:
        return self.by_metric.items()

    def names(self, resource: str, namespace: str | None) -> set[str]:
        return {
            ref.name
            for ref, _ in self.values
            if ref.resource == resource and (namespace is None or ref.namespace == namespace)
        }


def _index(values: Mapping[Key, StoredValue]) -> dict[GroupKey, dict[str, StoredValue]]:
    index: dict[GroupKey, dict[str, StoredValue]] = defaultdict(dict)
    for (ref, metric), value in values.items():
        index[(ref.resource, ref.namespace, metric)][ref.name] = value
    return dict(index)


# --------------------------------------------------------------------------------------------------
# Columns: how a whole pass travels from the worker process to the server.
#
# Pickling a dict of 40,000 `StoredValue`s takes about a second each way; the server would hold the
# GIL that long on every pass. Instead the worker sends the object names once (a `Layout`, again only
# when the set of objects changes) and each pass as four flat arrays in the layout's order, which
# unpickle as a memory copy. The server builds a `StoredValue` only when a request reads one. The
# worker's side, `ColumnEncoder`, is in `adapter.value_table`.


LabelSet = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Layout:
    layout_id: int
    groups: tuple[tuple[GroupKey, tuple[str, ...]], ...]
    labels: tuple[LabelSet, ...]


@dataclass(frozen=True, slots=True)
class Columns:
    layout_id: int
    values: bytes
    """float64 each, in the layout's order; likewise `timestamps` and `windows`."""
    timestamps: bytes
    windows: bytes
    labels: bytes
    """uint32 index into the layout's label sets, one per value."""


class ServedLayout:
    """The server's side of a layout: where each object's value sits in the columns."""

    def __init__(self, layout: Layout) -> None:
        self.layout_id = layout.layout_id
        self.labels: tuple[Mapping[str, str], ...] = tuple(dict(pairs) for pairs in layout.labels)
        self.groups: dict[GroupKey, tuple[int, dict[str, int]]] = {}
        offset = 0
        for key, names in layout.groups:
            self.groups[key] = (offset, {name: offset + i for i, name in enumerate(names)})
            offset += len(names)


class _Group(Mapping[str, StoredValue]):
    __slots__ = ("_columns", "_positions")

    def __init__(self, columns: ColumnSnapshot, positions: Mapping[str, int]) -> None:
        self._columns = columns
        self._positions = positions

    def __getitem__(self, name: str) -> StoredValue:
        return self._columns.at(self._positions[name])

    def get(self, name: str, default: StoredValue | None = None) -> StoredValue | None:  # type: ignore[override]
        # Mapping.get goes through __getitem__ and a KeyError: this is the per-object lookup of a
        # wildcard query, made once per matching object.
        i = self._positions.get(name)
        return default if i is None else self._columns.at(i)

    def __iter__(self) -> Iterator[str]:
        return iter(self._positions)

    def __len__(self) -> int:
        return len(self._positions)


class ColumnSnapshot:
    """A pass received as columns: looked up in place, a `StoredValue` built per read."""

    def __init__(self, layout: ServedLayout, columns: Columns, generation: int) -> None:
        if columns.layout_id != layout.layout_id:
            raise ValueError(f"columns of layout {columns.layout_id}, expected {layout.layout_id}")
        self.generation = generation
        self._layout = layout
        self._values = memoryview(columns.values).cast("d")
        self._timestamps = memoryview(columns.timestamps).cast("d")
        self._windows = memoryview(columns.windows).cast("d")
        self._labels = memoryview(columns.labels).cast("I")

    def at(self, i: int) -> StoredValue:
        return StoredValue(
            self._values[i], self._timestamps[i], self._windows[i], self._layout.labels[self._labels[i]]
        )

    def lookup(self, ref: ObjectRef, metric: str) -> StoredValue | None:
        group = self._layout.groups.get((ref.resource, ref.namespace, metric))
        if group is None:
            return None
        i = group[1].get(ref.name)
        return None if i is None else self.at(i)

    def group(self, key: GroupKey) -> Mapping[str, StoredValue]:
        group = self._layout.groups.get(key)
        return {} if group is None else _Group(self, group[1])

    def groups(self) -> Iterable[tuple[GroupKey, Mapping[str, StoredValue]]]:
        return ((key, _Group(self, positions)) for key, (_, positions) in self._layout.groups.items())

    def names(self, resource: str, namespace: str | None) -> set[str]:
        found: set[str] = set()
        for (group_resource, group_namespace, _), (_, positions) in self._layout.groups.items():
            if group_resource == resource and (namespace is None or group_namespace == namespace):
                found.update(positions)
        return found


class MetricStore:
    def __init__(self, *, max_age_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._snapshot: Snapshot | ColumnSnapshot | None = None

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

    def put_columns(self, layout: ServedLayout, columns: Columns) -> None:
        """Replace everything with one pass received from the worker process."""
        self._snapshot = ColumnSnapshot(layout, columns, self.generation + 1)

    def snapshot(self) -> Snapshot | ColumnSnapshot:
        if self._snapshot is None:
            raise NotReadyError("no metrics estimated yet: the first pipeline pass has not finished")
        return self._snapshot

    def is_fresh(self, value: StoredValue, now_seconds: float | None = None) -> bool:
        now = self._clock() if now_seconds is None else now_seconds
        return now - value.timestamp_seconds <= self.max_age_seconds

    def get(self, ref: ObjectRef, metric: str, *, now_seconds: float | None = None) -> StoredValue:
        value = self.snapshot().lookup(ref, metric)
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
        return self.snapshot().group((resource, namespace, metric))

    def objects(self, resource: str, namespace: str | None) -> Iterable[str]:
        if self._snapshot is None:
            return []
        return self._snapshot.names(resource, namespace)
