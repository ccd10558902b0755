"""`wattscale top` through a kubeconfig: the real aggregator, with the user's client certificate, shows
the same values `kubectl get --raw` returns."""

from __future__ import annotations

import subprocess

import pytest
from kubeharness.adapter import DeployedAdapter
from kubeharness.controlplane import ControlPlane
from kubeharness.metrics import wait_for_pod_metric
from kubeharness.processes import REPO_ROOT, WATTSCALE_CLI

pytestmark = pytest.mark.cluster


def _top(control_plane: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WATTSCALE_CLI, "top", *args, "--kubeconfig", str(control_plane.admin_kubeconfig)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_top_pods_lists_the_workloads_pods_through_the_aggregator(
    adapter: DeployedAdapter, control_plane: ControlPlane, steady_workload: list[str]
) -> None:
    wait_for_pod_metric(control_plane, "v1beta2", "gpu_power_watts", "phi", steady_workload)
    result = _top(control_plane, "pods", "-n", "llm")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["POD", "POWER(W)", "GPU(W)", "J/TOKEN", "TOKENS/S"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(steady_workload) <= set(rows)
    for pod in steady_workload:
        assert rows[pod][2] != "-", f"{pod} has no GPU power in: {result.stdout}"


def test_top_nodes_through_the_aggregator(
    adapter: DeployedAdapter, control_plane: ControlPlane, steady_workload: list[str]
) -> None:
    wait_for_pod_metric(control_plane, "v1beta2", "gpu_power_watts", "phi", steady_workload)
    result = _top(control_plane, "nodes")
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines()[1:]]
    assert {"node-1", "node-2"} <= set(names)


def test_top_without_access_is_a_message_not_a_traceback(
    control_plane: ControlPlane, adapter: DeployedAdapter
) -> None:
    stranger = control_plane.user_kubeconfig("stranger")
    result = subprocess.run(
        [*WATTSCALE_CLI, "top", "nodes", "--kubeconfig", str(stranger)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("wattscale top: 403")
    assert "Traceback" not in result.stderr
