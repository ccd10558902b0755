"""Rack headroom, overdraw and the replicas a budget allows.

    usable   = cap - margin
    margin   = max(cap x margin_ratio, largest recent short-term rise + sensor error x measured)
    headroom = max(0, usable - measured)        overdraw = max(0, measured - usable)

The margin is what the rack may still jump by before anyone can react: the largest rise seen over
`rise_within_seconds` (the time a controller needs to act; POLCA sized its threshold for the largest
40 s rise, 11.8% of provisioned power) during the last `lookback_seconds`, plus the sensor's own error
(about 1% for a metered PDU, 5% for a sum of NVML readings). The configured `margin_ratio` is a
floor. Headroom and overdraw are measured against the same usable budget, so at most one is non-zero
and `headroom - overdraw = usable - measured` is continuous through zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pandas as pd

PDU_SENSOR_ERROR_RATIO = 0.01
"""Revenue-grade PDU metering is within about 1% (anchors-power.md, section 9.2)."""
SUMMED_ESTIMATE_ERROR_RATIO = 0.05
"""NVML board power carries up to +-5% gain error per GPU (Yang et al., SC'24)."""


def replica_allowance(
    headroom_watts: float, overdraw_watts: float, replica_peak_power_watts: float, current_replicas: int
) -> float:
    """Replicas the budget allows, unrounded: the current ones, plus the headroom and minus the overdraw in
    replicas at peak power. Unknown headroom or overdraw (NaN) buys and costs nothing. A non-positive or
    unknown peak power is a caller error: without it no bound can be given, and guessing "unlimited"
    would defeat the budget."""
    if current_replicas < 0:
        raise ValueError(f"current_replicas must be >= 0, got {current_replicas}")
    if not (math.isfinite(replica_peak_power_watts) and replica_peak_power_watts > 0):
        raise ValueError(f"replica_peak_power_watts must be finite and > 0, got {replica_peak_power_watts}")
    spare = (headroom_watts if math.isfinite(headroom_watts) else 0.0) - (
        overdraw_watts if math.isfinite(overdraw_watts) else 0.0
    )
    return max(0.0, current_replicas + spare / replica_peak_power_watts)


def replicas_within_budget(
    headroom_watts: float, replica_peak_power_watts: float, current_replicas: int, overdraw_watts: float = 0.0
) -> int:
    """Replicas the workload may run: the current ones plus as many more as fit the headroom at peak, or
    fewer when the rack is overdrawn (as many fewer as it takes to clear the overdraw at peak).

    Headroom is what is left after everything running now, so it buys new replicas only.
    """
    allowance = replica_allowance(headroom_watts, overdraw_watts, replica_peak_power_watts, current_replicas)
    return math.floor(allowance + 1e-9)  # 1e-9: a whole number of replicas must not round down


@dataclass(slots=True)
class _Held:
    replicas: int
    peak_watts: float
    seen_seconds: float
    up_since_seconds: float | None = None


@dataclass(slots=True)
class ReplicaBudgets:
    """`replicas_within_budget` per workload, made stable enough for an autoscaler to act on.

    Two sources of flapping are removed. The divisor: one replica's peak power is the largest any replica
    of the workload drew, remembered with a slow decay (`peak_half_life_seconds`), not the hungriest
    replica of the current window, which follows the load up and down over a day. The rounding: the count
    goes down at once when the rack is overdrawn (it must shed replicas now) or the budget falls
    `band_replicas` short of it, and up only when the budget covers the next replica with `band_replicas`
    to spare for `up_after_seconds`. A count inside the band is held: its shortfall is less than half a
    replica's peak, which the headroom's margin (sized for the largest rise) absorbs.
    """

    peak_half_life_seconds: float = 6 * 3600.0
    band_replicas: float = 0.5
    up_after_seconds: float = 120.0
    held: dict[object, _Held] = field(default_factory=dict)

    def peak_watts(self, key: object, observed_watts: float, now_seconds: float) -> float:
        held = self.held.get(key)
        if held is None:
            return observed_watts
        decay = 0.5 ** (max(0.0, now_seconds - held.seen_seconds) / self.peak_half_life_seconds)
        remembered = held.peak_watts * decay
        return float(max(remembered, observed_watts)) if math.isfinite(observed_watts) else float(remembered)

    def update(
        self,
        key: object,
        *,
        headroom_watts: float,
        overdraw_watts: float,
        replica_power_watts: float,
        current_replicas: int,
        now_seconds: float,
    ) -> int | None:
        """This pass's count for the workload `key`; None while no replica's power has been seen."""
        peak = self.peak_watts(key, replica_power_watts, now_seconds)
        if not (math.isfinite(peak) and peak > 0):
            return None
        allowance = replica_allowance(headroom_watts, overdraw_watts, peak, current_replicas)
        held = self.held.get(key)
        fits = math.floor(allowance + 1e-9)
        overdrawn = math.isfinite(overdraw_watts) and overdraw_watts > 0
        if held is None or (
            fits < held.replicas and (overdrawn or allowance < held.replicas - self.band_replicas)
        ):
            self.held[key] = _Held(fits, peak, now_seconds)
            return fits
        held.peak_watts, held.seen_seconds = peak, now_seconds
        if allowance < held.replicas + 1 + self.band_replicas:
            held.up_since_seconds = None
            return held.replicas
        if held.up_since_seconds is None:
            held.up_since_seconds = now_seconds
        if now_seconds - held.up_since_seconds >= self.up_after_seconds:
            held.replicas, held.up_since_seconds = math.floor(allowance - self.band_replicas), None
        return held.replicas

    def retain(self, keys: set[object]) -> None:
        """Forget workloads that are gone."""
        for key in set(self.held) - keys:
            del self.held[key]


def margin_watts(
    cap_watts: float | npt.ArrayLike,
    margin_ratio: float | npt.ArrayLike,
    largest_rise_watts: float | npt.ArrayLike,
    measured_watts: float | npt.ArrayLike,
    sensor_error_ratio: float | npt.ArrayLike,
) -> npt.NDArray[np.float64]:
    """The margin kept below the cap (module docstring); NaN where the cap is unknown."""
    cap = np.asarray(cap_watts, dtype=np.float64)
    floor = cap * np.nan_to_num(np.asarray(margin_ratio, dtype=np.float64))
    dynamic = np.nan_to_num(np.asarray(largest_rise_watts, dtype=np.float64)) + np.asarray(
        sensor_error_ratio, dtype=np.float64
    ) * np.nan_to_num(np.asarray(measured_watts, dtype=np.float64))
    margin: npt.NDArray[np.float64] = np.where(np.isfinite(cap), np.maximum(floor, dynamic), np.nan)
    return margin


def headroom_and_overdraw(
    cap_watts: float | npt.ArrayLike, margin: float | npt.ArrayLike, measured_watts: float | npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(headroom, overdraw) against the usable budget cap - margin; both >= 0, NaN where unknown."""
    usable = np.asarray(cap_watts, dtype=np.float64) - np.asarray(margin, dtype=np.float64)
    measured = np.asarray(measured_watts, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        headroom: npt.NDArray[np.float64] = np.where(
            np.isfinite(usable - measured), np.maximum(usable - measured, 0.0), np.nan
        )
        overdraw: npt.NDArray[np.float64] = np.where(
            np.isfinite(usable - measured), np.maximum(measured - usable, 0.0), np.nan
        )
    return headroom, overdraw


def _series(times_seconds: npt.ArrayLike, values: npt.ArrayLike) -> pd.Series:
    index = pd.to_timedelta(np.asarray(times_seconds, dtype=np.float64), unit="s")
    return pd.Series(np.asarray(values, dtype=np.float64), index=index).sort_index()


def recent_rise_watts(
    times_seconds: npt.ArrayLike,
    power_watts: npt.ArrayLike,
    *,
    rise_within_seconds: float,
    lookback_seconds: float,
) -> npt.NDArray[np.float64]:
    """At each sample: the largest rise over any `rise_within_seconds` span ending in the last
    `lookback_seconds` (the reading minus the lowest reading up to `rise_within_seconds` before it)."""
    power = _series(times_seconds, power_watts)
    rise = power - power.rolling(pd.Timedelta(seconds=rise_within_seconds), closed="both").min()
    if not math.isfinite(lookback_seconds):
        return rise.cummax().to_numpy(np.float64)
    recent = rise.rolling(pd.Timedelta(seconds=lookback_seconds), closed="both").max()
    return recent.to_numpy(np.float64)


def largest_rise_watts(
    times_seconds: npt.ArrayLike, power_watts: npt.ArrayLike, *, rise_within_seconds: float
) -> float:
    """The largest rise over any `rise_within_seconds` span in the whole series (0 if it never rose)."""
    if np.asarray(power_watts).size == 0:
        return 0.0
    rises = recent_rise_watts(
        times_seconds, power_watts, rise_within_seconds=rise_within_seconds, lookback_seconds=math.inf
    )
    return float(np.nanmax(rises))


def headroom_timeline(
    times_seconds: npt.ArrayLike,
    rack_power_watts: npt.ArrayLike,
    *,
    cap_watts: float,
    margin_ratio: float,
    rise_within_seconds: float = 40.0,
    lookback_seconds: float = 3600.0,
    sensor_error_ratio: float = PDU_SENSOR_ERROR_RATIO,
    replica_peak_power_watts: float | None = None,
    current_replicas: npt.ArrayLike | None = None,
) -> pd.DataFrame:
    """Margin, headroom, overdraw (and replicas within budget, given the replica peak power and the
    replicas running) at every reading of a rack's power. Columns timestamp_seconds, rack_power_watts,
    rise_watts, margin_watts, headroom_watts, overdraw_watts[, replicas_within_budget]."""
    power = _series(times_seconds, rack_power_watts)
    seconds = pd.TimedeltaIndex(power.index).total_seconds().to_numpy(np.float64)
    rise = recent_rise_watts(
        seconds,
        power.to_numpy(),
        rise_within_seconds=rise_within_seconds,
        lookback_seconds=lookback_seconds,
    )
    margin = margin_watts(cap_watts, margin_ratio, rise, power.to_numpy(), sensor_error_ratio)
    headroom, overdraw = headroom_and_overdraw(cap_watts, margin, power.to_numpy())
    out = pd.DataFrame(
        {
            "timestamp_seconds": seconds,
            "rack_power_watts": power.to_numpy(),
            "rise_watts": rise,
            "margin_watts": margin,
            "headroom_watts": headroom,
            "overdraw_watts": overdraw,
        }
    )
    if replica_peak_power_watts is not None:
        running = np.broadcast_to(
            np.asarray(0 if current_replicas is None else current_replicas, dtype=np.int64), (len(out),)
        )
        out["replicas_within_budget"] = [
            replicas_within_budget(float(h), replica_peak_power_watts, int(n))
            for h, n in zip(headroom, running, strict=True)
        ]
    return out
