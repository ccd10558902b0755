"""The live loop against a fake control plane and real HTTP node agents (FakeNvml-style state in memory)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from kubernetes_asyncio.client.exceptions import ApiException

from poweroperator.agents import AgentClient
from poweroperator.budget import BudgetSpec, Workload
from poweroperator.cluster import ClusterError, NodeTarget, RackReading, ReplicaTarget
from poweroperator.loop import Capper, CapperMetrics

TOKEN = "s3cret"


@dataclass
class FakeGpu:
    uuid: str
    index: int
    power_watts: float
    pod: tuple[str, str] | None
    limit_watts: float = 700.0


@dataclass
class FakeAgent:
    """The node agent's HTTP contract over in-memory GPUs; applies limits only when `allow` is set."""

    node: str
    gpus: list[FakeGpu]
    allow: bool = True
    puts: list[tuple[str, float, str]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/gpus", self.list_gpus)
        app.router.add_put("/v1/gpus/{uuid}/power-limit", self.set_limit)
        return app

    async def list_gpus(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "node": self.node,
                "gpus": [
                    {
                        "uuid": g.uuid,
                        "index": g.index,
                        "name": "NVIDIA H100 80GB HBM3",
                        "power_watts": g.power_watts,
                        "power_average_watts": g.power_watts,
                        "power_instant_watts": g.power_watts,
                        "energy_joules_total": 1000.0,
                        "power_limit_watts": g.limit_watts,
                        "power_limit_min_watts": 200.0,
                        "power_limit_max_watts": 700.0,
                        "default_power_limit_watts": 700.0,
                        "pods": [{"namespace": g.pod[0], "pod": g.pod[1]}] if g.pod else [],
                        "errors": {},
                    }
                    for g in self.gpus
                ],
            }
        )

    async def set_limit(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        if auth != f"Bearer {TOKEN}":
            return web.json_response({"kind": "Status", "code": 403, "reason": "Forbidden"}, status=403)
        watts = float((await request.json())["watts"])
        gpu = next(g for g in self.gpus if g.uuid == request.match_info["uuid"])
        self.puts.append((gpu.uuid, watts, auth))
        applied = min(max(watts, 200.0), 700.0)
        previous = gpu.limit_watts
        if self.allow:
            gpu.limit_watts = applied
        return web.json_response(
            {
                "uuid": gpu.uuid,
                "previous_watts": previous,
                "applied_watts": applied,
                "clamped": applied != watts,
                "dry_run": not self.allow,
            }
        )


@dataclass
class FakeCluster:
    budget: dict[str, Any]
    nodes_by_name: dict[str, str]
    rack: RackReading | None
    pods: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple[str, str, bool]] = field(default_factory=list)
    targets: dict[str, ReplicaTarget] = field(default_factory=dict)
    ceilings: list[tuple[str, int]] = field(default_factory=list)
    refuse_target: str | None = None

    async def power_budgets(self) -> list[Mapping[str, Any]]:
        return [self.budget]

    async def nodes(self, selector: str) -> list[NodeTarget]:
        assert selector == "wattscale.io/rack=rack-a"
        return [NodeTarget(name, url) for name, url in sorted(self.nodes_by_name.items())]

    async def workload_pods(self, workload: Workload) -> set[tuple[str, str]]:
        return self.pods.get(workload.name, set())

    async def rack_power(self, budget: str) -> RackReading:
        if self.rack is None:
            raise ClusterError("GET rack_power_watts: HTTP 503")
        return self.rack

    async def patch_status(self, budget: str, status: Mapping[str, Any]) -> None:
        self.statuses.append(dict(status))

    async def emit_event(
        self, budget: BudgetSpec, *, reason: str, message: str, warning: bool = False
    ) -> None:
        self.events.append((reason, message, warning))

    async def replica_target(self, workload: Workload) -> ReplicaTarget:
        if workload.name == self.refuse_target:
            raise ClusterError(f"scaledobject {workload.namespace}/{workload.name} is owned by KServe")
        return self.targets[workload.name]

    async def set_max_replicas(self, target: ReplicaTarget, ceiling: int) -> None:
        self.ceilings.append((target.name, ceiling))


def budget_object(mode: str = "dryRun", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "wattscale.io/v1alpha1",
        "kind": "PowerBudget",
        "metadata": {"name": "rack-a", "uid": "u-1", "generation": 3},
        "spec": {
            "nodeSelector": {"matchLabels": {"wattscale.io/rack": "rack-a"}},
            "capWatts": 5_000,
            "thresholds": {"softRatio": 0.9, "hardRatio": 0.97, "guardRatio": 0},
            "rackWattsPerGpuWatt": 1.0,
            "mode": mode,
            "workloads": [
                {"kind": "InferenceService", "namespace": "llm", "name": "chat", "priorityClass": "high"},
                {"kind": "Deployment", "namespace": "llm", "name": "batch", "priorityClass": "low"},
            ],
            **spec,
        },
    }


def two_node_agents() -> tuple[FakeAgent, FakeAgent]:
    chat, batch = ("llm", "chat-predictor-0"), ("llm", "batch-0")
    return (
        FakeAgent("node-1", [FakeGpu("GPU-a", 0, 650, chat), FakeGpu("GPU-b", 1, 650, batch)]),
        FakeAgent("node-2", [FakeGpu("GPU-c", 0, 650, chat), FakeGpu("GPU-d", 1, 650, batch)]),
    )


class Harness:
    def __init__(
        self, agents: tuple[FakeAgent, ...], budget: dict[str, Any], rack: RackReading | None
    ) -> None:
        self.agents = agents
        self.budget = budget
        self.rack = rack
        self.now = 1_000.0
        self.servers: list[TestServer] = []

    async def __aenter__(self) -> Harness:
        urls = {}
        for agent in self.agents:
            server = TestServer(agent.app())
            await server.start_server()
            self.servers.append(server)
            urls[agent.node] = str(server.make_url("/"))
        self.cluster = FakeCluster(
            self.budget,
            urls,
            self.rack,
            pods={"chat": {("llm", "chat-predictor-0")}, "batch": {("llm", "batch-0")}},
        )
        self.session = aiohttp.ClientSession()
        self.metrics = CapperMetrics()
        self.capper = Capper(
            self.cluster,  # type: ignore[arg-type]
            AgentClient(self.session, token=TOKEN),
            metrics=self.metrics,
            clock=lambda: self.now,
            replica_period_seconds=0.0,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()
        for server in self.servers:
            await server.close()

    def counter(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


def rack_at(watts: float, stamp: float = 1_000.0) -> RackReading:
    return RackReading(power_watts=watts, headroom_watts=4_500 - watts, timestamp_seconds=stamp)


async def test_dry_run_plans_low_priority_cuts_reports_them_and_touches_no_gpu() -> None:
    agents = two_node_agents()
    async with Harness(agents, budget_object("dryRun"), rack_at(4_700.0)) as h:
        await h.capper.run_once()

        assert all(agent.puts == [] for agent in agents)
        assert [g.limit_watts for a in agents for g in a.gpus] == [700.0] * 4
        reason, message, _ = h.cluster.events[-1]
        assert reason == "PowerLimitsLowered"
        assert message.startswith("dryRun: would set 2 GPU limit(s) lower and 0 higher")
        status = h.cluster.statuses[-1]
        assert status["actions"] == 1 and status["limitedGpus"] == 2 and status["powerWatts"] == 4_700.0
        # The gauges the alert rules read (apiservice/monitoring): planned limits in dryRun.
        gauge = h.capper.metrics.registry.get_sample_value
        assert gauge("wattscale_capper_gpus", {"budget": "rack-a"}) == 4
        limits = sum(h.capper.runtime["rack-a"].planned_limits.values()) + 700.0 * 2
        assert gauge("wattscale_capper_gpu_power_limit_sum_watts", {"budget": "rack-a"}) == limits < 4 * 700.0
        at_min = sum(1 for watts in h.capper.runtime["rack-a"].planned_limits.values() if watts <= 200.0)
        assert gauge("wattscale_capper_gpus_at_min_limit", {"budget": "rack-a"}) == at_min
        assert (
            h.counter(
                "wattscale_capper_gpu_limit_changes_total", budget="rack-a", direction="down", mode="dryRun"
            )
            == 2
        )

        # The plan evolves as if applied: the same reading next second does not re-plan the same cut.
        h.now += 1
        h.cluster.rack = rack_at(4_450.0, h.now)
        await h.capper.run_once()
        assert len(h.cluster.events) == 1


async def test_enforce_sets_low_priority_limits_through_the_agents_with_the_token() -> None:
    agents = two_node_agents()
    async with Harness(agents, budget_object("enforce"), rack_at(4_700.0)) as h:
        await h.capper.run_once()

        puts = [(uuid, auth) for agent in agents for uuid, _, auth in agent.puts]
        assert sorted(uuid for uuid, _ in puts) == ["GPU-b", "GPU-d"]
        assert {auth for _, auth in puts} == {f"Bearer {TOKEN}"}
        low = [g.limit_watts for a in agents for g in a.gpus if g.uuid in ("GPU-b", "GPU-d")]
        assert sum(650 - w for w in low) == pytest.approx(200.0, abs=2.0)  # (4.7 kW - 4.5 kW), ratio 1
        assert h.cluster.events[-1][1].startswith("enforce: set 2 GPU limit(s) lower")
        assert (
            h.counter("wattscale_capper_actions_total", budget="rack-a", action="lower", mode="enforce") == 1
        )


async def test_an_agent_started_without_permission_is_reported_and_nothing_is_assumed_applied() -> None:
    agents = two_node_agents()
    for agent in agents:
        agent.allow = False
    async with Harness(agents, budget_object("enforce"), rack_at(4_700.0)) as h:
        await h.capper.run_once()

        assert [g.limit_watts for a in agents for g in a.gpus] == [700.0] * 4
        assert "agents answered dry_run" in h.cluster.events[-1][1]


async def test_an_unreachable_agent_keeps_its_gpus_at_their_limit_and_is_the_last_error() -> None:
    agents = two_node_agents()
    async with Harness(agents, budget_object("dryRun"), rack_at(4_000.0)) as h:
        await h.capper.run_once()
        await h.servers[1].close()
        h.now += 1
        h.cluster.rack = rack_at(4_000.0, h.now)

        await h.capper.run_once()

        runtime = h.capper.runtime["rack-a"]
        assert math.isnan(runtime.gpus["GPU-c"].power_watts)
        assert "node node-2" in h.cluster.statuses[-1]["lastError"]
        assert h.counter("wattscale_capper_errors_total", budget="rack-a", stage="agent") == 1


async def test_stale_rack_power_never_raises_and_eventually_lowers() -> None:
    agents = two_node_agents()
    for agent in agents:
        for gpu in agent.gpus:
            gpu.limit_watts = 400.0
            gpu.power_watts = 150.0
    async with Harness(agents, budget_object("enforce"), rack_at(1_000.0)) as h:
        await h.capper.run_once()
        h.cluster.rack = None  # the custom metrics API stops answering
        for _ in range(20):
            h.now += 1
            await h.capper.run_once()

        limits = [g.limit_watts for a in agents for g in a.gpus]
        assert max(limits) <= 400.0
        assert min(limits) < 400.0
        assert any(
            reason == "PowerLimitsLoweredStaleInput" and warning for reason, _, warning in h.cluster.events
        )
        assert "rack_power_watts" in h.cluster.statuses[-1]["lastError"]


async def test_replica_ceiling_of_an_inference_service_follows_the_headroom() -> None:
    agents = two_node_agents()
    budget = budget_object("enforce")
    budget["spec"]["workloads"][0]["replicaPeakPowerWatts"] = 1_000
    async with Harness(agents, budget, RackReading(3_000.0, 1_500.0, 1_000.0)) as h:
        chat = Workload(kind="InferenceService", namespace="llm", name="chat", priority=1)
        h.cluster.targets["chat"] = ReplicaTarget(chat, "inferenceservices", "chat", 8, 1, 8)

        await h.capper.run_once()

        # 1 running + floor(1500 / 1000) = 2 replicas fit.
        assert h.cluster.ceilings == [("chat", 2)]
        assert any(
            reason == "ReplicaCeilingChanged" and "spec.predictor.maxReplicas 8 -> 2" in message
            for reason, message, _ in h.cluster.events
        )


async def test_a_kserve_owned_scaled_object_is_refused_and_reported() -> None:
    agents = two_node_agents()
    budget = budget_object("enforce")
    budget["spec"]["workloads"][1].update(replicaPeakPowerWatts=1_000, scaledObject="batch")
    async with Harness(agents, budget, RackReading(3_000.0, 1_500.0, 1_000.0)) as h:
        h.cluster.refuse_target = "batch"

        await h.capper.run_once()

        assert h.cluster.ceilings == []
        assert "owned by KServe" in h.cluster.statuses[-1]["lastError"]


async def test_an_invalid_budget_is_reported_in_its_status_and_nothing_is_done() -> None:
    agents = two_node_agents()
    async with Harness(agents, budget_object("sometimes", capWatts=-1), rack_at(4_700.0)) as h:
        await h.capper.run_once()

        error = h.cluster.statuses[-1]["lastError"]
        assert "spec.capWatts" in error and "spec.mode" in error
        assert all(agent.puts == [] for agent in agents) and h.cluster.events == []


class FakeMetricsApiClient:
    """Answers custom.metrics.k8s.io GETs from a dict of metric -> (value, timestamp); 404 otherwise."""

    def __init__(self, values: dict[str, tuple[str, str]]) -> None:
        self.values = values

    async def call_api(self, path: str, method: str, **_: Any) -> dict[str, Any]:
        metric = path.rsplit("/", 1)[-1]
        if metric not in self.values:
            raise ApiException(status=404)
        value, stamp = self.values[metric]
        return {"items": [{"value": value, "timestamp": stamp}]}


async def test_the_operator_acts_on_the_newest_pdu_reading_and_falls_back_to_the_window_average() -> None:
    from poweroperator.cluster import KubeCluster

    api = FakeMetricsApiClient(
        {
            "rack_power_watts": ("31k", "2026-01-01T00:00:00Z"),
            "rack_power_headroom_watts": ("5720", "2026-01-01T00:00:00Z"),
            # A spike the 60 s average has not caught up with yet.
            "rack_power_latest_watts": ("36500", "2026-01-01T00:00:01Z"),
        }
    )
    cluster = KubeCluster(api, agent_url_template="http://{node_ip}:9477")  # type: ignore[arg-type]
    assert await cluster.rack_power("rack-a") == RackReading(36_500.0, 5_720.0, 1767225601.0)

    del api.values["rack_power_latest_watts"]  # the PDU fell silent: the adapter answers 404
    assert await cluster.rack_power("rack-a") == RackReading(31_000.0, 5_720.0, 1767225600.0)

    del api.values["rack_power_watts"]
    with pytest.raises(ClusterError):
        await cluster.rack_power("rack-a")


class FakeReconciler:
    """Records what the loop hands a reconciler; fails on demand, as a bug would."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[list[str], float]] = []
        self.fail = fail

    async def reconcile_all(self, budgets: Any, runtime: Any, now: float) -> None:
        self.calls.append(([b.name for b in budgets], now))
        for name in runtime:
            runtime[name].workloads = [{"name": "llama", "applied": True}]
        if self.fail:
            raise RuntimeError("a bug in a reconciler")


async def test_reconcilers_run_every_reconcile_period_and_their_status_is_written() -> None:
    agents = two_node_agents()
    async with Harness(agents, budget_object("dryRun"), rack_at(4_000.0)) as h:
        broken, working = FakeReconciler(fail=True), FakeReconciler()
        h.capper.reconcilers += [broken, working]
        h.capper.reconcile_period_seconds = 15.0
        for _ in range(20):  # 20 s of one-second periods
            await h.capper.run_once()
            h.now += 1
            h.cluster.rack = rack_at(4_000.0, h.now)

        # A failing reconciler neither stops the others nor the GPU-limit loop.
        assert [now for _, now in working.calls] == [1_000.0, 1_015.0]
        assert working.calls[0][0] == ["rack-a"] and len(broken.calls) == 2
        assert h.counter("wattscale_capper_errors_total", budget="", stage="internal") == 2
        assert h.cluster.statuses[-1]["workloads"] == [{"name": "llama", "applied": True}]
