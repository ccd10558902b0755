"""ServiceAccounts with and without a grant on custom.metrics.k8s.io, and their tokens."""

from __future__ import annotations

import contextlib

import kubernetes.client
from kubernetes.client import (
    RbacV1Subject,
    V1ClusterRole,
    V1ClusterRoleBinding,
    V1ObjectMeta,
    V1PolicyRule,
    V1RoleRef,
    V1ServiceAccount,
)

METRICS_READER_ROLE = "cluster-test-custom-metrics-reader"


def service_account_token(
    api: kubernetes.client.ApiClient, namespace: str, name: str, *, grant_metrics: bool
) -> str:
    """Create ServiceAccount namespace/name (bound to a read role on custom.metrics.k8s.io when
    `grant_metrics`) and return a token for it from the TokenRequest API. Existing objects are reused."""
    core = kubernetes.client.CoreV1Api(api)
    rbac = kubernetes.client.RbacAuthorizationV1Api(api)
    with contextlib.suppress(kubernetes.client.ApiException):
        core.create_namespaced_service_account(namespace, V1ServiceAccount(metadata=V1ObjectMeta(name=name)))
    if grant_metrics:
        rule = V1PolicyRule(api_groups=["custom.metrics.k8s.io"], resources=["*"], verbs=["get", "list"])
        with contextlib.suppress(kubernetes.client.ApiException):
            rbac.create_cluster_role(
                V1ClusterRole(metadata=V1ObjectMeta(name=METRICS_READER_ROLE), rules=[rule])
            )
        binding = V1ClusterRoleBinding(
            metadata=V1ObjectMeta(name=f"{METRICS_READER_ROLE}:{namespace}:{name}"),
            role_ref=V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=METRICS_READER_ROLE
            ),
            subjects=[RbacV1Subject(kind="ServiceAccount", name=name, namespace=namespace)],
        )
        with contextlib.suppress(kubernetes.client.ApiException):
            rbac.create_cluster_role_binding(binding)
    request = kubernetes.client.AuthenticationV1TokenRequest(
        spec=kubernetes.client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
    )
    status = core.create_namespaced_service_account_token(name, namespace, request).status
    assert status is not None and status.token, "TokenRequest returned no token"
    return str(status.token)
