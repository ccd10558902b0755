"""Which GPU power limits a rack should have next, given what was just measured.

One implementation, two callers: the simulator's "ours" policy (`poweroperator.sim`) and the live loop
(`wattscale capper`). Both build a `RackObservation`, call `decide`, and apply `Decision.limits_watts`.
Pure: no I/O, no clock reads (time arrives in the observation), so a unit test pins every rule.

Rules, in the order `decide` applies them:
- Limits never leave the device range [min, max], whatever the inputs say.
- Stale or missing rack power: hold; stale for longer than `stale_lower_after_seconds`: lower the least
  important GPUs one step. Never raise on stale data: the rack may be above its cap right now.
- Above the soft threshold: take the excess from GPUs of unprotected priority classes, lowest class first;
  within a class, from the GPUs drawing most (prefill-heavy GPUs lose little speed per watt, decode-bound
  GPUs draw far below any cap that matters).
- Above the hard threshold: the same, but protected (high-priority) classes are cut too once the others
  are at their minimum.
- Below the soft threshold minus the hysteresis for `restore_after_seconds`: give watts back, most
  important class first, only as much as the GPUs pressing on their limits could use without crossing
  the soft threshold again.
- Spike guard: a prefill burst on every GPU at once (a synchronised batch, a long-prompt storm) moves
  rack power within 100 ms, faster than any loop that reads a 1 s average and waits ~1 s for NVML. So the
  limits themselves are kept such that, if every GPU drew its limit at once, the rack would stay under
  `guard_ratio` x cap; non-GPU power (fans, CPUs, PSU loss) is estimated from the last readings as
  rack - rack_watts_per_gpu_watt x sum(GPU), smoothed over `non_gpu_smoothing_seconds` (the PDU and the
  GPUs are read at different instants, so a single difference swings during a burst). The budget is
  shared as one level per class, a more important class `guard_priority_step_watts` higher; giving it
  all to high priority first would leave low-priority GPUs so slow in prefill that their queues grow
  without bound at peak load. Decode draws far less than these limits, so they bite only in prefill.
- Changes smaller than `min_change_watts` are dropped: they cost an NVML call and protect nothing.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

PRIORITY_LOW = 0
PRIORITY_HIGH = 1
PRIORITY_BY_CLASS: dict[str, int] = {"low": PRIORITY_LOW, "high": PRIORITY_HIGH}


class Action(enum.StrEnum):
    HOLD = "hold"
    LOWER = "lower"
    GUARD = "guard"
    EMERGENCY = "emergency"
    RESTORE = "restore"
    STALE_HOLD = "stale_hold"
    STALE_LOWER = "stale_lower"


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyConfig:
    cap_watts: float
    soft_ratio: float = 0.97
    """Target: rack power above soft_ratio x cap is cut back to it (low priority first)."""
    hard_ratio: float = 0.99
    """Above hard_ratio x cap, protected classes are cut too."""
    hysteresis_ratio: float = 0.05
    """Limits are restored only below (soft_ratio - hysteresis_ratio) x cap."""
    restore_after_seconds: float = 10.0
    """How long the rack must stay below the restore line before limits go up (per raise)."""
    rack_watts_per_gpu_watt: float = 1.45
    """Rack watts that follow one GPU watt (fans, PSU loss; ~1.45 for DGX-class H100 servers). Too high
    errs safe for the guard (non-GPU power is underestimated, the worst case overestimated); the reactive
    cut then under-cuts a little, which the next period corrects."""
    protected_priority: int = PRIORITY_HIGH
    """Classes with priority >= this are cut only above the hard threshold."""
    min_change_watts: float = 10.0
    stale_after_seconds: float = 5.0
    stale_lower_after_seconds: float = 15.0
    stale_lower_step_watts: float = 50.0
    bound_fraction: float = 0.95
    """A GPU drawing at least this fraction of its limit is pressing on it and would use more."""
    guard_ratio: float | None = 0.98
    """Keep non-GPU power + rack_watts_per_gpu_watt x sum(limits) under guard_ratio x cap; None: no guard."""
    guard_priority_step_watts: float = 250.0
    """Within the guard, each priority step above the lowest gets this much more limit."""
    non_gpu_smoothing_seconds: float = 30.0

    def problems(self) -> list[str]:
        found: list[str] = []
        if not self.cap_watts > 0:
            found.append(f"cap_watts: must be > 0, got {self.cap_watts}")
        if not 0 < self.soft_ratio <= self.hard_ratio <= 1.5:
            found.append(
                f"soft_ratio, hard_ratio: want 0 < soft <= hard <= 1.5, got {self.soft_ratio}, "
                f"{self.hard_ratio}"
            )
        if not 0 <= self.hysteresis_ratio < self.soft_ratio:
            found.append(f"hysteresis_ratio: must be >= 0 and < soft_ratio, got {self.hysteresis_ratio}")
        if not self.rack_watts_per_gpu_watt >= 1.0:
            found.append(f"rack_watts_per_gpu_watt: must be >= 1, got {self.rack_watts_per_gpu_watt}")
        if not 0 < self.stale_after_seconds <= self.stale_lower_after_seconds:
            found.append("stale_after_seconds: must be > 0 and <= stale_lower_after_seconds")
        if not 0 < self.bound_fraction <= 1:
            found.append(f"bound_fraction: must be in (0, 1], got {self.bound_fraction}")
        if self.guard_ratio is not None and not self.guard_ratio > 0:
            found.append(f"guard_ratio: must be > 0 or null, got {self.guard_ratio}")
        for name in (
            "restore_after_seconds",
            "min_change_watts",
            "stale_lower_step_watts",
            "guard_priority_step_watts",
            "non_gpu_smoothing_seconds",
        ):
            if getattr(self, name) < 0:
                found.append(f"{name}: must be >= 0")
        return found


@dataclass(frozen=True, slots=True, kw_only=True)
class RackObservation:
    now_seconds: float
    rack_power_watts: float
    """Measured rack power (PDU, or the adapter's estimate); NaN when unknown."""
    rack_power_timestamp_seconds: float
    gpu_power_watts: FloatArray
    """Per-GPU measured power (1 s average); NaN where the reading failed."""
    gpu_limit_watts: FloatArray
    """The limit each GPU has now."""
    gpu_min_watts: FloatArray
    gpu_max_watts: FloatArray
    gpu_priority: IntArray
    """Higher is more important: lowered last, restored first."""


@dataclass(frozen=True, slots=True)
class PolicyState:
    below_since_seconds: float | None = None
    """Since when the rack has been below the restore line (None: it is not)."""
    non_gpu_watts: float | None = None
    """Smoothed estimate of rack power not drawn by GPUs (None: no fresh reading yet)."""
    non_gpu_updated_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    limits_watts: FloatArray
    action: Action
    state: PolicyState
    changed: npt.NDArray[np.bool_] = field(repr=False)


def decide(config: PolicyConfig, state: PolicyState, obs: RackObservation) -> Decision:
    limits = np.clip(obs.gpu_limit_watts.astype(np.float64), obs.gpu_min_watts, obs.gpu_max_watts)
    age_seconds = obs.now_seconds - obs.rack_power_timestamp_seconds
    if math.isnan(obs.rack_power_watts) or age_seconds > config.stale_after_seconds:
        kept = PolicyState(None, state.non_gpu_watts, state.non_gpu_updated_seconds)
        if math.isnan(age_seconds) or age_seconds > config.stale_lower_after_seconds:
            new = _lower_least_important(limits, obs, config.stale_lower_step_watts)
            return _finish(config, obs, limits, new, Action.STALE_LOWER, kept)
        return _finish(config, obs, limits, limits, Action.STALE_HOLD, kept)

    # A GPU whose reading failed is counted at its limit: the most it can draw.
    draw = np.where(np.isnan(obs.gpu_power_watts), limits, np.minimum(obs.gpu_power_watts, limits))
    soft_watts = config.soft_ratio * config.cap_watts
    rack_watts = obs.rack_power_watts
    ratio = config.rack_watts_per_gpu_watt
    non_gpu_watts, updated_seconds = _non_gpu_watts(config, state, obs)
    ceilings = _guard_ceilings(config, obs, non_gpu_watts)
    budget_gpu_watts = float(ceilings.sum()) if config.guard_ratio is not None else math.inf

    new = limits
    action = Action.HOLD
    if rack_watts > soft_watts:
        emergency = rack_watts > config.hard_ratio * config.cap_watts
        eligible = (
            np.ones_like(limits, dtype=bool) if emergency else obs.gpu_priority < config.protected_priority
        )
        new = _cut(limits, draw, obs, (rack_watts - soft_watts) / ratio, eligible)
        action = Action.EMERGENCY if emergency else Action.LOWER
    if float(new.sum()) > budget_gpu_watts + config.min_change_watts:
        # The guard bounds limits, not draws: a limit is what a GPU may reach within 100 ms.
        new = np.minimum(new, ceilings)
        action = Action.GUARD if action is Action.HOLD else action
    if action is not Action.HOLD:
        return _finish(config, obs, limits, new, action, PolicyState(None, non_gpu_watts, updated_seconds))

    restore_line_watts = (config.soft_ratio - config.hysteresis_ratio) * config.cap_watts
    band_gpu_watts = config.hysteresis_ratio * config.cap_watts / ratio
    room_gpu_watts = budget_gpu_watts - float(limits.sum())
    below_ceilings = float(np.clip(ceilings - limits, 0.0, None).sum())
    if (
        rack_watts >= restore_line_watts
        or below_ceilings <= 0
        or room_gpu_watts < min(band_gpu_watts, below_ceilings)
    ):
        return _finish(
            config, obs, limits, limits, Action.HOLD, PolicyState(None, non_gpu_watts, updated_seconds)
        )
    below_since = state.below_since_seconds if state.below_since_seconds is not None else obs.now_seconds
    if obs.now_seconds - below_since < config.restore_after_seconds:
        return _finish(
            config, obs, limits, limits, Action.HOLD, PolicyState(below_since, non_gpu_watts, updated_seconds)
        )
    headroom_gpu_watts = (soft_watts - rack_watts) / ratio
    new = _restore(limits, draw, ceilings, obs, headroom_gpu_watts, room_gpu_watts, config.bound_fraction)
    return _finish(
        config, obs, limits, new, Action.RESTORE, PolicyState(obs.now_seconds, non_gpu_watts, updated_seconds)
    )


def _non_gpu_watts(config: PolicyConfig, state: PolicyState, obs: RackObservation) -> tuple[float, float]:
    """Rack power the GPUs do not explain, smoothed. A failed GPU reading counts as 0 W: that overstates
    non-GPU power, so the guard's budget errs low."""
    sample = max(
        0.0, obs.rack_power_watts - config.rack_watts_per_gpu_watt * float(np.nansum(obs.gpu_power_watts))
    )
    if state.non_gpu_watts is None or state.non_gpu_updated_seconds is None:
        return sample, obs.now_seconds
    elapsed = max(0.0, obs.now_seconds - state.non_gpu_updated_seconds)
    weight = min(1.0, elapsed / config.non_gpu_smoothing_seconds) if config.non_gpu_smoothing_seconds else 1.0
    return state.non_gpu_watts + weight * (sample - state.non_gpu_watts), obs.now_seconds


def guard_limit_sum_watts(config: PolicyConfig, non_gpu_watts: float) -> float:
    """The most the GPUs' limits may add up to while the worst case (every GPU at its limit) stays under
    guard_ratio x cap; infinite without a guard. Device minimums can force the sum above it."""
    if config.guard_ratio is None:
        return math.inf
    return (config.guard_ratio * config.cap_watts - non_gpu_watts) / config.rack_watts_per_gpu_watt


def _guard_ceilings(config: PolicyConfig, obs: RackObservation, non_gpu_watts: float) -> FloatArray:
    """Per-GPU limits whose sum keeps the worst case (every GPU at its limit) under guard_ratio x cap."""
    if config.guard_ratio is None:
        return obs.gpu_max_watts.astype(np.float64)
    budget = guard_limit_sum_watts(config, non_gpu_watts)
    offset = config.guard_priority_step_watts * (obs.gpu_priority - obs.gpu_priority.min()).astype(np.float64)

    def at(level: float) -> FloatArray:
        ceilings: FloatArray = np.clip(level + offset, obs.gpu_min_watts, obs.gpu_max_watts)
        return ceilings

    low, high = float(obs.gpu_min_watts.min() - offset.max()), float(obs.gpu_max_watts.max())
    if float(at(high).sum()) <= budget:
        return at(high)
    for _ in range(60):
        mid = 0.5 * (low + high)
        if float(at(mid).sum()) <= budget:
            low = mid
        else:
            high = mid
    return at(low)


def _finish(
    config: PolicyConfig,
    obs: RackObservation,
    old: FloatArray,
    new: FloatArray,
    action: Action,
    state: PolicyState,
) -> Decision:
    new = np.clip(new, obs.gpu_min_watts, obs.gpu_max_watts)
    at_bound = (new <= obs.gpu_min_watts) | (new >= obs.gpu_max_watts)
    # A change to the device bound always goes through, or a GPU could stay a few watts off its max forever.
    changed = (np.abs(new - old) >= config.min_change_watts) | ((new != old) & at_bound)
    final = np.where(changed, new, old)
    changed = final != obs.gpu_limit_watts
    return Decision(limits_watts=final, action=action, state=state, changed=changed)


def _lower_least_important(limits: FloatArray, obs: RackObservation, step_watts: float) -> FloatArray:
    above_min = limits > obs.gpu_min_watts
    if not bool(above_min.any()):
        return limits
    lowest = int(obs.gpu_priority[above_min].min())
    target = above_min & (obs.gpu_priority == lowest)
    return np.where(target, np.maximum(limits - step_watts, obs.gpu_min_watts), limits)


def _cut(
    limits: FloatArray,
    draw: FloatArray,
    obs: RackObservation,
    need_gpu_watts: float,
    eligible: npt.NDArray[np.bool_],
) -> FloatArray:
    """Water-fill downwards, class by class: one common level per class, the biggest draws give first."""
    new = limits.copy()
    for priority in np.unique(obs.gpu_priority[eligible]):
        if need_gpu_watts <= 0:
            break
        members = eligible & (obs.gpu_priority == priority)
        floor = obs.gpu_min_watts[members]
        member_draw = draw[members]

        def saving(level: float, floor: FloatArray = floor, member_draw: FloatArray = member_draw) -> float:
            return float(np.clip(member_draw - np.maximum(level, floor), 0.0, None).sum())

        most = saving(float(floor.min()))
        if most <= need_gpu_watts:
            new[members] = floor
            need_gpu_watts -= most
            continue
        low, high = float(floor.min()), float(member_draw.max())
        for _ in range(60):  # bisection to well under a watt
            mid = 0.5 * (low + high)
            if saving(mid) >= need_gpu_watts:
                low = mid
            else:
                high = mid
        level = low
        new[members] = np.minimum(limits[members], np.maximum(level, floor))
        need_gpu_watts = 0.0
    return new


def _restore(
    limits: FloatArray,
    draw: FloatArray,
    ceilings: FloatArray,
    obs: RackObservation,
    available_gpu_watts: float,
    room_gpu_watts: float,
    bound_fraction: float,
) -> FloatArray:
    """Water-fill upwards, most important class first; a class must be fully restored before the next.

    `available_gpu_watts` bounds what the GPUs pressing on their limits would draw more (measured
    headroom); `room_gpu_watts` bounds the sum of all raises (the spike guard).
    """
    new = limits.copy()
    bound = draw >= bound_fraction * limits
    for priority in np.unique(obs.gpu_priority)[::-1]:
        members = (obs.gpu_priority == priority) & (limits < ceilings)
        if not bool(members.any()):
            continue
        ceiling = ceilings[members]
        member_limits = limits[members]
        member_bound = bound[members]

        def cost(
            level: float,
            ceiling: FloatArray = ceiling,
            member_limits: FloatArray = member_limits,
            member_bound: FloatArray = member_bound,
        ) -> tuple[float, float]:
            raised = np.minimum(np.maximum(level, member_limits), ceiling) - member_limits
            return float(raised[member_bound].sum()), float(raised.sum())

        full_bound, full_total = cost(float(ceiling.max()))
        if full_bound <= available_gpu_watts and full_total <= room_gpu_watts:
            new[members] = ceiling
            available_gpu_watts -= full_bound
            room_gpu_watts -= full_total
            continue
        low, high = float(member_limits.min()), float(ceiling.max())
        for _ in range(60):
            mid = 0.5 * (low + high)
            mid_bound, mid_total = cost(mid)
            if mid_bound <= available_gpu_watts and mid_total <= room_gpu_watts:
                low = mid
            else:
                high = mid
        new[members] = np.minimum(np.maximum(low, member_limits), ceiling)
        break
    return new
