"""Cached answers never outlive what they were made from: the store, the object index, or freshness."""

from __future__ import annotations

from typing import Any

import pytest
from api_fixtures import NOW, SAMPLE_TIME

from adapter.catalogue import PODS
from adapter.errors import MetricNotFoundError, StaleMetricError
from adapter.objects import KubeObject, ObjectIndex, StaticObjectIndex
from adapter.provider import StoreProvider
from adapter.query import parse_custom
from adapter.store import MetricStore, ObjectRef, StoredValue


class FakeChangingIndex:
    """An index whose objects a test replaces, bumping the version as a watch event would."""

    def __init__(self, objects: list[KubeObject]) -> None:
        self._index = StaticObjectIndex(objects)
        self._version = 0

    def replace(self, objects: list[KubeObject]) -> None:
        self._index = StaticObjectIndex(objects)
        self._version += 1

    def synced(self) -> bool:
        return True

    def version(self) -> int:
        return self._version

    def objects(self, resource: str, namespace: str | None) -> list[KubeObject]:
        return list(self._index.objects(resource, namespace))


def _pod(name: str, app: str) -> KubeObject:
    return KubeObject(PODS, "llm", name, {"app": app})


def _names(items: list[Any]) -> list[str]:
    """Object names of rendered items (text) or of a parsed list's items."""
    import json

    return [
        (json.loads(item) if isinstance(item, str) else item)["describedObject"]["name"] for item in items
    ]


@pytest.fixture
def clock() -> list[float]:
    return [NOW]


def _setup(clock: list[float]) -> tuple[MetricStore, FakeChangingIndex, StoreProvider]:
    store = MetricStore(max_age_seconds=60.0, clock=lambda: clock[0])
    store.put_all(
        {
            (ObjectRef(PODS, "llm", "a"), "watts_per_token"): StoredValue(1.0, SAMPLE_TIME, 30.0),
            (ObjectRef(PODS, "llm", "b"), "watts_per_token"): StoredValue(2.0, SAMPLE_TIME - 30.0, 30.0),
        }
    )
    index = FakeChangingIndex([_pod("a", "x"), _pod("b", "x")])
    index_protocol: ObjectIndex = index
    return store, index, StoreProvider(store, index_protocol, clock=lambda: clock[0])


QUERY = parse_custom(
    "v1beta2", ["namespaces", "llm", "pods", "*", "watts_per_token"], {"labelSelector": "app=x"}
)


def test_answer_follows_a_new_store_snapshot(clock: list[float]) -> None:
    store, _, provider = _setup(clock)
    assert _names(provider.custom_items(QUERY)) == ["a", "b"]
    store.put_all({(ObjectRef(PODS, "llm", "a"), "watts_per_token"): StoredValue(3.0, NOW, 30.0)})
    assert _names(provider.custom_items(QUERY)) == ["a"]
    assert '"value":"3"' in provider.custom_items(QUERY)[0]


def test_answer_follows_label_changes(clock: list[float]) -> None:
    _, index, provider = _setup(clock)
    assert _names(provider.custom_items(QUERY)) == ["a", "b"]
    index.replace([_pod("a", "x"), _pod("b", "y")])
    assert _names(provider.custom_items(QUERY)) == ["a"]


def test_cached_answer_drops_an_item_that_went_stale(clock: list[float]) -> None:
    _, _, provider = _setup(clock)
    assert _names(provider.custom_items(QUERY)) == ["a", "b"]
    clock[0] = SAMPLE_TIME - 30.0 + 61.0  # b is now 61 s old, a 31 s
    assert _names(provider.custom_items(QUERY)) == ["a"]
    clock[0] = SAMPLE_TIME + 61.0
    with pytest.raises(StaleMetricError):
        provider.custom_items(QUERY)


def test_each_query_names_its_own_metric_selector(clock: list[float]) -> None:
    # The item text fixed per object is reused across passes: one rendered for a query with a metric
    # selector must not answer the same object's query without one, nor the other way round.
    import json

    _, _, provider = _setup(clock)
    plain = parse_custom("v1beta2", ["namespaces", "llm", "pods", "a", "watts_per_token"], {})
    selected = parse_custom(
        "v1beta2", ["namespaces", "llm", "pods", "a", "watts_per_token"], {"metricLabelSelector": "!method"}
    )
    assert json.loads(provider.custom_items(plain)[0])["metric"]["selector"] is None
    assert json.loads(provider.custom_items(selected)[0])["metric"]["selector"] == {
        "matchExpressions": [{"key": "method", "operator": "DoesNotExist"}]
    }
    assert json.loads(provider.custom_items(plain)[0])["metric"]["selector"] is None


def test_encoded_list_follows_a_new_snapshot_and_staleness(clock: list[float]) -> None:
    import json

    store, _, provider = _setup(clock)
    assert _names(json.loads(provider.custom_list(QUERY))["items"]) == ["a", "b"]
    clock[0] = SAMPLE_TIME - 30.0 + 61.0  # b went stale within the same snapshot
    assert _names(json.loads(provider.custom_list(QUERY))["items"]) == ["a"]
    store.put_all({(ObjectRef(PODS, "llm", "b"), "watts_per_token"): StoredValue(3.0, clock[0], 30.0)})
    listed = json.loads(provider.custom_list(QUERY))
    assert listed["kind"] == "MetricValueList"
    assert [(item["describedObject"]["name"], item["value"]) for item in listed["items"]] == [("b", "3")]


def test_answer_follows_one_relabelled_pod_of_a_mirrored_index(clock: list[float]) -> None:
    # Only the objects a delta replaced are matched again; the others keep their verdicts.
    from adapter.kube_cache import IndexDelta, MirrorIndex

    store, _, _ = _setup(clock)
    index = MirrorIndex()
    index.apply(IndexDelta((_pod("a", "x"), _pod("b", "y")), (), synced=True, full=True))
    provider = StoreProvider(store, index, clock=lambda: clock[0])
    assert _names(provider.custom_items(QUERY)) == ["a"]
    index.apply(IndexDelta((_pod("b", "x"),), (), synced=True))
    assert _names(provider.custom_items(QUERY)) == ["a", "b"]
    index.apply(IndexDelta((_pod("a", "y"),), (), synced=True))
    assert _names(provider.custom_items(QUERY)) == ["b"]
    index.apply(IndexDelta((), ((PODS, "llm", "b"),), synced=True))
    with pytest.raises(MetricNotFoundError):
        provider.custom_items(QUERY)
