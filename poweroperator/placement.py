"""Placement by rack headroom: while a rack has no headroom, its nodes carry a PreferNoSchedule taint, so
the default scheduler prefers other racks for new pods. Running pods are never evicted (PreferNoSchedule
never evicts, and nothing here deletes a pod).

A rack is marked after its headroom has been 0 for `after_seconds` of fresh readings, and cleared after
headroom has stayed above `hysteresis_ratio x cap` for as long (the budget's own hysteresis), so a rack
hovering at its limit does not flip the mark every period. Stale or missing rack power changes nothing:
neither marking (the rack may be fine) nor clearing (it may not). Each reconcile also puts the mark on a
node that joined a marked rack, and takes it off nodes that left one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from collectors.label_selectors import Selector
from poweroperator.budget import BudgetSpec
from poweroperator.cluster import ClusterError, RackReading

log = logging.getLogger(__name__)

TAINT_KEY = "wattscale.io/rack-overdrawn"
TAINT_EFFECT = "PreferNoSchedule"


class NodeTaints(Protocol):
    async def rack_nodes(self, selector: Selector) -> list[str]: ...

    async def nodes_tainted(self, key: str) -> dict[str, str]:
        """Node name -> the taint's value, for every node carrying a taint with this key."""
        ...

    async def set_taint(self, node: str, key: str, value: str | None, effect: str) -> None:
        """Add (value set) or remove (None) the taint with this key, keeping every other taint."""
        ...


EventSink = Callable[[BudgetSpec, str, str, bool], Awaitable[None]]


@dataclass(slots=True)
class RackMark:
    overdrawn: bool = False
    since_seconds: float | None = None
    pending_since_seconds: float | None = None
    """Since when the readings have pointed the other way (None: they do not)."""
    reason: str = ""
    holding: bool = False
    """The reason says the readings were stale or missing; a fresh reading replaces it."""


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _steady_reason(mark: RackMark, budget: BudgetSpec, rack: RackReading) -> str:
    """What a fresh reading that changes nothing says, where no transition has said why yet."""
    if mark.overdrawn:
        return f"no headroom (rack power {rack.power_watts:.0f} W, cap {budget.cap_watts:.0f} W)"
    return f"headroom {rack.headroom_watts:.0f} W"


def next_mark(
    mark: RackMark, budget: BudgetSpec, rack: RackReading | None, now: float, after_seconds: float
) -> RackMark:
    """The rack's mark after this reading (pure)."""
    if rack is None or not math.isfinite(rack.headroom_watts):
        return RackMark(mark.overdrawn, mark.since_seconds, None, "rack power missing: holding", holding=True)
    age = now - rack.timestamp_seconds
    if age > budget.policy.stale_after_seconds:
        reason = f"rack power stale ({age:.0f} s old): holding"
        return RackMark(mark.overdrawn, mark.since_seconds, None, reason, holding=True)
    clear_above = budget.policy.hysteresis_ratio * budget.cap_watts
    flips = rack.headroom_watts <= 0 if not mark.overdrawn else rack.headroom_watts > clear_above
    steady = _steady_reason(mark, budget, rack) if mark.holding or not mark.reason else mark.reason
    if not flips:
        return RackMark(mark.overdrawn, mark.since_seconds, None, steady)
    pending = mark.pending_since_seconds if mark.pending_since_seconds is not None else now
    if now - pending < after_seconds:
        return RackMark(mark.overdrawn, mark.since_seconds, pending, steady)
    if mark.overdrawn:
        reason = f"headroom {rack.headroom_watts:.0f} W above {clear_above:.0f} W for {after_seconds:.0f} s"
    else:
        reason = f"no headroom for {after_seconds:.0f} s (rack power {rack.power_watts:.0f} W, cap {budget.cap_watts:.0f} W)"
    return RackMark(not mark.overdrawn, now, None, reason)


@dataclass(slots=True)
class PlacementReconciler:
    nodes: NodeTaints
    event: EventSink
    after_seconds: float = 30.0
    marks: dict[str, RackMark] = field(default_factory=dict)

    async def reconcile_all(
        self, budgets: Sequence[BudgetSpec], runtime: Mapping[str, Any], now: float
    ) -> None:
        try:
            tainted = await self.nodes.nodes_tainted(TAINT_KEY)
        except ClusterError as exc:
            log.warning("operator.placement.nodes_unavailable", extra={"error": str(exc)})
            return
        for budget in budgets:
            state = runtime.get(budget.name)
            rack = state.rack if state is not None else None
            status = await self._budget(budget, rack, now, tainted)
            if state is not None:
                state.placement = status
        known = {b.name for b in budgets}
        for node, owner in sorted(tainted.items()):  # marks of budgets that are gone
            if owner not in known:
                await self._set(node, None)
        for gone in set(self.marks) - known:
            del self.marks[gone]

    async def _budget(
        self, budget: BudgetSpec, rack: RackReading | None, now: float, tainted: Mapping[str, str]
    ) -> dict[str, Any]:
        before = self.marks.get(budget.name, RackMark())
        mark = next_mark(before, budget, rack, now, self.after_seconds)
        self.marks[budget.name] = mark
        try:
            members = await self.nodes.rack_nodes(budget.node_selector)
        except ClusterError as exc:
            return self._status(mark, sorted(n for n, v in tainted.items() if v == budget.name), str(exc))
        want = set(members) if mark.overdrawn else set()
        have = {n for n, v in tainted.items() if v == budget.name}
        if budget.enforce:
            for node in sorted(want - have):
                await self._set(node, budget.name)
            for node in sorted(have - want):
                await self._set(node, None)
        if mark.overdrawn != before.overdrawn:
            await self._report(budget, mark, sorted(members))
        return self._status(mark, sorted(want if budget.enforce else have), mark.reason)

    async def _set(self, node: str, budget: str | None) -> None:
        try:
            await self.nodes.set_taint(node, TAINT_KEY, budget, TAINT_EFFECT)
            log.info(
                "operator.placement.taint", extra={"node": node, "budget": budget, "set": budget is not None}
            )
        except ClusterError as exc:
            log.warning("operator.placement.taint_failed", extra={"node": node, "error": str(exc)})

    async def _report(self, budget: BudgetSpec, mark: RackMark, nodes: list[str]) -> None:
        verb = "" if budget.enforce else "would be "
        if mark.overdrawn:
            reason = "RackOverdrawnNodesTainted" if budget.enforce else "WouldTaintRackNodes"
            message = f"{mark.reason}: nodes {verb}tainted {TAINT_KEY}={budget.name}:{TAINT_EFFECT}: {', '.join(nodes)}"
        else:
            reason = "RackHeadroomNodesUntainted" if budget.enforce else "WouldUntaintRackNodes"
            message = f"{mark.reason}: taint {verb}removed from nodes {', '.join(nodes)}"
        await self.event(budget, reason, message, mark.overdrawn)

    @staticmethod
    def _status(mark: RackMark, nodes: list[str], reason: str) -> dict[str, Any]:
        status: dict[str, Any] = {"overdrawn": mark.overdrawn, "taintedNodes": nodes, "reason": reason}
        if mark.since_seconds is not None:
            status["since"] = _rfc3339(mark.since_seconds)
        return status
