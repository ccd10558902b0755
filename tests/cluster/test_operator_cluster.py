"""`wattscale operator` on the real control plane: PowerBudget CRD, Lease, Events and status, rack power read
through the aggregated custom metrics API from the running adapter, and real `wattscale agent` HTTP servers
(with a FakeNvml in place of the driver, since there is no GPU) on the PowerBudget's nodes.

Dry run: the capper reports what it would do and no GPU limit moves. Enforce: the agents apply the limits.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml
from kubeharness.adapter import DeployedAdapter
from kubeharness.controlplane import ControlPlane
from kubeharness.metrics import get_raw, quantity
from kubeharness.processes import WATTSCALE_CLI, ManagedProcess, free_port, wait_until
from kubeharness.workloads import INFERENCE_SERVICE_CRD

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "apiservice" / "powerbudget-crd.yaml"
NODES = ("node-1", "node-2")
GPUS_PER_AGENT = 2
TOKEN = "capper-cluster-test-token"
_TIMEOUT_SECONDS = 150

# The agent's own code (collectors.agent_server + collectors.nvml), with the FakeNvml of its unit tests in
# place of pynvml: every GPU draws 600 W until a limit below that is applied.
_AGENT_PROGRAM = """
import sys
sys.path.insert(0, sys.argv[1])
from aiohttp import web
from fake_nvml import FakeGpu, FakeNvml
from collectors.agent_server import AgentSettings, create_agent_app
from collectors.nvml import NvmlReader

node, port, token_file, gpus = sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
fake = FakeNvml([
    FakeGpu(uuid=f"GPU-{node}-{i}", power_milliwatts=600_000, average_milliwatts=600_000)
    for i in range(gpus)
])
settings = AgentSettings(
    node=node, interval_seconds=1.0, control_token_file=token_file, allow_power_limit_changes=True
)
web.run_app(create_agent_app(settings, NvmlReader(nvml=fake)), host="127.0.0.1", port=port, print=None)
"""


def _agent_gpus(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/v1/gpus", timeout=5) as answer:
        gpus: list[dict[str, Any]] = json.load(answer)["gpus"]
        return gpus


@pytest.fixture(scope="module")
def power_budget_crd(control_plane: ControlPlane) -> Iterator[None]:
    crd = yaml.safe_load(CRD_PATH.read_text(encoding="utf-8"))
    control_plane.apply([crd])
    control_plane.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd['metadata']['name']}"
    )
    yield


@pytest.fixture(scope="module")
def agents(control_plane: ControlPlane, admin_api: kubernetes.client.ApiClient) -> Iterator[dict[str, str]]:
    """One agent per test node, found by the capper through the node annotation wattscale.io/agent-url."""
    workdir = control_plane.workdir / "capper"
    workdir.mkdir(exist_ok=True)
    token_file = workdir / "agent-token"
    token_file.write_text(TOKEN)
    core = kubernetes.client.CoreV1Api(admin_api)
    processes, urls = [], {}
    for node in NODES:
        port = free_port()
        process = ManagedProcess(
            f"agent {node}",
            [
                sys.executable,
                "-c",
                _AGENT_PROGRAM,
                str(REPO / "tests" / "unit" / "collectors"),
                node,
                str(port),
                str(token_file),
                str(GPUS_PER_AGENT),
            ],
            control_plane.workdir / "logs" / f"agent-{node}.log",
        )
        processes.append(process)
        urls[node] = f"http://127.0.0.1:{port}"
        core.patch_node(node, {"metadata": {"annotations": {"wattscale.io/agent-url": urls[node]}}})
    try:
        for node, url in urls.items():
            wait_until(
                lambda url=url: len(_agent_gpus(url)) == GPUS_PER_AGENT,
                timeout_seconds=60,
                description=f"agent on {node} answers /v1/gpus",
            )
        yield urls
    finally:
        for process in processes:
            process.stop()


def start_operator(plane: ControlPlane, identity: str, metrics_port: int, *flags: str) -> ManagedProcess:
    """`wattscale operator` against the test plane, the Lease in `default`, agents reached with TOKEN."""
    return ManagedProcess(
        f"wattscale operator {identity}",
        [
            *WATTSCALE_CLI,
            "operator",
            "--kubeconfig",
            str(plane.admin_kubeconfig),
            "--identity",
            identity,
            "--lease-namespace",
            "default",
            "--metrics-address",
            "127.0.0.1",
            "--metrics-port",
            str(metrics_port),
            "--agent-token-file",
            str(plane.workdir / "capper" / "agent-token"),
            "--replica-period-seconds",
            "1",
            *flags,
        ],
        plane.workdir / "logs" / f"wattscale-operator-{identity}.log",
        env={"KUBERNETES_SERVICE_HOST": "", "KUBERNETES_SERVICE_PORT": ""},
    )


@pytest.fixture
def capper(
    control_plane: ControlPlane, adapter: DeployedAdapter, power_budget_crd: None, agents: dict[str, str]
) -> Iterator[ManagedProcess]:
    process = start_operator(control_plane, "capper-0", free_port())
    try:
        yield process
    finally:
        process.stop()


def _budget(mode: str) -> dict[str, Any]:
    # rack-a is the harness's rack (node-1 and node-2); a cap far below its idle power makes every period
    # an emergency, so the test does not depend on the simulated load.
    return {
        "apiVersion": "wattscale.io/v1alpha1",
        "kind": "PowerBudget",
        "metadata": {"name": "rack-a"},
        "spec": {
            "nodeSelector": {"matchLabels": {"wattscale.io/rack": "rack-a"}},
            "capWatts": 100,
            "mode": mode,
            "thresholds": {"guardRatio": 0},
        },
    }


def _budget_status(plane: ControlPlane) -> dict[str, Any]:
    done = plane.kubectl("get", "powerbudget", "rack-a", "-o", "json")
    status: dict[str, Any] = json.loads(done.stdout).get("status") or {}
    return status


def _events(plane: ControlPlane) -> list[dict[str, Any]]:
    done = plane.kubectl(
        "get", "events", "-n", "default", "--field-selector", "involvedObject.kind=PowerBudget", "-o", "json"
    )
    items: list[dict[str, Any]] = json.loads(done.stdout)["items"]
    return items


def _limits(urls: dict[str, str]) -> list[float]:
    return [float(gpu["power_limit_watts"]) for url in urls.values() for gpu in _agent_gpus(url)]


def _rack_power_served(plane: ControlPlane) -> Any:
    document = get_raw(
        plane, "/apis/custom.metrics.k8s.io/v1beta2/powerbudgets.wattscale.io/rack-a/rack_power_watts"
    )
    return quantity(document["items"][0]["value"]) > 0


@pytest.mark.parametrize("mode", ["dryRun", "enforce"])
def test_capper_acts_on_a_power_budget_over_its_cap(
    mode: str, control_plane: ControlPlane, capper: ManagedProcess, agents: dict[str, str]
) -> None:
    control_plane.apply([_budget(mode)], "--force-conflicts")
    try:
        wait_until(
            lambda: _rack_power_served(control_plane),
            timeout_seconds=_TIMEOUT_SECONDS,
            description="rack_power_watts of powerbudgets.wattscale.io/rack-a from the adapter",
        )

        status = wait_until(
            lambda: (s := _budget_status(control_plane)).get("actions", 0) >= 1 and s,
            timeout_seconds=_TIMEOUT_SECONDS,
            description=f"PowerBudget rack-a status with an action ({mode})",
            on_timeout=capper.tail,
        )
        assert status["leader"] == "capper-0"
        assert status["powerWatts"] > 100
        assert status["gpus"] == len(NODES) * GPUS_PER_AGENT
        events = _events(control_plane)
        messages = [e["message"] for e in events if e["reason"] == "PowerLimitsLoweredHard"]
        assert any(m.startswith(f"{mode}: ") for m in messages), [e["message"] for e in events]

        lease = control_plane.kubectl("get", "lease", "wattscale-operator", "-n", "default", "-o", "json")
        assert json.loads(lease.stdout)["spec"]["holderIdentity"] == "capper-0"

        if mode == "dryRun":
            assert _limits(agents) == [700.0] * len(NODES) * GPUS_PER_AGENT
        else:
            wait_until(
                lambda: _limits(agents) == [200.0] * len(NODES) * GPUS_PER_AGENT,
                timeout_seconds=_TIMEOUT_SECONDS,
                description="agents applied the minimum limit",
                on_timeout=capper.tail,
            )
    finally:
        control_plane.kubectl("delete", "powerbudget", "rack-a", "--ignore-not-found")
        control_plane.kubectl(
            "delete",
            "events",
            "-n",
            "default",
            "--field-selector",
            "involvedObject.kind=PowerBudget",
            check=False,
        )


def _inference_service(plane: ControlPlane) -> dict[str, Any]:
    done = plane.kubectl("get", "inferenceservice", "chat", "-n", "llm", "-o", "json")
    obj: dict[str, Any] = json.loads(done.stdout)
    return obj


def test_capper_clamps_and_restores_an_inference_service_replica_ceiling(
    control_plane: ControlPlane, capper: ManagedProcess
) -> None:
    control_plane.apply([INFERENCE_SERVICE_CRD])
    control_plane.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/inferenceservices.serving.kserve.io"
    )
    control_plane.apply(
        [
            {
                "apiVersion": "serving.kserve.io/v1beta1",
                "kind": "InferenceService",
                "metadata": {"name": "chat", "namespace": "llm"},
                "spec": {
                    "predictor": {
                        "minReplicas": 1,
                        "maxReplicas": 8,
                        "model": {"modelFormat": {"name": "hf"}},
                    }
                },
            }
        ]
    )
    budget = _budget("enforce")
    workload = {"kind": "InferenceService", "namespace": "llm", "name": "chat", "priorityClass": "high"}
    # No replica fits: each would need far more than any headroom.
    budget["spec"]["workloads"] = [{**workload, "replicaPeakPowerWatts": 1e9}]
    control_plane.apply([budget], "--force-conflicts")
    try:
        clamped = wait_until(
            lambda: (
                (isvc := _inference_service(control_plane))["spec"]["predictor"]["maxReplicas"] == 1 and isvc
            ),
            timeout_seconds=_TIMEOUT_SECONDS,
            description="InferenceService chat clamped to one replica",
            on_timeout=capper.tail,
        )
        annotations = clamped["metadata"].get("annotations") or {}
        assert annotations.get("wattscale.io/configured-max-replicas") == "8"
        assert clamped["spec"]["predictor"]["model"] == {"modelFormat": {"name": "hf"}}  # merge patch kept it
        reasons = [e["reason"] for e in _events(control_plane)]
        assert "ReplicaCeilingChanged" in reasons

        # Headroom for any number of replicas: the configured ceiling comes back and the annotation goes.
        budget["spec"]["workloads"] = [{**workload, "replicaPeakPowerWatts": 1}]
        budget["spec"]["capWatts"] = 1e9
        control_plane.apply([budget], "--force-conflicts")
        restored = wait_until(
            lambda: (
                (isvc := _inference_service(control_plane))["spec"]["predictor"]["maxReplicas"] == 8 and isvc
            ),
            timeout_seconds=_TIMEOUT_SECONDS,
            description="InferenceService chat back to its configured ceiling",
            on_timeout=capper.tail,
        )
        assert "wattscale.io/configured-max-replicas" not in (restored["metadata"].get("annotations") or {})
    finally:
        control_plane.kubectl("delete", "powerbudget", "rack-a", "--ignore-not-found")
        control_plane.kubectl("delete", "inferenceservice", "chat", "-n", "llm", "--ignore-not-found")


def _managed_budget(name: str, **scaling: Any) -> dict[str, Any]:
    return {
        "apiVersion": "wattscale.io/v1alpha1",
        "kind": "PowerBudget",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"matchLabels": {"wattscale.io/rack": "nowhere"}},
            "capWatts": 10_000,
            "workloads": [
                {
                    "kind": "Deployment",
                    "namespace": "llm",
                    "name": "llama",
                    "scaling": {"mode": "managed", **scaling},
                }
            ],
        },
    }


QUEUE_TRIGGER = {"name": "queue", "type": "prometheus", "metadata": {"query": "q", "threshold": "4"}}


@pytest.mark.parametrize(
    ("scaling", "message"),
    [
        (
            {"minReplicas": 5, "maxReplicas": 4, "demand": [QUEUE_TRIGGER]},
            "minReplicas must not exceed maxReplicas",
        ),
        ({"maxReplicas": 4}, "needs maxReplicas and at least one demand trigger"),
        ({"maxReplicas": 4, "demand": [QUEUE_TRIGGER, QUEUE_TRIGGER]}, "demand trigger names must be unique"),
        (
            {"maxReplicas": 4, "demand": [{**QUEUE_TRIGGER, "name": "wattscale_budget"}]},
            "wattscale_budget is the operator's own trigger",
        ),
    ],
)
def test_the_api_server_refuses_a_managed_workload_that_breaks_a_cel_rule(
    control_plane: ControlPlane, power_budget_crd: None, scaling: dict[str, Any], message: str
) -> None:
    refused = control_plane.kubectl(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        stdin=json.dumps(_managed_budget("cel-check", **scaling)),
        check=False,
    )
    assert refused.returncode != 0 and message in refused.stderr


def test_the_api_server_fills_the_scaling_defaults(
    control_plane: ControlPlane, power_budget_crd: None
) -> None:
    applied = control_plane.kubectl(
        "apply",
        "--dry-run=server",
        "-o",
        "json",
        "-f",
        "-",
        stdin=json.dumps(_managed_budget("defaults-check", maxReplicas=4, demand=[QUEUE_TRIGGER])),
    )
    spec = json.loads(applied.stdout)["spec"]
    scaling = spec["workloads"][0]["scaling"]
    assert (
        scaling["minReplicas"],
        scaling["pollingIntervalSeconds"],
        scaling["fallbackFailureThreshold"],
    ) == (1, 15, 3)
    assert scaling["demand"][0]["replicaTarget"] == 1
    assert spec["mode"] == "dryRun" and spec["thresholds"]["softRatio"] == 0.97


def test_placement_taints_an_overdrawn_racks_nodes_on_the_real_api_server_and_clears_them(
    control_plane: ControlPlane, power_budget_crd: None, kubelet: object
) -> None:
    """The operator's placement writes through the real API: PreferNoSchedule on every node of the rack,
    every other taint kept (the stand-in kubelet's not-ready taint), all of it gone when headroom returns."""
    import asyncio
    import time

    from kubernetes_asyncio import client as async_client
    from kubernetes_asyncio import config as async_config

    from poweroperator.budget import parse_budget
    from poweroperator.cluster import KubeCluster, RackReading
    from poweroperator.loop import BudgetRuntime
    from poweroperator.placement import TAINT_KEY, PlacementReconciler, RackMark

    budget = parse_budget(_budget("enforce"))
    events: list[str] = []

    def taints(node: str) -> list[dict[str, str]]:
        done = control_plane.kubectl("get", "node", node, "-o", "json")
        found: list[dict[str, str]] = json.loads(done.stdout)["spec"].get("taints") or []
        return found

    others = {node: [t for t in taints(node) if t["key"] != TAINT_KEY] for node in NODES}

    async def run(headroom_watts: float) -> dict[str, Any]:
        await async_config.load_kube_config(config_file=str(control_plane.admin_kubeconfig))
        async with async_client.ApiClient() as api:

            async def event(_: Any, reason: str, message: str, warning: bool) -> None:
                events.append(f"{reason}: {message}")

            placement = PlacementReconciler(
                KubeCluster(api, agent_url_template="http://{node_ip}:9477"), event, after_seconds=0
            )
            runtime = {budget.name: BudgetRuntime(rack=RackReading(9_000.0, headroom_watts, time.time()))}
            if headroom_watts > 0:  # start from the marked state, as the operator would have left it
                placement.marks[budget.name] = RackMark(overdrawn=True)
            await placement.reconcile_all([budget], runtime, time.time())
            status = runtime[budget.name].placement
            assert status is not None
            return status

    status = asyncio.run(run(0.0))
    assert status["overdrawn"] is True and status["taintedNodes"] == list(NODES)
    for node in NODES:
        assert {"key": TAINT_KEY, "value": budget.name, "effect": "PreferNoSchedule"} in taints(node)
        assert all(t in taints(node) for t in others[node])
    assert events and events[-1].startswith("RackOverdrawnNodesTainted") and "node-1, node-2" in events[-1]

    status = asyncio.run(run(5_000.0))
    assert status["overdrawn"] is False and status["taintedNodes"] == []
    for node in NODES:
        assert [t for t in taints(node) if t["key"] == TAINT_KEY] == [] and taints(node) == others[node]
