"""One pass's values as columns, and how they travel to the server: the worker's side of the store.

A pass holds tens of thousands of values (four per pod). Built as one `StoredValue` each, then
regrouped for the wire, they cost more than the estimator that computed them. Here the pipeline
builds them as they are sent: per (resource, namespace, metric), the objects' names and numpy
arrays of values, timestamps and windows (`ValueGroup`). A `ValueTable` of those groups is still a
`Mapping[Key, StoredValue]` (a value is built when one is read), for the in-process store and tests.

Only the worker imports this module (numpy stays out of the serving process).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from adapter.store import Columns, GroupKey, Key, LabelSet, Layout, ObjectRef, StoredValue

FloatArray = npt.NDArray[np.float64]
LabelIds = npt.NDArray[np.uint32]

NO_LABELS: Mapping[str, str] = {}
"""Shared by every value without labels (read-only, as every `StoredValue.labels`)."""


@dataclass(frozen=True, slots=True)
class ValueGroup:
    """The values of one (resource, namespace, metric): one per object of `names`, in that order."""

    names: tuple[str, ...]
    values: FloatArray
    timestamps: FloatArray
    windows: FloatArray
    label_sets: tuple[Mapping[str, str], ...]
    label_ids: LabelIds
    """Per value: its labels, as an index into `label_sets`."""

    def at(self, i: int) -> StoredValue:
        return StoredValue(
            float(self.values[i]),
            float(self.timestamps[i]),
            float(self.windows[i]),
            self.label_sets[self.label_ids[i]],
        )

    def rows(self, rows: npt.NDArray[np.intp]) -> ValueGroup:
        """The values at positions `rows`, in that order."""
        return ValueGroup(
            tuple(self.names[i] for i in rows.tolist()),
            self.values[rows],
            self.timestamps[rows],
            self.windows[rows],
            self.label_sets,
            self.label_ids[rows],
        )

    def joined(self, other: ValueGroup) -> ValueGroup:
        """This group's values followed by `other`'s (whose names are not among this group's)."""
        return ValueGroup(
            self.names + other.names,
            np.concatenate((self.values, other.values)),
            np.concatenate((self.timestamps, other.timestamps)),
            np.concatenate((self.windows, other.windows)),
            self.label_sets + other.label_sets,
            np.concatenate((self.label_ids, other.label_ids + len(self.label_sets)), dtype=np.uint32),
        )


def value_group(
    names: Iterable[str],
    values: npt.ArrayLike,
    timestamps: npt.ArrayLike,
    windows: npt.ArrayLike,
    label_sets: tuple[Mapping[str, str], ...] = (NO_LABELS,),
    label_ids: npt.ArrayLike = 0,
) -> ValueGroup:
    """A group from columns; a scalar timestamp, window or label id is every value's."""
    named = tuple(names)
    return ValueGroup(
        named,
        _column(values, len(named), np.float64),
        _column(timestamps, len(named), np.float64),
        _column(windows, len(named), np.float64),
        label_sets,
        _column(label_ids, len(named), np.uint32),
    )


def _column(values: npt.ArrayLike, length: int, dtype: type[np.generic]) -> npt.NDArray[Any]:
    column = np.asarray(values, dtype=dtype)
    return column if column.ndim else np.full(length, column, dtype=dtype)


class ValueTable(Mapping[Key, StoredValue]):
    """A whole pass: `ValueGroup`s by (resource, namespace, metric)."""

    __slots__ = ("_positions", "groups")

    def __init__(self, groups: Mapping[GroupKey, ValueGroup]) -> None:
        self.groups: Mapping[GroupKey, ValueGroup] = groups
        self._positions: dict[GroupKey, dict[str, int]] = {}

    @classmethod
    def of(cls, values: Mapping[Key, StoredValue]) -> ValueTable:
        """A table of any mapping of values (a whole pass as the store takes it)."""
        if isinstance(values, ValueTable):
            return values
        grouped: dict[GroupKey, dict[str, StoredValue]] = {}
        for (ref, metric), value in values.items():
            grouped.setdefault((ref.resource, ref.namespace, metric), {})[ref.name] = value
        return cls({key: _group_of_values(members) for key, members in grouped.items()})

    def _position(self, key: GroupKey, name: str) -> int | None:
        positions = self._positions.get(key)
        if positions is None:
            group = self.groups.get(key)
            if group is None:
                return None
            positions = self._positions[key] = {name: i for i, name in enumerate(group.names)}
        return positions.get(name)

    def __getitem__(self, key: Key) -> StoredValue:
        ref, metric = key
        group_key = (ref.resource, ref.namespace, metric)
        i = self._position(group_key, ref.name)
        if i is None:
            raise KeyError(key)
        return self.groups[group_key].at(i)

    def __iter__(self) -> Iterator[Key]:
        for (resource, namespace, metric), group in self.groups.items():
            for name in group.names:
                yield ObjectRef(resource, namespace, name), metric

    def __len__(self) -> int:
        return sum(len(group.names) for group in self.groups.values())

    def refs(self, metric: str) -> set[ObjectRef]:
        """The objects that have a value of `metric`."""
        return {
            ObjectRef(resource, namespace, name)
            for (resource, namespace, group_metric), group in self.groups.items()
            if group_metric == metric
            for name in group.names
        }

    def joined(self, groups: Mapping[GroupKey, ValueGroup]) -> ValueTable:
        """This table and the values of `groups` (of objects it has no value for)."""
        joined = dict(self.groups)
        for key, group in groups.items():
            mine = joined.get(key)
            joined[key] = group if mine is None else mine.joined(group)
        return ValueTable(joined)

    def with_retained(self, previous: ValueTable, since_seconds: float) -> ValueTable:
        """This table, plus the values of `previous` that it lacks and that are from `since_seconds`
        on (a value whose inputs stopped arriving stays, growing older, until it is forgotten)."""
        kept: dict[GroupKey, ValueGroup] = {}
        for key, old in previous.groups.items():
            group = self.groups.get(key)
            if group is not None and group.names == old.names:
                continue  # the usual pass: the same objects again
            present = frozenset(group.names) if group is not None else frozenset()
            timestamps = old.timestamps.tolist()
            rows = [
                i
                for i, name in enumerate(old.names)
                if name not in present and timestamps[i] >= since_seconds
            ]
            if rows:
                kept[key] = old.rows(np.asarray(rows, dtype=np.intp))
        return self.joined(kept) if kept else self


def _group_of_values(members: Mapping[str, StoredValue]) -> ValueGroup:
    label_sets = tuple(value.labels for value in members.values())
    return value_group(
        members.keys(),
        [value.value for value in members.values()],
        [value.timestamp_seconds for value in members.values()],
        [value.window_seconds for value in members.values()],
        label_sets,
        np.arange(len(label_sets)),
    )


# --------------------------------------------------------------------------------------------------
# How a pass travels to the server (`adapter.store` for the server's side).


class ColumnEncoder:
    """The worker's side: a pass's values as columns, with a new layout only when objects change."""

    def __init__(self) -> None:
        self._layout: Layout | None = None
        self._label_ids: dict[LabelSet, int] = {}

    def _label_id(self, labels: Mapping[str, str]) -> int:
        key = tuple(labels.items())
        found = self._label_ids.get(key)
        if found is None:
            found = self._label_ids[key] = len(self._label_ids)
        return found

    def _global_label_ids(self, group: ValueGroup, known: dict[int, LabelIds]) -> LabelIds:
        """Each value's label set as an id of the layout's; `known`: the ids of the label sets met in
        this pass so far (by identity: groups share them, such as one per rack)."""
        ids = known.get(id(group.label_sets))
        if ids is None:
            ids = np.fromiter((self._label_id(labels) for labels in group.label_sets), dtype=np.uint32)
            known[id(group.label_sets)] = ids
        return ids[group.label_ids]

    def encode(self, values: Mapping[Key, StoredValue]) -> tuple[Layout | None, Columns]:
        """The columns of `values`, and the layout to send first when it is new (else None)."""
        table = ValueTable.of(values)
        label_count = len(self._label_ids)
        previous = self._layout
        arranged = _in_layout(previous, table) if previous is not None else None
        objects_changed = arranged is None
        if arranged is None:
            arranged = list(table.groups.values())
        known: dict[int, LabelIds] = {}
        labels = [self._global_label_ids(group, known) for group in arranged]
        new_layout = None
        if previous is None or objects_changed or len(self._label_ids) != label_count:
            groups = (
                previous.groups
                if previous is not None and not objects_changed
                else tuple((key, group.names) for key, group in table.groups.items())
            )
            new_layout = Layout((previous.layout_id + 1) if previous else 1, groups, tuple(self._label_ids))
            self._layout = new_layout
        assert self._layout is not None
        return new_layout, Columns(
            self._layout.layout_id,
            _joined_bytes([group.values for group in arranged], "d"),
            _joined_bytes([group.timestamps for group in arranged], "d"),
            _joined_bytes([group.windows for group in arranged], "d"),
            _joined_bytes(labels, "I"),
        )


def _joined_bytes(columns: list[npt.NDArray[np.float64]] | list[LabelIds], typecode: str) -> bytes:
    if not columns:
        return array(typecode).tobytes()
    return np.concatenate(columns).tobytes()


def _in_layout(layout: Layout, table: ValueTable) -> list[ValueGroup] | None:
    """The table's groups in the layout's order (objects too), or None when the objects differ."""
    if len(layout.groups) != len(table.groups):
        return None
    arranged: list[ValueGroup] = []
    for key, names in layout.groups:
        group = table.groups.get(key)
        if group is None or len(group.names) != len(names):
            return None
        if group.names != names:
            positions = {name: i for i, name in enumerate(group.names)}
            rows = [positions.get(name) for name in names]
            if len(positions) != len(names) or None in rows:
                return None
            group = group.rows(np.asarray(rows, dtype=np.intp))
        arranged.append(group)
    return arranged
