"""A pass as columns (`ValueTable`): it keeps what the pipeline kept of the previous pass, and the
server reads from the encoded columns exactly the values of the table."""

from __future__ import annotations

import numpy as np

from adapter.catalogue import DEPLOYMENTS, PODS
from adapter.store import GroupKey, Key, MetricStore, ObjectRef, ServedLayout, StoredValue
from adapter.value_table import ColumnEncoder, ValueTable

NOW = 1_000.0
GROUPS: list[GroupKey] = [
    (PODS, "llm", "power_watts"),
    (PODS, "batch", "power_watts"),
    (PODS, "llm", "watts_per_token"),
    (DEPLOYMENTS, "llm", "power_watts"),
]


def random_pass(rng: np.random.Generator, objects: int) -> dict[Key, StoredValue]:
    """Values of some of `objects` objects per group, some of them old, some labelled."""
    values: dict[Key, StoredValue] = {}
    for resource, namespace, metric in GROUPS:
        for i in rng.permutation(objects)[: rng.integers(0, objects + 1)]:
            labels = (
                {"method": str(rng.choice(["energy_counter", "power_gauge"]))} if rng.random() < 0.5 else {}
            )
            values[(ObjectRef(resource, namespace, f"obj-{i}"), metric)] = StoredValue(
                float(rng.integers(0, 500)), NOW - float(rng.choice([0.0, 100.0, 900.0])), 60.0, labels
            )
    return values


def test_a_pass_keeps_the_previous_values_it_lacks_until_they_are_too_old() -> None:
    rng = np.random.default_rng(1)
    for _ in range(30):
        previous, current = random_pass(rng, 12), random_pass(rng, 12)
        since = NOW - 500.0
        expected = current | {
            key: value
            for key, value in previous.items()
            if key not in current and value.timestamp_seconds >= since
        }
        found = ValueTable.of(current).with_retained(ValueTable.of(previous), since_seconds=since)
        assert dict(found) == expected
        assert list(found) == _grouped(expected)  # each group's new objects after its own


def _grouped(values: dict[Key, StoredValue]) -> list[Key]:
    """The keys of `values`, group by group (in order of each group's first key)."""
    groups: dict[GroupKey, list[Key]] = {}
    for key in values:
        groups.setdefault((key[0].resource, key[0].namespace, key[1]), []).append(key)
    return [key for keys in groups.values() for key in keys]


def test_the_server_reads_every_value_of_the_table_and_a_new_layout_only_for_new_objects() -> None:
    rng = np.random.default_rng(2)
    encoder, store = ColumnEncoder(), MetricStore(max_age_seconds=10_000.0, clock=lambda: NOW)
    first = random_pass(rng, 30)
    layout, columns = encoder.encode(ValueTable.of(first))
    assert layout is not None
    served = ServedLayout(layout)
    store.put_columns(served, columns)
    assert {key: store.snapshot().lookup(*key) for key in first} == first
    # The same objects in another order, with new numbers and labels already seen: numbers only.
    keys = list(first)
    shuffled = [(keys[i], first[keys[i]]) for i in rng.permutation(len(keys))]
    again = {
        key: StoredValue(value.value + 1.0, value.timestamp_seconds, value.window_seconds, value.labels)
        for key, value in shuffled
    }
    unchanged, columns = encoder.encode(ValueTable.of(again))
    assert unchanged is None
    store.put_columns(served, columns)
    assert {key: store.snapshot().lookup(*key) for key in again} == again
    # A label set never sent before: a new layout, which carries it.
    pod = next(key for key in again if key[0].resource == PODS)
    again[pod] = StoredValue(7.0, NOW, 60.0, {"method": "power_model", "confidence": "low"})
    relabelled, columns = encoder.encode(ValueTable.of(again))
    assert relabelled is not None and relabelled.layout_id == layout.layout_id + 1
    store.put_columns(ServedLayout(relabelled), columns)
    assert {key: store.snapshot().lookup(*key) for key in again} == again
