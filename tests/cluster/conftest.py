"""Fixtures for the cluster tests (marker `cluster`): a real control plane built from the Kubernetes Go
modules (build.sh), a kubelet stand-in, and wattscale deployed into it from `wattscale manifests`.

Everything is session-scoped: starting kube-apiserver takes tens of seconds on 2 cores. The components' logs
stay under pytest's temporary folder (the last three runs are kept), and the tail of every log is attached to
the report of any test that fails while they run.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

import kubernetes.client
import pytest
from kubeharness.adapter import DeployedAdapter, deploy_adapter
from kubeharness.binaries import Binaries, locate_binaries
from kubeharness.controlplane import ControlPlane, start_control_plane
from kubeharness.kubelet import KubeletStandIn, TestNode
from kubeharness.processes import ManagedProcess
from kubeharness.workloads import (
    WORKLOAD_NAMESPACE,
    create_deployment,
    delete_workload,
    ensure_namespace,
    wait_for_running_pods,
)

RACK_LABEL = "wattscale.io/rack"
TEST_NODES = [
    TestNode(name="node-1", gpus=8, labels={RACK_LABEL: "rack-a"}),
    TestNode(name="node-2", gpus=8, labels={RACK_LABEL: "rack-a"}),
]
STEADY_APP = "phi"
FLEET_FILE = "fleet.json"

_live_processes: list[ManagedProcess] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and _live_processes:
        tails = "\n".join(process.tail(60) for process in _live_processes)
        report.sections.append(("cluster component logs", tails))
    return report


@pytest.fixture(scope="session")
def cluster_binaries() -> Binaries:
    return locate_binaries()


@pytest.fixture(scope="session")
def control_plane(
    tmp_path_factory: pytest.TempPathFactory, cluster_binaries: Binaries
) -> Iterator[ControlPlane]:
    plane = start_control_plane(tmp_path_factory.mktemp("cluster"), cluster_binaries)
    _live_processes.extend(plane.processes)
    try:
        yield plane
    finally:
        plane.stop()
        del _live_processes[:]


@pytest.fixture(scope="session")
def admin_api(control_plane: ControlPlane) -> kubernetes.client.ApiClient:
    return control_plane.api_client()


@pytest.fixture(scope="session")
def kubelet(control_plane: ControlPlane, admin_api: kubernetes.client.ApiClient) -> Iterator[KubeletStandIn]:
    stand_in = KubeletStandIn(admin_api, TEST_NODES, control_plane.workdir / FLEET_FILE)
    stand_in.start()
    ensure_namespace(admin_api, WORKLOAD_NAMESPACE)
    try:
        yield stand_in
    finally:
        stand_in.stop()


@pytest.fixture(scope="session")
def adapter(control_plane: ControlPlane, kubelet: KubeletStandIn) -> Iterator[DeployedAdapter]:
    deployed = deploy_adapter(control_plane, control_plane.workdir / FLEET_FILE)
    _live_processes.append(deployed.process)
    try:
        yield deployed
    finally:
        deployed.process.stop()
        _live_processes.remove(deployed.process)


@pytest.fixture(scope="session")
def steady_workload(admin_api: kubernetes.client.ApiClient, kubelet: KubeletStandIn) -> Iterator[list[str]]:
    """Two pods of app `phi` on node-1 at half load, for the tests that only read metrics."""
    kubelet.set_load(WORKLOAD_NAMESPACE, STEADY_APP, 0.5)
    create_deployment(admin_api, STEADY_APP, replicas=2, node="node-1")
    try:
        yield wait_for_running_pods(admin_api, STEADY_APP, 2)
    finally:
        delete_workload(admin_api, STEADY_APP)
