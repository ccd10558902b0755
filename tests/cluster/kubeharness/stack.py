"""The whole stack the cluster tests use, as one context manager for benchmarks run outside pytest:
control plane, kubelet stand-in with a steady workload, and `wattscale serve` deployed behind the
aggregator with authentication and authorization on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kubeharness.adapter import DeployedAdapter, deploy_adapter
from kubeharness.binaries import locate_binaries
from kubeharness.controlplane import ControlPlane, start_control_plane
from kubeharness.hostile import Target
from kubeharness.kubelet import KubeletStandIn, TestNode
from kubeharness.workloads import (
    WORKLOAD_NAMESPACE,
    create_deployment,
    ensure_namespace,
    wait_for_running_pods,
)

RACK_LABEL = "wattscale.io/rack"


@dataclass
class Stack:
    plane: ControlPlane
    adapter: DeployedAdapter
    pods: list[str]

    def target(self) -> Target:
        """The adapter straight, as the aggregator reaches it (front-proxy certificate)."""
        proxy = self.plane.front_proxy_client
        return Target(
            "127.0.0.1",
            self.adapter.port,
            self.adapter.ca.cert_path,
            (proxy.cert_path, proxy.key_path),
            namespace=WORKLOAD_NAMESPACE,
            names=tuple(self.pods),
        )


@contextlib.contextmanager
def running_stack(workdir: Path, *, nodes: int = 2, pods: int = 4) -> Iterator[Stack]:
    plane = start_control_plane(workdir, locate_binaries())
    try:
        api = plane.api_client()
        kubelet = KubeletStandIn(
            api,
            [TestNode(name=f"node-{n + 1}", gpus=8, labels={RACK_LABEL: "rack-a"}) for n in range(nodes)],
            plane.workdir / "fleet.json",
        )
        kubelet.start()
        try:
            ensure_namespace(api, WORKLOAD_NAMESPACE)
            kubelet.set_load(WORKLOAD_NAMESPACE, "phi", 0.5)
            create_deployment(api, "phi", replicas=pods, node="node-1")
            names = wait_for_running_pods(api, "phi", pods)
            adapter = deploy_adapter(plane, plane.workdir / "fleet.json")
            try:
                yield Stack(plane, adapter, names)
            finally:
                adapter.process.stop()
        finally:
            kubelet.stop()
    finally:
        plane.stop()
