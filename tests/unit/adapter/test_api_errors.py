"""Every malformed path, selector or metric gets a `metav1.Status` with the right code."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapter.errors import (
    BadQueryError,
    ConfigError,
    ForbiddenError,
    MetricNotFoundError,
    NotReadyError,
    StaleMetricError,
    UnauthorizedError,
    WattscaleError,
)

CUSTOM = "/apis/custom.metrics.k8s.io/v1beta2"
Client = TestClient[web.Request, web.Application]

CASES = [
    (f"{CUSTOM}/namespaces/inference/pods/%2A/joules_per_fortnight", 404, "NotFound", "joules_per_fortnight"),
    (f"{CUSTOM}/namespaces/inference/services/%2A/watts_per_token", 404, "NotFound", "for services"),
    (f"{CUSTOM}/namespaces/inference/pods/no-such-pod/watts_per_token", 404, "NotFound", "pods no-such-pod"),
    (f"{CUSTOM}/namespaces/other/pods/%2A/watts_per_token", 404, "NotFound", "with selector"),
    (
        f"{CUSTOM}/namespaces/inference/pods/%2A/watts_per_token?labelSelector=app%3Dnothing",
        404,
        "NotFound",
        "app=nothing",
    ),
    (
        f"{CUSTOM}/namespaces/inference/pods/%2A/watts_per_token?labelSelector=app%3D%3D%3D",
        400,
        "BadRequest",
        "label",
    ),
    (
        f"{CUSTOM}/namespaces/inference/pods/%2A/watts_per_token?labelSelector=app+in+%28",
        400,
        "BadRequest",
        "end",
    ),
    (
        f"{CUSTOM}/namespaces/inference/pods/%2A/watts_per_token?metricLabelSelector=%21%21",
        400,
        "BadRequest",
        "invalid label key",
    ),
    (
        f"{CUSTOM}/namespaces/inference/pods/%2A/watts_per_token?labelSelector=a%2Fb%2Fc%3Dd",
        400,
        "BadRequest",
        "label key",
    ),
    (f"{CUSTOM}/namespaces/Inference/pods/%2A/watts_per_token", 400, "BadRequest", "namespace"),
    (f"{CUSTOM}/namespaces/inference/pods/%2A/watts%20per", 400, "BadRequest", "metric name"),
    (
        f"{CUSTOM}/namespaces/inference/pods/x/watts_per_token?fieldSelector=metadata.name%3Dy",
        400,
        "BadRequest",
        "fieldSelector",
    ),
    (f"{CUSTOM}/namespaces/inference/watts_per_token", 400, "BadRequest", "invalid request path"),
    (f"{CUSTOM}/nodes/node-1", 404, "NotFound", "requested resource"),
    (f"{CUSTOM}/namespaces/inference/pods/bar", 404, "NotFound", "requested resource"),
    (f"{CUSTOM}/a/b/c/d/e/f/g", 404, "NotFound", "requested resource"),
    ("/apis/custom.metrics.k8s.io/v2/nodes/node-1/node_power_watts", 404, "NotFound", "requested resource"),
    ("/apis/metrics.k8s.io/v1beta1", 404, "NotFound", "requested resource"),
    (
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/foo/group/metric",
        404,
        "NotFound",
        "requested resource",
    ),
    (
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/inference/unknown_metric",
        404,
        "NotFound",
        "unknown_metric",
    ),
    ("/nothing/here", 404, "NotFound", "requested resource"),
    ("/openapi/v3/apis/nothing.example.com/v1", 404, "NotFound", "requested resource"),
    # Stale: the value exists but is older than max age. Served as 503, never as a fresh number.
    (
        f"{CUSTOM}/namespaces/inference/pods/chat-5c8b-klmno/gpu_power_watts",
        503,
        "ServiceUnavailable",
        "stale",
    ),
    (f"{CUSTOM}/nodes/node-2/node_power_watts", 503, "ServiceUnavailable", "stale"),
]


@pytest.mark.parametrize(("path", "code", "reason", "words"), CASES)
async def test_bad_request_gets_status(api: Client, path: str, code: int, reason: str, words: str) -> None:
    response = await api.get(path)
    body = await response.json()
    assert response.status == code
    assert body["kind"] == "Status"
    assert body["apiVersion"] == "v1"
    assert body["status"] == "Failure"
    assert body["code"] == code
    assert body["reason"] == reason
    assert words in body["message"]


async def test_wrong_method_is_405_status(api: Client) -> None:
    response = await api.post(f"{CUSTOM}/nodes/node-1/node_power_watts", data=b"{}")
    body = await response.json()
    assert response.status == 405
    assert body["kind"] == "Status"
    assert body["reason"] == "MethodNotAllowed"


async def test_stale_objects_are_left_out_of_selector_lists(api: Client) -> None:
    # chat-5c8b-klmno's gpu_power_watts is 600 s old; the two fresh pods are served.
    response = await api.get(f"{CUSTOM}/namespaces/inference/pods/%2A/gpu_power_watts")
    names = [item["describedObject"]["name"] for item in (await response.json())["items"]]
    assert response.status == 200
    assert names == ["llm-7d9f-abcde", "llm-7d9f-fghij"]


def test_every_domain_error_has_a_status_code() -> None:
    expected = {
        BadQueryError: 400,
        UnauthorizedError: 401,
        ForbiddenError: 403,
        MetricNotFoundError: 404,
        StaleMetricError: 503,
        NotReadyError: 503,
    }
    raised_by_the_api = {cls for cls in _subclasses(WattscaleError) if cls is not ConfigError}
    assert {cls for cls in raised_by_the_api if cls.__module__ == "adapter.errors"} == set(expected)
    for cls, code in expected.items():
        assert cls.status_code == code


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


SEGMENT = st.one_of(
    st.sampled_from(
        ["namespaces", "inference", "pods", "nodes", "*", "%2A", "metrics", "deployments.apps", "node-1"]
    ),
    st.sampled_from(
        ["watts_per_token", "gpu_power_watts", "rack_power_headroom_watts", "llm-7d9f-abcde", "%2F"]
    ),
    st.text(alphabet=st.characters(codec="ascii", categories=["L", "N", "P", "S"]), min_size=1, max_size=12),
)
PREFIX = st.sampled_from(
    [
        "/apis/custom.metrics.k8s.io/v1beta2",
        "/apis/custom.metrics.k8s.io/v1beta1",
        "/apis/external.metrics.k8s.io/v1beta1",
        "/apis/custom.metrics.k8s.io",
        "/apis",
        "/apis/custom.metrics.k8s.io/v1beta2/",
        "",
    ]
)
SELECTOR = st.one_of(
    st.none(),
    st.sampled_from(
        ["app=llm", "app in (llm,chat)", "!tier", "tier notin (batch)", "a=b,c!=d", "x", "=", "in ()", ","]
    ),
    st.text(max_size=30),
)


def _url(prefix: str, segments: list[str]) -> str:
    from urllib.parse import quote

    return prefix + "".join("/" + quote(segment, safe="%*") for segment in segments)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prefix=PREFIX,
    segments=st.lists(SEGMENT, max_size=7),
    label_selector=SELECTOR,
    metric_selector=SELECTOR,
    extra_headers=st.dictionaries(
        st.sampled_from(
            ["Accept", "X-Remote-User", "X-Remote-Group", "Authorization", "X-Remote-Extra-Scopes"]
        ),
        st.text(alphabet=st.characters(codec="latin-1", exclude_categories=["Cc"]), max_size=20),
        max_size=3,
    ),
)
async def test_random_requests_never_get_5xx_or_a_non_status_error(
    api: Client,
    prefix: str,
    segments: list[str],
    label_selector: str | None,
    metric_selector: str | None,
    extra_headers: dict[str, str],
) -> None:
    params = {}
    if label_selector is not None:
        params["labelSelector"] = label_selector
    if metric_selector is not None:
        params["metricLabelSelector"] = metric_selector
    response = await api.get(_url(prefix, segments), params=params, headers=extra_headers)
    if response.status < 400 and response.content_type != "application/json":
        # Only the self-metrics and health endpoints answer in plain text.
        assert response.url.path in {"/metrics", "/healthz", "/livez", "/readyz"}
        return
    # 503 is the one legitimate 5xx: a stale value. Anything else >= 500 is our bug.
    body = await response.json()
    if response.status == 503:
        assert body["reason"] == "ServiceUnavailable" and "stale" in body["message"]
        return
    assert response.status < 500, body
    if response.status >= 400:
        assert body["kind"] == "Status" and body["code"] == response.status
    else:
        assert body["kind"] in {
            "MetricValueList",
            "ExternalMetricValueList",
            "APIResourceList",
            "APIGroup",
            "APIGroupList",
        }


async def test_a_failed_request_is_logged_with_its_code(
    api: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="adapter.api")
    await api.get(
        f"{CUSTOM}/namespaces/inference/pods/%2A/joules_per_fortnight",
        headers={"Authorization": "Bearer s3cret"},
    )
    record = next(r for r in caplog.records if r.getMessage() == "api.request_failed")
    assert record.__dict__["code"] == 404
    assert record.__dict__["path"].endswith("/joules_per_fortnight")
    assert "s3cret" not in caplog.text
