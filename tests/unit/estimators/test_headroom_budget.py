"""Rack headroom with a margin that covers recent rises and sensor error; replicas that fit."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from estimators.headroom import (
    headroom_and_overdraw,
    headroom_timeline,
    largest_rise_watts,
    margin_watts,
    recent_rise_watts,
)


def test_margin_is_the_configured_floor_or_the_recent_rise_plus_sensor_error() -> None:
    assert margin_watts(10_000.0, 0.1, 200.0, 8000.0, 0.01) == pytest.approx(1000.0)
    assert margin_watts(10_000.0, 0.1, 1500.0, 8000.0, 0.01) == pytest.approx(1580.0)
    assert np.isnan(margin_watts(np.nan, 0.1, 100.0, 100.0, 0.01))


def test_headroom_and_overdraw_are_non_negative_and_exclusive() -> None:
    headroom, overdraw = headroom_and_overdraw([10_000.0, 10_000.0], [1000.0, 1000.0], [8500.0, 9300.0])
    np.testing.assert_allclose(headroom, [500.0, 0.0])
    np.testing.assert_allclose(overdraw, [0.0, 300.0])


@given(
    st.floats(100, 1e5),
    st.floats(0, 0.5),
    st.floats(0, 1e4),
    st.floats(0, 2e5),
)
def test_headroom_minus_overdraw_is_usable_minus_measured(
    cap: float, ratio: float, rise: float, measured: float
) -> None:
    margin = margin_watts(cap, ratio, rise, measured, 0.01)
    headroom, overdraw = headroom_and_overdraw(cap, margin, measured)
    assert headroom >= 0 and overdraw >= 0 and min(headroom, overdraw) == 0
    assert headroom - overdraw == pytest.approx(cap - margin - measured, abs=1e-6 * max(cap, measured, 1.0))


def test_rise_counts_only_increases_within_the_reaction_time() -> None:
    times = np.arange(0.0, 200.0, 1.0)
    power = np.full(times.size, 5000.0)
    power[50:] = 5600.0  # a step up of 600 W at 50 s
    power[120:] = 5000.0  # a fall is not a rise
    power[150:] = 5000.0 + np.arange(50) * 10.0  # a slow ramp: 10 W/s
    assert largest_rise_watts(times, power, rise_within_seconds=40.0) == pytest.approx(600.0)
    recent = recent_rise_watts(times, power, rise_within_seconds=40.0, lookback_seconds=30.0)
    assert recent[60] == pytest.approx(600.0)  # the step is 10 s old
    # Spans ending up to 90 s still start before the step; 30 s later (lookback) it is forgotten.
    assert recent[119] == pytest.approx(600.0)
    assert recent[125] == pytest.approx(0.0)
    assert recent[199] == pytest.approx(400.0)  # the ramp rises 400 W within any 40 s
    assert largest_rise_watts([], [], rise_within_seconds=40.0) == 0.0


def test_timeline_with_replicas_within_budget() -> None:
    times = np.arange(0.0, 120.0, 1.0)
    power = np.where(times < 60, 14_000.0, 17_500.0)
    out = headroom_timeline(
        times,
        power,
        cap_watts=20_000.0,
        margin_ratio=0.05,
        rise_within_seconds=10.0,
        lookback_seconds=30.0,
        replica_peak_power_watts=400.0,
        current_replicas=4,
    )
    before, during, after = out.iloc[30], out.iloc[70], out.iloc[110]
    # Before the jump: margin = 5% floor (1000 W) > 1% sensor error; 5000 W headroom = 12 more replicas.
    assert before["margin_watts"] == pytest.approx(1000.0)
    assert before["headroom_watts"] == pytest.approx(5000.0)
    assert before["replicas_within_budget"] == 4 + 12
    # Right after the jump the 3500 W rise joins the margin: overdraw, and no replica may be added.
    assert during["margin_watts"] == pytest.approx(3500.0 + 175.0)
    assert during["overdraw_watts"] == pytest.approx(17_500.0 - (20_000.0 - 3675.0))
    assert during["replicas_within_budget"] == 4
    # Once the rise is older than the lookback the floor applies again.
    assert after["headroom_watts"] == pytest.approx(20_000.0 - 1000.0 - 17_500.0)
    assert after["replicas_within_budget"] == 4 + 3


def test_an_overdrawn_rack_allows_fewer_replicas_than_run() -> None:
    from estimators.headroom import replicas_within_budget

    assert replicas_within_budget(0.0, 400.0, 10, overdraw_watts=900.0) == 7  # 10 - 900/400 -> 7.75
    assert replicas_within_budget(0.0, 400.0, 2, overdraw_watts=5_000.0) == 0


def _day(budgets: Any, replica_watts: Any, headroom: Any, current: int = 32) -> list[int]:
    return [
        budgets.update(
            "llm/llama",
            headroom_watts=float(h),
            overdraw_watts=0.0,
            replica_power_watts=float(w),
            current_replicas=current,
            now_seconds=15.0 * i,
        )
        for i, (w, h) in enumerate(zip(replica_watts, headroom, strict=True))
    ]


def test_a_divisor_that_follows_the_load_does_not_move_the_count() -> None:
    from estimators.headroom import ReplicaBudgets, replicas_within_budget

    # The hungriest replica draws 300-600 W as the load swings (the old divisor); headroom stays 6 kW.
    t = np.arange(0, 4 * 3600, 15.0)
    replica_watts = 450 + 150 * np.sin(2 * np.pi * t / 3600)
    headroom = np.full_like(t, 6_000.0)

    naive = [replicas_within_budget(6_000.0, float(w), 32) for w in replica_watts]
    held = _day(ReplicaBudgets(), replica_watts, headroom)

    assert len(set(naive)) > 5  # 32 + 10 .. 32 + 20: the flapping the operator must not see
    assert set(held[len(held) // 4 :]) == {32 + 10}  # once the 600 W peak is seen, its count holds
    assert sum(a != b for a, b in itertools.pairwise(held)) <= 3


def test_the_count_drops_at_once_and_rises_only_after_sustained_headroom() -> None:
    from estimators.headroom import ReplicaBudgets

    budgets = ReplicaBudgets(up_after_seconds=120.0, band_replicas=0.5)
    headroom = [4_000.0] * 4 + [0.0] * 4 + [4_000.0] * 20
    counts = _day(budgets, [400.0] * len(headroom), headroom, current=10)
    overdrawn = budgets.update(
        "llm/llama",
        headroom_watts=0.0,
        overdraw_watts=100.0,
        replica_power_watts=400.0,
        current_replicas=19,
        now_seconds=1e4,
    )
    assert overdrawn == 18  # an overdraw of a quarter replica sheds one at once

    assert counts[:4] == [20] * 4
    assert counts[4:8] == [10] * 4  # down on the first reading without headroom
    assert counts[8:16] == [10] * 8  # 120 s of headroom needed before going back up
    assert counts[16:] == [19] * 12  # up by what fits with half a replica to spare


def test_a_noisy_headroom_near_a_boundary_does_not_flap() -> None:
    from estimators.headroom import ReplicaBudgets, replicas_within_budget

    rng = np.random.default_rng(1)
    headroom = 2_000 + 150 * rng.standard_normal(2_000)  # about 5 replicas of 400 W, +-0.4 replica
    naive = [replicas_within_budget(float(h), 400.0, 10) for h in headroom]
    held = _day(ReplicaBudgets(), np.full(2_000, 400.0), headroom, current=10)

    def changes(counts: list[int]) -> int:
        return sum(a != b for a, b in itertools.pairwise(counts))

    assert changes(naive) > 200 and changes(held) <= 6
