"""Rates and increases from counters, and integrals of gauges, under real scrape conditions.

Scrapes arrive every 15-30 s at moments that differ per target, some are missing, and counters
restart. These functions state and apply one set of rules, so every estimator upstream agrees:

Resets
    A counter that goes down has restarted from zero (process restart, driver reload). By default
    (`on_reset="post_value"`) the increase over that interval is the value after the drop, as in
    Prometheus: what was counted between the last sample before the restart and the restart itself
    is lost, which is right for a token counter whose server was down. With
    `on_reset="neighbour_rate"` the interval instead gets the larger of that value and the mean rate
    of the intervals on either side times its length: right for an energy counter whose exporter
    restarted while the hardware kept drawing power.
Gaps
    Between two samples the counter's increase is known exactly; how it was spread inside the interval
    is not. Interpolation assumes a constant rate inside each interval, however long. A missing scrape
    therefore costs resolution, never joules or tokens.
Unaligned timestamps
    Each series is evaluated at the instants the caller asks for (window edges) by linear interpolation
    of its own reset-corrected counter. Two counters read at different moments (a power meter and a token
    counter on different scrape schedules) are thereby compared over the same wall-clock window.
Extrapolation
    Past the first or last sample a counter is extended at the rate of its nearest interval for at most
    `max_extrapolation_seconds` (default: 1.1 times the series' median sample interval, i.e. about one
    missed or not-yet-happened scrape). Beyond that the value is NaN: a window that is not covered
    yields NaN rather than a guess. Extrapolation never runs a counter below zero.
Gauges
    A gauge is integrated as the piecewise-linear curve through its samples (trapezoids), held flat for
    at most `max_hold_seconds` beyond the first and last sample. The integral covers only the time the
    samples cover; callers get that coverage back and divide by it, so a partly covered window gives the
    mean power over what was seen, never power times an assumed duration.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def _as_sorted(times: npt.ArrayLike, values: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Sort by time, drop NaN and keep the last value of duplicate timestamps (a re-scrape)."""
    t = np.asarray(times, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if t.shape != v.shape:
        raise ValueError(f"times and values differ in shape: {t.shape} vs {v.shape}")
    keep = np.isfinite(t) & np.isfinite(v)
    t, v = t[keep], v[keep]
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    if t.size > 1:
        last_of_each = np.append(t[1:] != t[:-1], True)
        t, v = t[last_of_each], v[last_of_each]
    return t, v


ResetRule = Literal["post_value", "neighbour_rate"]


def reset_steps(
    times: FloatArray,
    values: FloatArray,
    first: npt.NDArray[np.bool_],
    *,
    on_reset: ResetRule = "post_value",
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """The reset rule (module docstring), written once: each sample's reset-corrected increase over
    the sample before it, and where the counter dropped.

    Several series may lie end to end, each in time order; `first` marks each series' first sample,
    whose step is 0. Returns (steps, dropped)."""
    last = np.append(first[1:], True)
    step = np.where(first, 0.0, np.diff(values, prepend=values[:1]))
    dropped = (step < 0) & ~first
    step = np.where(dropped, values, step)
    if on_reset == "neighbour_rate" and dropped.any():
        dt = np.where(first, np.nan, np.diff(times, prepend=times[:1]))
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = np.where(dropped | first, np.nan, step / dt)
        previous = np.where(first, np.nan, np.roll(rate, 1))
        following = np.where(last, np.nan, np.roll(rate, -1))
        both = np.vstack((previous, following))
        counted = np.isfinite(both).sum(axis=0)
        around = np.where(counted > 0, np.nansum(both, axis=0) / np.maximum(counted, 1), np.nan)
        fill = around * dt
        step = np.where(dropped & np.isfinite(fill), np.maximum(step, fill), step)
    return step, dropped


def reset_corrected(
    values: npt.ArrayLike, times: npt.ArrayLike | None = None, *, on_reset: ResetRule = "post_value"
) -> FloatArray:
    """Cumulative increase of a counter since its first sample, with restarts counted from zero.

    `values` must be in time order. The result starts at 0 and never decreases. `on_reset`
    (module docstring) needs `times` when it is "neighbour_rate".
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return v.copy()
    if times is None:
        if on_reset == "neighbour_rate" and (np.diff(v) < 0).any():
            raise ValueError('on_reset="neighbour_rate" needs the sample times')
        t = np.arange(v.size, dtype=np.float64)
    else:
        t = np.asarray(times, dtype=np.float64)
    first = np.zeros(v.size, dtype=bool)
    first[0] = True
    steps, _ = reset_steps(t, v, first, on_reset=on_reset)
    return np.cumsum(steps)


def reset_intervals(times: npt.ArrayLike, values: npt.ArrayLike) -> FloatArray:
    """(before, after) sample times around each restart of a counter: shape (n, 2). What the counter
    did inside such an interval is partly unknown, so estimates over it are marked."""
    t, v = _as_sorted(times, values)
    first = np.zeros(v.size, dtype=bool)
    first[:1] = True
    _, dropped = reset_steps(t, v, first)
    after = np.flatnonzero(dropped)
    return np.column_stack((t[after - 1], t[after])) if after.size else np.empty((0, 2))


def counter_at(
    times: npt.ArrayLike,
    values: npt.ArrayLike,
    at_seconds: npt.ArrayLike,
    *,
    max_extrapolation_seconds: float | None = None,
    on_reset: ResetRule = "post_value",
) -> FloatArray:
    """The reset-corrected counter (0 at the first sample) at each instant in `at_seconds`.

    Inside the sampled span: linear interpolation. Outside: the nearest interval's rate for at most
    `max_extrapolation_seconds` (default 1.1 x the median sample interval), else NaN.
    """
    t, v = _as_sorted(times, values)
    at = np.asarray(at_seconds, dtype=np.float64)
    out = np.full(at.shape, np.nan)
    if t.size == 0:
        return out
    c = reset_corrected(v, t, on_reset=on_reset)
    if t.size == 1:
        out[at == t[0]] = 0.0
        return out
    if max_extrapolation_seconds is None:
        max_extrapolation_seconds = 1.1 * float(np.median(np.diff(t)))
    inside = (at >= t[0]) & (at <= t[-1])
    out[inside] = np.interp(at[inside], t, c)
    first_rate = (c[1] - c[0]) / (t[1] - t[0])
    last_rate = (c[-1] - c[-2]) / (t[-1] - t[-2])
    before = (at < t[0]) & (t[0] - at <= max_extrapolation_seconds)
    after = (at > t[-1]) & (at - t[-1] <= max_extrapolation_seconds)
    # Only the part of the counter seen so far can be "unwound" before the first sample; a counter
    # cannot have been below zero.
    out[before] = np.maximum(-v[0], first_rate * (at[before] - t[0]))
    out[after] = c[-1] + last_rate * (at[after] - t[-1])
    return out


def window_increases(
    times: npt.ArrayLike,
    values: npt.ArrayLike,
    edges_seconds: npt.ArrayLike,
    *,
    max_extrapolation_seconds: float | None = None,
    on_reset: ResetRule = "post_value",
) -> FloatArray:
    """Counter increase over each window [edges[i], edges[i+1]]; NaN where a window is not covered."""
    at = counter_at(
        times, values, edges_seconds, max_extrapolation_seconds=max_extrapolation_seconds, on_reset=on_reset
    )
    return np.diff(at)


def gauge_integral(
    times: npt.ArrayLike,
    values: npt.ArrayLike,
    starts_seconds: npt.ArrayLike,
    ends_seconds: npt.ArrayLike,
    *,
    max_hold_seconds: float | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Integral of a gauge over each [start, end], and the seconds of each window the samples cover.

    `max_hold_seconds` defaults to half the median sample interval (each sample stands for the time
    around it). For power in watts the integral is joules; integral / covered is the mean power.
    """
    t, v = _as_sorted(times, values)
    starts = np.asarray(starts_seconds, dtype=np.float64)
    ends = np.asarray(ends_seconds, dtype=np.float64)
    if t.size == 0:
        zeros = np.zeros(np.broadcast(starts, ends).shape)
        return zeros, zeros.copy()
    if max_hold_seconds is None:
        max_hold_seconds = 0.5 * float(np.median(np.diff(t))) if t.size > 1 else 0.5
    tt = np.concatenate(([t[0] - max_hold_seconds], t, [t[-1] + max_hold_seconds]))
    vv = np.concatenate(([v[0]], v, [v[-1]]))
    dt = np.diff(tt)
    keep = np.append(True, dt > 0)  # a zero hold would make a zero-length segment
    tt, vv = tt[keep], vv[keep]
    dt = np.diff(tt)
    if dt.size == 0:
        zeros = np.zeros(np.broadcast(starts, ends).shape)
        return zeros, zeros.copy()
    cumulative = np.concatenate(([0.0], np.cumsum(0.5 * (vv[1:] + vv[:-1]) * dt)))
    slopes = np.diff(vv) / dt

    def primitive(x: FloatArray) -> FloatArray:
        i = np.clip(np.searchsorted(tt, x, side="right") - 1, 0, dt.size - 1)
        dx = x - tt[i]
        result: FloatArray = cumulative[i] + vv[i] * dx + 0.5 * slopes[i] * dx * dx
        return result

    lo = np.clip(starts, tt[0], tt[-1])
    hi = np.clip(ends, tt[0], tt[-1])
    covered = np.maximum(hi - lo, 0.0)
    integral = np.where(covered > 0, primitive(hi) - primitive(lo), 0.0)
    return integral, covered


def series_rates(
    frame: pd.DataFrame,
    keys: Sequence[str],
    *,
    time_column: str = "timestamp_seconds",
    value_column: str = "value",
) -> pd.DataFrame:
    """Per-series counter increase and rate over the samples given, vectorised across series.

    The rate is the reset-corrected increase divided by the span from first to last sample, with no
    extrapolation (Prometheus `rate()` without its edge extrapolation): callers that need a fixed
    window use `counter_at`. Returns one row per series: the keys, `first_seconds`, `last_seconds`,
    `increase`, `rate_per_second` (NaN with fewer than two samples), `samples`, `resets`.
    """
    columns = [*keys, "first_seconds", "last_seconds", "increase", "rate_per_second", "samples", "resets"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    data = frame[[*keys, time_column, value_column]].dropna(subset=[time_column, value_column])
    data = data.sort_values([*keys, time_column], kind="stable")
    sid = data.groupby(list(keys), sort=False, dropna=False).ngroup().to_numpy(np.int64).astype(np.int64)
    rates = sorted_series_rates(
        sid, data[time_column].to_numpy(np.float64), data[value_column].to_numpy(np.float64)
    )
    first = np.ones(sid.size, dtype=bool)
    first[1:] = sid[1:] != sid[:-1]
    out = data.loc[first, list(keys)].reset_index(drop=True)
    for name in columns[len(keys) :]:
        out[name] = getattr(rates, name)
    return out[columns]


class SeriesRates(NamedTuple):
    """`sorted_series_rates`: one entry per series with a sample, in order."""

    series: IntArray
    first_seconds: FloatArray
    last_seconds: FloatArray
    increase: FloatArray
    rate_per_second: FloatArray
    samples: IntArray
    resets: IntArray


def sorted_series_rates(series: IntArray, times: FloatArray, values: FloatArray) -> SeriesRates:
    """`series_rates` over samples sorted by (series, time). Samples without a value are left out."""
    known = np.isfinite(values)
    series, times, values = series[known], times[known], values[known]
    first = np.ones(series.size, dtype=bool)
    first[1:] = series[1:] != series[:-1]
    starts = np.flatnonzero(first)
    step, dropped = reset_steps(times, values, first)
    ends = np.append(starts[1:], series.size)[: starts.size] - 1
    increase = np.add.reduceat(step, starts) if starts.size else np.zeros(0)
    span = times[ends] - times[starts]
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(span > 0, increase / np.where(span > 0, span, 1.0), np.nan)
    resets = np.add.reduceat(dropped.astype(np.int64), starts) if starts.size else np.zeros(0, np.int64)
    return SeriesRates(series[starts], times[starts], times[ends], increase, rate, ends - starts + 1, resets)


def counters_at(
    frame: pd.DataFrame,
    keys: Sequence[str],
    queries: pd.DataFrame,
    *,
    on_reset: ResetRule = "post_value",
    max_extrapolation_factor: float = 1.1,
    time_column: str = "timestamp_seconds",
    value_column: str = "value",
) -> FloatArray:
    """`counter_at` for many series at once: the reset-corrected counter of the series named by each
    row of `queries` (columns `keys` + `at_seconds`) at that row's instant, NaN where not covered.

    Same rules as `counter_at` (module docstring), extrapolating at most `max_extrapolation_factor`
    times the series' median sample interval; vectorised so one estimator pass over ten thousand
    pods stays a handful of array operations. All series are searched as one sorted float key
    (series number x span + time), which resolves timestamps to well under a millisecond for any
    realistic history; timestamps closer together than that are not told apart.
    """
    keys = list(keys)
    out = np.full(len(queries), np.nan)
    data = frame[[*keys, time_column, value_column]].dropna()
    if data.empty or queries.empty:
        return out
    data = data.sort_values([*keys, time_column], kind="stable")
    sid = data.groupby(keys, sort=False).ngroup().to_numpy(np.int64).astype(np.int64)
    first = np.ones(sid.size, dtype=bool)
    first[1:] = sid[1:] != sid[:-1]
    table = data.loc[first, keys].assign(_sid=sid[first])
    wanted = queries[keys].merge(table, on=keys, how="left")["_sid"]
    return sorted_counters_at(
        sid,
        data[time_column].to_numpy(np.float64),
        data[value_column].to_numpy(np.float64),
        wanted.fillna(-1).to_numpy(np.int64),
        queries["at_seconds"].to_numpy(np.float64),
        on_reset=on_reset,
        max_extrapolation_factor=max_extrapolation_factor,
    )


def _median_intervals(sid: IntArray, dt: FloatArray, series: IntArray) -> FloatArray:
    """Median sample interval (`dt`, NaN at each series' first sample) of each of `series` (NaN for
    one without an interval), as pandas' groupby median gives it: the mean of the middle two."""
    if series.size == 0:
        return np.zeros(0)
    wanted = np.isin(sid, series, kind="table")
    sid, dt = sid[wanted], dt[wanted]
    first = np.append(True, sid[1:] != sid[:-1])
    run = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    rank = np.arange(sid.size) - starts[run]
    # One row per series, its intervals sorted; the missing ones (inf) sort after them.
    table = np.full((starts.size, int(rank.max()) + 1), np.inf)
    table[run, rank] = np.where(np.isnan(dt), np.inf, dt)
    table.sort(axis=1)
    count = np.bincount(run, ~np.isnan(dt), minlength=starts.size).astype(np.int64)
    rows = np.arange(starts.size)
    middle = 0.5 * (table[rows, np.maximum(count - 1, 0) // 2] + table[rows, count // 2])
    median = np.where(count > 0, middle, np.nan)
    found: FloatArray = median[np.searchsorted(sid[starts], series)]
    return found


def sorted_counters_at(
    series: IntArray,
    times: FloatArray,
    values: FloatArray,
    query_series: IntArray,
    at_seconds: FloatArray,
    *,
    on_reset: ResetRule = "post_value",
    max_extrapolation_factor: float = 1.1,
) -> FloatArray:
    """`counters_at` over samples sorted by (series, time), ties in arrival order: the counter of series
    `query_series[i]` (-1: none) at `at_seconds[i]`. Samples without a value are left out, and of
    samples at one instant the last counts (a re-scrape)."""
    counters = prepare_counters(series, times, values, on_reset=on_reset)
    return read_counters(
        counters, query_series, at_seconds, max_extrapolation_factor=max_extrapolation_factor
    )


class Counters(NamedTuple):
    """Samples sorted by (series, time) made ready for `read_counters` (`prepare_counters`): a pass
    that reads one metric's counters several times prepares them once."""

    series: IntArray
    times: FloatArray
    values: FloatArray
    counter: FloatArray  # reset-corrected, 0 at each series' first sample
    intervals: FloatArray  # since the series' sample before (NaN at its first)
    origin: float  # the earliest time
    band: float  # each series' stretch of `keys`, wider than twice the time the samples span
    keys: FloatArray  # series x band + band / 2 + time - origin: sorted, one search finds any sample


def prepare_counters(
    series: IntArray, times: FloatArray, values: FloatArray, *, on_reset: ResetRule = "post_value"
) -> Counters:
    """`sorted_counters_at`'s samples, without those lacking a value and with the last of several
    at one instant, and their reset-corrected counters."""
    sid, t, v = series, times, values
    known = np.isfinite(v)
    if not known.all():  # copies only where there is something to leave out
        sid, t, v = sid[known], t[known], v[known]
    if sid.size:
        later = np.append((sid[1:] != sid[:-1]) | (t[1:] != t[:-1]), True)
        if not later.all():
            sid, t, v = sid[later], t[later], v[later]
    first = np.ones(sid.size, dtype=bool)
    first[1:] = sid[1:] != sid[:-1]
    step, _ = reset_steps(t, v, first, on_reset=on_reset)
    dt = np.where(first, np.nan, np.diff(t, prepend=t[:1]))
    start_of = np.flatnonzero(first)
    counter = np.cumsum(step)
    counter = counter - np.repeat(counter[start_of], np.diff(np.append(start_of, sid.size)))
    origin = float(t.min()) if t.size else 0.0
    band = 4.0 * (float(np.max(t - origin, initial=0.0)) + 1.0)
    return Counters(sid, t, v, counter, dt, origin, band, sid * band + band / 2 + (t - origin))


def read_counters(
    counters: Counters,
    query_series: IntArray,
    at_seconds: FloatArray,
    *,
    max_extrapolation_factor: float = 1.1,
) -> FloatArray:
    """The counter of series `query_series[i]` (-1: none) at `at_seconds[i]` (`sorted_counters_at`)."""
    out = np.full(query_series.shape, np.nan)
    sid, t, v, counter, dt, origin, band, keys = counters
    if sid.size == 0 or query_series.size == 0:
        return out
    qsid = np.where(query_series <= sid.max(), query_series, -1)
    at = np.asarray(at_seconds, dtype=np.float64)
    asked = np.isfinite(at)
    qsid = np.where(asked, qsid, -1)
    at = np.where(asked, at, origin)
    # An instant far outside every sample is searched as one just outside them (still inside its
    # series' band): it lands at the same place.
    offset = np.clip(at - origin, -0.375 * band, 0.375 * band)
    position = np.searchsorted(keys, qsid * band + band / 2 + offset, side="right")
    left = position - 1
    right = position
    n = sid.size
    has_left = (left >= 0) & (qsid >= 0) & (sid[np.clip(left, 0, n - 1)] == qsid)
    has_right = (right < n) & (qsid >= 0) & (sid[np.clip(right, 0, n - 1)] == qsid)
    lc = np.clip(left, 0, n - 1)
    rc = np.clip(right, 0, n - 1)

    inside = has_left & has_right
    span_lr = t[rc] - t[lc]
    out = np.where(
        inside, counter[lc] + (counter[rc] - counter[lc]) * (at - t[lc]) / np.where(inside, span_lr, 1.0), out
    )

    after = has_left & ~has_right
    exact_end = after & (at == t[lc])
    out = np.where(exact_end, counter[lc], out)
    before_last = np.clip(lc - 1, 0, n - 1)
    has_rate = after & (lc >= 1) & (sid[before_last] == qsid)
    tail_rate = (counter[lc] - counter[before_last]) / np.where(has_rate, t[lc] - t[before_last], 1.0)
    before = ~has_left & has_right
    after_first = np.clip(rc + 1, 0, n - 1)
    has_head = before & (rc + 1 < n) & (sid[after_first] == qsid)
    # The median interval only bounds extrapolation: it is worked out for the series that need it.
    limit = np.full(qsid.shape, np.nan)
    outside = (has_rate & (at != t[lc])) | has_head
    limit[outside] = max_extrapolation_factor * _median_intervals(sid, dt, qsid[outside])
    extend = has_rate & (at - t[lc] <= limit)
    out = np.where(extend, counter[lc] + tail_rate * (at - t[lc]), out)

    head_rate = (counter[after_first] - counter[rc]) / np.where(has_head, t[after_first] - t[rc], 1.0)
    unwind = has_head & (t[rc] - at <= limit)
    out = np.where(unwind, np.maximum(-v[rc], head_rate * (at - t[rc])), out)
    return out
