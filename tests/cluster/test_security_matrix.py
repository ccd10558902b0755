"""The security matrix, on the real aggregator and API server: who gets in, and who is refused how.

Every case talks to `wattscale serve` as deployed by the harness (authentication from
`extension-apiserver-authentication`, TokenReview and SubjectAccessReview against this kube-apiserver).
The README's security table lists each case with its test.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import urllib.error
import warnings
from pathlib import Path

import kubernetes.client
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from kubeharness.adapter import DeployedAdapter, api_service_available
from kubeharness.controlplane import ControlPlane
from kubeharness.https import Response, https_get
from kubeharness.metrics import raw_path
from kubeharness.processes import wait_until
from kubeharness.workloads import WORKLOAD_NAMESPACE
from kubernetes.client import (
    RbacV1Subject,
    V1ClusterRole,
    V1ClusterRoleBinding,
    V1ObjectMeta,
    V1PolicyRule,
    V1Role,
    V1RoleBinding,
    V1RoleRef,
    V1ServiceAccount,
)

pytestmark = pytest.mark.cluster

MASTERS = {"X-Remote-User": "admin", "X-Remote-Group": "system:masters"}
GPU_POWER = "/namespaces/llm/pods/*/gpu_power_watts?labelSelector=app%3Dphi"


def _get(
    adapter: DeployedAdapter,
    path: str,
    *,
    cert: tuple[Path, Path] | None = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response | str:
    """The answer, or the reason there was none (refused at the TLS handshake)."""
    url = path if path.startswith("https://") else adapter.url + path
    try:
        return https_get(
            url, ca_path=adapter.ca.cert_path, client_cert=cert, bearer_token=token, headers=headers
        )
    except (ssl.SSLError, ConnectionError, urllib.error.URLError) as exc:
        return f"{type(exc).__name__}: {exc}"


def _code(answer: Response | str) -> int | str:
    return answer.status if isinstance(answer, Response) else answer


def _account(api: kubernetes.client.ApiClient, name: str, audiences: list[str] | None = None) -> str:
    core = kubernetes.client.CoreV1Api(api)
    with contextlib.suppress(kubernetes.client.ApiException):
        core.create_namespaced_service_account(
            WORKLOAD_NAMESPACE, V1ServiceAccount(metadata=V1ObjectMeta(name=name))
        )
    request = kubernetes.client.AuthenticationV1TokenRequest(
        spec=kubernetes.client.V1TokenRequestSpec(audiences=audiences or [], expiration_seconds=3600)
    )
    status = core.create_namespaced_service_account_token(name, WORKLOAD_NAMESPACE, request).status
    assert status is not None and status.token
    return str(status.token)


def _grant_in_llm(api: kubernetes.client.ApiClient, account: str, resources: list[str]) -> None:
    """A Role in namespace llm on custom.metrics.k8s.io `resources` (e.g. pods/gpu_power_watts), bound to `account`."""
    rbac = kubernetes.client.RbacAuthorizationV1Api(api)
    role = f"matrix-{account}"
    rule = V1PolicyRule(api_groups=["custom.metrics.k8s.io"], resources=resources, verbs=["get", "list"])
    with contextlib.suppress(kubernetes.client.ApiException):
        rbac.create_namespaced_role(
            WORKLOAD_NAMESPACE, V1Role(metadata=V1ObjectMeta(name=role), rules=[rule])
        )
    binding = V1RoleBinding(
        metadata=V1ObjectMeta(name=role),
        role_ref=V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=role),
        subjects=[RbacV1Subject(kind="ServiceAccount", name=account, namespace=WORKLOAD_NAMESPACE)],
    )
    with contextlib.suppress(kubernetes.client.ApiException):
        rbac.create_namespaced_role_binding(WORKLOAD_NAMESPACE, binding)


def _metric_path(adapter: DeployedAdapter, path: str) -> str:
    return adapter.metric_url(path).removeprefix(adapter.url)


def _until_code(read: object, code: int, description: str) -> Response:
    def answered() -> Response | None:
        answer = read()  # type: ignore[operator]
        return answer if isinstance(answer, Response) and answer.status == code else None

    return wait_until(answered, timeout_seconds=60, description=description)


def test_front_proxy_headers_from_a_client_that_is_not_the_proxy_are_ignored(
    adapter: DeployedAdapter, control_plane: ControlPlane, steady_workload: list[str]
) -> None:
    """A cluster-CA client certificate names its own user; X-Remote-* headers it sends count for nothing."""
    mallory = control_plane.cluster_ca.issue(
        "matrix-mallory", common_name="mallory", organizations=("developers",)
    )
    answer = _get(
        adapter, _metric_path(adapter, GPU_POWER), cert=(mallory.cert_path, mallory.key_path), headers=MASTERS
    )
    assert isinstance(answer, Response) and answer.status == 403, answer
    assert 'User "mallory"' in answer.json()["message"]


def test_front_proxy_headers_with_a_bearer_token_are_ignored(
    adapter: DeployedAdapter, admin_api: kubernetes.client.ApiClient, steady_workload: list[str]
) -> None:
    token = _account(admin_api, "matrix-no-grant")
    answer = _get(adapter, _metric_path(adapter, GPU_POWER), token=token, headers=MASTERS)
    assert isinstance(answer, Response) and answer.status == 403, answer
    assert "system:serviceaccount:llm:matrix-no-grant" in answer.json()["message"]


def test_proxy_certificate_whose_common_name_is_not_allowed_is_401(
    adapter: DeployedAdapter, control_plane: ControlPlane, steady_workload: list[str]
) -> None:
    other = control_plane.front_proxy_ca.issue("matrix-other-proxy", common_name="not-the-aggregator")
    answer = _get(
        adapter, _metric_path(adapter, GPU_POWER), cert=(other.cert_path, other.key_path), headers=MASTERS
    )
    assert isinstance(answer, Response) and answer.status == 401, answer
    assert "not-the-aggregator" in answer.json()["message"]


def test_expired_proxy_certificate_is_refused(
    adapter: DeployedAdapter, control_plane: ControlPlane, steady_workload: list[str]
) -> None:
    expired = control_plane.front_proxy_ca.issue(
        "matrix-expired-proxy", common_name="front-proxy-client", expired=True
    )
    answer = _get(
        adapter, _metric_path(adapter, GPU_POWER), cert=(expired.cert_path, expired.key_path), headers=MASTERS
    )
    # Refused at the handshake (the certificate fails verification) or, if it got through, as no identity.
    assert isinstance(answer, str) or answer.status == 401, answer
    adapter.process.check_running()


def test_expired_cluster_client_certificate_is_refused(
    adapter: DeployedAdapter, control_plane: ControlPlane, steady_workload: list[str]
) -> None:
    expired = control_plane.cluster_ca.issue(
        "matrix-expired-admin", common_name="admin", organizations=("system:masters",), expired=True
    )
    answer = _get(adapter, _metric_path(adapter, GPU_POWER), cert=(expired.cert_path, expired.key_path))
    assert isinstance(answer, str) or answer.status == 401, answer


def test_service_account_token_for_another_audience_is_401(
    adapter: DeployedAdapter, admin_api: kubernetes.client.ApiClient, steady_workload: list[str]
) -> None:
    token = _account(admin_api, "matrix-audience", audiences=["https://not-this-cluster.example"])
    _grant_in_llm(admin_api, "matrix-audience", ["*"])
    answer = _get(adapter, _metric_path(adapter, GPU_POWER), token=token)
    assert isinstance(answer, Response) and answer.status == 401, answer


def test_token_of_a_deleted_service_account_stops_working(
    adapter: DeployedAdapter, admin_api: kubernetes.client.ApiClient, steady_workload: list[str]
) -> None:
    token = _account(admin_api, "matrix-short-lived")
    _grant_in_llm(admin_api, "matrix-short-lived", ["*"])
    path = _metric_path(adapter, GPU_POWER)
    _until_code(lambda: _get(adapter, path, token=token), 200, "the granted token to read")
    kubernetes.client.CoreV1Api(admin_api).delete_namespaced_service_account(
        "matrix-short-lived", WORKLOAD_NAMESPACE
    )
    # Within the adapter's 10 s TokenReview cache, then refused.
    refused = _until_code(
        lambda: _get(adapter, path, token=token), 401, "the deleted account's token to be refused"
    )
    assert refused.json()["reason"] == "Unauthorized"


def test_subject_access_review_denies_per_namespace(
    adapter: DeployedAdapter, admin_api: kubernetes.client.ApiClient, steady_workload: list[str]
) -> None:
    token = _account(admin_api, "matrix-llm-only")
    _grant_in_llm(admin_api, "matrix-llm-only", ["*"])
    _until_code(lambda: _get(adapter, _metric_path(adapter, GPU_POWER), token=token), 200, "reading in llm")
    other = _get(adapter, _metric_path(adapter, "/namespaces/default/pods/*/gpu_power_watts"), token=token)
    assert isinstance(other, Response) and other.status == 403, other
    assert 'in the namespace "default"' in other.json()["message"]


def test_subject_access_review_denies_per_metric(
    adapter: DeployedAdapter, admin_api: kubernetes.client.ApiClient, steady_workload: list[str]
) -> None:
    token = _account(admin_api, "matrix-gpu-power-only")
    _grant_in_llm(admin_api, "matrix-gpu-power-only", ["pods/gpu_power_watts"])
    _until_code(lambda: _get(adapter, _metric_path(adapter, GPU_POWER), token=token), 200, "gpu_power_watts")
    other = _get(
        adapter, _metric_path(adapter, GPU_POWER.replace("gpu_power_watts", "watts_per_token")), token=token
    )
    assert isinstance(other, Response) and other.status == 403, other
    assert 'cannot get resource "pods/watts_per_token"' in other.json()["message"]


def test_anonymous_requests_are_401_except_health(
    adapter: DeployedAdapter, steady_workload: list[str]
) -> None:
    for path in (_metric_path(adapter, GPU_POWER), "/apis", "/metrics", "/openapi/v2", "/version"):
        answer = _get(adapter, path)
        assert isinstance(answer, Response) and answer.status == 401, (path, answer)
        assert answer.json()["kind"] == "Status"
    for path in ("/livez", "/readyz", "/healthz"):
        assert _code(_get(adapter, path)) == 200, path


def test_anonymous_requests_through_the_aggregator_are_401(control_plane: ControlPlane) -> None:
    answer = https_get(
        control_plane.api_url + raw_path("v1beta2", "/namespaces/llm/pods/*/gpu_power_watts"),
        ca_path=control_plane.cluster_ca.cert_path,
    )
    assert answer.status == 401


def test_metrics_endpoint_needs_a_non_resource_grant(
    adapter: DeployedAdapter, admin_api: kubernetes.client.ApiClient
) -> None:
    token = _account(admin_api, "matrix-scraper")
    refused = _get(adapter, "/metrics", token=token)
    assert isinstance(refused, Response) and refused.status == 403, refused
    rbac = kubernetes.client.RbacAuthorizationV1Api(admin_api)
    rule = V1PolicyRule(non_resource_urls=["/metrics"], verbs=["get"])
    with contextlib.suppress(kubernetes.client.ApiException):
        rbac.create_cluster_role(V1ClusterRole(metadata=V1ObjectMeta(name="matrix-scraper"), rules=[rule]))
    with contextlib.suppress(kubernetes.client.ApiException):
        rbac.create_cluster_role_binding(
            V1ClusterRoleBinding(
                metadata=V1ObjectMeta(name="matrix-scraper"),
                role_ref=V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="matrix-scraper"
                ),
                subjects=[
                    RbacV1Subject(kind="ServiceAccount", name="matrix-scraper", namespace=WORKLOAD_NAMESPACE)
                ],
            )
        )
    # The denial is cached for 10 s, then the new grant holds.
    allowed = _until_code(lambda: _get(adapter, "/metrics", token=token), 200, "/metrics with the grant")
    assert b"wattscale_api_requests_total" in allowed.body


def test_tls_below_1_2_is_refused(adapter: DeployedAdapter) -> None:
    def handshake(maximum: ssl.TLSVersion) -> str | None:
        context = ssl.create_default_context(cafile=str(adapter.ca.cert_path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # asking for TLS 1.0/1.1 is itself deprecated
            context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            context.maximum_version = maximum
        with contextlib.suppress(ssl.SSLError):
            context.set_ciphers("ALL:@SECLEVEL=0")  # let this client offer TLS 1.0/1.1 at all
        try:
            with socket.create_connection(("127.0.0.1", adapter.port), timeout=10) as raw:
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    return tls.version()
        except (ssl.SSLError, ConnectionError):
            return None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # naming TLS 1.0/1.1 is itself deprecated
        old_versions = (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)
    for version in old_versions:
        assert handshake(version) is None, version
    assert handshake(ssl.TLSVersion.TLSv1_2) == "TLSv1.2"


def test_rotated_serving_certificate_is_picked_up_without_a_restart(
    adapter: DeployedAdapter, control_plane: ControlPlane, admin_api: kubernetes.client.ApiClient
) -> None:
    def served_serial() -> int:
        context = ssl.create_default_context(cafile=str(adapter.ca.cert_path))
        with socket.create_connection(("127.0.0.1", adapter.port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number

    pid = adapter.process.pid
    before = served_serial()
    original = x509.load_pem_x509_certificate(adapter.serving.cert_pem)
    names = original.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # Written over the files the adapter was started with, as a renewed Secret's mount rewrites them.
    renewed = adapter.ca.issue(
        adapter.serving.cert_path.stem,
        common_name=str(original.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value),
        dns_names=tuple(names.get_values_for_type(x509.DNSName)),
        ip_addresses=tuple(str(ip) for ip in names.get_values_for_type(x509.IPAddress)),
        server=True,
    )
    assert renewed.cert_path == adapter.serving.cert_path
    wait_until(
        lambda: served_serial() != before, timeout_seconds=30, description="the renewed certificate served"
    )
    assert adapter.process.pid == pid
    adapter.process.check_running()
    # The aggregator, which checks our certificate against the APIService's caBundle, still reaches us.
    for name in adapter.api_services:
        assert api_service_available(admin_api, name)[0], name
    assert control_plane.kubectl("get", "--raw", "/apis/custom.metrics.k8s.io/v1beta2").returncode == 0
