"""Watts per token (joules per generated token) over windows, from counters and gauges as scraped.

Input: a long frame with columns `timestamp_seconds`, `metric`, `value`, and optionally label columns
(`gpu_uuid`, `pod`, ...): each distinct label combination of a metric is one series, and series are
summed, so a pod with two GPUs or a namespace of ten pods is one call.

Energy per window, in order of preference (column `method`):

`energy_counter`
    Differences of `gpu_energy_joules_total` (NVML/DCGM/Kepler joules), each series evaluated at the
    window edges by `estimators.rates.counter_at`.
`energy_counter+reset_fill`
    The same, but a counter restarted inside the window: the lost part of that scrape interval is
    filled from the neighbouring intervals' rate (the GPU kept drawing power while its exporter
    restarted). Expect the error of a guess for that window.
`power_gauge`
    The integral of `gpu_power_watts` over the part of the window its samples cover, scaled to the
    whole window. A 1 s averaged gauge scraped every 15 s sees a fifteenth of the time: expect errors
    of tens of percent when load changes faster than the scrape interval (anchors-power.md: 39% naive).
`none`
    Neither covers the window: energy is NaN.

Tokens come from `generation_tokens_total` and `prompt_tokens_total` at the same edges (restarts
count from zero: a restarted server generated nothing while it was down).

Window edges (`align`):
- `"tokens"` (default): edges are the generation counter's own sample instants, the one nearest to
  each step of `window_seconds`. Tokens are then read, not interpolated, and the energy counter -
  usually read far more often - is interpolated at those instants. This aligns the energy window with
  the token window.
- `"grid"`: edges every `window_seconds` from `start_seconds`; every counter is interpolated. Used
  as well when there are several token series (a namespace of pods scraped at different moments):
  no one series' instants suit them all. Interpolating a token counter across a prefill burst is
  costly (on the H100 trace a median error near 10% at 30 s, against under 1% token-aligned), so
  per-pod figures summed with `estimators.fleet.aggregate_pods` are the better route for groups.

Variants: `watts_per_token` divides by generated tokens (the served metric); `joules_per_token_with_prompt`
divides by generated plus prompt tokens. The idle (static) share is `idle_power_watts` x window
seconds per generated token; the dynamic share is the rest (never below zero).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from estimators.rates import FloatArray, counter_at, gauge_integral, reset_intervals

Align = Literal["tokens", "grid"]

OUTPUT_COLUMNS = [
    "window_start_seconds",
    "window_end_seconds",
    "energy_joules",
    "power_watts",
    "generation_tokens",
    "prompt_tokens",
    "tokens_per_second",
    "watts_per_token",
    "joules_per_token_with_prompt",
    "idle_power_watts",
    "idle_joules_per_token",
    "dynamic_joules_per_token",
    "method",
]
_BASE_COLUMNS = {"timestamp_seconds", "metric", "value"}


@dataclass(frozen=True, slots=True)
class Metrics:
    """Which sample metrics hold what. The defaults are the names in `collectors/base.py`."""

    energy: str = "gpu_energy_joules_total"
    power: str = "gpu_power_watts"
    generation_tokens: str = "generation_tokens_total"
    prompt_tokens: str = "prompt_tokens_total"


def _series(samples: pd.DataFrame, metric: str) -> list[tuple[FloatArray, FloatArray]]:
    rows = samples.loc[samples["metric"] == metric]
    if rows.empty:
        return []
    labels = [c for c in rows.columns if c not in _BASE_COLUMNS]
    groups = rows.groupby(labels, dropna=False, sort=True) if labels else [((), rows)]
    return [(g["timestamp_seconds"].to_numpy(np.float64), g["value"].to_numpy(np.float64)) for _, g in groups]


def _counter_increase(
    series: list[tuple[FloatArray, FloatArray]],
    edges: FloatArray,
    *,
    on_reset: Literal["post_value", "neighbour_rate"],
) -> FloatArray:
    """Summed increase of all series per window; NaN where any series fails to cover a window."""
    if not series:
        return np.full(edges.size - 1, np.nan)
    total = np.zeros(edges.size - 1)
    for times, values in series:
        total = total + np.diff(counter_at(times, values, edges, on_reset=on_reset))
    return total


def _touches_reset(series: list[tuple[FloatArray, FloatArray]], edges: FloatArray) -> npt.NDArray[np.bool_]:
    """Windows that overlap an interval in which some series restarted."""
    touched = np.zeros(edges.size - 1, dtype=bool)
    for times, values in series:
        for before, after in reset_intervals(times, values):
            touched |= (edges[:-1] < after) & (edges[1:] > before)
    return touched


def _gauge_energy(series: list[tuple[FloatArray, FloatArray]], edges: FloatArray) -> FloatArray:
    """Summed gauge energy per window: each series' mean over what it covers, times the window."""
    if not series:
        return np.full(edges.size - 1, np.nan)
    total = np.zeros(edges.size - 1)
    for times, values in series:
        integral, covered = gauge_integral(times, values, edges[:-1], edges[1:])
        total = total + np.where(
            covered > 0, integral / np.where(covered > 0, covered, 1.0), np.nan
        ) * np.diff(edges)
    return total


def window_edges(
    token_times_seconds: npt.ArrayLike,
    *,
    window_seconds: float,
    start_seconds: float,
    end_seconds: float,
    align: Align = "tokens",
) -> FloatArray:
    """Window edges over [start, end]: a regular grid, or the token samples nearest to one (module doc).

    With `align="tokens"` a window is never shorter than half `window_seconds` (a dropped scrape makes
    the window longer rather than splitting it).
    """
    if not window_seconds > 0:
        raise ValueError(f"window_seconds must be > 0, got {window_seconds}")
    if align == "grid":
        count = int(np.floor((end_seconds - start_seconds) / window_seconds + 1e-9))
        return start_seconds + window_seconds * np.arange(count + 1, dtype=np.float64)
    times = np.unique(np.asarray(token_times_seconds, dtype=np.float64))
    times = times[(times >= start_seconds) & (times <= end_seconds)]
    if times.size < 2:
        return np.empty(0)
    edges = [times[0]]
    while True:
        later = times[times >= edges[-1] + 0.5 * window_seconds]
        if later.size == 0:
            break
        distance = np.abs(later - (edges[-1] + window_seconds))
        # On a tie (a dropped scrape halfway) take the later sample: a longer window, not a shorter one.
        edges.append(later[np.flatnonzero(distance <= distance.min() + 1e-9)[-1]])
    return np.asarray(edges, dtype=np.float64)


def watts_per_token(
    samples: pd.DataFrame,
    *,
    window_seconds: float,
    start_seconds: float | None = None,
    end_seconds: float | None = None,
    align: Align = "tokens",
    idle_power_watts: float | None = None,
    metrics: Metrics | None = None,
) -> pd.DataFrame:
    """Joules per generated token for each window (columns `OUTPUT_COLUMNS`; rules in the module doc).

    `start_seconds`/`end_seconds` default to the first and last sample. `idle_power_watts` is the
    static power of the GPUs summed (for one H100 about 75 W); by default the lowest power seen in
    any window, which overstates idle for a workload that never idles.
    """
    names = metrics or Metrics()
    frame = samples.astype({"timestamp_seconds": np.float64, "value": np.float64})
    start = float(frame["timestamp_seconds"].min()) if start_seconds is None else start_seconds
    end = float(frame["timestamp_seconds"].max()) if end_seconds is None else end_seconds
    generation = _series(frame, names.generation_tokens)
    token_times = generation[0][0] if len(generation) == 1 else np.empty(0)
    chosen: Align = align if (align == "grid" or token_times.size) else "grid"
    edges = window_edges(
        token_times, window_seconds=window_seconds, start_seconds=start, end_seconds=end, align=chosen
    )
    if edges.size < 2:
        return pd.DataFrame(columns=OUTPUT_COLUMNS)

    energy_series = _series(frame, names.energy)
    counter_energy = _counter_increase(energy_series, edges, on_reset="neighbour_rate")
    gauge_energy = _gauge_energy(_series(frame, names.power), edges)
    use_counter = np.isfinite(counter_energy)
    energy = np.where(use_counter, counter_energy, gauge_energy)
    counter_method = np.where(
        _touches_reset(energy_series, edges), "energy_counter+reset_fill", "energy_counter"
    )
    method = np.where(use_counter, counter_method, np.where(np.isfinite(gauge_energy), "power_gauge", "none"))

    generated = _counter_increase(generation, edges, on_reset="post_value")
    prompt = _counter_increase(_series(frame, names.prompt_tokens), edges, on_reset="post_value")
    seconds = np.diff(edges)
    power = energy / seconds
    if idle_power_watts is None:
        idle = float(np.nanmin(power)) if np.isfinite(power).any() else np.nan
    else:
        idle = idle_power_watts
    with np.errstate(divide="ignore", invalid="ignore"):
        tokens = np.where(generated > 0, generated, np.nan)
        with_prompt = generated + np.nan_to_num(prompt)
        out = pd.DataFrame(
            {
                "window_start_seconds": edges[:-1],
                "window_end_seconds": edges[1:],
                "energy_joules": energy,
                "power_watts": power,
                "generation_tokens": generated,
                "prompt_tokens": prompt,
                "tokens_per_second": generated / seconds,
                "watts_per_token": energy / tokens,
                "joules_per_token_with_prompt": energy / np.where(with_prompt > 0, with_prompt, np.nan),
                "idle_power_watts": idle,
                "idle_joules_per_token": idle * seconds / tokens,
                "dynamic_joules_per_token": np.maximum(energy - idle * seconds, 0.0) / tokens,
                "method": method,
            }
        )
    return out[OUTPUT_COLUMNS]


def load_windows(
    samples: pd.DataFrame,
    *,
    window_seconds: float,
    step_seconds: float | None = None,
    metrics: Metrics | None = None,
    requests_metric: str = "requests_running",
) -> pd.DataFrame:
    """Sliding windows of load and power from scraped samples: the rows a `PowerModel` learns from.

    Windows of `window_seconds` start every `step_seconds` (default: the window, i.e. no overlap).
    Columns window_start_seconds, window_end_seconds, generation_tokens_per_second,
    prompt_tokens_per_second, requests_running (time-weighted gauge mean, NaN if absent),
    power_watts, method. Rows without power or tokens are dropped.
    """
    names = metrics or Metrics()
    frame = samples.astype({"timestamp_seconds": np.float64, "value": np.float64})
    step = window_seconds if step_seconds is None else step_seconds
    start = float(frame["timestamp_seconds"].min())
    end = float(frame["timestamp_seconds"].max())
    starts = np.arange(start, end - window_seconds + 1e-9, step)
    columns = [
        "window_start_seconds",
        "window_end_seconds",
        "generation_tokens_per_second",
        "prompt_tokens_per_second",
        "requests_running",
        "power_watts",
        "method",
    ]
    if starts.size == 0:
        return pd.DataFrame(columns=columns)
    ends = starts + window_seconds

    def per_window(metric: str, on_reset: Literal["post_value", "neighbour_rate"]) -> FloatArray:
        series = _series(frame, metric)
        if not series:
            return np.full(starts.size, np.nan)
        total = np.zeros(starts.size)
        for times, values in series:
            total = total + (
                counter_at(times, values, ends, on_reset=on_reset)
                - counter_at(times, values, starts, on_reset=on_reset)
            )
        return total

    def gauge_mean(metric: str) -> FloatArray:
        series = _series(frame, metric)
        if not series:
            return np.full(starts.size, np.nan)
        total = np.zeros(starts.size)
        for times, values in series:
            integral, covered = gauge_integral(times, values, starts, ends)
            total = total + np.where(covered > 0, integral / np.where(covered > 0, covered, 1.0), np.nan)
        return total

    counter_power = per_window(names.energy, "neighbour_rate") / window_seconds
    gauge_power = gauge_mean(names.power)
    use_counter = np.isfinite(counter_power)
    out = pd.DataFrame(
        {
            "window_start_seconds": starts,
            "window_end_seconds": ends,
            "generation_tokens_per_second": per_window(names.generation_tokens, "post_value")
            / window_seconds,
            "prompt_tokens_per_second": per_window(names.prompt_tokens, "post_value") / window_seconds,
            "requests_running": gauge_mean(requests_metric),
            "power_watts": np.where(use_counter, counter_power, gauge_power),
            "method": np.where(use_counter, "energy_counter", "power_gauge"),
        }
    )
    return out.dropna(subset=["power_watts", "generation_tokens_per_second"]).reset_index(drop=True)[columns]
