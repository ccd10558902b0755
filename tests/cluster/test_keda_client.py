"""KEDA's own metrics-api scaler (Go, github.com/kedacore/keda/v2/pkg/scalers) reading an Object metric from
the adapter with bearer-token auth, the way a ScaledObject trigger does. The Go test is compiled by build.sh
(keda/metrics_api_test.go) and run here against the live adapter."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import kubernetes.client
import pytest
from kubeharness.adapter import DeployedAdapter
from kubeharness.binaries import Binaries
from kubeharness.controlplane import ControlPlane
from kubeharness.identities import service_account_token
from kubeharness.metrics import node_metric
from kubeharness.workloads import ensure_namespace

pytestmark = pytest.mark.cluster


def test_keda_metrics_api_scaler_reads_a_node_metric(
    adapter: DeployedAdapter,
    admin_api: kubernetes.client.ApiClient,
    control_plane: ControlPlane,
    cluster_binaries: Binaries,
    steady_workload: list[str],
    tmp_path: Path,
) -> None:
    seen = node_metric(control_plane, "node-1", "node_power_watts")
    ensure_namespace(admin_api, "keda")
    granted = service_account_token(admin_api, "keda", "keda-operator", grant_metrics=True)
    ungranted = service_account_token(admin_api, "keda", "keda-without-grant", grant_metrics=False)
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    shutil.copy(adapter.ca.cert_path, ca_dir / "wattscale-ca.crt")

    def run_keda(token: str) -> subprocess.CompletedProcess[str]:
        token_file = tmp_path / "token"
        token_file.write_text(token)
        return subprocess.run(
            [cluster_binaries.path("keda-metrics-api.test"), "-test.v", "-test.count=1"],
            env={
                **os.environ,
                "WATTSCALE_KEDA_URL": adapter.metric_url("/nodes/node-1/node_power_watts"),
                "WATTSCALE_KEDA_TOKEN_FILE": str(token_file),
                "WATTSCALE_KEDA_CA_DIR": str(ca_dir),
                # The node's draw moves a little between polls; half of what kubectl saw is a safe floor.
                "WATTSCALE_KEDA_MIN_VALUE": str(float(seen) / 2),
            },
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = run_keda(granted)
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "--- PASS: TestMetricsAPIScalerReadsObjectMetric" in done.stdout
    assert "KEDA read" in done.stdout

    # The token is what let it in: the same scaler with a token lacking the grant gets the adapter's 403.
    refused = run_keda(ungranted)
    assert refused.returncode != 0
    assert "403" in refused.stdout, refused.stdout
