"""The OpenAPI documents the aggregator downloads: `/openapi/v2` (Swagger 2.0) and `/openapi/v3`.

kube-apiserver fetches both from every APIService's server and merges them into its own; without them it
logs a failed download for our APIServices, again and again. The routes and schema names are those of
custom-metrics-apiserver (`pkg/apiserver/installer`, `k8s.io/metrics` types), so `kubectl explain` and
client generators see what they see for any Go adapter. The v3 discovery document links each group
version's document by `?hash=`, as `k8s.io/kube-openapi/pkg/handler3` does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from adapter import __version__, wire

_CUSTOM_TYPES = "io.k8s.metrics.pkg.apis.custom_metrics"
_EXTERNAL_TYPES = "io.k8s.metrics.pkg.apis.external_metrics"
_STRING = {"type": "string"}
_QUANTITY = {"type": "string", "description": "a Kubernetes quantity, e.g. 1500m"}
_TIME = {"type": "string", "format": "date-time"}
_LABEL_SELECTOR = {
    "type": "object",
    "description": "a label selector (matchLabels and matchExpressions), as in metav1.LabelSelector",
    "x-kubernetes-map-type": "atomic",
}
_OBJECT_REFERENCE = {
    "type": "object",
    "description": "the object the metric describes",
    "properties": {name: _STRING for name in ("kind", "namespace", "name", "apiVersion", "uid")},
}
_LIST_METADATA = {
    "type": "object",
    "properties": {"resourceVersion": _STRING, "continue": _STRING, "selfLink": _STRING},
}


def _ref(prefix: str, name: str) -> dict[str, str]:
    return {"$ref": f"{prefix}{name}"}


def _list_schema(prefix: str, item: str, group: str, version: str, kind: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": _STRING,
            "kind": _STRING,
            "metadata": _LIST_METADATA,
            "items": {"type": "array", "items": _ref(prefix, item)},
        },
        "x-kubernetes-group-version-kind": [{"group": group, "version": version, "kind": kind}],
    }


def _custom_schemas(version: str, prefix: str) -> dict[str, Any]:
    types = f"{_CUSTOM_TYPES}.{version}"
    if version == "v1beta1":
        value: dict[str, Any] = {
            "type": "object",
            "required": ["describedObject", "metricName", "timestamp", "value"],
            "properties": {
                "describedObject": _OBJECT_REFERENCE,
                "metricName": _STRING,
                "timestamp": _TIME,
                "window": {"type": "integer", "format": "int64"},
                "value": _QUANTITY,
                "selector": _LABEL_SELECTOR,
            },
        }
        schemas = {}
    else:
        value = {
            "type": "object",
            "required": ["describedObject", "metric", "timestamp", "value"],
            "properties": {
                "describedObject": _OBJECT_REFERENCE,
                "metric": _ref(prefix, f"{types}.MetricIdentifier"),
                "timestamp": _TIME,
                "windowSeconds": {"type": "integer", "format": "int64"},
                "value": _QUANTITY,
            },
        }
        schemas = {
            f"{types}.MetricIdentifier": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": _STRING, "selector": _LABEL_SELECTOR},
            }
        }
    schemas[f"{types}.MetricValue"] = value
    schemas[f"{types}.MetricValueList"] = _list_schema(
        prefix, f"{types}.MetricValue", wire.CUSTOM_GROUP, version, "MetricValueList"
    )
    return schemas


def _external_schemas(version: str, prefix: str) -> dict[str, Any]:
    types = f"{_EXTERNAL_TYPES}.{version}"
    return {
        f"{types}.ExternalMetricValue": {
            "type": "object",
            "required": ["metricName", "metricLabels", "timestamp", "value"],
            "properties": {
                "metricName": _STRING,
                "metricLabels": {"type": "object", "additionalProperties": _STRING},
                "timestamp": _TIME,
                "window": {"type": "integer", "format": "int64"},
                "value": _QUANTITY,
            },
        },
        f"{types}.ExternalMetricValueList": _list_schema(
            prefix, f"{types}.ExternalMetricValue", wire.EXTERNAL_GROUP, version, "ExternalMetricValueList"
        ),
    }


@dataclass(frozen=True, slots=True)
class _Route:
    path: str
    operation: str
    parameters: tuple[str, ...]
    returns: str
    description: str


def _routes(group: str, version: str) -> list[_Route]:
    base = f"/apis/{group}/{version}"
    if group == wire.EXTERNAL_GROUP:
        returns = f"{_EXTERNAL_TYPES}.{version}.ExternalMetricValueList"
        return [
            _Route(
                base + "/namespaces/{namespace}/{metric}",
                "ExternalMetricValue",
                ("namespace", "metric"),
                returns,
                "the values of an external metric in a namespace",
            )
        ]
    returns = f"{_CUSTOM_TYPES}.{version}.MetricValueList"
    return [
        _Route(
            base + "/{resource}/{name}/{metric}",
            "ClusterScopedMetricValue",
            ("resource", "name", "metric"),
            returns,
            "a metric of a cluster-scoped object, or of every object matching labelSelector when name is *",
        ),
        _Route(
            base + "/namespaces/{namespace}/{resource}/{name}/{metric}",
            "NamespacedMetricValue",
            ("namespace", "resource", "name", "metric"),
            returns,
            "a metric of a namespaced object, or of every object matching labelSelector when name is *",
        ),
        _Route(
            base + "/namespaces/{namespace}/metrics/{metric}",
            "NamespaceMetricValue",
            ("namespace", "metric"),
            returns,
            "a metric of the namespace itself",
        ),
    ]


def _query_parameters(version: str) -> list[str]:
    return ["labelSelector", *(("metricLabelSelector",) if version != "v1beta1" else ())]


def _operation_id(group: str, version: str, route: _Route) -> str:
    """Unique across groups and versions, e.g. readCustomMetricsV1beta2NamespacedMetricValue."""
    return f"read{group.split('.')[0].title()}Metrics{version.title()}{route.operation}"


def _v2_paths(group: str, version: str) -> dict[str, Any]:
    prefix = "#/definitions/"
    paths: dict[str, Any] = {}
    for route in _routes(group, version):
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "type": "string"} for name in route.parameters
        ]
        parameters += [
            {"name": name, "in": "query", "type": "string", "uniqueItems": True}
            for name in _query_parameters(version)
        ]
        paths[route.path] = {
            "get": {
                "description": route.description,
                "operationId": _operation_id(group, version, route),
                "produces": ["application/json"],
                "schemes": ["https"],
                "tags": [f"{group.split('.')[0]}Metrics_{version}"],
                "responses": {"200": {"description": "OK", "schema": _ref(prefix, route.returns)}},
            },
            "parameters": parameters,
        }
    return paths


def _v3_paths(group: str, version: str) -> dict[str, Any]:
    prefix = "#/components/schemas/"
    paths: dict[str, Any] = {}
    for route in _routes(group, version):
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": _STRING} for name in route.parameters
        ]
        parameters += [
            {"name": name, "in": "query", "schema": _STRING} for name in _query_parameters(version)
        ]
        paths[route.path] = {
            "get": {
                "description": route.description,
                "operationId": _operation_id(group, version, route),
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"application/json": {"schema": _ref(prefix, route.returns)}},
                    }
                },
            },
            "parameters": parameters,
        }
    return paths


def _schemas(group: str, version: str, prefix: str) -> dict[str, Any]:
    if group == wire.EXTERNAL_GROUP:
        return _external_schemas(version, prefix)
    return _custom_schemas(version, prefix)


def _info() -> dict[str, str]:
    return {"title": "wattscale", "version": f"v{__version__}"}


def _encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def _hash(body: bytes) -> str:
    return hashlib.sha512(body).hexdigest().upper()  # kube-openapi's handler3: "%X" of SHA-512


@dataclass(frozen=True, slots=True)
class Document:
    body: bytes
    etag: str
    """Quoted, as HTTP wants it."""


def _document(body: bytes) -> Document:
    return Document(body, f'"{_hash(body)}"')


@dataclass(frozen=True, slots=True)
class OpenApiDocuments:
    v2: Document
    v3_discovery: Document
    v3: dict[str, Document]
    """'apis/<group>/<version>' -> its OpenAPI 3 document."""

    @classmethod
    def build(cls, groups: Sequence[tuple[str, Sequence[str]]]) -> OpenApiDocuments:
        paths: dict[str, Any] = {}
        definitions: dict[str, Any] = {}
        v3: dict[str, Document] = {}
        for group, versions in groups:
            for version in versions:
                paths.update(_v2_paths(group, version))
                definitions.update(_schemas(group, version, "#/definitions/"))
                document = {
                    "openapi": "3.0.0",
                    "info": _info(),
                    "paths": _v3_paths(group, version),
                    "components": {"schemas": _schemas(group, version, "#/components/schemas/")},
                }
                v3[f"apis/{group}/{version}"] = _document(_encode(document))
        swagger = {"swagger": "2.0", "info": _info(), "paths": paths, "definitions": definitions}
        discovery = {
            "paths": {
                key: {"serverRelativeURL": f"/openapi/v3/{key}?hash={document.etag.strip(chr(34))}"}
                for key, document in v3.items()
            }
        }
        return cls(_document(_encode(swagger)), _document(_encode(discovery)), v3)
