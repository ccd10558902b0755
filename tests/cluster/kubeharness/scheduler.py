"""The real kube-scheduler (same release as the API server) binding pods to the test nodes.

It runs as `system:kube-scheduler` with a client certificate from the cluster CA, so the bootstrap RBAC role of
that name is what authorises it, as in kubeadm clusters; leader election is off (one replica). The kubelet
stand-in then sees the bound pod (`spec.nodeName` set) and marks it Running, as a kubelet would.

New nodes get the taint `node.kubernetes.io/not-ready:NoSchedule` from the API server's admission
(TaintNodesByCondition); the node-lifecycle controller removes it once the node reports Ready. That controller
cannot run here (with no kubelet heart-beating it would evict every pod), so `clear_not_ready_taints` does
that one step of its job for the test nodes, which report Ready.
"""

from __future__ import annotations

import ssl
import urllib.request
from collections.abc import Iterable

import kubernetes.client

from kubeharness.controlplane import ControlPlane
from kubeharness.kubeconfig import write_kubeconfig
from kubeharness.processes import ManagedProcess, free_port, wait_until

SCHEDULER_USER = "system:kube-scheduler"
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
_START_TIMEOUT_SECONDS = 120.0


def clear_not_ready_taints(api: kubernetes.client.ApiClient, nodes: Iterable[str]) -> None:
    """What the node-lifecycle controller does for a Ready node: drop the not-ready taint (see module doc)."""
    core = kubernetes.client.CoreV1Api(api)
    for name in nodes:
        node = core.read_node(name)
        taints = (node.spec.taints if node.spec else None) or []
        kept = [t for t in taints if t.key != NOT_READY_TAINT]
        if len(kept) != len(taints):
            body = {"spec": {"taints": [api.sanitize_for_serialization(t) for t in kept]}}  # type: ignore[no-untyped-call]
            core.patch_node(name, body)


def start_scheduler(plane: ControlPlane) -> ManagedProcess:
    """kube-scheduler with its own identity, healthy (`/healthz`) before this returns."""
    cert = plane.cluster_ca.issue("kube-scheduler", common_name=SCHEDULER_USER)
    kubeconfig = write_kubeconfig(
        plane.workdir / "scheduler.kubeconfig",
        server=plane.api_url,
        ca_pem=plane.cluster_ca.cert_pem,
        user=SCHEDULER_USER,
        cert=cert,
    )
    health_port = free_port()
    scheduler = ManagedProcess(
        "kube-scheduler",
        [
            plane.binaries.path("kube-scheduler"),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false",
            # Its HTTPS endpoint only serves /healthz here; a self-signed cert in the workdir is enough.
            "--bind-address=127.0.0.1",
            f"--secure-port={health_port}",
            f"--cert-dir={plane.workdir / 'scheduler-certs'}",
        ],
        plane.workdir / "logs" / "kube-scheduler.log",
    )

    def healthy() -> bool:
        scheduler.check_running()
        return _healthz(health_port)

    try:
        wait_until(
            healthy,
            timeout_seconds=_START_TIMEOUT_SECONDS,
            description="kube-scheduler /healthz",
            on_timeout=scheduler.tail,
        )
    except BaseException:
        scheduler.stop()
        raise
    return scheduler


def _healthz(port: int) -> bool:
    context = ssl.create_default_context()
    # Only liveness is read, from a loopback port we chose; the serving cert is self-signed by the scheduler.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=context, timeout=5) as answer:
        return bool(answer.status == 200)


def pod_nodes(api: kubernetes.client.ApiClient, namespace: str, selector: str) -> dict[str, str]:
    """{pod name: node it is bound to} for the live (not terminating) pods matching `selector`."""
    pods = kubernetes.client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector)
    return {
        str(pod.metadata.name): str(pod.spec.node_name or "")
        for pod in pods.items
        if pod.metadata is not None and pod.metadata.deletion_timestamp is None and pod.spec is not None
    }
