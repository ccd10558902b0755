"""Who may read metrics: through the aggregator, and straight at the adapter the way KEDA calls it."""

from __future__ import annotations

import ssl
import urllib.error
from pathlib import Path

import kubernetes.client
import pytest
from kubeharness.adapter import DeployedAdapter
from kubeharness.controlplane import FRONT_PROXY_CLIENT_NAME, ControlPlane
from kubeharness.https import Response, https_get
from kubeharness.identities import service_account_token
from kubeharness.metrics import item_values, raw_path, wait_for_pod_metric
from kubeharness.pki import CertificateAuthority
from kubeharness.processes import wait_until
from kubeharness.workloads import WORKLOAD_NAMESPACE

pytestmark = pytest.mark.cluster

POD_METRIC = "/namespaces/llm/pods/*/gpu_power_watts"
AS_CLUSTER_ADMIN = {"X-Remote-User": "admin", "X-Remote-Group": "system:masters"}


def _pod_metric_url(adapter: DeployedAdapter) -> str:
    return adapter.metric_url(f"{POD_METRIC}?labelSelector=app%3Dphi")


def test_user_without_a_grant_is_refused_by_the_aggregator(
    adapter: DeployedAdapter, control_plane: ControlPlane, steady_workload: list[str]
) -> None:
    path = raw_path("v1beta2", POD_METRIC, label_selector="app=phi")
    # The path itself is fine: an admin reads it.
    wait_for_pod_metric(control_plane, "v1beta2", "gpu_power_watts", "phi", steady_workload)
    nobody = control_plane.user_kubeconfig("mallory", groups=("developers",))
    answer = control_plane.kubectl("get", "--raw", path, kubeconfig=nobody, check=False)
    assert answer.returncode != 0
    assert "Forbidden" in answer.stderr or "forbidden" in answer.stderr, answer.stderr
    assert 'User "mallory" cannot get resource "pods/gpu_power_watts"' in answer.stderr, answer.stderr


def test_service_account_token_straight_to_the_adapter_needs_a_grant(
    adapter: DeployedAdapter, admin_api: kubernetes.client.ApiClient, steady_workload: list[str]
) -> None:
    granted = service_account_token(admin_api, WORKLOAD_NAMESPACE, "metrics-reader", grant_metrics=True)
    ungranted = service_account_token(admin_api, WORKLOAD_NAMESPACE, "no-metrics", grant_metrics=False)
    url = _pod_metric_url(adapter)

    def read_all_pods() -> Response | None:
        answer = https_get(url, ca_path=adapter.ca.cert_path, bearer_token=granted)
        return (
            answer if answer.status == 200 and len(answer.json()["items"]) == len(steady_workload) else None
        )

    # TokenReview and SubjectAccessReview happen inside the adapter, against this API server.
    answer = wait_until(read_all_pods, timeout_seconds=60, description="the granted token to read phi's pods")
    assert sorted(item_values(answer.json())) == steady_workload

    refused = https_get(url, ca_path=adapter.ca.cert_path, bearer_token=ungranted)
    assert refused.status == 403, refused.body[:300]
    assert refused.json()["reason"] == "Forbidden"
    assert "system:serviceaccount:llm:no-metrics" in refused.json()["message"]

    forged = https_get(url, ca_path=adapter.ca.cert_path, bearer_token=granted[:-4] + "AAAA")
    assert forged.status == 401, forged.body[:300]


def _request_with_client_cert(
    adapter: DeployedAdapter, cert: tuple[Path, Path], headers: dict[str, str] = AS_CLUSTER_ADMIN
) -> Response | str:
    try:
        return https_get(
            _pod_metric_url(adapter), ca_path=adapter.ca.cert_path, client_cert=cert, headers=headers
        )
    except (ssl.SSLError, ConnectionError, urllib.error.URLError) as exc:
        return f"{type(exc).__name__}: {exc}"


def test_front_proxy_headers_count_only_with_the_front_proxy_ca(
    adapter: DeployedAdapter, control_plane: ControlPlane, steady_workload: list[str], tmp_path: Path
) -> None:
    real = control_plane.front_proxy_client
    # The aggregator's own client certificate makes these headers count ...
    trusted = _request_with_client_cert(adapter, (real.cert_path, real.key_path))
    assert isinstance(trusted, Response) and trusted.status == 200, trusted

    # ... the same name and headers from a CA the cluster never configured must not.
    foreign = CertificateAuthority(tmp_path, "foreign").issue("impostor", common_name=FRONT_PROXY_CLIENT_NAME)
    refused = _request_with_client_cert(adapter, (foreign.cert_path, foreign.key_path))
    if isinstance(refused, Response):
        assert refused.status in (401, 403), refused.body[:300]
    # Otherwise it was refused at the TLS handshake, which is just as good, as long as the adapter lives.
    adapter.process.check_running()

    anonymous = https_get(_pod_metric_url(adapter), ca_path=adapter.ca.cert_path, headers=AS_CLUSTER_ADMIN)
    assert anonymous.status in (401, 403), anonymous.body[:300]


def test_cluster_client_certificates_identify_users_straight_at_the_adapter(
    adapter: DeployedAdapter, control_plane: ControlPlane, steady_workload: list[str]
) -> None:
    """Certificates from the cluster's client CA (client-ca-file of extension-apiserver-authentication)
    name a user, whose rights the API server then decides through SubjectAccessReview."""
    admin = control_plane.admin_cert
    allowed = _request_with_client_cert(adapter, (admin.cert_path, admin.key_path), headers={})
    assert isinstance(allowed, Response) and allowed.status == 200, allowed
    mallory = control_plane.cluster_ca.issue(
        "mallory-direct", common_name="mallory", organizations=("developers",)
    )
    refused = _request_with_client_cert(adapter, (mallory.cert_path, mallory.key_path), headers={})
    assert isinstance(refused, Response) and refused.status == 403, refused
    assert "mallory" in refused.json()["message"]
