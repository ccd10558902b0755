"""The OpenAPI documents the aggregator downloads are valid, link to each other, and honour ETags."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV2SpecValidator, OpenAPIV30SpecValidator

Client = TestClient[web.Request, web.Application]
GROUP_VERSIONS = (
    "apis/custom.metrics.k8s.io/v1beta2",
    "apis/custom.metrics.k8s.io/v1beta1",
    "apis/external.metrics.k8s.io/v1beta1",
)


async def _json(api: Client, path: str, **headers: str) -> tuple[int, Mapping[str, str], Any]:
    answer = await api.get(path, headers=headers, allow_redirects=False)
    body = await answer.read()
    return answer.status, answer.headers, json.loads(body) if body else None


async def test_openapi_v2_is_a_valid_swagger_document_of_every_route(api: Client) -> None:
    code, headers, document = await _json(api, "/openapi/v2", Accept="application/json")
    assert code == 200 and headers["Content-Type"].startswith("application/json")
    validate(document, cls=OpenAPIV2SpecValidator)
    assert (
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/{namespace}/{resource}/{name}/{metric}"
        in document["paths"]
    )
    assert "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}" in document["paths"]
    listed = document["definitions"]["io.k8s.metrics.pkg.apis.custom_metrics.v1beta2.MetricValueList"]
    assert listed["x-kubernetes-group-version-kind"] == [
        {"group": "custom.metrics.k8s.io", "version": "v1beta2", "kind": "MetricValueList"}
    ]
    # The aggregator sends the ETag it has back; an unchanged document is a 304 without a body.
    again = await api.get("/openapi/v2", headers={"If-None-Match": headers["ETag"]})
    assert again.status == 304 and await again.read() == b""


async def test_openapi_v3_discovery_links_a_valid_document_per_group_version(api: Client) -> None:
    code, _, discovery = await _json(api, "/openapi/v3")
    assert code == 200
    assert sorted(discovery["paths"]) == sorted(GROUP_VERSIONS)
    for key, link in discovery["paths"].items():
        url = link["serverRelativeURL"]
        assert url.startswith(f"/openapi/v3/{key}?hash=")
        code, headers, document = await _json(api, url)
        assert code == 200 and headers["Cache-Control"] == "public, immutable"
        validate(document, cls=OpenAPIV30SpecValidator)
        assert all(path.startswith(f"/{key}/") for path in document["paths"])
        assert headers["ETag"] == '"' + url.split("hash=")[1] + '"'


async def test_openapi_v3_old_hash_redirects_to_the_current_document(api: Client) -> None:
    code, headers, _ = await _json(api, "/openapi/v3/apis/custom.metrics.k8s.io/v1beta2?hash=0ABC")
    assert code == 301
    assert headers["Location"].startswith("/openapi/v3/apis/custom.metrics.k8s.io/v1beta2?hash=")
    assert not headers["Location"].endswith("=0ABC")
