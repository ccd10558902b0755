"""KEDA's operator, metrics API server and admission webhooks (built from github.com/kedacore/keda/v2 by
build.sh), on the host.

Installed the way KEDA's own manifests install it, from the `config/` folder of the same module version: the
CRDs, the `keda` namespace, the `keda-operator` ServiceAccount and KEDA's RBAC (operator role, auth delegation,
the HPA controller's grant on external.metrics.k8s.io), the `v1beta1.external.metrics.k8s.io` APIService and
the `keda-admission` ValidatingWebhookConfiguration. The three processes act as `keda/keda-operator` (a token
from the TokenRequest API, the ServiceAccount KEDA's manifests give all three), so KEDA's own RBAC is what is
tested, including `serviceaccounts/token` for `boundServiceAccountToken` authentication.

What a host-run KEDA needs, and nothing else, is changed:
* the metrics server's Service becomes an ExternalName to localhost and the APIService points at the port it
  listens on, the same routing the harness gives wattscale (adapter.py);
* certificates come from a harness CA instead of KEDA's cert rotation (`--enable-cert-rotation=false`, KEDA's
  documented way to bring your own): one pair in `--cert-dir` (`ca.crt`, `tls.crt`, `tls.key`) serves the
  APIService and the operator<->metrics-server gRPC link, which is mutual TLS;
* the admission webhooks serve the same pair (a real install mounts one `kedaorg-certs` Secret into all three)
  and are registered with `clientConfig.url` on 127.0.0.1 instead of their Service, with `failurePolicy: Fail`
  instead of KEDA's `Ignore`: a webhook that does not answer fails the request rather than letting an
  unvalidated ScaledObject through unnoticed, so every ScaledObject a test writes is known to be validated;
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
import subprocess
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import kubernetes.client
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kubeharness.adapter import wait_for_api_service
from kubeharness.controlplane import API_AUDIENCE, ControlPlane
from kubeharness.https import http_get_text, wait_for_probe
from kubeharness.identities import service_account_token
from kubeharness.kubeconfig import write_kubeconfig
from kubeharness.pki import CertificateAuthority
from kubeharness.processes import ManagedProcess, free_port, wait_until

KEDA_NAMESPACE = "keda"
KEDA_ACCOUNT = "keda-operator"
METRICS_SERVICE = "keda-metrics-apiserver"
EXTERNAL_METRICS_API_SERVICE = "v1beta1.external.metrics.k8s.io"
WEBHOOK_CONFIGURATION = "keda-admission"
SCALED_OBJECT_WEBHOOK = "vscaledobject.kb.io"
_VALIDATIONS_METRIC = "keda_webhook_scaled_object_validations"
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
    plane: ControlPlane
    operator: ManagedProcess
    metrics_server: ManagedProcess
    webhooks: ManagedProcess
    webhooks_metrics_url: str

    @property
    def processes(self) -> list[ManagedProcess]:
        return [self.operator, self.metrics_server, self.webhooks]

    def stop(self) -> None:
        # Unregistered first: with failurePolicy Fail a registered, stopped webhook refuses every ScaledObject
        # write, including the finalizer removals that let the ones still there be deleted.
        self.plane.kubectl(
            "delete",
            "validatingwebhookconfiguration",
            WEBHOOK_CONFIGURATION,
            "--ignore-not-found",
            check=False,
        )
        self.webhooks.stop()
        self.metrics_server.stop()
        self.operator.stop()

    def scaled_object_validations(self, namespace: str, action: str) -> int:
        """How many ScaledObject writes (`action` "create" or "update") in `namespace` KEDA's webhook has
        validated: its own `keda_webhook_scaled_object_validations_total` counter."""
        page = http_get_text(self.webhooks_metrics_url)
        return sum(
            int(sample.value)
            for family in text_string_to_metric_families(page)
            if family.name == _VALIDATIONS_METRIC
            for sample in family.samples
            if sample.name.endswith("_total") and sample.labels == {"namespace": namespace, "action": action}
        )


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


def host_run_webhooks(documents: list[dict[str, Any]], port: int, ca_pem: bytes) -> list[dict[str, Any]]:
    """Webhook configurations whose Service references are replaced by the URL of a webhook server on the
    host (same path), trusted through `ca_pem`."""
    for doc in documents:
        for webhook in doc["webhooks"]:
            path = webhook["clientConfig"]["service"]["path"]
            webhook["clientConfig"] = {
                "url": f"https://127.0.0.1:{port}{path}",
                "caBundle": base64.b64encode(ca_pem).decode(),
            }
    return documents


def webhook_documents(config: Path, port: int, ca_pem: bytes) -> list[dict[str, Any]]:
    """KEDA's ValidatingWebhookConfiguration, pointed at the host-run webhook server and failing closed."""
    documents = host_run_webhooks(
        load_documents([config / "webhooks" / "validation_webhooks.yaml"]), port, ca_pem
    )
    for doc in documents:
        for webhook in doc["webhooks"]:
            webhook["failurePolicy"] = "Fail"
    return documents


def probe_scaled_object(trigger_names: tuple[str, ...]) -> dict[str, Any]:
    """A ScaledObject in KEDA's namespace with one cron trigger per name, for server-side dry runs; the CRD
    schema accepts repeated names, KEDA's webhook does not."""
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "webhook-probe", "namespace": KEDA_NAMESPACE},
        "spec": {
            "scaleTargetRef": {"name": "webhook-probe"},
            "triggers": [
                {
                    "type": "cron",
                    "name": name,
                    "metadata": {
                        "timezone": "UTC",
                        "start": "0 8 * * *",
                        "end": "0 9 * * *",
                        "desiredReplicas": "1",
                    },
                }
                for name in trigger_names
            ],
        },
    }


def dry_run_create(plane: ControlPlane, document: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """`kubectl create --dry-run=server`: the API server admits it (webhooks included) and stores nothing."""
    return plane.kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(document), check=False)


def wait_for_webhooks(plane: ControlPlane, webhooks: ManagedProcess) -> None:
    """Wait until the API server calls KEDA's ScaledObject webhook (a dry run only it refuses is refused, with
    its message), then check that it admits a valid ScaledObject."""
    refused_message = 'triggerName "repeated" is defined multiple times'

    def refused_by_keda() -> bool:
        webhooks.check_running()
        done = dry_run_create(plane, probe_scaled_object(("repeated", "repeated")))
        return (
            done.returncode != 0 and SCALED_OBJECT_WEBHOOK in done.stderr and refused_message in done.stderr
        )

    wait_until(
        refused_by_keda,
        timeout_seconds=_START_TIMEOUT_SECONDS,
        description=f"KEDA's webhook {SCALED_OBJECT_WEBHOOK} to refuse repeated trigger names",
        on_timeout=webhooks.tail,
    )
    admitted = dry_run_create(plane, probe_scaled_object(("once",)))
    if admitted.returncode != 0:
        raise AssertionError(f"KEDA's webhook refused a valid ScaledObject:\n{admitted.stderr}")


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
    """Install KEDA from `config` (the module's config/ folder), start its three processes and wait until the
    external metrics APIService is Available and the API server sends ScaledObjects to KEDA's webhook.
    `token_accounts` are the (namespace, ServiceAccount) pairs
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
    # Every port before any process starts: a port probed free while a process is still binding its own
    # could be the one it was given.
    grpc_address = f"127.0.0.1:{free_port()}"
    probe_port = free_port()
    operator_metrics_port, metrics_server_metrics_port = free_port(), free_port()
    webhooks_port, webhooks_probe_port, webhooks_metrics_port = free_port(), free_port(), free_port()
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
            f"--metrics-bind-address=127.0.0.1:{operator_metrics_port}",
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
            f"--port={metrics_server_metrics_port}",
            "--zap-log-level=info",
            "--zap-encoder=console",
        ],
        logs / "keda-metrics-apiserver.log",
        env=env,
    )
    webhooks = ManagedProcess(
        "keda-admission-webhooks",
        [
            plane.binaries.path("keda-admission-webhooks"),
            f"--port={webhooks_port}",
            f"--cert-dir={cert_dir}",
            f"--metrics-bind-address=127.0.0.1:{webhooks_metrics_port}",
            f"--health-probe-bind-address=127.0.0.1:{webhooks_probe_port}",
            "--zap-log-level=info",
            "--zap-encoder=console",
        ],
        logs / "keda-admission-webhooks.log",
        env=env,
    )
    keda = DeployedKeda(
        plane=plane,
        operator=operator,
        metrics_server=metrics_server,
        webhooks=webhooks,
        webhooks_metrics_url=f"http://127.0.0.1:{webhooks_metrics_port}/metrics",
    )
    try:
        plane.apply([doc for doc in documents if doc.get("kind") == "APIService"], "--force-conflicts")
        wait_for_api_service(api, EXTERNAL_METRICS_API_SERVICE, metrics_server)
        wait_for_probe(
            webhooks, f"http://127.0.0.1:{webhooks_probe_port}/readyz", timeout_seconds=_START_TIMEOUT_SECONDS
        )
        plane.apply(webhook_documents(config, webhooks_port, ca.cert_pem), "--force-conflicts")
        wait_for_webhooks(plane, webhooks)
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
