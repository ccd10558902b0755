"""The live capping loop: every period, for every PowerBudget, read the rack and its GPUs, ask the policy
(`poweroperator.policy.decide`, the same code the simulator runs), and act through the node agents.

Per budget and period:
1. Nodes from the budget's nodeSelector; each node's agent (`GET /v1/gpus`). A node whose agent fails
   keeps its GPUs in the observation with an unknown reading, which the policy counts at their limit.
2. Rack power and headroom from the custom metrics API; a failed read leaves the last value to age, so
   the policy sees it go stale and holds, then lowers (never raises).
3. Priorities: a GPU's pods are matched to the budget's workloads; the most important workload on a GPU
   sets its class, a GPU with no listed workload gets the budget's default class.
4. Enforce: `PUT .../power-limit` for each changed GPU; the agent's answer (applied, clamped, dry run) is
   what the loop remembers. dryRun: nothing is sent; the planned limits are remembered instead, so the
   plan evolves as if it had been applied and events say what would have been done.
5. Replica ceilings, every `replica_period_seconds`, for workloads with replicaPeakPowerWatts.
Every action is an Event on the PowerBudget and a counter in /metrics; status carries power, headroom,
the number of actions and the last error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from poweroperator.agents import AgentClient, AgentError, GpuState
from poweroperator.budget import BudgetError, BudgetSpec, parse_budget
from poweroperator.cluster import Cluster, ClusterError, RackReading
from poweroperator.policy import (
    Action,
    Decision,
    PolicyState,
    RackObservation,
    decide,
    guard_limit_sum_watts,
)

log = logging.getLogger(__name__)

_EVENT_REASON = {
    Action.LOWER: "PowerLimitsLowered",
    Action.EMERGENCY: "PowerLimitsLoweredHard",
    Action.GUARD: "PowerLimitsGuarded",
    Action.RESTORE: "PowerLimitsRestored",
    Action.STALE_LOWER: "PowerLimitsLoweredStaleInput",
}


class CapperMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.actions = Counter(
            "wattscale_capper_actions_total",
            "Policy decisions that changed (or, in dryRun, would change) limits or replica ceilings.",
            ["budget", "action", "mode"],
            registry=self.registry,
        )
        self.limit_changes = Counter(
            "wattscale_capper_gpu_limit_changes_total",
            "GPU power limit changes sent to agents (mode=enforce) or planned (mode=dryRun).",
            ["budget", "direction", "mode"],
            registry=self.registry,
        )
        self.replica_changes = Counter(
            "wattscale_capper_replica_ceiling_changes_total",
            "Replica ceiling changes written (or planned).",
            ["budget", "workload", "mode"],
            registry=self.registry,
        )
        self.errors = Counter(
            "wattscale_capper_errors_total",
            "Failures by stage: budget, nodes, agent, rack_power, set_limit, replicas, status, event.",
            ["budget", "stage"],
            registry=self.registry,
        )
        self.leader = Gauge(
            "wattscale_capper_leader", "1 while this replica holds the Lease.", registry=self.registry
        )
        self.rack_power = Gauge(
            "wattscale_capper_rack_power_watts",
            "Rack power the loop last read.",
            ["budget"],
            registry=self.registry,
        )
        self.limited_gpus = Gauge(
            "wattscale_capper_limited_gpus",
            "GPUs whose limit is below their maximum (planned limits in dryRun).",
            ["budget"],
            registry=self.registry,
        )
        self.gpus = Gauge(
            "wattscale_capper_gpus", "GPUs the budget covers.", ["budget"], registry=self.registry
        )
        self.gpus_at_min_limit = Gauge(
            "wattscale_capper_gpus_at_min_limit",
            "GPUs whose limit is at the device minimum (planned limits in dryRun): nothing left to cut.",
            ["budget"],
            registry=self.registry,
        )
        self.limit_sum = Gauge(
            "wattscale_capper_gpu_power_limit_sum_watts",
            "Sum of the GPUs' power limits (planned limits in dryRun).",
            ["budget"],
            registry=self.registry,
        )
        self.limit_sum_allowed = Gauge(
            "wattscale_capper_gpu_power_limit_allowed_watts",
            "The sum of GPU limits the spike guard allows under the cap (absent without a guard).",
            ["budget"],
            registry=self.registry,
        )


@dataclass(slots=True)
class BudgetRuntime:
    """What the loop remembers about one budget between periods."""

    policy_state: PolicyState = field(default_factory=PolicyState)
    gpus: dict[str, GpuState] = field(default_factory=dict)
    """Last reading per GPU uuid (kept while its agent is unreachable)."""
    planned_limits: dict[str, float] = field(default_factory=dict)
    """dryRun: the limits the loop would have set."""
    node_urls: dict[str, str] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    """GPU uuids in the order of the last observation's arrays."""
    rack: RackReading | None = None
    pods_priority: dict[tuple[str, str], int] = field(default_factory=dict)
    pods_read_seconds: float = -math.inf
    replicas_read_seconds: float = -math.inf
    actions: int = 0
    last_action: str = ""
    last_action_time: str | None = None
    last_error: str = ""
    status_written_seconds: float = -math.inf
    written_error: str = ""
    workloads: list[dict[str, Any]] = field(default_factory=list)
    """status.workloads: the managed workloads' KEDA objects, from the last scaling reconcile."""
    placement: dict[str, Any] | None = None
    """status.placement, from the last placement reconcile."""


class Reconciler(Protocol):
    """Slower work over all valid budgets, every reconcile period: KEDA objects, placement marks."""

    async def reconcile_all(
        self, budgets: Sequence[BudgetSpec], runtime: Mapping[str, BudgetRuntime], now: float
    ) -> None: ...


class Capper:
    def __init__(
        self,
        cluster: Cluster,
        agents: AgentClient,
        *,
        metrics: CapperMetrics | None = None,
        clock: Callable[[], float] = time.time,
        identity: str = "wattscale-operator",
        pods_period_seconds: float = 10.0,
        replica_period_seconds: float = 15.0,
        status_period_seconds: float = 5.0,
        reconcile_period_seconds: float = 15.0,
        reconcilers: Sequence[Reconciler] = (),
    ) -> None:
        self.cluster = cluster
        self.agents = agents
        self.metrics = metrics or CapperMetrics()
        self._clock = clock
        self.identity = identity
        self.pods_period_seconds = pods_period_seconds
        self.replica_period_seconds = replica_period_seconds
        self.status_period_seconds = status_period_seconds
        self.runtime: dict[str, BudgetRuntime] = {}
        self.reconcile_period_seconds = reconcile_period_seconds
        self.reconcilers = list(reconcilers)
        self._reconciled_seconds = -math.inf

    async def run_once(self) -> None:
        """One period over every PowerBudget; a failure in one budget never stops the others."""
        try:
            budgets = await self.cluster.power_budgets()
        except ClusterError as exc:
            self.metrics.errors.labels("", "budget").inc()
            log.warning("operator.budgets_unavailable", extra={"error": str(exc)})
            return
        names = set()
        valid: list[BudgetSpec] = []
        for raw in budgets:
            name = str((raw.get("metadata") or {}).get("name") or "")
            names.add(name)
            try:
                valid += await self._run_budget(name, raw)
            except Exception:  # our bug: log it and keep capping the other racks
                self.metrics.errors.labels(name, "internal").inc()
                log.exception("operator.budget_failed", extra={"budget": name})
        for gone in set(self.runtime) - names:
            del self.runtime[gone]
        await self._reconcile(valid)

    async def _reconcile(self, budgets: Sequence[BudgetSpec]) -> None:
        now = self._clock()
        if not self.reconcilers or now - self._reconciled_seconds < self.reconcile_period_seconds:
            return
        self._reconciled_seconds = now
        for reconciler in self.reconcilers:
            try:
                await reconciler.reconcile_all(budgets, self.runtime, now)
            except Exception:  # our bug: the GPU-limit loop must keep running
                self.metrics.errors.labels("", "internal").inc()
                log.exception("operator.reconcile_failed", extra={"reconciler": type(reconciler).__name__})

    async def _run_budget(self, name: str, raw: Mapping[str, Any]) -> list[BudgetSpec]:
        """One period of one budget; returns it parsed, or nothing when it is invalid."""
        runtime = self.runtime.setdefault(name, BudgetRuntime())
        try:
            budget = parse_budget(raw)
        except BudgetError as exc:
            self.metrics.errors.labels(name, "budget").inc()
            await self._fail(name, runtime, str(exc))
            return []
        errors: list[str] = []
        now = self._clock()
        await self._read_gpus(budget, runtime, errors)
        await self._read_rack(budget, runtime, errors)
        await self._read_priorities(budget, runtime, now, errors)
        decision = self._decide(budget, runtime, now)
        if decision is not None:
            await self._apply(budget, runtime, decision, errors)
        if budget.workloads and now - runtime.replicas_read_seconds >= self.replica_period_seconds:
            runtime.replicas_read_seconds = now
            await self._clamp_replicas(budget, runtime, errors)
        runtime.last_error = "; ".join(errors)
        await self._write_status(
            budget, runtime, now, force=decision is not None and bool(decision.changed.any())
        )
        return [budget]

    async def _fail(self, name: str, runtime: BudgetRuntime, error: str) -> None:
        runtime.last_error = error
        try:
            await self.cluster.patch_status(name, {"lastError": error, "leader": self.identity})
        except ClusterError:
            self.metrics.errors.labels(name, "status").inc()

    async def _read_gpus(self, budget: BudgetSpec, runtime: BudgetRuntime, errors: list[str]) -> None:
        try:
            nodes = await self.cluster.nodes(budget.node_selector)
        except ClusterError as exc:
            self.metrics.errors.labels(budget.name, "nodes").inc()
            errors.append(str(exc))
            return
        runtime.node_urls = {node.name: node.agent_url for node in nodes}
        results = await asyncio.gather(
            *(self.agents.gpus(node.agent_url) for node in nodes), return_exceptions=True
        )
        seen: set[str] = set()
        for node, result in zip(nodes, results, strict=True):
            if isinstance(result, AgentError):
                self.metrics.errors.labels(budget.name, "agent").inc()
                errors.append(f"node {node.name}: {result}")
                # Keep the node's GPUs, reading unknown: the policy counts them at their limit.
                for uuid, gpu in runtime.gpus.items():
                    if gpu.node == node.name:
                        seen.add(uuid)
                        runtime.gpus[uuid] = _unknown(gpu)
                continue
            if isinstance(result, BaseException):
                raise result
            for gpu in result:
                reading = gpu if gpu.node else _on_node(gpu, node.name)
                runtime.gpus[gpu.uuid] = reading
                seen.add(gpu.uuid)
        for uuid in set(runtime.gpus) - seen:
            del runtime.gpus[uuid]
            runtime.planned_limits.pop(uuid, None)

    async def _read_rack(self, budget: BudgetSpec, runtime: BudgetRuntime, errors: list[str]) -> None:
        try:
            runtime.rack = await self.cluster.rack_power(budget.name)
            self.metrics.rack_power.labels(budget.name).set(runtime.rack.power_watts)
        except ClusterError as exc:
            # The last reading stays and ages: the policy holds, then lowers, never raises.
            self.metrics.errors.labels(budget.name, "rack_power").inc()
            errors.append(str(exc))

    async def _read_priorities(
        self, budget: BudgetSpec, runtime: BudgetRuntime, now: float, errors: list[str]
    ) -> None:
        if now - runtime.pods_read_seconds < self.pods_period_seconds:
            return
        priorities: dict[tuple[str, str], int] = {}
        for workload in budget.workloads:
            try:
                pods = await self.cluster.workload_pods(workload)
            except ClusterError as exc:
                self.metrics.errors.labels(budget.name, "pods").inc()
                errors.append(str(exc))
                return  # keep the previous map rather than demote a high-priority workload
            for pod in pods:
                priorities[pod] = max(priorities.get(pod, workload.priority), workload.priority)
        runtime.pods_priority = priorities
        runtime.pods_read_seconds = now

    def _decide(self, budget: BudgetSpec, runtime: BudgetRuntime, now: float) -> Decision | None:
        if not runtime.gpus:
            return None
        gpus = sorted(runtime.gpus.values(), key=lambda g: (g.node, g.index, g.uuid))
        if budget.enforce:
            runtime.planned_limits.clear()
        limits = np.array([runtime.planned_limits.get(g.uuid, g.limit_watts) for g in gpus])
        default = budget.default_priority
        priority = np.array(
            [max((runtime.pods_priority.get(pod, default) for pod in g.pods), default=default) for g in gpus],
            dtype=np.int64,
        )
        rack = runtime.rack
        obs = RackObservation(
            now_seconds=now,
            rack_power_watts=rack.power_watts if rack else math.nan,
            rack_power_timestamp_seconds=rack.timestamp_seconds if rack else math.nan,
            gpu_power_watts=np.array([g.power_watts for g in gpus]),
            gpu_limit_watts=limits,
            gpu_min_watts=np.array([g.limit_min_watts for g in gpus]),
            gpu_max_watts=np.array([g.limit_max_watts for g in gpus]),
            gpu_priority=priority,
        )
        decision = decide(budget.policy, runtime.policy_state, obs)
        runtime.policy_state = decision.state
        runtime.order = [g.uuid for g in gpus]
        self.metrics.limited_gpus.labels(budget.name).set(
            float((decision.limits_watts < obs.gpu_max_watts).sum())
        )
        self.metrics.gpus.labels(budget.name).set(float(len(gpus)))
        self.metrics.gpus_at_min_limit.labels(budget.name).set(
            float((decision.limits_watts <= obs.gpu_min_watts).sum())
        )
        self.metrics.limit_sum.labels(budget.name).set(float(decision.limits_watts.sum()))
        non_gpu_watts = decision.state.non_gpu_watts
        allowed_watts = (
            math.inf if non_gpu_watts is None else guard_limit_sum_watts(budget.policy, non_gpu_watts)
        )
        if math.isfinite(allowed_watts):
            self.metrics.limit_sum_allowed.labels(budget.name).set(allowed_watts)
        else:  # no guard: no bound to compare with
            with contextlib.suppress(KeyError):
                self.metrics.limit_sum_allowed.remove(budget.name)
        return decision

    async def _apply(
        self, budget: BudgetSpec, runtime: BudgetRuntime, decision: Decision, errors: list[str]
    ) -> None:
        if not bool(decision.changed.any()):
            return
        mode = "enforce" if budget.enforce else "dryRun"
        changed = [
            (uuid, float(watts))
            for uuid, watts, hit in zip(runtime.order, decision.limits_watts, decision.changed, strict=True)
            if hit
        ]
        lowered = raised = 0
        agent_dry_run = False
        for uuid, watts in changed:
            gpu = runtime.gpus[uuid]
            before = runtime.planned_limits.get(uuid, gpu.limit_watts)
            if budget.enforce:
                try:
                    change = await self.agents.set_power_limit(runtime.node_urls[gpu.node], uuid, watts)
                except (AgentError, KeyError) as exc:
                    self.metrics.errors.labels(budget.name, "set_limit").inc()
                    errors.append(f"gpu {uuid}: {exc}")
                    continue
                agent_dry_run = agent_dry_run or change.dry_run
                if not change.dry_run:
                    runtime.gpus[uuid] = _with_limit(gpu, change.applied_watts)
                before = change.previous_watts
            else:
                runtime.planned_limits[uuid] = watts
            if watts < before:
                lowered += 1
            else:
                raised += 1
        self.metrics.limit_changes.labels(budget.name, "down", mode).inc(lowered)
        self.metrics.limit_changes.labels(budget.name, "up", mode).inc(raised)
        if lowered + raised == 0:
            return
        self.metrics.actions.labels(budget.name, decision.action.value, mode).inc()
        runtime.actions += 1
        runtime.last_action = decision.action.value
        runtime.last_action_time = _rfc3339(self._clock())
        verb = "would set" if not budget.enforce else "set"
        power = runtime.rack.power_watts if runtime.rack else math.nan
        message = (
            f"{mode}: {verb} {lowered} GPU limit(s) lower and {raised} higher; rack power {power:.0f} W, "
            f"cap {budget.cap_watts:.0f} W"
        )
        if agent_dry_run:
            message += "; agents answered dry_run (no --allow-power-limit-changes), so nothing changed"
        reason = _EVENT_REASON.get(decision.action, "PowerLimitsChanged")
        await self.event(
            budget, reason, message, warning=decision.action in (Action.EMERGENCY, Action.STALE_LOWER)
        )

    async def event(self, budget: BudgetSpec, reason: str, message: str, warning: bool = False) -> None:
        try:
            await self.cluster.emit_event(budget, reason=reason, message=message, warning=warning)
        except ClusterError:
            self.metrics.errors.labels(budget.name, "event").inc()

    async def _clamp_replicas(self, budget: BudgetSpec, runtime: BudgetRuntime, errors: list[str]) -> None:
        from estimators.fleet import replicas_within_budget

        rack = runtime.rack
        mode = "enforce" if budget.enforce else "dryRun"
        for workload in budget.workloads:
            # A managed workload's ScaledObject already stops at the budget (its power trigger).
            if workload.replica_peak_power_watts is None or workload.scaling is not None:
                continue
            if rack is None:
                return
            try:
                target = await self.cluster.replica_target(workload)
                current = len(await self.cluster.workload_pods(workload))
            except ClusterError as exc:
                self.metrics.errors.labels(budget.name, "replicas").inc()
                errors.append(str(exc))
                continue
            allowed = replicas_within_budget(rack.headroom_watts, workload.replica_peak_power_watts, current)
            ceiling = max(target.min_replicas, min(target.configured_max_replicas, allowed))
            if ceiling == target.max_replicas:
                continue
            if budget.enforce:
                try:
                    await self.cluster.set_max_replicas(target, ceiling)
                except ClusterError as exc:
                    self.metrics.errors.labels(budget.name, "replicas").inc()
                    errors.append(str(exc))
                    continue
            self.metrics.replica_changes.labels(budget.name, workload.key, mode).inc()
            self.metrics.actions.labels(budget.name, "replica_ceiling", mode).inc()
            runtime.actions += 1
            runtime.last_action = "replica_ceiling"
            runtime.last_action_time = _rfc3339(self._clock())
            verb = "set" if budget.enforce else "would set"
            field_name = (
                "spec.predictor.maxReplicas"
                if target.resource == "inferenceservices"
                else "spec.maxReplicaCount"
            )
            await self.event(
                budget,
                "ReplicaCeilingChanged",
                f"{mode}: {verb} {target.resource} {workload.namespace}/{target.name} {field_name} "
                f"{target.max_replicas} -> {ceiling} (headroom {rack.headroom_watts:.0f} W, "
                f"{workload.replica_peak_power_watts:.0f} W per replica, {current} running)",
            )

    async def _write_status(
        self, budget: BudgetSpec, runtime: BudgetRuntime, now: float, *, force: bool
    ) -> None:
        fresh_error = runtime.last_error != runtime.written_error
        if (
            not force
            and not fresh_error
            and now - runtime.status_written_seconds < self.status_period_seconds
        ):
            return
        rack = runtime.rack
        limits = [runtime.planned_limits.get(g.uuid, g.limit_watts) for g in runtime.gpus.values()]
        status: dict[str, Any] = {
            "observedGeneration": budget.generation,
            "gpus": len(runtime.gpus),
            "limitedGpus": sum(
                1 for g, w in zip(runtime.gpus.values(), limits, strict=True) if w < g.limit_max_watts
            ),
            "actions": runtime.actions,
            "lastError": runtime.last_error,
            "leader": self.identity,
        }
        if rack is not None:
            status.update(
                powerWatts=round(rack.power_watts, 1),
                headroomWatts=round(rack.headroom_watts, 1),
                powerTimestamp=_rfc3339(rack.timestamp_seconds),
            )
        if runtime.last_action:
            status.update(lastAction=runtime.last_action, lastActionTime=runtime.last_action_time)
        status["workloads"] = runtime.workloads
        if runtime.placement is not None:
            status["placement"] = runtime.placement
        try:
            await self.cluster.patch_status(budget.name, status)
            runtime.status_written_seconds = now
            runtime.written_error = runtime.last_error
        except ClusterError:
            self.metrics.errors.labels(budget.name, "status").inc()


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _unknown(gpu: GpuState) -> GpuState:
    return _replace(gpu, power_watts=math.nan)


def _on_node(gpu: GpuState, node: str) -> GpuState:
    return _replace(gpu, node=node)


def _with_limit(gpu: GpuState, watts: float) -> GpuState:
    return _replace(gpu, limit_watts=watts)


def _replace(gpu: GpuState, **changes: Any) -> GpuState:
    import dataclasses

    return dataclasses.replace(gpu, **changes)
