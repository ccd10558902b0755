"""The provider: answers parsed queries from the metric store and the object index.

Like custom-metrics-apiserver's `CustomMetricsProvider`, it never sees a request; the API layer
parses, authorizes and renders around it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import cast

from adapter import wire
from adapter.catalogue import (
    CATALOGUE,
    CLUSTER_SCOPED,
    DEPLOYMENTS,
    INFERENCE_SERVICES,
    METRICS_BY_NAME,
    NAMESPACES,
    POWER_BUDGETS,
)
from adapter.errors import MetricNotFoundError, StaleMetricError
from adapter.objects import KubeObject, ObjectIndex
from adapter.query import CustomQuery, ExternalQuery
from adapter.store import MetricStore, ObjectRef, StoredValue
from collectors.label_selectors import Selector

MAX_CACHED_ANSWERS = 512
MAX_CACHED_FRAMES = 200_000
MAX_CACHED_SELECTORS = 64
RACK_METRICS = tuple(spec.name for spec in CATALOGUE if POWER_BUDGETS in spec.resources)
EXTERNAL_WORKLOAD_METRICS = tuple(spec.name for spec in CATALOGUE if NAMESPACES in spec.resources)


class StoreProvider:
    def __init__(
        self,
        store: MetricStore,
        index: ObjectIndex,
        *,
        clock: Callable[[], float] = time.time,
        observe_age: Callable[[float], None] | None = None,
    ) -> None:
        self._store = store
        self._index = index
        self._clock = clock
        self._observe_age = observe_age
        self._frames: dict[tuple[str, ObjectRef, str, Selector | None], tuple[str, str]] = {}
        """(version, object, metric, metric selector) -> the item's fixed text: the same in every pass."""
        self._matching: dict[tuple[str, str | None, Selector | None], list[KubeObject]] = {}
        """(resource, namespace, label selector) -> matching objects, while the index is unchanged."""
        self._verdicts: dict[tuple[str, str | None, Selector | None], dict[int, tuple[KubeObject, bool]]] = {}
        """(resource, namespace, label selector) -> id(object) -> (object, whether it matched): across
        versions of the index, for the objects that did not change."""
        self._answers: dict[CustomQuery, tuple[list[str], float, float]] = {}
        """query -> (items, valid until, oldest sample time)"""
        self._bodies: dict[CustomQuery, tuple[list[str], bytes]] = {}
        """query -> (the cached answer's items, their MetricValueList as UTF-8)"""
        self._rendered_generation: tuple[int, int] = (-1, -1)

    def list_custom_metrics(self) -> list[tuple[str, bool, str]]:
        return [
            (f"{resource}/{spec.name}", resource not in CLUSTER_SCOPED, "MetricValueList")
            for spec in CATALOGUE
            for resource in spec.resources
        ]

    def list_external_metrics(self) -> list[tuple[str, bool, str]]:
        return [
            (name, True, "ExternalMetricValueList") for name in (*RACK_METRICS, *EXTERNAL_WORKLOAD_METRICS)
        ]

    def _check_metric(self, resource: str, metric: str) -> None:
        spec = METRICS_BY_NAME.get(metric)
        if spec is None or resource not in spec.resources:
            raise MetricNotFoundError.for_metric(resource, metric)

    def _item(
        self, version: str, ref: ObjectRef, metric: str, value: StoredValue, metric_selector: Selector | None
    ) -> str:
        key = (version, ref, metric, metric_selector)
        frame = self._frames.get(key)
        if frame is None:
            if len(self._frames) >= MAX_CACHED_FRAMES:
                self._frames.clear()
            selector = None if metric_selector is None else metric_selector.as_label_selector()
            frame = self._frames[key] = wire.metric_value_frame(version, ref, metric, selector)
        return frame[0] + wire.metric_value_fields(version, value) + frame[1]

    def _objects(self, resource: str, namespace: str | None, selector: Selector | None) -> list[KubeObject]:
        """The index's objects that match `selector`, once per version of the index; and then only
        the objects that changed are matched again (a change replaces the object): a label selector
        over 10,000 pods costs milliseconds, and in a cluster some pod changes every second."""
        key = (resource, namespace, selector)
        found = self._matching.get(key)
        if found is not None:
            return found
        if len(self._matching) >= MAX_CACHED_ANSWERS:
            self._matching.clear()
        objects = self._index.objects(resource, namespace)
        if selector is None:
            found = self._matching[key] = list(objects)
            return found
        # By identity, and holding the object: an id is never reused while its object lives.
        ids = list(map(id, objects))
        known = list(map(self._verdicts.get(key, {}).get, ids))
        for i, verdict in enumerate(known):
            if verdict is None:
                known[i] = (objects[i], selector.matches(objects[i].labels))
        verdicts = cast(list[tuple[KubeObject, bool]], known)  # no None left
        if len(self._verdicts) >= MAX_CACHED_SELECTORS:
            self._verdicts.clear()
        self._verdicts[key] = dict(zip(ids, verdicts, strict=True))
        found = self._matching[key] = [obj for obj, matches in verdicts if matches]
        return found

    def _start_generation(self) -> None:
        generation = (self._store.generation, self._index.version())
        if generation != self._rendered_generation:
            if generation[1] != self._rendered_generation[1]:
                self._matching = {}
            self._answers = {}
            self._bodies = {}
            self._rendered_generation = generation

    def custom_items(self, query: CustomQuery) -> list[str]:
        """Rendered MetricValue items: exactly one for a named object, at least one for a selector.

        Answers are cached until the store or the object index changes, or until the first of the
        answer's values would go stale: the HPA asks the same question every sync period.
        """
        self._check_metric(query.resource, query.metric)
        now = self._clock()
        self._start_generation()
        cached = self._answers.get(query)
        if cached is not None and now < cached[1]:
            self._observe(now - cached[2])
            return cached[0]
        items, oldest_seconds = self._answer(query, now)
        if len(self._answers) >= MAX_CACHED_ANSWERS:
            self._answers.clear()
        self._answers[query] = (items, oldest_seconds + self._store.max_age_seconds, oldest_seconds)
        self._observe(now - oldest_seconds)
        return items

    def custom_list(self, query: CustomQuery) -> bytes:
        """`custom_items` as a whole MetricValueList, encoded, and kept as long as its answer: for a
        selector over a thousand pods, joining and encoding cost more than the rest of a request."""
        items = self.custom_items(query)
        cached = self._bodies.get(query)
        if cached is None or cached[0] is not items:
            if len(self._bodies) >= MAX_CACHED_ANSWERS:
                self._bodies.clear()
            body = wire.metric_value_list(query.version, items).encode()
            cached = self._bodies[query] = (items, body)
        return cached[1]

    def _observe(self, age_seconds: float) -> None:
        if self._observe_age is not None:
            self._observe_age(age_seconds)

    def _answer(self, query: CustomQuery, now: float) -> tuple[list[str], float]:
        namespace = query.object_namespace
        metric_selector = None if query.metric_selector.empty else query.metric_selector
        if not query.wildcard:
            ref = ObjectRef(query.resource, namespace, query.name)
            value = self._store.get(ref, query.metric, now_seconds=now)
            if metric_selector is not None and not metric_selector.matches(value.labels):
                raise MetricNotFoundError(
                    f"the server could not find the metric {query.metric} for {query.resource} {query.name} "
                    f"with metric selector {query.metric_selector}"
                )
            item = self._item(query.version, ref, query.metric, value, metric_selector)
            return [item], value.timestamp_seconds
        values = self._store.values_of(query.resource, namespace, query.metric)
        objects = self._objects(
            query.resource,
            namespace if query.resource not in CLUSTER_SCOPED else None,
            None if query.selector.empty else query.selector,
        )
        oldest_fresh = now - self._store.max_age_seconds
        items: list[str] = []
        oldest = now
        stale = 0
        for obj in objects:
            found = values.get(obj.name)
            if found is None:
                continue
            if metric_selector is not None and not metric_selector.matches(found.labels):
                continue
            if found.timestamp_seconds < oldest_fresh:
                stale += 1
                continue
            oldest = min(oldest, found.timestamp_seconds)
            ref = ObjectRef(query.resource, namespace, obj.name)
            items.append(self._item(query.version, ref, query.metric, found, metric_selector))
        if not items:
            if stale:
                raise StaleMetricError(
                    f"the metric {query.metric} for {query.resource} with selector {query.selector or '<all>'} is "
                    f"stale for all {stale} matching objects (max age {self._store.max_age_seconds:.0f}s)"
                )
            raise MetricNotFoundError.for_selector(query.resource, query.metric, str(query.selector))
        return items, oldest

    def _external_candidates(
        self, query: ExternalQuery
    ) -> Iterable[tuple[StoredValue | None, dict[str, str]]]:
        if query.metric in RACK_METRICS:
            for name, value in self._store.values_of(POWER_BUDGETS, "", query.metric).items():
                yield value, {"rack": name}
            return
        namespace = query.namespace
        yield (
            self._store.values_of(NAMESPACES, "", query.metric).get(namespace),
            {"namespace": namespace, "scope": "namespace"},
        )
        for resource, label in ((DEPLOYMENTS, "deployment"), (INFERENCE_SERVICES, "inferenceservice")):
            for name, value in self._store.values_of(resource, namespace, query.metric).items():
                yield value, {"namespace": namespace, "scope": label, label: name}

    def external_values(self, query: ExternalQuery) -> list[StoredValue]:
        if query.metric not in RACK_METRICS and query.metric not in EXTERNAL_WORKLOAD_METRICS:
            raise MetricNotFoundError(f"the server could not find the external metric {query.metric}")
        now = self._clock()
        selector = query.selector
        found: list[StoredValue] = []
        stale = 0
        for value, labels in self._external_candidates(query):
            if value is None:
                continue
            if selector.empty and labels.get("scope", "namespace") != "namespace":
                continue  # without a selector, one value per namespace: the HPA sums external items
            if not selector.matches(labels):
                continue
            if not self._store.is_fresh(value, now):
                stale += 1
                continue
            found.append(StoredValue(value.value, value.timestamp_seconds, value.window_seconds, labels))
        if not found:
            if stale:
                raise StaleMetricError(
                    f"the external metric {query.metric} is stale in namespace {query.namespace}"
                )
            raise MetricNotFoundError(
                f"the server could not find the external metric {query.metric} in namespace {query.namespace} "
                f"with selector {selector or '<all>'}"
            )
        return found
