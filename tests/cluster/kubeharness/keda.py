"""KEDA's operator and metrics API server (built from github.com/kedacore/keda/v2 by build.sh), on the host.

Installed the way KEDA's own manifests install it, from the `config/` folder of the same module version: the
CRDs, the `keda` namespace, the `keda-operator` ServiceAccount and KEDA's RBAC (operator role, auth delegation,
the HPA controller's grant on external.metrics.k8s.io) and the `v1beta1.external.metrics.k8s.io` APIService.
Both processes act as `keda/keda-operator` (a token from the TokenRequest API), so KEDA's own RBAC is what
is tested, including `serviceaccounts/token` for `boundServiceAccountToken` authentication.

What a host-run KEDA needs, and nothing else, is changed:
* the metrics server's Service becomes an ExternalName to localhost and the APIService points at the port it
  listens on, the same routing the harness gives wattscale (adapter.py);
* certificates come from a harness CA instead of KEDA's cert rotation (`--enable-cert-rotation=false`, KEDA's
  documented way to bring your own): one pair in `--cert-dir` (`ca.crt`, `tls.crt`, `tls.key`) serves the
  APIService and the operator<->metrics-server gRPC link, which is mutual TLS;
* `--ca-dir` holds the CAs KEDA trusts for scaler HTTPS calls (the wattscale adapter's CA);
* `KEDA_SERVICE_ACCOUNT_TOKEN_AUDIENCES` names the ServiceAccounts KEDA may mint `boundServiceAccountToken`s
  for (KEDA 2.21 refuses any other in its default `enforce-audience` mode), with the API server's audience,
  the one wattscale's TokenReview accepts.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import kubernetes.client
import yaml

from kubeharness.adapter import wait_for_api_service
from kubeharness.controlplane import API_AUDIENCE, ControlPlane
from kubeharness.https import wait_for_probe
from kubeharness.identities import service_account_token
from kubeharness.kubeconfig import write_kubeconfig
from kubeharness.pki import CertificateAuthority
from kubeharness.processes import ManagedProcess, free_port, wait_until

KEDA_NAMESPACE = "keda"
KEDA_ACCOUNT = "keda-operator"
METRICS_SERVICE = "keda-metrics-apiserver"
EXTERNAL_METRICS_API_SERVICE = "v1beta1.external.metrics.k8s.io"
_MANIFESTS = (
    "general/namespace.yaml",
    "service_account/service_account.yaml",
    "rbac/role.yaml",
    "rbac/role_binding.yaml",
    "metrics-server/role.yaml",
    "metrics-server/role_binding.yaml",
    "metrics-server/service.yaml",
    "metrics-server/api_service.yaml",
)
_START_TIMEOUT_SECONDS = 120.0


def load_documents(paths: list[Path]) -> list[dict[str, Any]]:
    return [doc for path in paths for doc in yaml.safe_load_all(path.read_text()) if doc]


@dataclass
class DeployedKeda:
    operator: ManagedProcess
    metrics_server: ManagedProcess

    @property
    def processes(self) -> list[ManagedProcess]:
        return [self.operator, self.metrics_server]

    def stop(self) -> None:
        self.metrics_server.stop()
        self.operator.stop()


def host_run_documents(config: Path, ca_pem: bytes, port: int) -> list[dict[str, Any]]:
    """KEDA's RBAC, Service and APIService with the host-run changes of the module docstring."""
    documents = load_documents([config / name for name in _MANIFESTS])
    for doc in documents:
        if doc.get("kind") == "Service" and doc["metadata"]["name"] == METRICS_SERVICE:
            doc["spec"] = {
                "type": "ExternalName",
                "externalName": "localhost",
                "ports": [{"name": "https", "port": port, "targetPort": port, "protocol": "TCP"}],
            }
        elif doc.get("kind") == "APIService":
            doc["spec"]["service"]["port"] = port
            doc["spec"].pop("insecureSkipTLSVerify", None)
            doc["spec"]["caBundle"] = base64.b64encode(ca_pem).decode()
    return documents


def apply_crds(plane: ControlPlane, crds: list[dict[str, Any]]) -> None:
    """Apply CRDs and wait until each is Established (kubectl wait fails on a CRD with no status yet)."""
    plane.apply(crds, "--force-conflicts")
    extensions = kubernetes.client.ApiextensionsV1Api(plane.api_client())

    def established(name: str) -> bool:
        status = extensions.read_custom_resource_definition(name).status
        return any(
            c.type == "Established" and c.status == "True"
            for c in (status.conditions if status else None) or []
        )

    for crd in crds:
        name = crd["metadata"]["name"]
        wait_until(
            partial(established, name),
            timeout_seconds=_START_TIMEOUT_SECONDS,
            description=f"CRD {name} Established",
        )


def install_crds(plane: ControlPlane, config: Path) -> None:
    apply_crds(plane, load_documents(sorted((config / "crd" / "bases").glob("*.yaml"))))


def deploy_keda(
    plane: ControlPlane, config: Path, trusted_cas: list[Path], token_accounts: list[tuple[str, str]]
) -> DeployedKeda:
    """Install KEDA from `config` (the module's config/ folder), start both processes and wait until the
    external metrics APIService is Available. `token_accounts` are the (namespace, ServiceAccount) pairs
    KEDA may mint bound tokens for."""
    workdir = plane.workdir / "keda"
    workdir.mkdir()
    cert_dir, ca_dir = workdir / "certs", workdir / "trusted-cas"
    cert_dir.mkdir()
    ca_dir.mkdir()
    ca = CertificateAuthority(workdir, "keda")
    pair = ca.issue(
        "keda",
        common_name=f"{METRICS_SERVICE}.{KEDA_NAMESPACE}.svc",
        dns_names=(
            f"{METRICS_SERVICE}.{KEDA_NAMESPACE}.svc",
            f"{KEDA_ACCOUNT}.{KEDA_NAMESPACE}.svc.cluster.local",
            "localhost",
        ),
        ip_addresses=("127.0.0.1",),
        server=True,
        also_client=True,
    )
    shutil.copy(ca.cert_path, cert_dir / "ca.crt")
    shutil.copy(pair.cert_path, cert_dir / "tls.crt")
    shutil.copy(pair.key_path, cert_dir / "tls.key")
    for index, path in enumerate(trusted_cas):
        shutil.copy(path, ca_dir / f"trusted-{index}.crt")

    install_crds(plane, config)
    port = free_port()
    documents = host_run_documents(config, ca.cert_pem, port)
    plane.apply([doc for doc in documents if doc.get("kind") != "APIService"], "--force-conflicts")

    api = plane.api_client()
    token = service_account_token(api, KEDA_NAMESPACE, KEDA_ACCOUNT, grant_metrics=False)
    kubeconfig = write_kubeconfig(
        workdir / "keda.kubeconfig",
        server=plane.api_url,
        ca_pem=plane.cluster_ca.cert_pem,
        user=f"system:serviceaccount:{KEDA_NAMESPACE}:{KEDA_ACCOUNT}",
        token=token,
    )
    grpc_address = f"127.0.0.1:{free_port()}"
    probe_port = free_port()
    env = {
        "KUBECONFIG": str(kubeconfig),
        # Running on the host: never in-cluster discovery.
        "KUBERNETES_SERVICE_HOST": "",
        "KUBERNETES_SERVICE_PORT": "",
        "WATCH_NAMESPACE": "",
        "POD_NAMESPACE": KEDA_NAMESPACE,
        "KEDA_CLUSTER_OBJECT_NAMESPACE": KEDA_NAMESPACE,
        "KEDA_SERVICE_ACCOUNT_TOKEN_AUDIENCES": json.dumps(
            [
                {"audience": API_AUDIENCE, "namespace": namespace, "serviceAccountName": account}
                for namespace, account in token_accounts
            ]
        ),
    }
    logs = plane.workdir / "logs"
    operator = ManagedProcess(
        "keda-operator",
        [
            plane.binaries.path("keda-operator"),
            "--leader-elect=false",
            f"--metrics-bind-address=127.0.0.1:{free_port()}",
            f"--health-probe-bind-address=127.0.0.1:{probe_port}",
            f"--metrics-service-bind-address={grpc_address}",
            f"--cert-dir={cert_dir}",
            "--enable-cert-rotation=false",
            f"--ca-dir={ca_dir}",
            "--zap-log-level=info",
            "--zap-encoder=console",
        ],
        logs / "keda-operator.log",
        env=env,
    )
    try:
        wait_for_probe(
            operator, f"http://127.0.0.1:{probe_port}/readyz", timeout_seconds=_START_TIMEOUT_SECONDS
        )
    except BaseException:
        operator.stop()
        raise
    metrics_server = ManagedProcess(
        "keda-metrics-apiserver",
        [
            plane.binaries.path("keda-adapter"),
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--tls-cert-file={cert_dir / 'tls.crt'}",
            f"--tls-private-key-file={cert_dir / 'tls.key'}",
            f"--cert-dir={cert_dir}",  # the gRPC client's mutual-TLS pair and CA
            f"--lister-kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--metrics-service-address={grpc_address}",
            # Its plain-HTTP /metrics listener binds every interface; a free port keeps it out of the way.
            f"--port={free_port()}",
            "--zap-log-level=info",
            "--zap-encoder=console",
        ],
        logs / "keda-metrics-apiserver.log",
        env=env,
    )
    keda = DeployedKeda(operator=operator, metrics_server=metrics_server)
    try:
        plane.apply([doc for doc in documents if doc.get("kind") == "APIService"], "--force-conflicts")
        wait_for_api_service(api, EXTERNAL_METRICS_API_SERVICE, metrics_server)
    except BaseException:
        with contextlib.suppress(Exception):
            keda.stop()
        raise
    return keda


def token_minting_grant(namespace: str, account: str) -> list[dict[str, Any]]:
    """Role + RoleBinding letting KEDA's operator mint tokens for ServiceAccount namespace/account, which a
    `boundServiceAccountToken` TriggerAuthentication needs (KEDA's own role does not grant it)."""
    name = f"keda-mints-{account}"
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": name, "namespace": namespace},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["serviceaccounts/token"],
                    "resourceNames": [account],
                    "verbs": ["create"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": KEDA_ACCOUNT, "namespace": KEDA_NAMESPACE}],
        },
    ]


def bound_token_authentication(name: str, namespace: str, account: str) -> dict[str, Any]:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"boundServiceAccountToken": [{"parameter": "token", "serviceAccountName": account}]},
    }


def external_metric_path(namespace: str, metric: str, scaled_object: str) -> str:
    """Where the HPA reads a KEDA metric: external.metrics.k8s.io, selected by the ScaledObject's name."""
    return (
        f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}"
        f"?labelSelector=scaledobject.keda.sh%2Fname%3D{scaled_object}"
    )
