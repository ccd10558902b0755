"""The manifests `wattscale manifests` renders apply cleanly to a real API server: dry run, then for real.

The `adapter` fixture applies them (server-side, dry run first) exactly once; these tests check what
that did. The only edits it makes are the host-run ones described in kubeharness/adapter.py.
"""

from __future__ import annotations

import base64
import json

import pytest
from kubeharness.adapter import ADAPTER_NAMESPACE, DeployedAdapter
from kubeharness.controlplane import ControlPlane

pytestmark = pytest.mark.cluster


def test_server_side_dry_run_accepts_every_object_and_creates_none(adapter: DeployedAdapter) -> None:
    assert adapter.namespace_dry_run_output.strip().endswith("(server dry run)")
    assert adapter.namespace_absent_after_its_dry_run
    lines = [line for line in adapter.dry_run_output.splitlines() if line.strip()]
    assert len(lines) == len(adapter.documents), adapter.dry_run_output
    assert all(line.endswith("(server dry run)") for line in lines), adapter.dry_run_output
    # Only the Namespace, created for real before the dry run, existed afterwards.
    assert adapter.found_after_dry_run == [f"namespace/{ADAPTER_NAMESPACE}"]


def test_every_rendered_object_exists_after_apply(
    adapter: DeployedAdapter, control_plane: ControlPlane
) -> None:
    manifest = control_plane.workdir / "adapter" / "manifests-applied.yaml"
    names = control_plane.kubectl("get", "-f", str(manifest), "--output=name").stdout.split()
    assert len(names) == len(adapter.documents)
    kinds = {doc["kind"] for doc in adapter.documents}
    assert {
        "Namespace",
        "ServiceAccount",
        "ClusterRoleBinding",
        "RoleBinding",
        "Deployment",
        "Service",
    } <= kinds
    assert f"namespace/{ADAPTER_NAMESPACE}" in names


def test_api_services_carry_the_ca_bundle_given(
    adapter: DeployedAdapter, control_plane: ControlPlane
) -> None:
    for name in adapter.api_services:
        service = json.loads(control_plane.kubectl("get", "apiservice", name, "--output=json").stdout)
        assert base64.b64decode(service["spec"]["caBundle"]) == adapter.ca.cert_pem
        assert service["spec"]["service"]["namespace"] == ADAPTER_NAMESPACE
        assert not service["spec"].get("insecureSkipTLSVerify", False)
