"""Delegated authentication and authorization over real TLS with real certificates.

The TokenReview/SubjectAccessReview endpoint is `FakeKubeApi` (a unit-test fake; the cluster tests
use a real kube-apiserver). Every other part is real: TLS handshakes, certificate checks, headers.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from api_fixtures import NOW, example_index, example_store
from kubernetes_asyncio import client
from pki import Issued, issue, make_ca

from adapter.api import ApiSettings, create_app
from adapter.auth import AuthenticationConfig, Authenticator, Authorizer
from adapter.kube_auth import KubeAccessReviewer, KubeTokenReviewer
from adapter.selfmetrics import SelfMetrics
from adapter.tls import ServingTls

PODS_PATH = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/inference/pods/%2A/watts_per_token"


@dataclass
class FakeKubeApi:
    """Answers TokenReviews from `tokens` and SubjectAccessReviews from `grants` (user -> resources)."""

    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    grants: dict[str, set[str]] = field(default_factory=dict)
    reviews: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", self.token_review)
        app.router.add_post("/apis/authorization.k8s.io/v1/subjectaccessreviews", self.access_review)
        return app

    async def token_review(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.reviews.append(body)
        user = self.tokens.get(body["spec"]["token"])
        status = (
            {"authenticated": True, "user": user} if user else {"authenticated": False, "error": "invalid"}
        )
        return web.json_response({**body, "status": status})

    async def access_review(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.reviews.append(body)
        spec = body["spec"]
        attributes = spec.get("resourceAttributes") or {}
        what = attributes.get("resource", "") + (
            "/" + attributes["subresource"] if attributes.get("subresource") else ""
        )
        if "nonResourceAttributes" in spec:
            what = spec["nonResourceAttributes"]["path"]
        allowed = what in self.grants.get(spec["user"], set())
        return web.json_response(
            {**body, "status": {"allowed": allowed, "reason": "" if allowed else "no RBAC"}}
        )

    def count(self, kind: str) -> int:
        return sum(1 for review in self.reviews if review["kind"] == kind)


@dataclass
class Pki:
    front_proxy_ca: Issued
    client_ca: Issued
    serving_ca: Issued
    directory: Path

    def context(self, leaf: Issued | None, stem: str) -> ssl.SSLContext:
        if leaf is None:
            context = ssl.create_default_context(cadata=self.serving_ca.cert_pem)
            context.check_hostname = False
            return context
        return leaf.client_context(self.directory, stem, self.serving_ca.cert_pem)


@dataclass
class Adapter:
    url: str
    pki: Pki
    fake: FakeKubeApi
    tls: ServingTls
    clock: list[float]

    async def get(
        self, path: str, leaf: Issued | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any] | str]:
        connector = aiohttp.TCPConnector(ssl=self.pki.context(leaf, f"client-{id(leaf)}"))
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.get(self.url + path, headers=headers or {}) as response:
                if response.content_type == "application/json":
                    return response.status, await response.json()
                return response.status, await response.text()


@pytest.fixture
async def adapter(tmp_path: Path, aiohttp_server: Any) -> AsyncIterator[Adapter]:
    pki = Pki(make_ca("front-proxy-ca"), make_ca("client-ca"), make_ca("serving-ca"), tmp_path)
    fake = FakeKubeApi()
    fake_server = await aiohttp_server(fake.app())
    config = AuthenticationConfig(
        client_cas=(pki.client_ca.certificate,),
        requestheader_cas=(pki.front_proxy_ca.certificate,),
        allowed_names=("front-proxy-client",),
    )
    serving_cert, serving_key = issue(pki.serving_ca, "wattscale", server_hosts=("127.0.0.1",)).write(
        tmp_path, "serving"
    )
    tls = ServingTls(
        serving_cert, serving_key, request_client_certificates=True, client_ca_pem=config.ca_pem()
    )
    clock = [1000.0]
    api_config = client.Configuration(host=str(fake_server.make_url("")).rstrip("/"))
    async with client.ApiClient(api_config) as api:
        metrics = SelfMetrics()
        app = create_app(
            store=example_store(),
            index=example_index(),
            authenticator=Authenticator(
                lambda: config, KubeTokenReviewer(api, metrics), clock=lambda: clock[0]
            ),
            authorizer=Authorizer(KubeAccessReviewer(api, metrics), clock=lambda: clock[0]),
            self_metrics_registry=metrics,
            settings=ApiSettings(),
            clock=lambda: NOW,
        )
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.listening_context)
        await site.start()
        port = runner.addresses[0][1]
        yield Adapter(f"https://127.0.0.1:{port}", pki, fake, tls, clock)
        await runner.cleanup()


def proxy_headers(user: str, *groups: str) -> dict[str, str]:
    return {"X-Remote-User": user, "X-Remote-Group": ", ".join(groups)} if groups else {"X-Remote-User": user}


async def test_front_proxy_masters_skip_authorization(adapter: Adapter) -> None:
    proxy = issue(adapter.pki.front_proxy_ca, "front-proxy-client")
    code, body = await adapter.get(
        PODS_PATH, proxy, proxy_headers("system:kube-aggregator", "system:masters")
    )
    assert code == 200 and isinstance(body, dict) and body["kind"] == "MetricValueList"
    assert adapter.fake.count("SubjectAccessReview") == 0


async def test_front_proxy_user_is_authorized_with_the_reference_attributes(adapter: Adapter) -> None:
    adapter.fake.grants["system:serviceaccount:kube-system:horizontal-pod-autoscaler"] = {
        "pods/watts_per_token"
    }
    proxy = issue(adapter.pki.front_proxy_ca, "front-proxy-client")
    headers = {
        "X-Remote-User": "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
        "X-Remote-Extra-Authentication.kubernetes.io%2Fpod-Name": "hpa-0",
    }
    connector = aiohttp.TCPConnector(ssl=adapter.pki.context(proxy, "proxy"))
    async with aiohttp.ClientSession(connector=connector) as session:
        # Two group headers, as the aggregator sends one line per group.
        async with session.get(
            adapter.url + PODS_PATH,
            headers=[
                *headers.items(),
                ("X-Remote-Group", "system:serviceaccounts"),
                ("X-Remote-Group", "ops"),
            ],
        ) as response:
            assert response.status == 200
    review = next(r for r in adapter.fake.reviews if r["kind"] == "SubjectAccessReview")
    assert review["spec"]["resourceAttributes"] == {
        "namespace": "inference",
        "verb": "get",
        "group": "custom.metrics.k8s.io",
        "version": "v1beta2",
        "resource": "pods",
        "subresource": "watts_per_token",
        "name": "*",
    }
    assert review["spec"]["groups"] == ["system:serviceaccounts", "ops", "system:authenticated"]
    assert review["spec"]["extra"] == {"authentication.kubernetes.io/pod-name": ["hpa-0"]}


async def test_namespace_metric_is_authorized_as_resource_metrics(adapter: Adapter) -> None:
    proxy = issue(adapter.pki.front_proxy_ca, "front-proxy-client")
    code, body = await adapter.get(
        "/apis/custom.metrics.k8s.io/v1beta1/namespaces/inference/metrics/watts_per_token",
        proxy,
        proxy_headers("dana"),
    )
    assert code == 403 and isinstance(body, dict)
    assert body["reason"] == "Forbidden"
    assert 'User "dana" cannot get resource "metrics"' in body["message"]
    review = adapter.fake.reviews[-1]["spec"]["resourceAttributes"]
    assert (review["resource"], review["name"], review["namespace"]) == (
        "metrics",
        "watts_per_token",
        "inference",
    )


async def test_denied_user_gets_403_status(adapter: Adapter) -> None:
    proxy = issue(adapter.pki.front_proxy_ca, "front-proxy-client")
    code, body = await adapter.get(PODS_PATH, proxy, proxy_headers("mallory"))
    assert code == 403 and isinstance(body, dict)
    assert body["kind"] == "Status" and body["reason"] == "Forbidden"
    assert 'pods.custom.metrics.k8s.io "*" is forbidden: User "mallory"' in body["message"]


async def test_disallowed_common_name_is_401(adapter: Adapter) -> None:
    impostor = issue(adapter.pki.front_proxy_ca, "not-the-front-proxy")
    code, body = await adapter.get(PODS_PATH, impostor, proxy_headers("admin", "system:masters"))
    assert code == 401 and isinstance(body, dict)
    assert body["reason"] == "Unauthorized"
    assert "not in requestheader-allowed-names" in body["message"]


async def test_front_proxy_certificate_without_user_header_is_401(adapter: Adapter) -> None:
    proxy = issue(adapter.pki.front_proxy_ca, "front-proxy-client")
    code, body = await adapter.get(PODS_PATH, proxy)
    assert code == 401 and isinstance(body, dict) and body["reason"] == "Unauthorized"


async def test_certificate_from_a_foreign_ca_is_refused_at_the_handshake(adapter: Adapter) -> None:
    stranger = issue(make_ca("someone-else"), "front-proxy-client")
    with pytest.raises(aiohttp.ClientError):
        await adapter.get(PODS_PATH, stranger, proxy_headers("admin", "system:masters"))


async def test_client_ca_certificate_names_the_user_and_groups(adapter: Adapter) -> None:
    adapter.fake.grants["alice"] = {"pods/watts_per_token"}
    alice = issue(adapter.pki.client_ca, "alice", organisations=("team-a",))
    code, _ = await adapter.get(PODS_PATH, alice, proxy_headers("root", "system:masters"))
    assert code == 200
    review = adapter.fake.reviews[-1]["spec"]
    # X-Remote-* headers count only behind a front-proxy certificate: alice stays alice.
    assert (review["user"], review["groups"]) == ("alice", ["team-a", "system:authenticated"])


async def test_bearer_tokens_go_through_token_review(adapter: Adapter) -> None:
    keda = "system:serviceaccount:keda:keda-operator"
    adapter.fake.tokens["good-token"] = {"username": keda, "groups": ["system:serviceaccounts"], "uid": "u-1"}
    adapter.fake.grants[keda] = {"pods/watts_per_token"}
    code, _ = await adapter.get(PODS_PATH, headers={"Authorization": "Bearer good-token"})
    assert code == 200
    code, body = await adapter.get(PODS_PATH, headers={"Authorization": "Bearer forged-token"})
    assert code == 401 and isinstance(body, dict) and "TokenReview" in body["message"]
    code, body = await adapter.get(PODS_PATH)
    assert code == 401 and isinstance(body, dict) and body["kind"] == "Status"


async def test_reviews_are_cached_for_ten_seconds(adapter: Adapter) -> None:
    adapter.fake.tokens["t"] = {"username": "carol", "groups": []}
    adapter.fake.grants["carol"] = {"pods/watts_per_token"}
    for _ in range(3):
        assert (await adapter.get(PODS_PATH, headers={"Authorization": "Bearer t"}))[0] == 200
    assert adapter.fake.count("TokenReview") == 1
    assert adapter.fake.count("SubjectAccessReview") == 1
    adapter.fake.grants["carol"] = set()  # revoked: still allowed from the cache until it expires
    assert (await adapter.get(PODS_PATH, headers={"Authorization": "Bearer t"}))[0] == 200
    adapter.clock[0] += 10.5
    assert (await adapter.get(PODS_PATH, headers={"Authorization": "Bearer t"}))[0] == 403
    assert adapter.fake.count("TokenReview") == 2
    assert adapter.fake.count("SubjectAccessReview") == 2


async def test_health_needs_no_credentials_and_metrics_needs_a_grant(adapter: Adapter) -> None:
    for path in ("/healthz", "/livez", "/readyz"):
        assert (await adapter.get(path))[0] == 200
    proxy = issue(adapter.pki.front_proxy_ca, "front-proxy-client")
    assert (await adapter.get("/metrics", proxy, proxy_headers("prometheus")))[0] == 403
    adapter.fake.grants["prometheus"] = {"/metrics"}
    adapter.clock[0] += 11  # past the cached denial
    code, text = await adapter.get("/metrics", proxy, proxy_headers("prometheus"))
    assert code == 200 and isinstance(text, str)
    assert 'wattscale_api_requests_total{code="403",route="/metrics"}' in text
    assert "process_cpu_seconds_total" in text  # the process-wide registry, where collectors record too


async def test_new_client_ca_is_trusted_after_reload(adapter: Adapter) -> None:
    rotated = make_ca("front-proxy-ca-2")
    proxy = issue(rotated, "front-proxy-client")
    with pytest.raises(aiohttp.ClientError):
        await adapter.get(PODS_PATH, proxy, proxy_headers("admin", "system:masters"))
    adapter.tls.update_client_cas(rotated.cert_pem + adapter.pki.client_ca.cert_pem)
    # TLS now accepts the rotated CA; authentication still needs it in the request-header pool.
    code, _ = await adapter.get(PODS_PATH, proxy, proxy_headers("admin", "system:masters"))
    assert code == 401
