"""JSON documents exactly as the Go reference stack writes them (field names and order).

See `custom-metrics-api.md` §2.3 and §3: list kinds even for one object, top-level `kind` and
`apiVersion` (the HPA's decoder needs them), `metadata: {}`, `selector: null` when no metric selector
was given, v1beta1 `metricName`/`window` versus v1beta2 `metric{name,selector}`/`windowSeconds`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from adapter.catalogue import KINDS
from adapter.store import ObjectRef, StoredValue

CUSTOM_GROUP = "custom.metrics.k8s.io"
EXTERNAL_GROUP = "external.metrics.k8s.io"
CUSTOM_VERSIONS = ("v1beta2", "v1beta1")
"""Preferred first: the HPA takes v1beta2 when the group offers it."""
EXTERNAL_VERSIONS = ("v1beta1",)

_REASON_FOR_CODE = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    413: "RequestEntityTooLarge",
    414: "RequestURITooLong",
    417: "ExpectationFailed",
    429: "TooManyRequests",
    431: "RequestHeaderFieldsTooLarge",
    500: "InternalError",
    503: "ServiceUnavailable",
}


def reason_for(code: int) -> str:
    return _REASON_FOR_CODE.get(code, "BadRequest" if 400 <= code < 500 else "InternalError")


def status(code: int, message: str, reason: str | None = None) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or reason_for(code),
        "code": code,
    }


def status_json(code: int, message: str, reason: str | None = None) -> str:
    return json.dumps(status(code, message, reason), separators=(",", ":"))


def described_object(ref: ObjectRef) -> dict[str, str]:
    kind, api_version = KINDS[ref.resource]
    reference = {"kind": kind}
    if ref.namespace:
        reference["namespace"] = ref.namespace
    reference["name"] = ref.name
    reference["apiVersion"] = api_version
    return reference


def _json_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def metric_value_frame(
    version: str, ref: ObjectRef, metric: str, selector: dict[str, object] | None
) -> tuple[str, str]:
    """The fixed text of one object's MetricValue: what comes before its timestamp and after its
    value. It depends on the object and the query only, so a server renders it once per object, not
    once per pass."""
    described = json.dumps(described_object(ref), separators=(",", ":"), ensure_ascii=False)
    selector_json = json.dumps(selector, separators=(",", ":"))
    if version == "v1beta1":
        return (
            f'{{"describedObject":{described},"metricName":{_json_string(metric)},"timestamp":"',
            f',"selector":{selector_json}}}',
        )
    return (
        f'{{"describedObject":{described},"metric":{{"name":{_json_string(metric)},"selector":{selector_json}}},'
        '"timestamp":"',
        "}",
    )


def metric_value_fields(version: str, value: StoredValue) -> str:
    """The part of a MetricValue that changes with every pass: timestamp, window and value."""
    window = round(value.window_seconds)
    window_part = ""
    if window:
        window_part = f',"window":{window}' if version == "v1beta1" else f',"windowSeconds":{window}'
    return f'{value.timestamp_rfc3339}"{window_part},"value":"{value.quantity}"'


def metric_value_item(
    version: str, ref: ObjectRef, metric: str, value: StoredValue, selector: dict[str, object] | None
) -> str:
    """One MetricValue as JSON text. Items are rendered as text so that large lists are a join."""
    head, tail = metric_value_frame(version, ref, metric, selector)
    return head + metric_value_fields(version, value) + tail


def metric_value_list(version: str, items: Iterable[str]) -> str:
    return (
        f'{{"kind":"MetricValueList","apiVersion":"{CUSTOM_GROUP}/{version}","metadata":{{}},'
        f'"items":[{",".join(items)}]}}'
    )


def external_metric_value_list(metric: str, values: Sequence[StoredValue]) -> dict[str, Any]:
    return {
        "kind": "ExternalMetricValueList",
        "apiVersion": f"{EXTERNAL_GROUP}/v1beta1",
        "metadata": {},
        "items": [
            {
                "metricName": metric,
                "metricLabels": dict(value.labels) or None,
                "timestamp": value.timestamp_rfc3339,
                **({"window": round(value.window_seconds)} if value.window_seconds else {}),
                "value": value.quantity,
            }
            for value in values
        ],
    }


def api_resource_list(group_version: str, resources: Iterable[tuple[str, bool, str]]) -> dict[str, Any]:
    """(name, namespaced, kind) triples; never empty, because client-go treats an empty list as an error."""
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": [
            {"name": name, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": ["get"]}
            for name, namespaced, kind in resources
        ],
    }


def api_group(name: str, versions: Sequence[str]) -> dict[str, Any]:
    entries = [{"groupVersion": f"{name}/{version}", "version": version} for version in versions]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": name,
        "versions": entries,
        "preferredVersion": entries[0],
    }


def api_group_list(groups: Sequence[tuple[str, Sequence[str]]]) -> dict[str, Any]:
    listed = [api_group(name, versions) for name, versions in groups]
    for group in listed:
        del group["kind"], group["apiVersion"]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": listed}
