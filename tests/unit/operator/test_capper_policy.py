"""The capping rules a rack operator relies on: who is cut first, when limits come back, what stale data does."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poweroperator.policy import (
    PRIORITY_HIGH,
    PRIORITY_LOW,
    Action,
    PolicyConfig,
    PolicyState,
    RackObservation,
    decide,
)

CAP_WATTS = 10_000.0
REACTIVE = PolicyConfig(
    cap_watts=CAP_WATTS, soft_ratio=0.9, hard_ratio=0.97, guard_ratio=None, rack_watts_per_gpu_watt=1.0
)


def observe(
    rack_watts: float,
    power: list[float],
    limits: list[float],
    priority: list[int],
    *,
    now: float = 100.0,
    age: float = 0.0,
) -> RackObservation:
    n = len(power)
    return RackObservation(
        now_seconds=now,
        rack_power_watts=rack_watts,
        rack_power_timestamp_seconds=now - age,
        gpu_power_watts=np.asarray(power, dtype=np.float64),
        gpu_limit_watts=np.asarray(limits, dtype=np.float64),
        gpu_min_watts=np.full(n, 200.0),
        gpu_max_watts=np.full(n, 700.0),
        gpu_priority=np.asarray(priority, dtype=np.int64),
    )


LOW2_HIGH2 = [PRIORITY_LOW, PRIORITY_LOW, PRIORITY_HIGH, PRIORITY_HIGH]


def test_above_soft_threshold_low_priority_gpus_are_cut_and_high_priority_ones_keep_their_limit() -> None:
    obs = observe(9_500.0, [650, 650, 650, 650], [700] * 4, LOW2_HIGH2)

    decision = decide(REACTIVE, PolicyState(), obs)

    assert decision.action is Action.LOWER
    need = 9_500.0 - 9_000.0
    assert decision.limits_watts[2:].tolist() == [700.0, 700.0]
    assert float((650.0 - decision.limits_watts[:2]).sum()) == pytest.approx(need, abs=1.0)


def test_the_gpus_drawing_most_give_first_within_a_class() -> None:
    obs = observe(9_100.0, [650, 250, 700, 700], [700] * 4, LOW2_HIGH2)

    decision = decide(REACTIVE, PolicyState(), obs)

    # 100 W comes from the prefill-heavy GPU alone; the decode GPU gets the same level as a ceiling.
    assert decision.limits_watts[0] == pytest.approx(550.0, abs=1.0)
    assert decision.limits_watts[1] == pytest.approx(550.0, abs=1.0)


def test_between_soft_and_hard_high_priority_is_spared_even_when_low_priority_is_at_minimum() -> None:
    obs = observe(9_500.0, [200, 200, 650, 650], [200, 200, 700, 700], LOW2_HIGH2)

    decision = decide(REACTIVE, PolicyState(), obs)

    assert decision.limits_watts.tolist() == [200.0, 200.0, 700.0, 700.0]
    assert not decision.changed.any()


def test_above_hard_threshold_high_priority_is_cut_once_low_priority_is_at_minimum() -> None:
    obs = observe(9_900.0, [300, 300, 650, 650], [700, 700, 700, 700], LOW2_HIGH2)

    decision = decide(REACTIVE, PolicyState(), obs)

    assert decision.action is Action.EMERGENCY
    assert decision.limits_watts[:2].tolist() == [200.0, 200.0]
    saved = (300 - 200) * 2 + float((650 - decision.limits_watts[2:]).sum())
    assert saved == pytest.approx(900.0, abs=1.0)


def test_limits_come_back_only_after_the_rack_stays_below_the_hysteresis_line() -> None:
    config = PolicyConfig(
        cap_watts=CAP_WATTS,
        soft_ratio=0.9,
        hysteresis_ratio=0.05,
        restore_after_seconds=10,
        guard_ratio=None,
        rack_watts_per_gpu_watt=1.0,
    )
    capped = [400, 400, 500, 500]
    # 8.7 kW is below soft (9 kW) but above the restore line (8.5 kW): hold.
    held = decide(config, PolicyState(), observe(8_700.0, [400, 400, 500, 500], capped, LOW2_HIGH2))
    assert held.action is Action.HOLD and not held.changed.any()

    first = decide(config, PolicyState(), observe(8_000.0, [400, 400, 500, 500], capped, LOW2_HIGH2, now=100))
    assert first.action is Action.HOLD and not first.changed.any()
    early = decide(config, first.state, observe(8_000.0, [400, 400, 500, 500], capped, LOW2_HIGH2, now=105))
    assert early.action is Action.HOLD
    later = decide(config, early.state, observe(8_000.0, [400, 400, 500, 500], capped, LOW2_HIGH2, now=111))
    assert later.action is Action.RESTORE
    # 1 kW of headroom: high priority is restored first, in full (2 x 200 W), low priority gets the rest.
    assert later.limits_watts[2:].tolist() == [700.0, 700.0]
    assert float((later.limits_watts[:2] - 400).sum()) == pytest.approx(600.0, abs=1.0)


def test_gpus_not_pressing_on_their_limit_are_restored_without_spending_headroom() -> None:
    config = PolicyConfig(
        cap_watts=CAP_WATTS,
        soft_ratio=0.9,
        restore_after_seconds=0,
        guard_ratio=None,
        rack_watts_per_gpu_watt=1.0,
    )
    obs = observe(8_400.0, [150, 150, 150, 150], [300, 300, 300, 300], LOW2_HIGH2)

    decision = decide(config, PolicyState(below_since_seconds=0.0), obs)

    assert decision.limits_watts.tolist() == [700.0] * 4


def test_stale_rack_power_holds_even_when_far_below_the_cap() -> None:
    obs = observe(1_000.0, [150] * 4, [300] * 4, LOW2_HIGH2, age=REACTIVE.stale_after_seconds + 1)

    decision = decide(REACTIVE, PolicyState(below_since_seconds=0.0), obs)

    assert decision.action is Action.STALE_HOLD
    assert not decision.changed.any()


@pytest.mark.parametrize("rack_watts", [math.nan, 5_000.0])
def test_long_stale_rack_power_lowers_the_least_important_gpus_one_step(rack_watts: float) -> None:
    obs = observe(rack_watts, [500] * 4, [700] * 4, LOW2_HIGH2, age=REACTIVE.stale_lower_after_seconds + 1)

    decision = decide(REACTIVE, PolicyState(), obs)

    assert decision.action is Action.STALE_LOWER
    step = REACTIVE.stale_lower_step_watts
    assert decision.limits_watts.tolist() == [700 - step, 700 - step, 700.0, 700.0]


def test_a_gpu_without_a_reading_is_counted_at_its_limit() -> None:
    obs = observe(9_300.0, [math.nan, 300, 700, 700], [700] * 4, LOW2_HIGH2)

    decision = decide(REACTIVE, PolicyState(), obs)

    # 300 W to shed; the unknown GPU is assumed to draw 700 W, so it gives it all.
    assert decision.limits_watts[0] == pytest.approx(400.0, abs=1.0)
    assert decision.limits_watts[1] == pytest.approx(400.0, abs=1.0)


def test_changes_smaller_than_min_change_are_not_sent() -> None:
    config = PolicyConfig(
        cap_watts=CAP_WATTS,
        soft_ratio=0.9,
        min_change_watts=10,
        guard_ratio=None,
        rack_watts_per_gpu_watt=1.0,
    )
    # 6 W to shed from two GPUs already limited at 650 W: 3 W each is not worth an NVML call.
    obs = observe(9_006.0, [650, 650, 650, 650], [650, 650, 700, 700], LOW2_HIGH2)

    decision = decide(config, PolicyState(), obs)

    assert not decision.changed.any()


def test_the_guard_keeps_every_gpu_at_its_limit_under_the_cap_and_favours_high_priority() -> None:
    config = PolicyConfig(
        cap_watts=CAP_WATTS, rack_watts_per_gpu_watt=1.0, guard_ratio=1.0, guard_priority_step_watts=150
    )
    # Non-GPU power: 8.5 kW - 4 x 200 W = 7.7 kW, so the limits may add up to 2.3 kW.
    obs = observe(8_500.0, [200] * 4, [700] * 4, LOW2_HIGH2)

    decision = decide(config, PolicyState(), obs)

    assert decision.action is Action.GUARD
    assert decision.limits_watts.tolist() == pytest.approx([500.0, 500.0, 650.0, 650.0], abs=1.0)


def test_config_problems_are_all_listed() -> None:
    problems = PolicyConfig(
        cap_watts=0, soft_ratio=0.99, hard_ratio=0.9, rack_watts_per_gpu_watt=0.5
    ).problems()

    assert len(problems) == 3
    assert PolicyConfig(cap_watts=1.0).problems() == []


@settings(max_examples=200, deadline=None)
@given(
    rack_watts=st.one_of(st.just(math.nan), st.floats(0, 20_000)),
    age=st.floats(0, 60),
    power=st.lists(st.one_of(st.just(math.nan), st.floats(0, 1_000)), min_size=1, max_size=8),
    seed=st.integers(0, 2**16),
    below_since=st.one_of(st.none(), st.floats(0, 100)),
)
def test_limits_stay_in_the_device_range_and_stale_data_never_raises_one(
    rack_watts: float, age: float, power: list[float], seed: int, below_since: float | None
) -> None:
    rng = np.random.default_rng(seed)
    n = len(power)
    limits = rng.uniform(100, 800, n).tolist()  # even out-of-range input limits are repaired
    priority = rng.integers(0, 2, n).tolist()
    config = PolicyConfig(cap_watts=CAP_WATTS, restore_after_seconds=0)
    obs = observe(rack_watts, power, limits, priority, age=age)

    decision = decide(config, PolicyState(below_since_seconds=below_since), obs)

    assert np.all(decision.limits_watts >= 200.0) and np.all(decision.limits_watts <= 700.0)
    if math.isnan(rack_watts) or age > config.stale_after_seconds:
        assert np.all(decision.limits_watts <= np.clip(limits, 200.0, 700.0))
