"""etcd + kube-apiserver (aggregation layer on) + kube-controller-manager on loopback, from built binaries.

Flags follow kubeadm's for the aggregation layer (requestheader CA and allowed names, proxy client cert),
with RBAC authorization and service-account token signing, so the adapter's TokenReview and
SubjectAccessReview calls and the HPA's own identity mean what they mean in a real cluster.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config
import yaml

from kubeharness.binaries import Binaries
from kubeharness.https import https_get
from kubeharness.kubeconfig import write_kubeconfig
from kubeharness.pki import CertificateAuthority, KeyPair, new_signing_key_pair
from kubeharness.processes import ManagedProcess, free_port, wait_until

FRONT_PROXY_CLIENT_NAME = "front-proxy-client"
# The service-account issuer, also the API server's default token audience (the one TokenReview checks).
API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
_START_TIMEOUT_SECONDS = 180.0


@dataclass
class ControlPlane:
    workdir: Path
    binaries: Binaries
    api_url: str
    cluster_ca: CertificateAuthority
    front_proxy_ca: CertificateAuthority
    front_proxy_client: KeyPair
    admin_cert: KeyPair
    admin_kubeconfig: Path
    processes: list[ManagedProcess] = field(default_factory=list)

    def api_client(self, kubeconfig: Path | None = None) -> kubernetes.client.ApiClient:
        client: kubernetes.client.ApiClient = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig or self.admin_kubeconfig)
        )
        return client

    def kubectl(
        self, *args: str, kubeconfig: Path | None = None, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run the kubectl built from the same release; `check` fails the test with kubectl's stderr."""
        argv = [
            self.binaries.path("kubectl"),
            "--kubeconfig",
            str(kubeconfig or self.admin_kubeconfig),
            *args,
        ]
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
        return done

    def apply(self, objects: Sequence[Mapping[str, Any]], *extra: str) -> str:
        """`kubectl apply --server-side` of these objects; kubectl's output."""
        return self.kubectl(
            "apply", "--server-side", *extra, "-f", "-", stdin=yaml.safe_dump_all(objects)
        ).stdout

    def delete(self, objects: Sequence[Mapping[str, Any]]) -> None:
        self.kubectl("delete", "--ignore-not-found", "-f", "-", stdin=yaml.safe_dump_all(objects))

    def user_kubeconfig(self, user: str, groups: Sequence[str] = ()) -> Path:
        """A kubeconfig for a client certificate from the cluster CA (CN = user, O = groups)."""
        cert = self.cluster_ca.issue(f"user-{user}", common_name=user, organizations=tuple(groups))
        return write_kubeconfig(
            self.workdir / f"{user}.kubeconfig",
            server=self.api_url,
            ca_pem=self.cluster_ca.cert_pem,
            user=user,
            cert=cert,
        )

    def check_running(self) -> None:
        for process in self.processes:
            process.check_running()

    def tails(self, lines: int = 40) -> str:
        return "\n".join(process.tail(lines) for process in self.processes)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def _etcd_healthy(client_url: str) -> bool:
    with urllib.request.urlopen(f"{client_url}/health", timeout=5) as answer:
        return bool(json.load(answer).get("health") == "true")


def start_control_plane(workdir: Path, binaries: Binaries) -> ControlPlane:
    """Start the three components in order, each only once the previous one is ready."""
    pki = workdir / "pki"
    logs = workdir / "logs"
    pki.mkdir()
    logs.mkdir()
    cluster_ca = CertificateAuthority(pki, "cluster")
    front_proxy_ca = CertificateAuthority(pki, "front-proxy")
    apiserver_cert = cluster_ca.issue(
        "apiserver",
        common_name="kube-apiserver",
        dns_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
        ip_addresses=("127.0.0.1", "10.96.0.1"),
        server=True,
    )
    proxy_client = front_proxy_ca.issue("front-proxy-client", common_name=FRONT_PROXY_CLIENT_NAME)
    admin_cert = cluster_ca.issue("admin", common_name="admin", organizations=("system:masters",))
    kcm_cert = cluster_ca.issue("controller-manager", common_name="system:kube-controller-manager")
    sa_private, sa_public = new_signing_key_pair(pki, "service-account")

    api_port = free_port()
    api_url = f"https://127.0.0.1:{api_port}"
    admin_kubeconfig = write_kubeconfig(
        workdir / "admin.kubeconfig",
        server=api_url,
        ca_pem=cluster_ca.cert_pem,
        user="admin",
        cert=admin_cert,
    )
    kcm_kubeconfig = write_kubeconfig(
        workdir / "controller-manager.kubeconfig",
        server=api_url,
        ca_pem=cluster_ca.cert_pem,
        user="system:kube-controller-manager",
        cert=kcm_cert,
    )
    plane = ControlPlane(
        workdir=workdir,
        binaries=binaries,
        api_url=api_url,
        cluster_ca=cluster_ca,
        front_proxy_ca=front_proxy_ca,
        front_proxy_client=proxy_client,
        admin_cert=admin_cert,
        admin_kubeconfig=admin_kubeconfig,
    )
    try:
        etcd_url = _start_etcd(plane, logs)
        _start_apiserver(plane, logs, etcd_url, api_port, apiserver_cert, sa_private, sa_public)
        _start_controller_manager(plane, logs, kcm_kubeconfig)
    except BaseException:
        plane.stop()
        raise
    return plane


def _start_etcd(plane: ControlPlane, logs: Path) -> str:
    client_url = f"http://127.0.0.1:{free_port()}"
    peer_url = f"http://127.0.0.1:{free_port()}"
    etcd = ManagedProcess(
        "etcd",
        [
            plane.binaries.path("etcd"),
            "--name=test",
            f"--data-dir={plane.workdir / 'etcd-data'}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=test={peer_url}",
            # Throw-away data: fsync only costs time on a shared 2-core machine.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
        logs / "etcd.log",
    )
    plane.processes.append(etcd)

    def healthy() -> bool:
        etcd.check_running()
        return _etcd_healthy(client_url)

    wait_until(
        healthy,
        timeout_seconds=_START_TIMEOUT_SECONDS,
        description="etcd /health",
        on_timeout=etcd.tail,
    )
    return client_url


def _start_apiserver(
    plane: ControlPlane,
    logs: Path,
    etcd_url: str,
    api_port: int,
    serving: KeyPair,
    sa_private: Path,
    sa_public: Path,
) -> None:
    apiserver = ManagedProcess(
        "kube-apiserver",
        [
            plane.binaries.path("kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--tls-cert-file={serving.cert_path}",
            f"--tls-private-key-file={serving.key_path}",
            f"--client-ca-file={plane.cluster_ca.cert_path}",
            "--authorization-mode=RBAC",
            "--anonymous-auth=false",
            f"--service-account-issuer={API_AUDIENCE}",
            f"--service-account-signing-key-file={sa_private}",
            f"--service-account-key-file={sa_public}",
            "--service-cluster-ip-range=10.96.0.0/16",
            # Aggregation layer, as kubeadm sets it up; a CA of its own for the front proxy.
            f"--requestheader-client-ca-file={plane.front_proxy_ca.cert_path}",
            f"--requestheader-allowed-names={FRONT_PROXY_CLIENT_NAME}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={plane.front_proxy_client.cert_path}",
            f"--proxy-client-key-file={plane.front_proxy_client.key_path}",
            # The APIService's Service is an ExternalName to localhost, which only the default (cluster)
            # resolver follows; endpoint routing would need a non-loopback endpoint address.
            "--enable-aggregator-routing=false",
            # No kube-proxy and no real Service network: nothing may try to reach the advertise address.
            "--endpoint-reconciler-type=none",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
        ],
        logs / "kube-apiserver.log",
    )
    plane.processes.append(apiserver)

    def ready() -> bool:
        apiserver.check_running()
        answer = https_get(
            f"{plane.api_url}/readyz",
            ca_path=plane.cluster_ca.cert_path,
            client_cert=(plane.admin_cert.cert_path, plane.admin_cert.key_path),
        )
        return answer.status == 200

    wait_until(
        ready,
        timeout_seconds=_START_TIMEOUT_SECONDS,
        description="kube-apiserver /readyz",
        on_timeout=plane.tails,
    )


def _start_controller_manager(plane: ControlPlane, logs: Path, kubeconfig: Path) -> None:
    health_port = free_port()
    controller_manager = ManagedProcess(
        "kube-controller-manager",
        [
            plane.binaries.path("kube-controller-manager"),
            f"--kubeconfig={kubeconfig}",
            # No node-lifecycle or pod-garbage-collector controllers: with no kubelet they would evict or
            # delete every pod on the (never heart-beating) nodes.
            "--controllers=horizontal-pod-autoscaler-controller,deployment-controller,replicaset-controller,"
            "serviceaccount-controller,garbage-collector-controller,namespace-controller",
            # Each controller acts as its own ServiceAccount, so the HPA reaches the adapter as
            # system:serviceaccount:kube-system:horizontal-pod-autoscaler, as in kubeadm clusters.
            "--use-service-account-credentials=true",
            "--horizontal-pod-autoscaler-sync-period=2s",
            "--horizontal-pod-autoscaler-downscale-stabilization=0s",
            "--leader-elect=false",
            # Its own HTTPS endpoint only for /healthz (always allowed); a self-signed cert is fine there.
            "--bind-address=127.0.0.1",
            f"--secure-port={health_port}",
            f"--cert-dir={plane.workdir / 'controller-manager-certs'}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
        ],
        logs / "kube-controller-manager.log",
    )
    plane.processes.append(controller_manager)
    core = kubernetes.client.CoreV1Api(plane.api_client())

    def healthy() -> bool:
        controller_manager.check_running()
        context = ssl.create_default_context()
        # Only liveness is read here, from a loopback port we chose; its serving cert is self-signed.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with urllib.request.urlopen(
            f"https://127.0.0.1:{health_port}/healthz", context=context, timeout=5
        ) as answer:
            return bool(answer.status == 200)

    wait_until(
        healthy,
        timeout_seconds=_START_TIMEOUT_SECONDS,
        description="kube-controller-manager /healthz",
        on_timeout=plane.tails,
    )

    def default_service_account_created() -> bool:
        # The serviceaccount controller creating `default` proves the controller manager is up and
        # authorised; nothing else it does is visible without a workload.
        controller_manager.check_running()
        with contextlib.suppress(kubernetes.client.ApiException):
            core.read_namespaced_service_account("default", "default")
            return True
        return False

    wait_until(
        default_service_account_created,
        timeout_seconds=_START_TIMEOUT_SECONDS,
        description="kube-controller-manager to create the default ServiceAccount",
        on_timeout=plane.tails,
    )
