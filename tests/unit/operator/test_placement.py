"""Placement by rack headroom: when the rack's nodes are marked PreferNoSchedule, when they are cleared, and
what never happens (a mark on stale data, a flip on one reading, another taint lost, an eviction)."""

from __future__ import annotations

from typing import Any

from collectors.label_selectors import Selector
from poweroperator.budget import BudgetSpec, parse_budget
from poweroperator.cluster import RackReading
from poweroperator.loop import BudgetRuntime
from poweroperator.placement import TAINT_KEY, PlacementReconciler, RackMark, next_mark

CAP = 10_000.0


def budget(mode: str = "enforce", name: str = "rack-a") -> BudgetSpec:
    return parse_budget(
        {
            "metadata": {"name": name, "uid": "u"},
            "spec": {"nodeSelector": {"matchLabels": {"rack": name}}, "capWatts": CAP, "mode": mode},
        }
    )


def reading(headroom: float, at: float, power: float = 9_000.0) -> RackReading:
    return RackReading(power_watts=power, headroom_watts=headroom, timestamp_seconds=at)


def test_a_rack_is_marked_only_after_its_headroom_stays_at_zero() -> None:
    spec, mark = budget(), RackMark()
    for t in range(0, 30, 5):
        mark = next_mark(mark, spec, reading(0.0, t), t, after_seconds=30)
        assert mark.overdrawn is False
    mark = next_mark(mark, spec, reading(0.0, 30), 30, after_seconds=30)
    assert mark.overdrawn is True and "no headroom for 30 s" in mark.reason


def test_one_reading_with_headroom_restarts_the_wait() -> None:
    spec, mark = budget(), RackMark()
    mark = next_mark(mark, spec, reading(0.0, 0), 0, after_seconds=30)
    mark = next_mark(mark, spec, reading(200.0, 20), 20, after_seconds=30)
    mark = next_mark(mark, spec, reading(0.0, 40), 40, after_seconds=30)
    assert mark.overdrawn is False and mark.pending_since_seconds == 40


def test_the_mark_clears_only_above_the_hysteresis_band() -> None:
    spec = budget()
    band = spec.policy.hysteresis_ratio * CAP  # 500 W
    mark = RackMark(overdrawn=True, since_seconds=0)
    for t in range(0, 100, 10):  # some headroom, but inside the band: stays marked
        mark = next_mark(mark, spec, reading(band - 1, t), t, after_seconds=30)
    assert mark.overdrawn is True
    for t in range(100, 131, 10):
        mark = next_mark(mark, spec, reading(band + 1, t), t, after_seconds=30)
    assert mark.overdrawn is False


def test_stale_or_missing_rack_power_changes_nothing() -> None:
    spec = budget()
    for overdrawn in (False, True):
        mark = RackMark(overdrawn=overdrawn, pending_since_seconds=0)
        for t in range(0, 120, 10):
            stale = reading(0.0 if not overdrawn else 5_000.0, at=t - spec.policy.stale_after_seconds - 1)
            mark = next_mark(mark, spec, stale, t, after_seconds=30)
            assert mark.overdrawn is overdrawn and mark.pending_since_seconds is None
            assert (
                mark.reason == f"rack power stale ({spec.policy.stale_after_seconds + 1:.0f} s old): holding"
            )
        mark = next_mark(mark, spec, None, 200, after_seconds=30)
        assert mark.overdrawn is overdrawn and mark.reason == "rack power missing: holding"


def test_a_fresh_reading_replaces_a_holding_reason_in_the_status() -> None:
    spec = budget()
    fresh = next_mark(next_mark(RackMark(), spec, None, 0, after_seconds=30), spec, reading(700.0, 5), 5, 30)
    assert (fresh.overdrawn, fresh.reason) == (False, "headroom 700 W")
    marked = RackMark(
        overdrawn=True, since_seconds=0, reason="no headroom for 30 s (rack power 9000 W, cap 8000 W)"
    )
    held = next_mark(marked, spec, reading(0.0, 0), 100, after_seconds=30)
    assert held.reason.startswith("rack power stale")
    again = next_mark(held, spec, reading(0.0, 110), 110, after_seconds=30)
    assert again.overdrawn is True and again.reason == f"no headroom (rack power 9000 W, cap {CAP:.0f} W)"
    # A reason a transition gave stays while the readings are fresh and nothing flips.
    assert next_mark(marked, spec, reading(0.0, 10), 10, after_seconds=30).reason == marked.reason


class FakeNodeTaints:
    """Nodes with taint lists, as the API server keeps them; no pod is ever touched by this interface."""

    def __init__(self, racks: dict[str, list[str]]) -> None:
        self.racks = racks
        self.taints: dict[str, list[dict[str, str]]] = {
            node: [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
            for nodes in racks.values()
            for node in nodes
        }

    async def rack_nodes(self, selector: Selector) -> list[str]:
        return self.racks[str(selector).split("=")[1]]

    async def nodes_tainted(self, key: str) -> dict[str, str]:
        return {n: t["value"] for n, taints in self.taints.items() for t in taints if t["key"] == key}

    async def set_taint(self, node: str, key: str, value: str | None, effect: str) -> None:
        kept = [t for t in self.taints[node] if t["key"] != key]
        self.taints[node] = kept + ([{"key": key, "value": value, "effect": effect}] if value else [])


class Harness:
    def __init__(self, racks: dict[str, list[str]]) -> None:
        self.nodes = FakeNodeTaints(racks)
        self.events: list[tuple[str, str, str, bool]] = []
        self.placement = PlacementReconciler(self.nodes, self.event, after_seconds=30)
        self.runtime: dict[str, Any] = {name: BudgetRuntime() for name in racks}

    async def event(self, spec: BudgetSpec, reason: str, message: str, warning: bool) -> None:
        self.events.append((spec.name, reason, message, warning))

    async def run(self, budgets: list[BudgetSpec], headroom: dict[str, float], until: int) -> None:
        for t in range(0, until + 1, 15):
            for name, watts in headroom.items():
                self.runtime[name].rack = reading(watts, t)
            await self.placement.reconcile_all(budgets, self.runtime, t)

    def marked(self) -> dict[str, str]:
        return {n: t["value"] for n, ts in self.nodes.taints.items() for t in ts if t["key"] == TAINT_KEY}


async def test_an_overdrawn_racks_nodes_are_tainted_and_the_other_racks_are_not() -> None:
    h = Harness({"rack-a": ["a1", "a2"], "rack-b": ["b1"]})
    budgets = [budget(name="rack-a"), budget(name="rack-b")]

    await h.run(budgets, {"rack-a": 0.0, "rack-b": 3_000.0}, until=45)

    assert h.marked() == {"a1": "rack-a", "a2": "rack-a"}
    assert all(any(t["key"] == "nvidia.com/gpu" for t in h.nodes.taints[n]) for n in ("a1", "a2", "b1"))
    assert all(
        t["effect"] == "PreferNoSchedule"
        for ts in h.nodes.taints.values()
        for t in ts
        if t["key"] == TAINT_KEY
    )
    status = h.runtime["rack-a"].placement
    assert (
        status["overdrawn"] is True
        and status["taintedNodes"] == ["a1", "a2"]
        and "no headroom" in status["reason"]
    )
    assert [(e[0], e[1]) for e in h.events] == [("rack-a", "RackOverdrawnNodesTainted")]
    assert "a1, a2" in h.events[0][2] and h.runtime["rack-b"].placement["overdrawn"] is False

    await h.run(budgets, {"rack-a": 2_000.0, "rack-b": 3_000.0}, until=45)  # headroom is back

    assert h.marked() == {}
    assert h.events[-1][1] == "RackHeadroomNodesUntainted"


async def test_a_node_that_joins_a_marked_rack_is_marked_and_one_that_leaves_is_cleared() -> None:
    h = Harness({"rack-a": ["a1", "a2"]})
    await h.run([budget()], {"rack-a": 0.0}, until=45)

    h.nodes.racks["rack-a"] = ["a2", "a3"]
    h.nodes.taints["a3"] = []
    await h.placement.reconcile_all([budget()], h.runtime, 60)

    assert h.marked() == {"a2": "rack-a", "a3": "rack-a"}


async def test_dry_run_reports_and_taints_nothing() -> None:
    h = Harness({"rack-a": ["a1"]})

    await h.run([budget(mode="dryRun")], {"rack-a": 0.0}, until=45)

    assert h.marked() == {}
    assert [e[1] for e in h.events] == ["WouldTaintRackNodes"]


async def test_a_deleted_budgets_marks_are_removed() -> None:
    h = Harness({"rack-a": ["a1"]})
    await h.run([budget()], {"rack-a": 0.0}, until=45)

    await h.placement.reconcile_all([], h.runtime, 60)

    assert h.marked() == {}
