"""wattscale deployed into the test cluster the way a user would, with the process itself on the host.

The manifests come from `wattscale manifests`; the only changes are the ones a host-run adapter needs: the
Service becomes an ExternalName to localhost on the adapter's port (the aggregator's default resolver follows
that without kube-proxy), the APIServices point at that port, and the in-cluster Deployment is scaled to zero.
The adapter authenticates to the API server with a token of the ServiceAccount the manifests create, so
their RBAC is what is tested.
"""

from __future__ import annotations

import contextlib
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes.client
import yaml

from kubeharness.controlplane import ControlPlane
from kubeharness.https import https_get
from kubeharness.identities import service_account_token
from kubeharness.kubeconfig import write_kubeconfig
from kubeharness.pki import CertificateAuthority, KeyPair
from kubeharness.processes import REPO_ROOT, WATTSCALE_CLI, ManagedProcess, free_port, wait_until

ADAPTER_NAMESPACE = "wattscale"
TEST_IMAGE = "registry.invalid/wattscale:cluster-test"
_AVAILABLE_TIMEOUT_SECONDS = 120.0


@dataclass
class DeployedAdapter:
    url: str
    port: int
    ca: CertificateAuthority
    serving: KeyPair
    process: ManagedProcess
    config_path: Path
    documents: list[dict[str, Any]]
    api_services: list[str]
    service_account: str
    namespace_dry_run_output: str
    namespace_absent_after_its_dry_run: bool
    dry_run_output: str
    found_after_dry_run: list[str]

    def metric_url(self, path: str, version: str = "v1beta2") -> str:
        return f"{self.url}/apis/custom.metrics.k8s.io/{version}{path}"


def render_manifests(workdir: Path, ca: CertificateAuthority) -> list[dict[str, Any]]:
    done = subprocess.run(
        [
            *WATTSCALE_CLI,
            "manifests",
            "--namespace",
            ADAPTER_NAMESPACE,
            "--image",
            TEST_IMAGE,
            "--ca-bundle-file",
            str(ca.cert_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    if done.returncode != 0:
        raise AssertionError(f"wattscale manifests failed ({done.returncode}):\n{done.stderr}")
    (workdir / "manifests-rendered.yaml").write_text(done.stdout)
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def adapt_for_host(documents: list[dict[str, Any]], port: int) -> list[dict[str, Any]]:
    """The three host-run changes described in the module docstring; everything else is applied as rendered."""
    adapted = []
    for doc in documents:
        doc = yaml.safe_load(yaml.safe_dump(doc))  # a deep copy
        kind = doc.get("kind")
        if kind == "Service":
            doc["spec"] = {
                "type": "ExternalName",
                "externalName": "localhost",
                "ports": [{"name": "https", "port": port, "targetPort": port, "protocol": "TCP"}],
            }
        elif kind == "APIService":
            doc["spec"]["service"]["port"] = port
        elif kind == "Deployment":
            doc["spec"]["replicas"] = 0
        adapted.append(doc)
    return adapted


def api_service_available(api: kubernetes.client.ApiClient, name: str) -> tuple[bool, str]:
    """(Available, "reason: message") of one APIService."""
    service = kubernetes.client.ApiregistrationV1Api(api).read_api_service(name)
    for condition in (service.status.conditions if service.status else None) or []:
        if condition.type == "Available":
            return condition.status == "True", f"{condition.reason}: {condition.message}"
    return False, "no Available condition yet"


def wait_for_readyz(adapter: DeployedAdapter) -> None:
    """The adapter's own readiness: object caches synced and a first estimate made (no auth on /readyz)."""

    def ready() -> bool:
        adapter.process.check_running()
        return https_get(f"{adapter.url}/readyz", ca_path=adapter.ca.cert_path).status == 200

    wait_until(
        ready,
        timeout_seconds=_AVAILABLE_TIMEOUT_SECONDS,
        description="wattscale /readyz",
        on_timeout=adapter.process.tail,
    )


def wait_for_api_service(api: kubernetes.client.ApiClient, name: str, process: ManagedProcess) -> None:
    def available() -> bool:
        process.check_running()
        return api_service_available(api, name)[0]

    wait_until(
        available,
        timeout_seconds=_AVAILABLE_TIMEOUT_SECONDS,
        description=f"APIService {name} Available=True",
        on_timeout=lambda: f"condition: {api_service_available(api, name)[1]}\n{process.tail()}",
    )


def deploy_adapter(plane: ControlPlane, fleet_path: Path) -> DeployedAdapter:
    workdir = plane.workdir / "adapter"
    workdir.mkdir()
    ca = CertificateAuthority(workdir, "adapter")
    port = free_port()
    documents = adapt_for_host(render_manifests(workdir, ca), port)
    manifest_path = workdir / "manifests-applied.yaml"
    manifest_path.write_text(yaml.safe_dump_all(documents))

    # A server-side dry run cannot see a Namespace it has not really created, so namespaced objects in the
    # same file fail it ("namespaces ... not found"). Users dry-run the Namespace, create it, then dry-run
    # the rest; that is what happens here.
    namespaces = [doc for doc in documents if doc.get("kind") == "Namespace"]
    namespace_dry_run = plane.apply(namespaces, "--dry-run=server")
    namespace_absent = plane.kubectl("get", "namespace", ADAPTER_NAMESPACE, check=False).returncode != 0
    plane.apply(namespaces)
    dry_run = plane.kubectl("apply", "--server-side", "--dry-run=server", "-f", str(manifest_path))
    found = plane.kubectl(
        "get", "--ignore-not-found", "--output=name", "-f", str(manifest_path)
    ).stdout.split()
    # Everything but the APIServices first: registering them before the adapter answers would only make
    # the aggregator's availability check back off exponentially while it starts.
    plane.apply([doc for doc in documents if doc.get("kind") != "APIService"])

    services = [doc for doc in documents if doc.get("kind") == "Service"]
    accounts = [doc for doc in documents if doc.get("kind") == "ServiceAccount"]
    api_services = [doc["metadata"]["name"] for doc in documents if doc.get("kind") == "APIService"]
    if len(services) != 1 or len(accounts) != 1 or not api_services:
        raise AssertionError(
            f"want one Service, one ServiceAccount and the APIServices in the manifests, got kinds "
            f"{[doc.get('kind') for doc in documents]}"
        )
    service_host = (
        f"{services[0]['metadata']['name']}.{services[0]['metadata'].get('namespace', ADAPTER_NAMESPACE)}.svc"
    )
    # The aggregator checks the serving cert against ServerName <service>.<namespace>.svc.
    serving = ca.issue(
        "adapter-serving",
        common_name=service_host,
        dns_names=(service_host, "localhost"),
        ip_addresses=("127.0.0.1",),
        server=True,
    )
    account = accounts[0]["metadata"]["name"]
    api = plane.api_client()
    # The ServiceAccount exists already (the manifests made it); only its token is asked for here.
    token = service_account_token(api, ADAPTER_NAMESPACE, account, grant_metrics=False)
    kubeconfig = write_kubeconfig(
        workdir / "adapter.kubeconfig",
        server=plane.api_url,
        ca_pem=plane.cluster_ca.cert_pem,
        user=f"system:serviceaccount:{ADAPTER_NAMESPACE}:{account}",
        token=token,
    )
    config_path = workdir / "config.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                # A short window so a load change shows in the averages within seconds.
                "window_seconds": 10,
                "max_age_seconds": 60,
                "collectors": [
                    {"name": "sim", "type": "simulated", "interval_seconds": 1, "fleet_file": str(fleet_path)}
                ],
                "racks": [
                    {
                        "name": "rack-a",
                        "cap_watts": 20000,
                        "margin_ratio": 0.1,
                        "node_selector": "wattscale.io/rack=rack-a",
                    }
                ],
            }
        )
    )
    process = ManagedProcess(
        "wattscale serve",
        [
            *WATTSCALE_CLI,
            "serve",
            "--kubeconfig",
            str(kubeconfig),
            "--config",
            str(config_path),
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            str(port),
            "--tls-cert-file",
            str(serving.cert_path),
            "--tls-private-key-file",
            str(serving.key_path),
            # A second replica may share the port (kubeharness.replicas), as two endpoints of the Service.
            "--reuse-port",
        ],
        plane.workdir / "logs" / "wattscale-serve.log",
        # Running on the host: it must use the kubeconfig, never in-cluster discovery.
        env={"KUBERNETES_SERVICE_HOST": "", "KUBERNETES_SERVICE_PORT": ""},
    )
    adapter = DeployedAdapter(
        url=f"https://127.0.0.1:{port}",
        port=port,
        ca=ca,
        serving=serving,
        process=process,
        config_path=config_path,
        documents=documents,
        api_services=api_services,
        service_account=account,
        namespace_dry_run_output=namespace_dry_run,
        namespace_absent_after_its_dry_run=namespace_absent,
        dry_run_output=dry_run.stdout,
        found_after_dry_run=found,
    )
    try:
        wait_for_readyz(adapter)
        plane.apply([doc for doc in documents if doc.get("kind") == "APIService"])
        for name in api_services:
            wait_for_api_service(api, name, process)
    except BaseException:
        with contextlib.suppress(Exception):
            process.stop()
        raise
    return adapter
