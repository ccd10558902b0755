"""One estimator pass over the whole fleet: what the adapter's pipeline calls every cycle.

Input is the samples a `estimators.series.SampleStore` holds (the pipeline keeps one up to date as
polls arrive: `estimate_history`), or a long sample frame (`estimate_fleet`: columns `metric`,
`value`, `timestamp_seconds` and one column per label key `node`, `gpu_uuid`, `namespace`, `pod`,
`rack`, `pdu`, NaN where a sample lacks it), which is put in a store first. Both run the same rules.
Output is frames (pods, nodes, racks, latest rack readings) whose columns are the served metrics.

Rules, in the order they are applied:

1. The window is [now - window_seconds, now]. Samples up to `now` are used, including older ones the
   pipeline keeps (it keeps two windows and a poll): a counter needs a sample from before the window
   to measure all of it.
2. Power over the window comes from an energy counter read at the window's edges with
   `estimators.rates.counters_at` (interpolated between scrapes; extrapolated by at most about one
   scrape interval) - method `energy_counter`; where the counter restarted within the last two windows
   the lost part is filled from the neighbouring rate and the method is `energy_counter+reset_fill`.
   Without two edges it is the counter's rate over the samples in the window; without a counter, the
   mean of the power gauge's samples in the window (`power_gauge`). A 1 s averaged gauge scraped every
   15 s sees a fifteenth of the time, which is why the counter wins.
3. A GPU's power goes to the pods `gpu_assignment_info` puts on it (`estimators.attribution`). A GPU
   shared by several pods is split by their generation-token rates (`token_share`), else by their
   `pod_gpu_utilization_ratio` (`utilization_share`), else equally (`equal_share`). Shares sum to
   the GPU's power, so pod sums never exceed what was measured. A pod with no assigned GPU may take
   its GPU power from Kepler (`pod_gpu_energy_joules_total`, method `kepler_gpu`).
4. A pod's `power_watts` is its GPU share plus its Kepler CPU/DRAM power when known, scaled down
   (`kepler_cpu_scaled`) where the node's measured power could not hold it.
5. Watts per token (joules per generated token, despite the name) is measured over the pod's *token
   window*: from the token counter's sample nearest to one window before its latest sample, to that
   latest sample (`token_window_start_seconds`, `token_window_end_seconds`). Tokens are then read,
   not interpolated - interpolating a token counter across a prefill burst is the largest error
   there is - and the GPU energy counters are read at those same instants, so energy and tokens
   cover one span. `gpu_energy_joules`, `energy_joules` and `generation_tokens` are over that span
   (CPU energy as its power times the span); `generation_tokens_per_second` is tokens over the span.
   A pod whose token counter has no such span (too few samples) falls back to rates over the window.
   Token figures from a counter last read more than half a window ago are not published (they still
   weigh the split of a shared GPU), so a server that stopped reporting stops refreshing its figures
   and the store lets them go stale.
6. Node power is measured (`node_energy_joules_total` or `node_power_watts`) when available, else the
   sum of its GPUs and its pods' CPU power, marked `estimated`: that sum misses fans, NICs and PSU loss.
7. Rack power is the sum of its PDUs when any PDU reports, else the sum of its nodes (`estimated`).
   `margin_watts = max(cap x margin_ratio, largest rise in the window + sensor error)`: the sensor
   error is 1% of a PDU reading and 5% of a summed estimate (NVML's per-board gain error).
   `headroom_watts = max(0, cap - margin - power)`, `overdraw_watts = max(0, power - (cap - margin))`:
   both are measured against the usable budget (cap minus margin), so at most one is non-zero
   (`estimators.headroom`).
8. A pod whose figures recording rules already computed in Prometheus (`pod_*` averages from the
   `prometheus_api` collector) takes those instead of rules 3-5 (`estimators.recorded`); its GPU share,
   where not recorded as such, is rule 3's split of the recorded power of the GPUs it holds.
9. A GPU with a power gauge but no energy counter, assigned to one pod, takes its token-window
   energy from a power model learned online from past (gauge reading, token rates) pairs blended
   with the readings (`estimators.gauge_model`; method `power_model`) once that model has measured
   its own error; until then, and on a shared GPU, it stays on the gauge. Either way the pod's
   `confidence` (low/medium/high) says how far to trust it; pods on energy counters carry none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from estimators.attribution import fit_cpu_to_node, split_gpu_power
from estimators.gauge_model import GaugeModels, estimate_windows, gauge_pairs, token_intervals
from estimators.headroom import (
    PDU_SENSOR_ERROR_RATIO,
    SUMMED_ESTIMATE_ERROR_RATIO,
    headroom_and_overdraw,
    margin_watts,
    replicas_within_budget,
)
from estimators.rates import ResetRule, gauge_integral, sorted_counters_at, sorted_series_rates
from estimators.recorded import RECORDED_METRICS, recorded_pods
from estimators.series import Block, FloatArray, HistoryView, IntArray, SampleStore

POD_COLUMNS = [
    "namespace",
    "pod",
    "node",
    "gpu_power_watts",
    "power_watts",
    "gpu_energy_joules",
    "energy_joules",
    "generation_tokens",
    "prompt_tokens",
    "generation_tokens_per_second",
    "watts_per_token",
    "window_start_seconds",
    "window_end_seconds",
    "method",
    "confidence",
    "token_window_start_seconds",
    "token_window_end_seconds",
]
NODE_COLUMNS = ["node", "node_power_watts", "gpu_power_watts", "window_end_seconds", "estimated"]
RACK_COLUMNS = [
    "rack",
    "rack_power_watts",
    "estimated",
    "cap_watts",
    "margin_watts",
    "headroom_watts",
    "overdraw_watts",
    "window_end_seconds",
]
GROUP_COLUMNS = [
    "group",
    "power_watts",
    "gpu_power_watts",
    "generation_tokens_per_second",
    "watts_per_token",
    "window_start_seconds",
    "window_end_seconds",
    "pods",
]


_GPU = ["node", "gpu_uuid"]
_POD = ["namespace", "pod"]
_METER = ["rack", "pdu"]
# A rack with a single meter may not label it: the rack alone then names the series.
_UNLABELLED_METER = {"pdu": ""}


LATEST_RACK_COLUMNS = ["rack", "rack_power_latest_watts", "oldest_reading_seconds"]


@dataclass(frozen=True)
class FleetEstimate:
    """Everything one pass gives the store: frames of `POD_COLUMNS`, `NODE_COLUMNS`, `RACK_COLUMNS`
    and `LATEST_RACK_COLUMNS`."""

    pods: pd.DataFrame
    nodes: pd.DataFrame
    racks: pd.DataFrame
    latest_racks: pd.DataFrame


@dataclass(frozen=True)
class _Window:
    history: HistoryView  # every sample up to `end`
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def rows(self, metric: str, keys: list[str], fill: Mapping[str, str] | None = None) -> Block:
        """`metric`'s samples up to `end`, grouped by `keys` (series lacking one left out)."""
        return self.history.block(metric, keys, fill)

    def current(self, metric: str, keys: list[str], fill: Mapping[str, str] | None = None) -> Block:
        """`metric`'s samples inside [start, end], grouped by `keys`."""
        return self.rows(metric, keys, fill).since(self.start)


def _labelled(block: Block, groups: IntArray) -> pd.DataFrame:
    """The key columns of `groups` (one row each, in order)."""
    return block.labels.iloc[groups].reset_index(drop=True)


def _rates(
    window: _Window, rows: Block, name: str, on_reset: ResetRule = "post_value"
) -> tuple[pd.DataFrame, IntArray]:
    """`_counter_rate` of `rows`, and the group of each row of it."""
    keys = list(rows.labels.columns)
    groups, newest = rows.newest()
    live = newest >= window.start
    groups, end = groups[live], newest[live]
    if groups.size == 0:
        empty = pd.DataFrame(columns=[*keys, name, "window_start_seconds", "window_end_seconds"])
        return empty, np.zeros(0, np.int64)
    asked = np.concatenate((groups, groups))
    at = sorted_counters_at(
        rows.group,
        rows.times,
        rows.values,
        asked,
        np.concatenate((end - window.seconds, end)),
        on_reset=on_reset,
    ).reshape(2, groups.size)
    rate = (at[1] - at[0]) / window.seconds
    covered = np.isfinite(rate)
    from_edges = _labelled(rows, groups[covered]).assign(
        **{
            name: rate[covered],
            "window_start_seconds": end[covered] - window.seconds,
            "window_end_seconds": end[covered],
        }
    )
    if covered.all():
        return from_edges.astype({name: np.float64}), groups
    current = rows.since(window.start)
    current = current.where(np.isin(current.group, groups[~covered]))
    fallback = sorted_series_rates(current.group, current.times, current.values)
    known = np.isfinite(fallback.rate_per_second)
    fallback_groups = fallback.series[known]
    from_samples = _labelled(rows, fallback_groups).assign(
        **{
            name: fallback.rate_per_second[known],
            "window_start_seconds": fallback.first_seconds[known],
            "window_end_seconds": fallback.last_seconds[known],
        }
    )
    out = pd.concat([from_edges, from_samples], ignore_index=True).astype({name: np.float64})
    return out, np.concatenate((groups[covered], fallback_groups))


def _counter_rate(
    window: _Window, metric: str, keys: list[str], name: str, on_reset: ResetRule = "post_value"
) -> pd.DataFrame:
    """Rate per series over the window: columns `keys` + `name` + `window_end_seconds`; series
    without one are left out.

    Each series is read over the window's length ending at its own newest sample (rule 2), so the
    rate covers exactly the span it is stamped with; where the start is not covered, the rate over
    the window's own samples, ending at the newest of them."""
    rates, _ = _rates(window, window.rows(metric, keys), name, on_reset)
    return rates


def _gauge_mean(rows: Block, name: str) -> pd.DataFrame:
    """Mean of each gauge series' samples in `rows` (the window's), stamped with its newest sample."""
    groups, starts = rows.present()
    ends = rows.ends(starts)
    known = np.isfinite(rows.values)
    if groups.size:
        total = np.add.reduceat(np.where(known, rows.values, 0.0), starts)
        counted = np.add.reduceat(known.astype(np.int64), starts)
    else:
        total, counted = np.zeros(0), np.zeros(0, np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counted > 0, total / np.maximum(counted, 1), np.nan)
    return _labelled(rows, groups).assign(
        **{
            name: mean.astype(np.float64),
            "window_start_seconds": rows.times[starts],
            "window_end_seconds": rows.times[ends],
        }
    )


def _power(
    window: _Window,
    energy_metric: str,
    gauge_metric: str,
    keys: list[str],
    fill: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Columns `keys`, `power_watts`, `method`, `window_end_seconds`: energy-counter rate where it
    exists, else gauge mean."""
    counters = window.rows(energy_metric, keys, fill)
    from_counter, groups = _rates(window, counters, "power_watts", "neighbour_rate")
    # A restart near the window means part of it was filled from the neighbouring rate: say so.
    recent = counters.since(window.start - window.seconds)
    restarts = sorted_series_rates(recent.group, recent.times, recent.values)
    restarted = np.isin(groups, restarts.series[restarts.resets > 0])
    from_counter = from_counter.assign(
        method=np.where(restarted, "energy_counter+reset_fill", "energy_counter").astype(object)
    )
    from_gauge = _gauge_mean(window.current(gauge_metric, keys, fill), "power_watts").assign(
        method="power_gauge"
    )
    covered = from_gauge[keys].merge(from_counter[keys], on=keys, how="left", indicator=True)["_merge"]
    from_gauge = from_gauge.loc[(covered == "left_only").to_numpy()]
    return pd.concat([from_counter, from_gauge], ignore_index=True)


def _largest_rise(rows: Block) -> pd.DataFrame:
    """Largest rise of each gauge series over `rows` (a later value minus an earlier minimum)."""
    values = pd.Series(rows.values)
    rise = values - values.groupby(rows.group).cummin()
    largest = rise.groupby(rows.group).max()
    groups = largest.index.to_numpy(np.int64)
    return _labelled(rows, groups).assign(rise_watts=largest.to_numpy(np.float64))


def _first_rows(codes: IntArray) -> IntArray:
    """Where each code 0..n-1 first occurs in `codes` (numbered in order of first appearance, as
    `ngroup(sort=False)` numbers them), in linear time: no sort, unlike `np.unique`."""
    first = np.empty(int(codes.max()) + 1 if codes.size else 0, np.int64)
    # Written last to first, so the earliest row of each code is the one that stays.
    first[codes[::-1]] = np.arange(codes.size - 1, -1, -1)
    return first


def _outer_on(keys: list[str], frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Left-join every frame onto the union of their keys (in order of first appearance); empty frames
    still contribute columns. The keys are factorised once, so a frame with one row per key is
    placed by position; one with repeated keys is merged (each of its rows becomes a row)."""
    stacked = pd.concat([f[keys] for f in frames], ignore_index=True).astype(object)
    groups = stacked.groupby(keys, sort=False, dropna=False).ngroup()
    codes = groups.to_numpy().astype(np.int64, copy=False)
    first = _first_rows(codes)
    out = stacked.iloc[first].reset_index(drop=True)
    offset = 0
    for f in frames:
        own = codes[offset : offset + len(f)]
        offset += len(f)
        if len(out) > first.size or (own.size and np.bincount(own).max() > 1):
            out = out.merge(f.astype({k: object for k in keys}), on=keys, how="left")
            continue
        placed = f.drop(columns=keys).set_axis(own).reindex(np.arange(first.size))
        out = pd.concat([out, placed.set_axis(out.index)], axis=1)
    return out


def _measured_node_power(window: _Window) -> pd.DataFrame:
    """Per node with a meter: power_watts and window_end_seconds (the oldest of its meters' ends)."""
    node_meters = _power(window, "node_energy_joules_total", "node_power_watts", ["node"])
    return _sum_by_with_end(node_meters, "node", "power_watts")


def _fresh_after(window: _Window) -> float:
    """A token counter last read before this is stale: its figures would describe the past."""
    return window.end - 0.5 * window.seconds


def _token_windows(window: _Window) -> pd.DataFrame:
    """Per pod: the token window of rule 5 and the generated tokens in it.

    Columns namespace, pod, token_window_start_seconds, token_window_end_seconds, generation_tokens.
    """
    columns = [*_POD, "token_window_start_seconds", "token_window_end_seconds", "generation_tokens"]
    rows = window.rows("generation_tokens_total", _POD)
    if rows.empty:
        return pd.DataFrame(columns=columns)
    groups, newest = rows.newest()
    latest_of = np.full(len(rows.labels), np.nan)
    latest_of[groups] = newest
    latest = latest_of[rows.group]
    early = np.flatnonzero((latest >= window.start) & (rows.times <= latest - 0.5 * window.seconds))
    distance = np.abs(rows.times[early] - (latest[early] - window.seconds))
    # Nearest to one window back; on a tie (a dropped scrape) the later sample, a longer span.
    early = early[np.lexsort((-rows.times[early], distance, rows.group[early]))]
    chosen = early[np.append(True, rows.group[early][1:] != rows.group[early][:-1])] if early.size else early
    if chosen.size == 0:
        return pd.DataFrame(columns=columns)
    spans = _labelled(rows, rows.group[chosen]).assign(
        token_window_start_seconds=rows.times[chosen], token_window_end_seconds=latest[chosen]
    )
    at = sorted_counters_at(
        rows.group,
        rows.times,
        rows.values,
        np.concatenate((rows.group[chosen], rows.group[chosen])),
        np.concatenate((rows.times[chosen], latest[chosen])),
    ).reshape(2, chosen.size)
    spans["generation_tokens"] = at[1] - at[0]
    return spans[columns]


def _series_increase(
    window: _Window, metric: str, keys: list[str], spans: pd.DataFrame, on_reset: ResetRule
) -> FloatArray:
    """Increase of each row's series (`keys` columns of `spans`) over its own [start, end] span."""
    rows = window.rows(metric, keys)
    if rows.empty or spans.empty:
        return np.full(len(spans), np.nan)
    asked = rows.group_of(spans, keys)
    at = sorted_counters_at(
        rows.group,
        rows.times,
        rows.values,
        np.concatenate((asked, asked)),
        np.concatenate(
            (
                spans["token_window_start_seconds"].to_numpy(np.float64),
                spans["token_window_end_seconds"].to_numpy(np.float64),
            )
        ),
        on_reset=on_reset,
    ).reshape(2, len(spans))
    increase: FloatArray = at[1] - at[0]
    return increase


def _gauge_span_energy(window: _Window, metric: str, keys: list[str], spans: pd.DataFrame) -> FloatArray:
    """Energy of each row's gauge series (`keys` columns of `spans`) over its own token span: the mean
    of the piecewise-linear gauge over the part of the span its samples cover, times the span.

    This is where a pod's window energy from power gauges alone is decided: the seam for a model
    that knows more than one or two readings (estimators.gauge_model)."""
    out = np.full(len(spans), np.nan)
    rows = window.rows(metric, keys)
    if rows.empty or spans.empty:
        return out
    start = spans["token_window_start_seconds"].to_numpy(np.float64)
    end = spans["token_window_end_seconds"].to_numpy(np.float64)
    asked = np.where(np.isfinite(start) & np.isfinite(end), rows.group_of(spans, keys), -1)
    bounds = np.searchsorted(rows.group, np.arange(len(rows.labels) + 1))
    for group in np.unique(asked[asked >= 0]):
        at = np.flatnonzero(asked == group)
        lo, hi = bounds[group], bounds[group + 1]
        if lo == hi:
            continue
        integral, covered = gauge_integral(rows.times[lo:hi], rows.values[lo:hi], start[at], end[at])
        with np.errstate(divide="ignore", invalid="ignore"):
            out[at] = np.where(covered > 0, integral / covered, np.nan) * (end[at] - start[at])
    return out


CONFIDENCES = ["low", "medium", "high"]


def _series_of(rows: Block) -> tuple[dict[tuple[str, ...], int], IntArray]:
    """(key labels -> group, where each group's samples start in `rows`; one past the last at the end)."""
    groups = {tuple(str(v) for v in key): g for g, key in enumerate(rows.labels.itertuples(index=False))}
    return groups, np.searchsorted(rows.group, np.arange(len(rows.labels) + 1))


def _first_at_each_time(times: FloatArray, values: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Of samples at one instant (time-sorted), the first."""
    first = np.append(True, times[1:] != times[:-1])
    return times[first], values[first]


def _token_series(
    window: _Window, pods: set[tuple[str, str]]
) -> dict[tuple[str, str], tuple[FloatArray, FloatArray, FloatArray | None]]:
    """Per pod of `pods`: its token scrapes' times, generation totals and prompt totals (None where the
    prompt counter does not come with every scrape)."""
    generated = window.rows("generation_tokens_total", _POD)
    prompted = window.rows("prompt_tokens_total", _POD)
    generated_of, generated_at = _series_of(generated)
    prompted_of, prompted_at = _series_of(prompted)
    out: dict[tuple[str, str], tuple[FloatArray, FloatArray, FloatArray | None]] = {}
    for pod in pods:
        group = generated_of.get(pod)
        if group is None or generated_at[group] == generated_at[group + 1]:
            continue
        span = slice(generated_at[group], generated_at[group + 1])
        # A scrape without a value says nothing about the tokens: it must not become an interval.
        read = np.isfinite(generated.values[span])
        times, values = _first_at_each_time(generated.times[span][read], generated.values[span][read])
        prompt = np.full(times.size, np.nan)
        found = prompted_of.get(pod)
        if found is not None:
            span = slice(prompted_at[found], prompted_at[found + 1])
            prompt_times, prompt_values = _first_at_each_time(prompted.times[span], prompted.values[span])
            position = np.clip(np.searchsorted(prompt_times, times), 0, max(prompt_times.size - 1, 0))
            if prompt_times.size:
                matched = prompt_times[position] == times
                prompt = np.where(matched, prompt_values[position], np.nan)
        out[pod] = (times, values, prompt if np.isfinite(prompt).all() else None)
    return out


def _with_gauge_models(
    window: _Window, shares: pd.DataFrame, span_energy: FloatArray, models: GaugeModels | None
) -> pd.DataFrame:
    """Shares with `span_gpu_joules` and a `confidence` for gauge-only GPUs (`estimators.gauge_model`).

    A gauge-only GPU assigned to exactly one pod (method exactly `power_gauge`) takes the learned
    model's window energy where the model has learned enough to take part (method `power_model`,
    confidence from its relative error); otherwise, and on a shared GPU, the gauge stays and says it
    is a guess (confidence `low`). Each GPU's model then learns this pass's new pairs: estimate first,
    so a window is never judged by a model that has seen its own readings."""
    energy = span_energy.copy()
    method = shares["method"].astype(str).to_numpy(dtype=object)
    on_gauge = shares["method"].astype(str).str.startswith("power_gauge").to_numpy(bool)
    confidence = np.array(["low" if g else None for g in on_gauge], dtype=object)
    start = shares["token_window_start_seconds"].to_numpy(np.float64)
    end = shares["token_window_end_seconds"].to_numpy(np.float64)
    eligible = np.flatnonzero((method == "power_gauge") & np.isfinite(start) & (end > start))
    if models is not None and eligible.size:
        chosen = shares.iloc[eligible]
        pods = {(str(ns), str(pod)) for ns, pod in zip(chosen["namespace"], chosen["pod"], strict=True)}
        tokens = _token_series(window, pods)
        gauges = window.rows("gpu_power_watts", _GPU)
        gauge_of, gauge_at = _series_of(gauges)
        for i in eligible:
            row = shares.iloc[i]
            gpu, pod = (str(row["node"]), str(row["gpu_uuid"])), (str(row["namespace"]), str(row["pod"]))
            found = gauge_of.get(gpu)
            if pod not in tokens or found is None or gauge_at[found] == gauge_at[found + 1]:
                continue
            span = slice(gauge_at[found], gauge_at[found + 1])
            gauge_t, gauge_w = gauges.times[span], gauges.values[span]
            intervals = token_intervals(*tokens[pod])
            model = models.model(gpu)
            served = estimate_windows(model, intervals, gauge_t, gauge_w, [start[i], end[i]]).iloc[0]
            if served["method"] == "power_model" and np.isfinite(served["energy_joules"]):
                energy[i] = served["energy_joules"]
                method[i] = "power_model"
                confidence[i] = served["confidence"]
            models.learn(gpu, gauge_pairs(intervals, gauge_t, gauge_w))
    return shares.assign(method=method, confidence=confidence, span_gpu_joules=energy)


def _worst_confidence(shares: pd.DataFrame) -> pd.DataFrame:
    """Per pod: the lowest confidence of its GPU shares that carry one."""
    labelled = shares.dropna(subset=["confidence"])
    rank = labelled["confidence"].map(CONFIDENCES.index)
    worst = rank.groupby([labelled["namespace"], labelled["pod"]]).min()
    return worst.map(lambda r: CONFIDENCES[int(r)]).rename("confidence").reset_index()


def _without_end(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["window_start_seconds", "window_end_seconds"], errors="ignore")


def _pod_frame(
    window: _Window, gpus: pd.DataFrame, node_power: pd.DataFrame, gauge_models: GaugeModels | None
) -> pd.DataFrame:
    token_spans = _token_windows(window)
    rated = _without_end(_counter_rate(window, "generation_tokens_total", _POD, "window_tokens_per_second"))
    token_rows = window.rows("generation_tokens_total", _POD)
    read, last_seconds = token_rows.newest()
    last_read = _labelled(token_rows, read).assign(last_token_read_seconds=last_seconds)
    prompt_rate = _without_end(_counter_rate(window, "prompt_tokens_total", _POD, "prompt_tokens_per_second"))
    cpu_power = _without_end(
        _counter_rate(window, "pod_cpu_energy_joules_total", _POD, "cpu_power_watts", "neighbour_rate")
    )
    kepler_gpu = _counter_rate(
        window, "pod_gpu_energy_joules_total", _POD, "kepler_gpu_watts", "neighbour_rate"
    ).rename(
        columns={"window_start_seconds": "kepler_start_seconds", "window_end_seconds": "kepler_end_seconds"}
    )

    span_seconds = token_spans["token_window_end_seconds"] - token_spans["token_window_start_seconds"]
    token_spans = token_spans.assign(span_tokens_per_second=token_spans["generation_tokens"] / span_seconds)
    load = _outer_on(_POD, [rated, token_spans[[*_POD, "span_tokens_per_second"]]])
    load["generation_tokens_per_second"] = load["span_tokens_per_second"].where(
        load["span_tokens_per_second"].notna(), load["window_tokens_per_second"]
    )
    utilization = _without_end(
        _gauge_mean(window.current("pod_gpu_utilization_ratio", _POD), "utilization_ratio")
    )
    assignments = _assignments(window)
    shares = split_gpu_power(
        gpus, assignments, _outer_on(_POD, [load[[*_POD, "generation_tokens_per_second"]], utilization])
    )
    # Energy of each GPU share over the pod's token window (rule 5), from the energy counter read at
    # the span's edges, else from the power gauge over that same span.
    shares = shares.merge(token_spans, on=_POD, how="left")
    shares = shares.merge(gpus[[*_GPU, "window_start_seconds", "window_end_seconds"]], on=_GPU, how="left")
    span_energy = _series_increase(window, "gpu_energy_joules_total", _GPU, shares, "neighbour_rate")
    missing = ~np.isfinite(span_energy)
    if missing.any():
        span_energy[missing] = _gauge_span_energy(window, "gpu_power_watts", _GPU, shares.loc[missing])
    shares = _with_gauge_models(window, shares, span_energy, gauge_models)
    shares["span_gpu_joules"] = shares["share_ratio"].to_numpy(np.float64) * shares["span_gpu_joules"]
    by_pod = shares.groupby(_POD)
    gpu_per_pod = pd.DataFrame(
        {
            "gpu_start_seconds": by_pod["window_start_seconds"].max(),
            "gpu_end_seconds": by_pod["window_end_seconds"].min(),
            "gpu_power_watts": by_pod["gpu_share_watts"].sum(),
            "span_gpu_joules": by_pod["span_gpu_joules"].sum(min_count=1),
            "assigned_node": by_pod["node"].first(),
        }
    ).reset_index()
    # A pod's GPUs usually share one method; join the distinct ones in one vectorised pass.
    methods = shares[[*_POD, "method"]].drop_duplicates().sort_values([*_POD, "method"])
    several = methods.duplicated(_POD, keep=False)
    joined = pd.concat(
        [
            methods.loc[~several],
            methods.loc[several].groupby(_POD)["method"].agg(",".join).reset_index(),
        ],
        ignore_index=True,
    ).rename(columns={"method": "gpu_method"})
    gpu_per_pod = gpu_per_pod.merge(joined, on=_POD, how="left").merge(
        _worst_confidence(shares), on=_POD, how="left"
    )

    labelled = window.history.newest_labels([*_POD, "node"], window.start)
    pod_nodes = labelled.sort_values("timestamp_seconds", kind="stable").drop_duplicates(_POD, keep="last")
    pod_nodes = pod_nodes[[*_POD, "node"]].rename(columns={"node": "label_node"})
    pods = _outer_on(
        _POD,
        [
            gpu_per_pod,
            load[[*_POD, "generation_tokens_per_second"]],
            token_spans[
                [*_POD, "token_window_start_seconds", "token_window_end_seconds", "generation_tokens"]
            ],
            prompt_rate,
            cpu_power,
            kepler_gpu,
            pod_nodes,
        ],
    )
    pods["node"] = pods["assigned_node"].where(pods["assigned_node"].notna(), pods["label_node"])

    numeric = [
        "gpu_power_watts",
        "span_gpu_joules",
        "generation_tokens_per_second",
        "prompt_tokens_per_second",
    ]
    numeric += ["cpu_power_watts", "kepler_gpu_watts", "generation_tokens"]
    numeric += [
        "token_window_start_seconds",
        "token_window_end_seconds",
        "gpu_end_seconds",
        "kepler_end_seconds",
    ]
    pods[numeric] = pods[numeric].astype(np.float64)
    use_kepler_gpu = pods["gpu_power_watts"].isna() & pods["kepler_gpu_watts"].notna()
    pods.loc[use_kepler_gpu, "gpu_power_watts"] = pods.loc[use_kepler_gpu, "kepler_gpu_watts"]
    pods.loc[use_kepler_gpu, "gpu_method"] = "kepler_gpu"
    pods["confidence"] = pods["confidence"].where(~use_kepler_gpu & pods["confidence"].notna(), None)
    pods = fit_cpu_to_node(pods, node_power["power_watts"])
    has_gpu = pods["gpu_power_watts"].notna()
    has_cpu = pods["cpu_power_watts"].notna()
    pods["power_watts"] = pods["gpu_power_watts"].add(pods["cpu_power_watts"], fill_value=0.0)
    cpu_label = pd.Series(
        np.where(pods["cpu_scaled"], "kepler_cpu_scaled", "kepler_cpu"), index=pods.index, dtype=str
    )
    method = pods["gpu_method"].astype(str).where(has_gpu, "")
    method = method.where(~(has_gpu & has_cpu), method + "+" + cpu_label)
    method = method.where(~(~has_gpu & has_cpu), cpu_label)
    pods["method"] = method.where(has_gpu | has_cpu, "none")

    # Energies and tokens over the token window where there is one, else rate x window (rule 5).
    span = pods["token_window_end_seconds"] - pods["token_window_start_seconds"]
    has_span = span.notna() & (span > 0)
    seconds = span.where(has_span, window.seconds)
    span_gpu = pods["span_gpu_joules"].where(
        pods["span_gpu_joules"].notna() & has_span & ~use_kepler_gpu, pods["gpu_power_watts"] * seconds
    )
    pods["gpu_energy_joules"] = span_gpu
    pods["energy_joules"] = span_gpu.add(pods["cpu_power_watts"] * seconds, fill_value=0.0).where(
        has_gpu | has_cpu
    )
    pods["generation_tokens"] = pods["generation_tokens"].where(
        has_span, pods["generation_tokens_per_second"] * window.seconds
    )
    pods["prompt_tokens"] = pods["prompt_tokens_per_second"] * seconds
    tokens = pods["generation_tokens"].where(pods["generation_tokens"] > 0)
    pods["watts_per_token"] = pods["energy_joules"] / tokens
    # Token figures from a counter last read over half a window ago described the past: they shared
    # out the GPU above, but are not published as now.
    last = pods[["namespace", "pod"]].merge(last_read, on=_POD, how="left")["last_token_read_seconds"]
    stale = ~(last.to_numpy(np.float64) >= _fresh_after(window))
    token_figures = ["generation_tokens", "prompt_tokens", "generation_tokens_per_second", "watts_per_token"]
    pods.loc[stale, token_figures] = np.nan
    # Power covers the span its GPUs' readings cover (the part common to all of them), not one
    # ending at `now`: usually the window's length ending at the newest reading.
    gpu_known = pods["gpu_end_seconds"].notna()
    end = pods["gpu_end_seconds"].where(gpu_known, pods["kepler_end_seconds"])
    start = pods["gpu_start_seconds"].where(gpu_known, pods["kepler_start_seconds"])
    pods["window_end_seconds"] = end.where(end.notna(), window.end).astype(np.float64)
    pods["window_start_seconds"] = start.where(start.notna(), window.start).astype(np.float64)
    return pods.sort_values(_POD, ignore_index=True)[POD_COLUMNS]


def _with_recorded(pods: pd.DataFrame, window: _Window) -> pd.DataFrame:
    """Pods whose figures recording rules computed take those (`estimators.recorded`) instead."""
    recorded = recorded_pods(window.history.frame(list(RECORDED_METRICS), window.start), window.seconds)
    if recorded.empty:
        return pods
    recorded = recorded.reindex(columns=POD_COLUMNS)
    others = pods.merge(recorded[_POD], on=_POD, how="left", indicator=True)["_merge"] == "left_only"
    if not others.any():
        return recorded.sort_values(_POD, ignore_index=True)
    both = pd.concat([pods.loc[others.to_numpy()], recorded], ignore_index=True)
    return both.sort_values(_POD, ignore_index=True)


def _sum_by(frame: pd.DataFrame, key: str, column: str) -> pd.Series:
    """Sum of `column` per `key` as an object-indexed float Series (empty-safe)."""
    sums = frame.groupby(key)[column].sum(min_count=1)
    return pd.Series(sums.to_numpy(dtype=np.float64), index=sums.index.astype(object), dtype=np.float64)


def _sum_by_with_end(frame: pd.DataFrame, key: str, column: str) -> pd.DataFrame:
    """Per `key`: the sum of `column` and the oldest `window_end_seconds` of the rows summed (a sum
    is only as recent as its oldest part). Indexed by `key` (object), columns `column`, window_end_seconds."""
    # A frame concatenated from an empty part holds objects: the minimum of floats is exact and
    # vectorised, where one of objects runs in Python.
    frame = frame.astype({"window_end_seconds": np.float64})
    grouped = frame.groupby(key)  # the keys are factorised once, for both reductions
    sums = grouped[column].sum(min_count=1)
    ends = grouped["window_end_seconds"].min()
    return pd.DataFrame(
        {column: sums.to_numpy(np.float64), "window_end_seconds": ends.to_numpy(np.float64)},
        index=sums.index.astype(object),
    )


def _node_frame(
    window: _Window,
    gpus: pd.DataFrame,
    measured: pd.DataFrame,
    pods: pd.DataFrame,
    node_racks: Mapping[str, str],
) -> pd.DataFrame:
    gpu_sum = _sum_by_with_end(gpus, "node", "power_watts")
    with_node = pods.loc[pods["node"].notna() & pods["power_watts"].notna()]
    cpu = with_node.assign(cpu_watts=with_node["power_watts"] - with_node["gpu_power_watts"].fillna(0.0))
    cpu_by_node = _sum_by(cpu, "node", "cpu_watts")

    names = sorted(set(window.history.newest_labels(["node"], window.start)["node"]) | set(node_racks))
    index = pd.Index(names, name="node", dtype=object)
    nodes = pd.DataFrame(index=index)
    gpu = gpu_sum.reindex(index)
    nodes["gpu_power_watts"] = gpu["power_watts"]
    meter = measured.reindex(index)
    nodes["estimated"] = meter["power_watts"].isna()
    summed = nodes["gpu_power_watts"].add(cpu_by_node.reindex(index), fill_value=0.0)
    nodes["node_power_watts"] = meter["power_watts"].where(~nodes["estimated"], summed)
    end = meter["window_end_seconds"].where(~nodes["estimated"], gpu["window_end_seconds"])
    nodes["window_end_seconds"] = end.where(end.notna(), window.end).astype(np.float64)
    return nodes.reset_index()[NODE_COLUMNS]


def _rack_frame(
    window: _Window, nodes: pd.DataFrame, node_racks: Mapping[str, str], racks: pd.DataFrame
) -> pd.DataFrame:
    pdus = _power(window, "pdu_energy_joules_total", "pdu_power_watts", _METER, _UNLABELLED_METER)
    pdu_sum = _sum_by_with_end(pdus, "rack", "power_watts")
    rise = _largest_rise(window.current("pdu_power_watts", _METER, _UNLABELLED_METER))
    rise_sum = _sum_by(rise, "rack", "rise_watts")
    membership = pd.DataFrame({"node": list(node_racks), "rack": list(node_racks.values())}, dtype=object)
    node_sum = _sum_by_with_end(
        membership.merge(nodes[["node", "node_power_watts", "window_end_seconds"]], on="node"),
        "rack",
        "node_power_watts",
    )

    config = racks.astype({"rack": object}).drop_duplicates("rack", keep="last").set_index("rack")
    names = sorted(set(config.index) | set(pdu_sum.index) | set(membership["rack"]))
    index = pd.Index(names, name="rack", dtype=object)
    out = pd.DataFrame(index=index)
    measured = pdu_sum.reindex(index)
    summed = node_sum.reindex(index)
    out["estimated"] = measured["power_watts"].isna()
    out["rack_power_watts"] = measured["power_watts"].where(~out["estimated"], summed["node_power_watts"])
    end = measured["window_end_seconds"].where(~out["estimated"], summed["window_end_seconds"])
    out["cap_watts"] = config["cap_watts"].reindex(index).astype(np.float64)
    margin_ratio = config["margin_ratio"].reindex(index).astype(np.float64).fillna(0.0)
    error_ratio = np.where(out["estimated"], SUMMED_ESTIMATE_ERROR_RATIO, PDU_SENSOR_ERROR_RATIO)
    out["margin_watts"] = margin_watts(
        out["cap_watts"], margin_ratio, rise_sum.reindex(index), out["rack_power_watts"], error_ratio
    )
    headroom, overdraw = headroom_and_overdraw(out["cap_watts"], out["margin_watts"], out["rack_power_watts"])
    out["headroom_watts"] = headroom
    out["overdraw_watts"] = overdraw
    out["window_end_seconds"] = end.where(end.notna(), window.end).astype(np.float64)
    return out.reset_index()[RACK_COLUMNS]


def estimate_fleet(
    samples: pd.DataFrame,
    *,
    node_racks: Mapping[str, str],
    racks: pd.DataFrame,
    window_seconds: float,
    now_seconds: float,
    gauge_models: GaugeModels | None = None,
) -> FleetEstimate:
    """Pod, node and rack power over the window ending at `now_seconds` (rules in the module docstring),
    from a long sample frame: `estimate_history` over a store holding it.

    `racks` has columns `rack`, `cap_watts`, `margin_ratio`; `node_racks` maps node name -> rack.
    `gauge_models` is the gauge-only GPUs' learned power models, kept by the caller between passes
    (rule 9); each pass updates them. Without it, gauge-only GPUs stay on the gauge (confidence low).
    """
    frame = samples.astype({"value": np.float64, "timestamp_seconds": np.float64})
    return estimate_history(
        SampleStore.from_frame(frame).view(now_seconds),
        node_racks=node_racks,
        racks=racks,
        window_seconds=window_seconds,
        now_seconds=now_seconds,
        gauge_models=gauge_models,
    )


def estimate_history(
    history: HistoryView,
    *,
    node_racks: Mapping[str, str],
    racks: pd.DataFrame,
    window_seconds: float,
    now_seconds: float,
    gauge_models: GaugeModels | None = None,
) -> FleetEstimate:
    """`estimate_fleet` over the samples a `SampleStore` holds up to `now_seconds` (its `view`): what the
    pipeline runs each pass, its store kept up to date as batches arrive."""
    if not window_seconds > 0:
        raise ValueError(f"window_seconds must be > 0, got {window_seconds}")
    window = _Window(history, now_seconds - window_seconds, float(now_seconds))
    # Each GPU's and node's power once per pass: the pod and node frames both start from them.
    gpus = _power(window, "gpu_energy_joules_total", "gpu_power_watts", _GPU)
    measured = _measured_node_power(window)
    pods = _with_recorded(_pod_frame(window, gpus, measured, gauge_models), window)
    if gauge_models is not None:
        gauges = window.rows("gpu_power_watts", _GPU)
        seen = _labelled(gauges, gauges.present()[0])
        gauge_models.retain({(str(n), str(u)) for n, u in seen.itertuples(index=False)})
    nodes = _node_frame(window, gpus, measured, pods, node_racks)
    rack_frame = _rack_frame(window, nodes, node_racks, racks)
    return FleetEstimate(pods=pods, nodes=nodes, racks=rack_frame, latest_racks=_latest_rack_power(history))


def _assignments(window: _Window) -> pd.DataFrame:
    """GPU-pod pairs whose newest `gpu_assignment_info` value in the window is positive."""
    rows = window.current("gpu_assignment_info", [*_GPU, *_POD])
    return _labelled(rows, _last_known(rows)).loc[lambda f: _last_values(rows) > 0]


def _last_known(rows: Block) -> IntArray:
    """Groups with a value in `rows`."""
    known = np.isfinite(rows.values)
    return np.unique(rows.group[known])


def _last_values(rows: Block) -> FloatArray:
    """Per group of `_last_known`: its newest value (samples without one skipped)."""
    known = np.flatnonzero(np.isfinite(rows.values))
    if known.size == 0:
        return np.zeros(0)
    last = known[np.append(rows.group[known][1:] != rows.group[known][:-1], True)]
    values: FloatArray = rows.values[last]
    return values


def _latest_rack_power(history: HistoryView) -> pd.DataFrame:
    """Per rack: the sum of its PDUs' newest `pdu_power_watts` and the time of the oldest of those
    readings (`LATEST_RACK_COLUMNS`).

    The window average (`rack_power_watts`) suits the HPA; a capping loop that acts every second needs
    the newest reading. A PDU that went silent keeps its last reading in the sum, and its age makes
    the whole value stale, so a silent meter never makes a rack look lighter.
    """
    readings = history.block("pdu_power_watts", _METER, _UNLABELLED_METER)
    if readings.empty:
        return pd.DataFrame(columns=LATEST_RACK_COLUMNS)
    meters, newest = readings.newest()
    value = np.full(len(readings.labels), np.nan)
    value[_last_known(readings)] = _last_values(readings)
    newest_per_meter = _labelled(readings, meters).assign(value=value[meters], timestamp_seconds=newest)
    per_rack = newest_per_meter.groupby("rack").agg(
        rack_power_latest_watts=("value", "sum"), oldest_reading_seconds=("timestamp_seconds", "min")
    )
    return per_rack.reset_index()[LATEST_RACK_COLUMNS]


def aggregate_pods(pods: pd.DataFrame, group_of_pod: pd.Series) -> pd.DataFrame:
    """Sum pods into groups (workloads, namespaces). Pods whose group is NaN are left out.

    `watts_per_token` is the group's summed energy over its summed generated tokens, never a mean of
    the pods' ratios: an idle replica still costs joules, and a busy one weighs by its tokens.
    """
    frame = pods.assign(group=group_of_pod.reindex(pods.index)).dropna(subset=["group"])
    if frame.empty:
        return pd.DataFrame(columns=GROUP_COLUMNS)
    grouped = frame.groupby("group", sort=True)
    summed = [
        "power_watts",
        "gpu_power_watts",
        "generation_tokens_per_second",
        "energy_joules",
        "generation_tokens",
    ]
    out = grouped[summed].sum(min_count=1)  # one vectorised sum; a group with no value stays NaN
    out["window_start_seconds"] = grouped["window_start_seconds"].min()
    out["window_end_seconds"] = grouped["window_end_seconds"].min()
    out["pods"] = grouped["pod"].size()
    tokens = out["generation_tokens"].where(out["generation_tokens"] > 0)
    out["watts_per_token"] = out["energy_joules"] / tokens
    return out.reset_index()[GROUP_COLUMNS]


__all__ = [
    "FleetEstimate",
    "aggregate_pods",
    "estimate_fleet",
    "estimate_history",
    "replicas_within_budget",
]
