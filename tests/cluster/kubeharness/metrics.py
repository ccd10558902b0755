"""Reading the adapter's answers: custom-metrics documents through kubectl, quantities, its own /metrics."""

from __future__ import annotations

import datetime
import json
import urllib.parse
from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity
from prometheus_client.parser import text_string_to_metric_families

from kubeharness.adapter import DeployedAdapter
from kubeharness.controlplane import ControlPlane
from kubeharness.https import https_get
from kubeharness.processes import wait_until

CUSTOM_METRICS = "/apis/custom.metrics.k8s.io"


def raw_path(version: str, path: str, *, label_selector: str | None = None) -> str:
    query = f"?labelSelector={urllib.parse.quote(label_selector)}" if label_selector else ""
    return f"{CUSTOM_METRICS}/{version}{path}{query}"


def get_raw(plane: ControlPlane, path: str) -> Any:
    """`kubectl get --raw` through kube-apiserver and the aggregator, as an admin; the JSON document."""
    return json.loads(plane.kubectl("get", "--raw", path).stdout)


def wait_for_pod_metric(plane: ControlPlane, version: str, metric: str, app: str, pods: list[str]) -> Any:
    """The MetricValueList for app=<app>'s pods once it covers all of `pods`: a freshly started pod has
    no estimate until the adapter has polled it at least once."""
    path = raw_path(version, f"/namespaces/llm/pods/*/{metric}", label_selector=f"app={app}")

    def covered() -> Any:
        document = get_raw(plane, path)
        return document if sorted(item_values(document)) == sorted(pods) else None

    return wait_until(covered, timeout_seconds=60, description=f"{version} {metric} for {pods}")


def node_metric(plane: ControlPlane, node: str, metric: str) -> Decimal:
    """A node's value through the aggregator, once the adapter has one."""
    path = raw_path("v1beta2", f"/nodes/{node}/{metric}")
    return wait_until(
        lambda: item_values(get_raw(plane, path))[node], timeout_seconds=60, description=f"{metric} of {node}"
    )


def node_metric_after(plane: ControlPlane, node: str, metric: str, since_seconds: float) -> Decimal:
    """A node's value once its whole window lies after `since_seconds` (a Unix time): a reading that no
    sample from before then (a load since removed) can still be part of."""
    path = raw_path("v1beta2", f"/nodes/{node}/{metric}")

    def settled() -> Decimal | None:
        (item,) = get_raw(plane, path)["items"]
        end = datetime.datetime.fromisoformat(item["timestamp"].replace("Z", "+00:00")).timestamp()
        return quantity(item["value"]) if end - item["windowSeconds"] >= since_seconds else None

    return wait_until(
        settled, timeout_seconds=60, description=f"{metric} of {node} from after {since_seconds}"
    )


def quantity(value: str) -> Decimal:
    return Decimal(parse_quantity(value))  # type: ignore[no-untyped-call]


def item_values(document: dict[str, Any]) -> dict[str, Decimal]:
    """name of the described object -> value, from a MetricValueList."""
    return {item["describedObject"]["name"]: quantity(item["value"]) for item in document["items"]}


def adapter_request_counts(plane: ControlPlane, adapter: DeployedAdapter) -> dict[str, float]:
    """wattscale_api_requests_total summed by status code, read from the adapter's /metrics as the front
    proxy would ask (front-proxy client cert, system:masters)."""
    proxy = plane.front_proxy_client
    answer = https_get(
        f"{adapter.url}/metrics",
        ca_path=adapter.ca.cert_path,
        client_cert=(proxy.cert_path, proxy.key_path),
        headers={"X-Remote-User": "admin", "X-Remote-Group": "system:masters"},
    )
    assert answer.status == 200, answer.body[:500]
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(answer.body.decode()):
        if family.name != "wattscale_api_requests":
            continue
        for sample in family.samples:
            if sample.name == "wattscale_api_requests_total":
                code = sample.labels["code"]
                counts[code] = counts.get(code, 0.0) + sample.value
    return counts
