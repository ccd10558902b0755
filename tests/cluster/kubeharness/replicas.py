"""A second `wattscale serve` replica beside the deployed one, and telling replicas apart.

Both listen on the same loopback port (SO_REUSEPORT, `--reuse-port`): the kernel spreads the
aggregator's connections over them as a Service spreads them over two endpoints, and a killed replica's
connections fail while new ones reach the survivor. The deployed adapter's Service is an ExternalName
to localhost and loopback EndpointSlices cannot be created (see the module docstring of
kubeharness.adapter), so this is how two endpoints look here.
"""

from __future__ import annotations

import http.client
import ssl
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from kubeharness.adapter import DeployedAdapter
from kubeharness.controlplane import ControlPlane
from kubeharness.processes import ManagedProcess, wait_until

AS_ADMIN = {"X-Remote-User": "admin", "X-Remote-Group": "system:masters"}


def start_second_replica(adapter: DeployedAdapter, plane: ControlPlane) -> ManagedProcess:
    """The same command line, config and certificates as the deployed adapter; returns once it listens."""
    replica = ManagedProcess(
        "wattscale serve (replica 2)",
        adapter.process.argv,
        plane.workdir / "logs" / "wattscale-serve-replica-2.log",
        env={"KUBERNETES_SERVICE_HOST": "", "KUBERNETES_SERVICE_PORT": ""},
    )

    def listening() -> bool:
        replica.check_running()
        return "serve.listening" in replica.log_path.read_text(errors="replace")

    wait_until(listening, timeout_seconds=120, description="replica 2 listening", on_timeout=replica.tail)
    return replica


@dataclass(frozen=True)
class ReplicaAnswer:
    replica: float
    """process_start_time_seconds of the replica that answered: different for each process."""
    status: int
    body: bytes
    metrics: str


def ask_one_replica(adapter: DeployedAdapter, plane: ControlPlane, path: str) -> ReplicaAnswer:
    """On one new connection (so one replica): its /metrics, then `path`."""
    context = ssl.create_default_context(cafile=str(adapter.ca.cert_path))
    proxy = plane.front_proxy_client
    context.load_cert_chain(str(proxy.cert_path), str(proxy.key_path))
    connection = http.client.HTTPSConnection("127.0.0.1", adapter.port, context=context, timeout=10)
    try:
        connection.request("GET", "/metrics", headers=AS_ADMIN)
        metrics = connection.getresponse().read().decode()
        connection.request("GET", path, headers=AS_ADMIN)
        answer = connection.getresponse()
        body = answer.read()
    finally:
        connection.close()
    return ReplicaAnswer(start_time(metrics), answer.status, body, metrics)


def start_time(metrics: str) -> float:
    for family in text_string_to_metric_families(metrics):
        if family.name == "process_start_time_seconds":
            return float(family.samples[0].value)
    raise AssertionError("no process_start_time_seconds in the adapter's /metrics")


def api_requests(metrics: str, route_prefix: str) -> float:
    """Requests a replica answered on routes starting with `route_prefix`, any code."""
    total = 0.0
    for family in text_string_to_metric_families(metrics):
        if family.name == "wattscale_api_requests":
            total += sum(
                sample.value
                for sample in family.samples
                if sample.name == "wattscale_api_requests_total"
                and sample.labels["route"].startswith(route_prefix)
            )
    return total
