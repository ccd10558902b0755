"""Turn a request path and its parameters into a typed query, or a `BadQueryError` / 404.

Path forms after `/apis/custom.metrics.k8s.io/{version}` (custom-metrics-api.md §2.1):
    namespaces/{ns}/{resource}/{name|*}/{metric}   namespaced objects; also cluster-scoped kinds (HPA + Node)
    {resource}/{name|*}/{metric}                  root-scoped objects
    namespaces/{ns}/metrics/{metric}              the namespace object itself
and after `/apis/external.metrics.k8s.io/v1beta1`: namespaces/{ns}/{metric}.
Segments are split on the raw path and then percent-decoded one by one, so `%2A` is `*` and an encoded
slash cannot change the shape of the path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from adapter.catalogue import CLUSTER_SCOPED, NAMESPACES
from adapter.errors import BadQueryError, MetricNotFoundError
from adapter.selectors import parse_selector
from collectors.label_selectors import EVERYTHING, Selector

ALL_OBJECTS = "*"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_METRIC = re.compile(r"^[A-Za-z_][A-Za-z0-9_:.-]{0,252}$")
_RESOURCE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class RouteNotFoundError(MetricNotFoundError):
    """The path has no shape the API serves."""

    def __init__(self) -> None:
        super().__init__("the server could not find the requested resource")


@dataclass(frozen=True, slots=True)
class CustomQuery:
    version: str
    resource: str
    namespace: str
    """The namespace of the path ("" for root-scoped paths)."""
    name: str
    """An object name, or "*" for every object matching `selector`."""
    metric: str
    selector: Selector
    metric_selector: Selector
    raw_path_resource: str
    """The resource segment as sent ("metrics" for the namespace form): authorization uses it."""

    @property
    def wildcard(self) -> bool:
        return self.name == ALL_OBJECTS

    @property
    def object_namespace(self) -> str:
        """Where the object lives: "" for cluster-scoped kinds even on the namespaced path."""
        return "" if self.resource in CLUSTER_SCOPED else self.namespace


@dataclass(frozen=True, slots=True)
class ExternalQuery:
    namespace: str
    metric: str
    selector: Selector


def split_segments(raw_tail: str) -> list[str]:
    return [unquote(segment) for segment in raw_tail.split("/") if segment != ""]


def _check_name(kind: str, value: str) -> str:
    if not _NAME.match(value):
        raise BadQueryError(f"invalid {kind} {value!r}: must be a lower-case RFC 1123 subdomain")
    return value


def _check_metric(value: str) -> str:
    if not _METRIC.match(value):
        raise BadQueryError(f"invalid metric name {value!r}")
    return value


def _check_resource(value: str) -> str:
    if not _RESOURCE.match(value):
        raise BadQueryError(f"invalid resource {value!r}")
    return value


def _selectors(params: Mapping[str, str], *, named: str | None) -> tuple[Selector, Selector]:
    field_selector = params.get("fieldSelector")
    if field_selector and (named is None or field_selector.replace("==", "=") != f"metadata.name={named}"):
        raise BadQueryError("fieldSelector metadata.name doesn't match requested name")
    selector = parse_selector(params.get("labelSelector")) if named is None else EVERYTHING
    return selector, parse_selector(params.get("metricLabelSelector"))


def parse_custom(version: str, segments: list[str], params: Mapping[str, str]) -> CustomQuery:
    if len(segments) == 4 and segments[0] == "namespaces" and segments[2] == "metrics":
        namespace = _check_name("namespace", segments[1])
        metric = _check_metric(segments[3])
        selector, metric_selector = _selectors(params, named=namespace)
        return CustomQuery(version, NAMESPACES, "", namespace, metric, selector, metric_selector, "metrics")
    if len(segments) == 5 and segments[0] == "namespaces":
        namespace = _check_name("namespace", segments[1])
        resource = _check_resource(segments[2])
        name, metric = segments[3], _check_metric(segments[4])
        if name != ALL_OBJECTS:
            _check_name("name", name)
        selector, metric_selector = _selectors(params, named=None if name == ALL_OBJECTS else name)
        return CustomQuery(version, resource, namespace, name, metric, selector, metric_selector, resource)
    if len(segments) == 3 and segments[0] == "namespaces":
        raise BadQueryError("invalid request path: want namespaces/{namespace}/{resource}/{name}/{metric}")
    if len(segments) == 3:
        resource = _check_resource(segments[0])
        name, metric = segments[1], _check_metric(segments[2])
        if name != ALL_OBJECTS:
            _check_name("name", name)
        selector, metric_selector = _selectors(params, named=None if name == ALL_OBJECTS else name)
        return CustomQuery(version, resource, "", name, metric, selector, metric_selector, resource)
    raise RouteNotFoundError()


def parse_external(segments: list[str], params: Mapping[str, str]) -> ExternalQuery:
    if len(segments) == 3 and segments[0] == "namespaces":
        return ExternalQuery(
            _check_name("namespace", segments[1]),
            _check_metric(segments[2]),
            parse_selector(params.get("labelSelector")),
        )
    raise RouteNotFoundError()


@dataclass(frozen=True, slots=True)
class ResourceAttributes:
    """What a SubjectAccessReview asks about, as the Go RequestInfo resolver derives it from the raw URL."""

    verb: str
    group: str
    version: str
    resource: str
    subresource: str
    name: str
    namespace: str

    def to_json(self) -> dict[str, str]:
        return {
            key: value
            for key, value in (
                ("namespace", self.namespace),
                ("verb", self.verb),
                ("group", self.group),
                ("version", self.version),
                ("resource", self.resource),
                ("subresource", self.subresource),
                ("name", self.name),
            )
            if value
        }


def custom_attributes(group: str, query: CustomQuery) -> ResourceAttributes:
    if query.raw_path_resource == "metrics":
        return ResourceAttributes("get", group, query.version, "metrics", "", query.metric, query.name)
    return ResourceAttributes(
        "get", group, query.version, query.resource, query.metric, query.name, query.namespace
    )


def external_attributes(group: str, version: str, query: ExternalQuery) -> ResourceAttributes:
    return ResourceAttributes("list", group, version, query.metric, "", "", query.namespace)
