"""Our JSON for every path form and both versions equals documents written by hand from the reference
(custom-metrics-api.md §3), field order included: clients decode by name, but humans diff by eye."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

GOLDEN = Path(__file__).parent / "golden"
CUSTOM = "/apis/custom.metrics.k8s.io"

CASES = [
    (
        f"{CUSTOM}/v1beta2/namespaces/inference/pods/%2A/watts_per_token?labelSelector=app%3Dllm",
        "v1beta2_pods_selector",
    ),
    (
        f"{CUSTOM}/v1beta1/namespaces/inference/pods/%2A/watts_per_token?labelSelector=app%3Dllm",
        "v1beta1_pods_selector",
    ),
    (
        f"{CUSTOM}/v1beta2/namespaces/inference/pods/*/watts_per_token?labelSelector=app+in+%28llm%29",
        "v1beta2_pods_selector",
    ),
    (
        f"{CUSTOM}/v1beta2/namespaces/inference/pods/*/watts_per_token?labelSelector=tier%21%3Dbatch",
        "v1beta2_pods_selector",
    ),
    (f"{CUSTOM}/v1beta2/namespaces/inference/pods/llm-7d9f-abcde/gpu_power_watts", "v1beta2_pod_named"),
    (
        f"{CUSTOM}/v1beta2/namespaces/inference/pods/llm-7d9f-abcde/gpu_power_watts?fieldSelector=metadata.name%3Dllm-7d9f-abcde",
        "v1beta2_pod_named",
    ),
    (f"{CUSTOM}/v1beta1/namespaces/inference/deployments.apps/llm/power_watts", "v1beta1_deployment_named"),
    (
        f"{CUSTOM}/v1beta2/namespaces/inference/inferenceservices.serving.kserve.io/chat/watts_per_token",
        "v1beta2_inferenceservice_named",
    ),
    (f"{CUSTOM}/v1beta2/namespaces/inference/metrics/watts_per_token", "v1beta2_namespace_metric"),
    (f"{CUSTOM}/v1beta1/namespaces/inference/metrics/watts_per_token", "v1beta1_namespace_metric"),
    (f"{CUSTOM}/v1beta2/nodes/node-1/rack_power_headroom_watts", "v1beta2_node"),
    # What the HPA sends for an Object metric on a Node: the namespaced path of a cluster-scoped kind.
    (f"{CUSTOM}/v1beta2/namespaces/inference/nodes/node-1/rack_power_headroom_watts", "v1beta2_node"),
    (
        f"{CUSTOM}/v1beta2/namespaces/inference/pods/%2A/watts_per_token?metricLabelSelector=method%3Denergy_counter",
        "v1beta2_pods_metric_selector",
    ),
    (
        f"{CUSTOM}/v1beta1/namespaces/inference/pods/%2A/watts_per_token?metricLabelSelector=method%3Denergy_counter",
        "v1beta1_pods_metric_selector",
    ),
    (
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/inference/rack_power_headroom_watts?labelSelector=rack%3Dr12",
        "external_rack_headroom",
    ),
    (f"{CUSTOM}/v1beta2/namespaces/inference/pods/%2A/joules_per_fortnight", "status_metric_not_found"),
]


def _canonical(text: str) -> str:
    return json.dumps(json.loads(text))  # keeps key order, drops whitespace


@pytest.mark.parametrize(("path", "golden"), CASES, ids=[f"{name}:{i}" for i, (_, name) in enumerate(CASES)])
async def test_body_matches_golden(
    api: TestClient[web.Request, web.Application], path: str, golden: str
) -> None:
    response = await api.get(path)
    expected = (GOLDEN / f"{golden}.json").read_text()
    assert response.status == json.loads(expected).get("code", 200)
    assert response.content_type == "application/json"
    assert _canonical(await response.text()) == _canonical(expected)


async def test_pretty_prints_the_same_document(api: TestClient[web.Request, web.Application]) -> None:
    path = f"{CUSTOM}/v1beta2/nodes/node-1/rack_power_headroom_watts"
    pretty = await (await api.get(path + "?pretty=true")).text()
    assert "\n  " in pretty
    assert _canonical(pretty) == _canonical((GOLDEN / "v1beta2_node.json").read_text())


@pytest.mark.parametrize("version", ["v1beta1", "v1beta2"])
async def test_discovery_lists_every_catalogue_metric(
    api: TestClient[web.Request, web.Application], version: str
) -> None:
    document = await (await api.get(f"{CUSTOM}/{version}")).json()
    assert document["kind"] == "APIResourceList"
    assert document["apiVersion"] == "v1"
    assert document["groupVersion"] == f"custom.metrics.k8s.io/{version}"
    names = {resource["name"]: resource for resource in document["resources"]}
    assert names["pods/watts_per_token"] == {
        "name": "pods/watts_per_token",
        "singularName": "",
        "namespaced": True,
        "kind": "MetricValueList",
        "verbs": ["get"],
    }
    assert names["nodes/rack_power_headroom_watts"]["namespaced"] is False
    assert names["namespaces/watts_per_token"]["namespaced"] is False
    assert names["deployments.apps/replicas_within_budget"]["namespaced"] is True
    assert names["inferenceservices.serving.kserve.io/watts_per_token"]["namespaced"] is True
    # The aggregator's discovery conversion fails if one resource has two scopes.
    scopes: dict[str, set[bool]] = {}
    for resource in document["resources"]:
        scopes.setdefault(resource["name"].split("/")[0], set()).add(resource["namespaced"])
    assert all(len(found) == 1 for found in scopes.values())


async def test_group_documents_prefer_v1beta2(api: TestClient[web.Request, web.Application]) -> None:
    groups = await (await api.get("/apis")).json()
    assert groups["kind"] == "APIGroupList"
    custom = next(group for group in groups["groups"] if group["name"] == "custom.metrics.k8s.io")
    assert custom["preferredVersion"] == {
        "groupVersion": "custom.metrics.k8s.io/v1beta2",
        "version": "v1beta2",
    }
    assert [v["version"] for v in custom["versions"]] == ["v1beta2", "v1beta1"]
    group = await (await api.get("/apis/custom.metrics.k8s.io")).json()
    assert group["kind"] == "APIGroup"
    assert group["preferredVersion"]["version"] == "v1beta2"
    external = await (await api.get("/apis/external.metrics.k8s.io/v1beta1")).json()
    assert {r["name"] for r in external["resources"]} >= {"rack_power_headroom_watts", "watts_per_token"}
    assert all(r["kind"] == "ExternalMetricValueList" for r in external["resources"])
