"""The KServe controller (`cmd/manager` of github.com/kserve/kserve, built by build.sh), on the host.

Installed from the `config/` folder of the same module version: the serving.kserve.io CRDs, KServe's
ServiceAccount and `kserve-manager-role`, the `inferenceservice-config` ConfigMap, the Hugging Face
ClusterServingRuntime, and KServe's admission webhooks. The controller acts as `kserve/kserve-controller-manager`
(a TokenRequest token), so KServe's own RBAC is what is tested.

Host-run changes, and only these:
* the ConfigMap's `deploy.defaultDeploymentMode` is `Standard` (raw Deployments, no Knative) and
  `ingress.disableIngressCreation` is true (there is no ingress controller) - both documented KServe settings;
* the webhooks are served with a harness certificate (controller-runtime reads it from
  `$TMPDIR/k8s-webhook-server/serving-certs`) and registered with `clientConfig.url` on 127.0.0.1 instead of
  a Service, so the API server calls KServe's defaulter and validators as in a real install.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from kubeharness.controlplane import ControlPlane
from kubeharness.https import wait_for_probe
from kubeharness.identities import service_account_token
from kubeharness.keda import apply_crds, host_run_webhooks, load_documents
from kubeharness.kubeconfig import write_kubeconfig
from kubeharness.pki import CertificateAuthority
from kubeharness.processes import ManagedProcess, free_port

KSERVE_NAMESPACE = "kserve"
KSERVE_ACCOUNT = "kserve-controller-manager"
CONFIG_MAP = "inferenceservice-config"
HUGGINGFACE_RUNTIME = "kserve-huggingfaceserver"
_CRDS = (
    "crd/full/serving.kserve.io_inferenceservices.yaml",
    "crd/full/serving.kserve.io_trainedmodels.yaml",
    "crd/full/serving.kserve.io_clusterservingruntimes.yaml",
    "crd/full/serving.kserve.io_servingruntimes.yaml",
    "crd/full/serving.kserve.io_inferencegraphs.yaml",
    "crd/full/clusterstoragecontainer/serving.kserve.io_clusterstoragecontainers.yaml",
)
_RBAC = ("rbac/service_account.yaml", "rbac/role.yaml", "rbac/role_binding.yaml")
_START_TIMEOUT_SECONDS = 120.0


def install_crds(plane: ControlPlane, config: Path) -> None:
    apply_crds(plane, load_documents([config / name for name in _CRDS]))


def rbac_documents(config: Path) -> list[dict[str, Any]]:
    """KServe's RBAC with the namespace its kustomization would set."""
    documents = load_documents([config / name for name in _RBAC])
    for doc in documents:
        if doc["kind"] == "ServiceAccount":
            doc["metadata"]["namespace"] = KSERVE_NAMESPACE
        for subject in doc.get("subjects", []):
            subject["namespace"] = KSERVE_NAMESPACE
    return documents


def config_map(config: Path) -> dict[str, Any]:
    """inferenceservice-config as shipped, with the two host-run settings of the module docstring."""
    (document,) = load_documents([config / "configmap" / "inferenceservice.yaml"])
    data = document["data"]
    deploy = json.loads(data["deploy"])
    deploy["defaultDeploymentMode"] = "Standard"
    data["deploy"] = json.dumps(deploy)
    ingress = json.loads(data["ingress"])
    ingress["disableIngressCreation"] = True
    data["ingress"] = json.dumps(ingress)
    document["metadata"]["namespace"] = KSERVE_NAMESPACE
    return dict(document)


def webhook_documents(config: Path, port: int, ca_pem: bytes) -> list[dict[str, Any]]:
    """KServe's webhook configurations, pointed at the host-run controller's webhook server."""
    return host_run_webhooks(load_documents([config / "webhook" / "manifests.yaml"]), port, ca_pem)


def deploy_kserve(plane: ControlPlane, config: Path) -> ManagedProcess:
    """Install KServe from `config` (the module's config/ folder) and start its controller, ready (webhook
    server up) when this returns."""
    workdir = plane.workdir / "kserve"
    cert_dir = workdir / "tmp" / "k8s-webhook-server" / "serving-certs"
    cert_dir.mkdir(parents=True)
    ca = CertificateAuthority(workdir, "kserve")
    pair = ca.issue(
        "webhook", common_name="localhost", dns_names=("localhost",), ip_addresses=("127.0.0.1",), server=True
    )
    (cert_dir / "tls.crt").write_bytes(pair.cert_pem)
    (cert_dir / "tls.key").write_bytes(pair.key_pem)

    install_crds(plane, config)
    plane.kubectl("create", "namespace", KSERVE_NAMESPACE, check=False)
    plane.apply([*rbac_documents(config), config_map(config)], "--force-conflicts")
    plane.apply(load_documents([config / "runtimes" / "kserve-huggingfaceserver.yaml"]), "--force-conflicts")

    api = plane.api_client()
    token = service_account_token(api, KSERVE_NAMESPACE, KSERVE_ACCOUNT, grant_metrics=False)
    kubeconfig = write_kubeconfig(
        workdir / "kserve.kubeconfig",
        server=plane.api_url,
        ca_pem=plane.cluster_ca.cert_pem,
        user=f"system:serviceaccount:{KSERVE_NAMESPACE}:{KSERVE_ACCOUNT}",
        token=token,
    )
    webhook_port, probe_port = free_port(), free_port()
    manager = ManagedProcess(
        "kserve-manager",
        [
            plane.binaries.path("kserve-manager"),
            f"--kubeconfig={kubeconfig}",
            f"--metrics-addr=127.0.0.1:{free_port()}",
            f"--health-probe-addr=127.0.0.1:{probe_port}",
            f"--webhook-port={webhook_port}",
            "--leader-elect=false",
        ],
        plane.workdir / "logs" / "kserve-manager.log",
        env={
            "KUBECONFIG": str(kubeconfig),
            "KUBERNETES_SERVICE_HOST": "",
            "KUBERNETES_SERVICE_PORT": "",
            "POD_NAMESPACE": KSERVE_NAMESPACE,
            "TMPDIR": str(workdir / "tmp"),
        },
    )
    try:
        # Its readiness check is the webhook server having started.
        wait_for_probe(
            manager, f"http://127.0.0.1:{probe_port}/readyz", timeout_seconds=_START_TIMEOUT_SECONDS
        )
        plane.apply(webhook_documents(config, webhook_port, ca.cert_pem), "--force-conflicts")
    except BaseException:
        with contextlib.suppress(Exception):
            manager.stop()
        raise
    return manager
