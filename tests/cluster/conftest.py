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
from kubeharness.keda import DeployedKeda, deploy_keda
from kubeharness.kserve import deploy_kserve
from kubeharness.kubelet import KubeletStandIn, TestNode
from kubeharness.processes import ManagedProcess
from kubeharness.scheduler import clear_not_ready_taints, start_scheduler
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
    # A second rack, for placement across racks with the real scheduler; nothing else places pods there.
    TestNode(name="node-3", gpus=8, labels={RACK_LABEL: "rack-b"}),
    TestNode(name="node-4", gpus=8, labels={RACK_LABEL: "rack-b"}),
]
# The ServiceAccount whose bound tokens KEDA presents to wattscale (poweroperator's contract names it).
POWER_READER_ACCOUNT = "wattscale-power-reader"
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that bring up the real KServe run last: its CRDs replace the minimal InferenceService CRD other
    tests apply, and its admission webhooks (failurePolicy Fail) then see every InferenceService and predictor
    pod those tests create."""
    items.sort(key=lambda item: "kserve" in getattr(item, "fixturenames", ()))


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


@pytest.fixture(scope="session")
def scheduler(control_plane: ControlPlane, kubelet: KubeletStandIn) -> Iterator[ManagedProcess]:
    """The real kube-scheduler; pods created without `nodeName` from now on are bound by it."""
    clear_not_ready_taints(control_plane.api_client(), [node.name for node in TEST_NODES])
    process = start_scheduler(control_plane)
    _live_processes.append(process)
    try:
        yield process
    finally:
        process.stop()
        _live_processes.remove(process)


@pytest.fixture(scope="session")
def keda(
    control_plane: ControlPlane, cluster_binaries: Binaries, adapter: DeployedAdapter
) -> Iterator[DeployedKeda]:
    """KEDA's operator and metrics server, trusting wattscale's CA, serving external.metrics.k8s.io."""
    deployed = deploy_keda(
        control_plane,
        cluster_binaries.module_config("keda"),
        trusted_cas=[adapter.ca.cert_path],
        token_accounts=[(WORKLOAD_NAMESPACE, POWER_READER_ACCOUNT)],
    )
    # A process restarted by a fault test logs to the same file, so these tails stay current.
    started = deployed.processes
    _live_processes.extend(started)
    try:
        yield deployed
    finally:
        deployed.stop()
        for process in started:
            _live_processes.remove(process)


@pytest.fixture(scope="session")
def kserve(
    control_plane: ControlPlane, cluster_binaries: Binaries, kubelet: KubeletStandIn
) -> Iterator[ManagedProcess]:
    """KServe's controller in Standard (raw Deployment) mode, with its webhooks."""
    process = deploy_kserve(control_plane, cluster_binaries.module_config("kserve"))
    _live_processes.append(process)
    try:
        yield process
    finally:
        process.stop()
        _live_processes.remove(process)
