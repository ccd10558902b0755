"""`wattscale serve`, authentication on, under generated hostile input (a smaller run of
`bench/fuzz_api.py`), and the aggregator taking our OpenAPI documents without complaint."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from kubeharness.adapter import DeployedAdapter
from kubeharness.controlplane import ControlPlane
from kubeharness.hostile import Target, run
from kubeharness.processes import wait_until
from kubeharness.workloads import WORKLOAD_NAMESPACE

pytestmark = pytest.mark.cluster

FUZZ_REQUESTS = 500


def test_generated_hostile_requests_get_statuses_and_never_a_5xx(
    adapter: DeployedAdapter, control_plane: ControlPlane, steady_workload: list[str]
) -> None:
    proxy = control_plane.front_proxy_client
    target = Target(
        "127.0.0.1",
        adapter.port,
        adapter.ca.cert_path,
        (proxy.cert_path, proxy.key_path),
        namespace=WORKLOAD_NAMESPACE,
        names=tuple(steady_workload),
    )
    report = asyncio.run(run(target, requests=FUZZ_REQUESTS, seed=12))
    assert report.requests == FUZZ_REQUESTS
    assert not report.violations, report.summary()
    assert not report.probe_failures, report.summary()
    assert report.probes >= 2 and report.slow_clients_held > 0, report.summary()
    adapter.process.check_running()
    log = adapter.process.log_path.read_text(errors="replace")
    assert "Traceback" not in log, "a client error left a traceback in the adapter's log"


def _openapi_failures(plane: ControlPlane, api_services: list[str]) -> list[str]:
    log = (plane.workdir / "logs" / "kube-apiserver.log").read_text(errors="replace")
    names = "|".join(re.escape(name) for name in api_services)
    # Failures while an adapter is down (the failover test kills a replica) say so: "service unavailable",
    # "error trying to reach service". Any other failure is about the documents themselves, e.g. what the
    # old 404s caused: 'loading OpenAPI spec for "v1beta2.custom.metrics.k8s.io" failed with: Error, could
    # not get list of group versions for APIService'.
    unreachable = re.compile(r"service unavailable|error trying to reach service|connection refused")
    return [
        line
        for line in log.splitlines()
        if re.search(names, line)
        and re.search(r"(?i)openapi|spec", line)
        and re.search(r"(?i)fail|error", line)
        and not unreachable.search(line)
    ]


def test_the_aggregator_merges_our_openapi_documents(
    adapter: DeployedAdapter, control_plane: ControlPlane
) -> None:
    def published() -> bool:
        discovery = json.loads(control_plane.kubectl("get", "--raw", "/openapi/v3").stdout)
        return all(
            f"apis/custom.metrics.k8s.io/{version}" in discovery["paths"]
            for version in ("v1beta1", "v1beta2")
        )

    wait_until(
        published, timeout_seconds=120, description="our group versions in kube-apiserver's /openapi/v3"
    )
    document = json.loads(
        control_plane.kubectl("get", "--raw", "/openapi/v3/apis/custom.metrics.k8s.io/v1beta2").stdout
    )
    assert (
        "io.k8s.metrics.pkg.apis.custom_metrics.v1beta2.MetricValueList" in document["components"]["schemas"]
    )

    def merged_v2() -> bool:
        swagger = json.loads(control_plane.kubectl("get", "--raw", "/openapi/v2").stdout)
        return "io.k8s.metrics.pkg.apis.custom_metrics.v1beta2.MetricValueList" in swagger["definitions"]

    wait_until(merged_v2, timeout_seconds=120, description="our definitions in kube-apiserver's /openapi/v2")
    assert not _openapi_failures(control_plane, adapter.api_services), "\n".join(
        _openapi_failures(control_plane, adapter.api_services)[:5]
    )
