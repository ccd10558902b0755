"""Samples kept per series, so an estimator pass costs what arrived, not the whole history.

A series is a metric and the label values the estimators read (`LABELS`); it is interned once, when
its first sample arrives. Each metric keeps its samples in a 2-D layout (one row per series, one
slot per sample, left-aligned, in time order, ties in arrival order), grown when a series gets more
samples than it has slots. A batch (one collector's poll) costs a lookup per sample; a pass reads a
`HistoryView` whose per-metric arrays come out of that layout already sorted by (series, time), and
groups series by the labels a rule needs (`HistoryView.block`) from a table of one row per series,
never by factorising or sorting the samples themselves.

Each group of series also gets an integer id in a `KeySpace` (one per set of keys: pods, GPUs,
nodes, ...) shared by every metric, given when the grouping is first built: a pass meets one pod's
figures from several metrics by indexing arrays with those ids, never by joining frames on strings.

Samples live while their batch does: a batch received before `now - keep_seconds` goes, with all its
samples, as in a history of whole batches (the estimators' window rules assume those samples are
still there).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pandas as pd

from estimators.rates import Counters, ResetRule, prepare_counters

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

LABELS = ("node", "gpu_uuid", "namespace", "pod", "rack", "pdu")
"""The label keys any estimator rule groups by; other labels do not tell series apart."""

_INITIAL_SLOTS = 4
_LATEST = float(np.finfo(np.float64).max)


def _label(value: object) -> str | None:
    """A label value as stored: its string, or None where the sample lacks it (NaN in a frame)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    return str(value)


class KeySpace:
    """Integer ids for the label values of one set of keys (a pod is (namespace, pod), a GPU (node,
    gpu_uuid)), shared by every metric of a store: figures of one pod from several metrics meet at
    its id by array indexing, not by joining frames on strings. Ids only grow; the store starts new
    spaces when it forgets series (`SampleStore.evict`), so they stay bounded."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys
        self._index: dict[tuple[str, ...], int] = {}
        self._labels: list[tuple[str, ...]] = []
        self._columns: tuple[int, list[npt.NDArray[np.object_]]] = (-1, [])
        self._projections: dict[tuple[str, ...], IntArray] = {}
        self._rank: IntArray = np.zeros(0, np.int64)

    @property
    def size(self) -> int:
        return len(self._labels)

    def ids(self, rows: Iterable[tuple[str, ...]]) -> IntArray:
        """The id of each row of label values, interning new ones."""
        index, labels = self._index, self._labels
        out = []
        for row in rows:
            found = index.get(row)
            if found is None:
                found = index[row] = len(labels)
                labels.append(row)
            out.append(found)
        return np.asarray(out, dtype=np.int64)

    def columns(self, ids: IntArray) -> dict[str, npt.NDArray[np.object_]]:
        """The label values of `ids`, one object array per key."""
        if self._columns[0] != self.size:
            table = np.empty((self.size, len(self.keys)), dtype=object)
            for row, labels in enumerate(self._labels):
                table[row] = labels
            self._columns = (self.size, [table[:, i] for i in range(len(self.keys))])
        return {key: column[ids] for key, column in zip(self.keys, self._columns[1], strict=True)}

    def project(self, target: KeySpace) -> IntArray:
        """Per id of this space, the id in `target` (whose keys are some of these) of its labels."""
        found = self._projections.get(target.keys, np.zeros(0, np.int64))
        if found.size < self.size:
            positions = [self.keys.index(key) for key in target.keys]
            new = target.ids(tuple(row[p] for p in positions) for row in self._labels[found.size :])
            found = self._projections[target.keys] = np.concatenate((found, new))
        return found

    def sorted(self, ids: IntArray) -> IntArray:
        """`ids` in order of their label values (as a frame sorted by the keys orders them)."""
        if self._rank.size != self.size:
            order = sorted(range(self.size), key=self._labels.__getitem__)
            self._rank = np.empty(self.size, np.int64)
            self._rank[order] = np.arange(self.size)
        sorted_ids: IntArray = ids[np.argsort(self._rank[ids], kind="stable")]
        return sorted_ids


@dataclass
class _MetricSeries:
    """One metric's series: labels per series and the 2-D sample layout."""

    labels: list[tuple[str | None, ...]] = field(default_factory=list)
    times: FloatArray = field(default_factory=lambda: np.full((0, _INITIAL_SLOTS), np.inf))
    values: FloatArray = field(default_factory=lambda: np.full((0, _INITIAL_SLOTS), np.nan))
    received: FloatArray = field(default_factory=lambda: np.full((0, _INITIAL_SLOTS), np.inf))
    counts: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    newest: float = -np.inf  # no sample is later (eviction may leave it later than any)
    _label_columns: dict[str, npt.NDArray[np.object_]] | None = None
    _groupings: dict[
        tuple[tuple[str, ...], tuple[tuple[str, str], ...]],
        tuple[int, KeySpace, IntArray, pd.DataFrame, bool, IntArray],
    ] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.labels)

    def label_columns(self) -> dict[str, npt.NDArray[np.object_]]:
        """Per label key, one object array over the series (None where a series lacks the label)."""
        if self._label_columns is None or len(next(iter(self._label_columns.values()))) != self.size:
            table = np.empty((self.size, len(LABELS)), dtype=object)
            for row, labels in enumerate(self.labels):
                table[row] = labels
            self._label_columns = {key: table[:, i] for i, key in enumerate(LABELS)}
        return self._label_columns

    def _reserve(self, series: int, slots: int) -> None:
        rows, have = self.times.shape
        if series <= rows and slots <= have:
            return
        # Each dimension doubles only when it is the one that ran out: more samples per series must
        # not make room for more series, or the layout grows by the product of both.
        new_rows = rows if series <= rows else max(series, 2 * rows, 8)
        new_slots = have if slots <= have else max(slots, 2 * have)
        for name, pad in (("times", np.inf), ("values", np.nan), ("received", np.inf)):
            old = getattr(self, name)
            grown = np.full((new_rows, new_slots), pad)
            grown[: old.shape[0], : old.shape[1]] = old
            setattr(self, name, grown)
        self.counts = np.concatenate((self.counts, np.zeros(new_rows - self.counts.size, dtype=np.int64)))

    def append(self, series: IntArray, times: FloatArray, values: FloatArray, received: float) -> None:
        """Samples of this metric in arrival order; each lands after its series' samples, and a series
        that got an older sample than it had is re-sorted (ties keep arrival order)."""
        if series.size == 0:
            return
        order = np.argsort(series, kind="stable")
        series, times, values = series[order], times[order], values[order]
        first = np.ones(series.size, dtype=bool)
        first[1:] = series[1:] != series[:-1]
        starts = np.flatnonzero(first)
        rank = np.arange(series.size) - np.repeat(starts, np.diff(np.append(starts, series.size)))
        self._reserve(self.size, 0)
        had = self.counts[series]
        slot = had + rank
        self._reserve(self.size, int(slot.max()) + 1)
        before = np.where(had > 0, self.times[series, np.maximum(had - 1, 0)], -np.inf)
        before[1:] = np.where(first[1:], before[1:], times[:-1])  # within the batch: the sample before
        resort = np.unique(series[times < before])
        self.times[series, slot] = times
        self.values[series, slot] = values
        self.received[series, slot] = received
        np.add.at(self.counts, series, 1)
        self.newest = max(self.newest, float(times.max()))
        if resort.size:
            by_time = np.argsort(self.times[resort], axis=1, kind="stable")
            for name in ("times", "values", "received"):
                array = getattr(self, name)
                array[resort] = np.take_along_axis(array[resort], by_time, axis=1)

    def samples_until(self, now_seconds: float) -> _Samples:
        """The samples up to `now_seconds`, sorted by (series, time)."""
        counts = self.counts[: self.size]
        if self.newest <= now_seconds and counts.size and (counts == counts[0]).all():
            # Every sample is in, each series has as many: the first slots of each row, in order.
            held = int(counts[0])
            times = self.times[: self.size, :held]
            newest = times[:, held - 1] if held else np.full(self.size, -np.inf)
            series = np.repeat(np.arange(self.size, dtype=np.int64), held)
            # Copies (flatten), so later polls written into the layout never change a view.
            values = self.values[: self.size, :held].flatten()
            return _Samples(self, series, times.flatten(), values, newest.copy())
        mask = self.times[: self.size] <= min(now_seconds, _LATEST)  # empty slots hold +inf
        series = np.nonzero(mask)[0].astype(np.int64)
        times = self.times[: self.size][mask]
        last = np.append(series[1:] != series[:-1], True)[: series.size]  # each series' last sample
        newest = np.full(self.size, -np.inf)
        newest[series[last]] = times[last]
        return _Samples(self, series, times, self.values[: self.size][mask], newest)

    def evict(self, oldest_received: float) -> None:
        """Drop the samples of batches received before `oldest_received`; the rest move left."""
        stale = self.received < oldest_received
        if not stale.any():
            return
        keep = np.isfinite(self.times) & ~stale
        order = np.argsort(~keep, axis=1, kind="stable")
        self.counts = keep.sum(axis=1)
        unused = np.arange(keep.shape[1]) >= self.counts[:, None]
        for name, pad in (("times", np.inf), ("values", np.nan), ("received", np.inf)):
            moved = np.take_along_axis(getattr(self, name), order, axis=1)
            moved[unused] = pad
            setattr(self, name, moved)

    def keep_series(self, keep: BoolArray) -> None:
        """Keep only the series marked in `keep` (one flag per series), renumbered in order."""
        rows = np.flatnonzero(keep)
        self.labels = [self.labels[row] for row in rows]
        for name in ("times", "values", "received"):
            setattr(self, name, getattr(self, name)[rows])
        self.counts = self.counts[rows]
        self._label_columns = None
        self._groupings.clear()

    def grouping(
        self, keys: tuple[str, ...], fill: Mapping[str, str], space: KeySpace
    ) -> tuple[IntArray, pd.DataFrame, bool, IntArray]:
        """Each series' group by `keys` (-1 where it lacks one), the groups' labels, whether every
        group is one series, and each group's id in `space`. Numbered by first series, so with one
        series per group the numbers rise with the series'. Cached until a series is added."""
        cache_key = (keys, tuple(sorted(fill.items())))
        found = self._groupings.get(cache_key)
        if found is not None and found[0] == self.size and found[1] is space:
            return found[2], found[3], found[4], found[5]
        columns = self.label_columns()
        combined = np.zeros(self.size, dtype=np.int64)
        missing = np.zeros(self.size, dtype=bool)
        filled: dict[str, npt.NDArray[np.object_]] = {}
        for key in keys:
            column = columns[key]
            if key in fill:
                column = np.where(pd.isna(column), fill[key], column)
            filled[key] = column
            key_codes, uniques = pd.factorize(column)
            missing |= key_codes < 0
            combined = pd.factorize(combined * (len(uniques) + 1) + key_codes)[0].astype(np.int64)
        valid = np.flatnonzero(~missing)
        codes, groups = pd.factorize(combined[valid])
        group = np.full(self.size, -1, dtype=np.int64)
        group[valid] = codes
        _, first = np.unique(codes, return_index=True)
        labels = pd.DataFrame({key: filled[key][valid[first]] for key in keys}, dtype=object)
        injective = len(groups) == valid.size
        ids = space.ids(zip(*(labels[key].to_numpy(object) for key in keys), strict=True))
        self._groupings[cache_key] = (self.size, space, group, labels, injective, ids)
        return group, labels, injective, ids


class SampleStore:
    """Every metric's series and samples (module docstring). Pure data: no clock, no I/O."""

    def __init__(self) -> None:
        self._metrics: dict[str, _MetricSeries] = {}
        self._series: dict[tuple[str, tuple[str | None, ...]], int] = {}
        self._spaces: dict[tuple[str, ...], KeySpace] = {}

    def add_rows(
        self, rows: Iterable[tuple[str, float, float, Mapping[str, str]]], received_seconds: float
    ) -> None:
        """One batch of (metric, value, timestamp_seconds, labels) rows, received at `received_seconds`."""
        batches: dict[str, tuple[list[int], list[float], list[float]]] = {}
        for metric, value, at, labels in rows:
            key = tuple(labels.get(name) for name in LABELS)
            found = self._series.get((metric, key))
            if found is None:
                labelled = tuple(_label(v) for v in key)
                found = self._series.get((metric, labelled))
                found = self._intern(metric, labelled) if found is None else found
            ids, times, values = batches.setdefault(metric, ([], [], []))
            ids.append(found)
            times.append(at)
            values.append(value)
        for metric, (ids, times, values) in batches.items():
            self._append(
                metric,
                np.asarray(ids, np.int64),
                np.asarray(times, float),
                np.asarray(values, float),
                received_seconds,
            )

    def add_frame(self, samples: pd.DataFrame, received_seconds: float = -np.inf) -> None:
        """A long sample frame (columns metric, value, timestamp_seconds and label columns) as one batch."""
        if samples.empty:
            return
        present = [key for key in LABELS if key in samples.columns]
        keys = samples[["metric", *present]].astype(object)
        codes = keys.groupby(list(keys.columns), sort=False, dropna=False).ngroup().to_numpy(np.int64)
        _, first = np.unique(codes, return_index=True)
        ids = np.empty(first.size, dtype=np.int64)
        for code, row in enumerate(keys.iloc[first].itertuples(index=False)):
            named = dict(zip(present, row[1:], strict=True))
            labels = tuple(_label(named.get(key)) for key in LABELS)
            metric = str(row[0])
            found = self._series.get((metric, labels))
            ids[code] = self._intern(metric, labels) if found is None else found
        series = ids[codes]
        metrics = keys["metric"].astype(str).to_numpy(object)
        times = samples["timestamp_seconds"].to_numpy(np.float64)
        values = samples["value"].to_numpy(np.float64)
        for name in pd.unique(metrics):
            rows = metrics == name
            self._append(str(name), series[rows], times[rows], values[rows], received_seconds)

    def _intern(self, metric: str, labels: tuple[str | None, ...]) -> int:
        store = self._metrics.setdefault(metric, _MetricSeries())
        store.labels.append(labels)
        self._series[(metric, labels)] = store.size - 1
        return store.size - 1

    def _append(
        self, metric: str, series: IntArray, times: FloatArray, values: FloatArray, received: float
    ) -> None:
        known = np.isfinite(times)  # a sample without a time is never inside any window
        self._metrics[metric].append(series[known], times[known], values[known], received)

    def evict(self, oldest_received_seconds: float) -> None:
        """Drop the batches received before `oldest_received_seconds`. A metric whose series are now
        mostly without samples forgets those (pods come and go: the tables must not grow forever)."""
        for metric, store in self._metrics.items():
            store.evict(oldest_received_seconds)
            held = store.counts[: store.size] > 0
            if 2 * int((~held).sum()) > store.size:
                for labels, kept in zip(store.labels, held, strict=True):
                    if not kept:
                        del self._series[(metric, labels)]
                store.keep_series(held)
                self._spaces = {}  # forgotten series' labels go with their ids; views keep the old
                for number, labels in enumerate(store.labels):
                    self._series[(metric, labels)] = number

    @property
    def nbytes(self) -> int:
        """Bytes the kept samples' arrays take, free slots included."""
        return sum(m.times.nbytes + m.values.nbytes + m.received.nbytes for m in self._metrics.values())

    def label_pairs(self, first: str, second: str) -> list[tuple[str, str]]:
        """Distinct (`first`, `second`) label values of the series that hold samples, in the order the
        series arrived (metric by metric)."""
        pairs: dict[tuple[str, str], None] = {}
        for store in self._metrics.values():
            columns = store.label_columns()
            held = store.counts[: store.size] > 0
            for a, b in zip(columns[first][held], columns[second][held], strict=True):
                if a is not None and b is not None:
                    pairs.setdefault((a, b))
        return list(pairs)

    def view(self, now_seconds: float) -> HistoryView:
        """The samples up to `now_seconds`, per metric, sorted by (series, time)."""
        metrics: dict[str, _Samples] = {}
        for metric, store in self._metrics.items():
            metrics[metric] = store.samples_until(now_seconds)
        return HistoryView(metrics, self._spaces)

    @classmethod
    def from_frame(cls, samples: pd.DataFrame) -> SampleStore:
        store = cls()
        store.add_frame(samples)
        return store


@dataclass(frozen=True)
class _Samples:
    store: _MetricSeries
    series: IntArray
    times: FloatArray
    values: FloatArray
    newest: FloatArray  # per series, its newest time (-inf: none)


@dataclass(frozen=True)
class Block:
    """One metric's samples grouped by some label keys: `labels` has one row per group (its key
    values; RangeIndex = group number), and `group`, `times`, `values` are per sample, sorted by
    (group, time), ties in arrival order. Groups may have no samples."""

    labels: pd.DataFrame
    group: IntArray
    times: FloatArray
    values: FloatArray
    space: KeySpace
    ids: IntArray  # each group's id in `space`
    _counters: dict[ResetRule, Counters] = field(default_factory=dict, compare=False, repr=False)

    @property
    def empty(self) -> bool:
        return self.group.size == 0

    def where(self, keep: BoolArray) -> Block:
        return Block(self.labels, self.group[keep], self.times[keep], self.values[keep], self.space, self.ids)

    def counters(self, on_reset: ResetRule) -> Counters:
        """The samples as counters (`estimators.rates.prepare_counters`), prepared once per block."""
        found = self._counters.get(on_reset)
        if found is None:
            found = self._counters[on_reset] = prepare_counters(
                self.group, self.times, self.values, on_reset=on_reset
            )
        return found

    def since(self, start_seconds: float) -> Block:
        return self.where(self.times >= start_seconds)

    def firsts(self) -> BoolArray:
        first = np.ones(self.group.size, dtype=bool)
        first[1:] = self.group[1:] != self.group[:-1]
        return first

    def present(self) -> tuple[IntArray, IntArray]:
        """(groups that have samples, index of each one's first sample)."""
        starts = np.flatnonzero(self.firsts())
        return self.group[starts], starts

    def newest(self) -> tuple[IntArray, FloatArray]:
        """(groups that have samples, each one's newest sample time)."""
        groups, starts = self.present()
        return groups, self.times[self.ends(starts)]

    def ends(self, starts: IntArray) -> IntArray:
        """Index of each group's last sample, given where each starts (`present`)."""
        return np.append(starts[1:], self.group.size)[: starts.size] - 1


@dataclass(frozen=True)
class HistoryView:
    """Every metric's samples up to a pass's `now` (`SampleStore.view`), grouped on demand."""

    metrics: dict[str, _Samples]
    spaces: dict[tuple[str, ...], KeySpace]
    _blocks: dict[tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]], Block] = field(
        default_factory=dict
    )

    def block(self, metric: str, keys: Sequence[str], fill: Mapping[str, str] | None = None) -> Block:
        """`metric`'s samples grouped by `keys`, leaving out series without one of them (after `fill`
        gives absent labels a value). Built once per view."""
        cache_key = (metric, tuple(keys), tuple(sorted((fill or {}).items())))
        found = self._blocks.get(cache_key)
        if found is None:
            found = self._blocks[cache_key] = self._block(metric, keys, fill)
        return found

    def space(self, keys: Sequence[str]) -> KeySpace:
        """The ids of `keys`' label values, shared by every metric (`KeySpace`)."""
        found = self.spaces.get(tuple(keys))
        if found is None:
            found = self.spaces[tuple(keys)] = KeySpace(tuple(keys))
        return found

    def _block(self, metric: str, keys: Sequence[str], fill: Mapping[str, str] | None) -> Block:
        samples = self.metrics.get(metric)
        space = self.space(keys)
        if samples is None:
            empty = pd.DataFrame({key: pd.Series(dtype=object) for key in keys})
            none = np.zeros(0, np.int64)
            return Block(empty, none, np.zeros(0), np.zeros(0), space, none)
        group_of_series, labels, injective, ids = samples.store.grouping(tuple(keys), fill or {}, space)
        group, times, values = group_of_series[samples.series], samples.times, samples.values
        keep = group >= 0
        if not keep.all():  # copies only where some series lack a key
            group, times, values = group[keep], times[keep], values[keep]
        if not injective:  # several series per group: merge them by time, ties in arrival order
            order = np.lexsort((times, group))
            group, times, values = group[order], times[order], values[order]
        return Block(labels, group, times, values, space, ids)

    def intern(self, keys: Sequence[str]) -> None:
        """Give the labels of every metric's series that has all of `keys` an id in `space(keys)`."""
        space = self.space(keys)
        for samples in self.metrics.values():
            samples.store.grouping(tuple(keys), {}, space)

    def newest_ids(self, keys: Sequence[str], start_seconds: float) -> tuple[IntArray, FloatArray]:
        """Per metric and series with all of `keys` and a sample at or after `start_seconds`: the id of
        its `keys` labels (`space(keys)`) and its newest sample's time; metric by metric, series by
        series."""
        space = self.space(keys)
        ids, times = [np.zeros(0, np.int64)], [np.zeros(0)]
        for samples in self.metrics.values():
            recent = np.flatnonzero(samples.newest >= start_seconds)
            if recent.size == 0:
                continue
            group_of_series, _, _, group_ids = samples.store.grouping(tuple(keys), {}, space)
            group = group_of_series[recent]
            ids.append(group_ids[group[group >= 0]])
            times.append(samples.newest[recent][group >= 0])
        return np.concatenate(ids), np.concatenate(times)

    def frame(self, metrics: Sequence[str], start_seconds: float) -> pd.DataFrame:
        """The long sample frame (metric, value, timestamp_seconds, `LABELS`) of `metrics`' samples at or
        after `start_seconds`, series by series."""
        frames = [pd.DataFrame(columns=["metric", "value", "timestamp_seconds", *LABELS])]
        for metric in metrics:
            samples = self.metrics.get(metric)
            if samples is None:
                continue
            recent = samples.times >= start_seconds
            series = samples.series[recent]
            columns = samples.store.label_columns()
            frames.append(
                pd.DataFrame(
                    {
                        "metric": metric,
                        "value": samples.values[recent],
                        "timestamp_seconds": samples.times[recent],
                        **{key: columns[key][series] for key in LABELS},
                    }
                )
            )
        return pd.concat(frames, ignore_index=True)
