"""One estimator pass over the whole fleet: what the adapter's pipeline calls every cycle.

Input is the samples a `estimators.series.SampleStore` holds (the pipeline keeps one up to date as
polls arrive: `estimate_history`), or a long sample frame (`estimate_fleet`: columns `metric`,
`value`, `timestamp_seconds` and one column per label key `node`, `gpu_uuid`, `namespace`, `pod`,
`rack`, `pdu`, NaN where a sample lacks it), which is put in a store first. Both run the same rules.
Output is frames (pods, nodes, racks, latest rack readings) whose columns are the served metrics.
Inside a pass figures are arrays over the ids of a `estimators.series.KeySpace` (one entry per pod,
GPU, node or rack), so the rules below join metrics by indexing; the labels come back only in the
output frames.

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
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd

from estimators.attribution import cpu_scale, share_weights
from estimators.gauge_model import GaugeModels, estimate_windows, gauge_pairs, token_intervals
from estimators.headroom import (
    PDU_SENSOR_ERROR_RATIO,
    SUMMED_ESTIMATE_ERROR_RATIO,
    headroom_and_overdraw,
    margin_watts,
    replicas_within_budget,
)
from estimators.rates import ResetRule, gauge_integral, read_counters, sorted_series_rates
from estimators.recorded import RECORDED_COLUMNS, RECORDED_METRICS, recorded_pods
from estimators.series import Block, BoolArray, FloatArray, HistoryView, IntArray, KeySpace, SampleStore

ObjectArray = npt.NDArray[np.object_]

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

    def space(self, keys: list[str]) -> KeySpace:
        """The ids of `keys`' labels (`estimators.series.KeySpace`)."""
        return self.history.space(keys)


class _Figures(NamedTuple):
    """One figure per series group that has one: `ids` in the block's `KeySpace`, the figure, and
    the span it covers."""

    ids: IntArray
    value: FloatArray
    start: FloatArray
    end: FloatArray


_NO_FIGURES = _Figures(np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0))


def _on(size: int, ids: IntArray, values: npt.ArrayLike, fill: float = np.nan) -> FloatArray:
    """`values` placed at `ids` of an array over a whole key space, `fill` elsewhere."""
    out = np.full(size, fill)
    out[ids] = values
    return out


def _has(size: int, ids: IntArray) -> BoolArray:
    """Which ids of a key space are among `ids`."""
    out = np.zeros(size, dtype=bool)
    out[ids] = True
    return out


def _or_zero(values: FloatArray) -> FloatArray:
    """`values` with the unknown (NaN) ones 0; infinities stay (as pandas' fillna keeps them)."""
    return np.where(np.isnan(values), 0.0, values)


def _add(a: FloatArray, b: FloatArray) -> FloatArray:
    """a + b with an unknown part counted as 0; unknown only where both are."""
    both_unknown = np.isnan(a) & np.isnan(b)
    return np.where(both_unknown, np.nan, _or_zero(a) + _or_zero(b))


def _sum_into(size: int, into: IntArray, values: FloatArray) -> FloatArray:
    """Per id 0..size-1, the sum of the `values` at rows whose `into` is it; NaN where none is known."""
    known = ~np.isnan(values)
    sums = np.bincount(into, np.where(known, values, 0.0), minlength=size)[:size]
    counted = np.bincount(into, known, minlength=size)[:size]
    return np.where(counted > 0, sums, np.nan)


def _oldest_into(size: int, into: IntArray, ends: FloatArray) -> FloatArray:
    """Per id, the oldest of the `ends` at rows whose `into` is it (a sum is only as recent as its
    oldest part); NaN where none."""
    out = np.full(size, np.nan)
    np.fmin.at(out, into, ends)
    return out


def _rates(window: _Window, rows: Block, on_reset: ResetRule = "post_value") -> _Figures:
    """Rate per series over the window; series without one are left out.

    Each series is read over the window's length ending at its own newest sample (rule 2), so the
    rate covers exactly the span it is stamped with; where the start is not covered, the rate over
    the window's own samples, ending at the newest of them."""
    groups, newest = rows.newest()
    live = newest >= window.start
    groups, end = groups[live], newest[live]
    if groups.size == 0:
        return _NO_FIGURES
    at = read_counters(
        rows.counters(on_reset), np.concatenate((groups, groups)), np.concatenate((end - window.seconds, end))
    ).reshape(2, groups.size)
    rate = (at[1] - at[0]) / window.seconds
    covered = np.isfinite(rate)
    from_edges = _Figures(
        rows.ids[groups[covered]], rate[covered], end[covered] - window.seconds, end[covered]
    )
    if covered.all():
        return from_edges
    current = rows.since(window.start)
    current = current.where(np.isin(current.group, groups[~covered]))
    fallback = sorted_series_rates(current.group, current.times, current.values)
    known = np.isfinite(fallback.rate_per_second)
    from_samples = _Figures(
        rows.ids[fallback.series[known]],
        fallback.rate_per_second[known],
        fallback.first_seconds[known],
        fallback.last_seconds[known],
    )
    return _Figures(*(np.concatenate(pair) for pair in zip(from_edges, from_samples, strict=True)))


def _counter_rate(
    window: _Window, metric: str, keys: list[str], on_reset: ResetRule = "post_value"
) -> _Figures:
    return _rates(window, window.rows(metric, keys), on_reset)


def _gauge_mean(rows: Block) -> _Figures:
    """Mean of each gauge series' samples in `rows` (the window's), over its first to newest sample."""
    groups, starts = rows.present()
    if groups.size == 0:
        return _NO_FIGURES
    ends = rows.ends(starts)
    known = np.isfinite(rows.values)
    total = np.add.reduceat(np.where(known, rows.values, 0.0), starts)
    counted = np.add.reduceat(known.astype(np.int64), starts)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counted > 0, total / np.maximum(counted, 1), np.nan)
    return _Figures(rows.ids[groups], mean.astype(np.float64), rows.times[starts], rows.times[ends])


class _Power(NamedTuple):
    """Power per metered thing (GPU, node meter, PDU) and how it was measured."""

    figures: _Figures
    method: ObjectArray


def _power(
    window: _Window,
    energy_metric: str,
    gauge_metric: str,
    keys: list[str],
    fill: Mapping[str, str] | None = None,
) -> _Power:
    """Energy-counter rate where it exists, else gauge mean (rule 2)."""
    counters = window.rows(energy_metric, keys, fill)
    from_counter = _rates(window, counters, "neighbour_rate")
    # A restart near the window means part of it was filled from the neighbouring rate: say so.
    recent = counters.since(window.start - window.seconds)
    restarts = sorted_series_rates(recent.group, recent.times, recent.values)
    restarted = np.isin(from_counter.ids, counters.ids[restarts.series[restarts.resets > 0]])
    from_gauge = _gauge_mean(window.current(gauge_metric, keys, fill))
    alone = ~np.isin(from_gauge.ids, from_counter.ids)
    method = np.concatenate(
        (
            np.where(restarted, "energy_counter+reset_fill", "energy_counter").astype(object),
            np.full(int(alone.sum()), "power_gauge", dtype=object),
        )
    )
    figures = _Figures(
        *(np.concatenate((c, g[alone])) for c, g in zip(from_counter, from_gauge, strict=True))
    )
    return _Power(figures, method)


def _largest_rise(rows: Block) -> _Figures:
    """Largest rise of each gauge series over `rows` (a later value minus an earlier minimum)."""
    if rows.empty:
        return _NO_FIGURES
    values = pd.Series(rows.values)
    rise = (values - values.groupby(rows.group).cummin()).to_numpy(np.float64)
    groups, _ = rows.present()
    largest = np.full(len(rows.labels), np.nan)
    np.fmax.at(largest, rows.group, rise)
    return _Figures(rows.ids[groups], largest[groups], np.zeros(0), np.zeros(0))


def _measured_node_power(window: _Window) -> tuple[FloatArray, FloatArray]:
    """Per node id: power from its meters and the oldest of their ends (NaN where not metered)."""
    meters = _power(window, "node_energy_joules_total", "node_power_watts", ["node"]).figures
    size = window.space(["node"]).size
    return _sum_into(size, meters.ids, meters.value), _oldest_into(size, meters.ids, meters.end)


def _fresh_after(window: _Window) -> float:
    """A token counter last read before this is stale: its figures would describe the past."""
    return window.end - 0.5 * window.seconds


def _token_windows(window: _Window) -> tuple[_Figures, FloatArray]:
    """Per pod: the token window of rule 5 (start, end) and the generated tokens in it (value)."""
    rows = window.rows("generation_tokens_total", _POD)
    if rows.empty:
        return _NO_FIGURES, np.zeros(0)
    groups, newest = rows.newest()
    latest_of = np.full(len(rows.labels), np.nan)
    latest_of[groups] = newest
    latest = latest_of[rows.group]
    early = np.flatnonzero((latest >= window.start) & (rows.times <= latest - 0.5 * window.seconds))
    if early.size == 0:
        return _NO_FIGURES, np.zeros(0)
    distance = np.abs(rows.times[early] - (latest[early] - window.seconds))
    # Nearest to one window back; on a tie (a dropped scrape) the later sample, a longer span. The
    # samples are in (group, time) order, so the last of a group's nearest ones is that sample.
    runs = np.flatnonzero(np.append(True, rows.group[early][1:] != rows.group[early][:-1]))
    nearest = np.minimum.reduceat(distance, runs)
    closest = early[distance == np.repeat(nearest, np.diff(np.append(runs, early.size)))]
    chosen = closest[np.append(rows.group[closest][1:] != rows.group[closest][:-1], True)]
    at = read_counters(
        rows.counters("post_value"),
        np.concatenate((rows.group[chosen], rows.group[chosen])),
        np.concatenate((rows.times[chosen], latest[chosen])),
    ).reshape(2, chosen.size)
    spans = _Figures(rows.ids[rows.group[chosen]], at[1] - at[0], rows.times[chosen], latest[chosen])
    return spans, spans.value / (spans.end - spans.start)


def _local_groups(rows: Block, ids: IntArray) -> IntArray:
    """The group in `rows` of each id of its space, -1 where it has none."""
    local = np.full(rows.space.size, -1, np.int64)
    local[rows.ids] = np.arange(rows.ids.size)
    return np.where(ids >= 0, local[np.maximum(ids, 0)], -1)


def _series_increase(
    window: _Window, metric: str, keys: list[str], ids: IntArray, start: FloatArray, end: FloatArray
) -> FloatArray:
    """Increase of each series `ids` (in `space(keys)`) over its own [start, end]."""
    rows = window.rows(metric, keys)
    if rows.empty or ids.size == 0:
        return np.full(ids.size, np.nan)
    asked = _local_groups(rows, ids)
    at = read_counters(
        rows.counters("neighbour_rate"), np.concatenate((asked, asked)), np.concatenate((start, end))
    ).reshape(2, ids.size)
    increase: FloatArray = at[1] - at[0]
    return increase


def _gauge_span_energy(
    window: _Window, metric: str, keys: list[str], ids: IntArray, start: FloatArray, end: FloatArray
) -> FloatArray:
    """Energy of each gauge series `ids` over its own [start, end]: the mean of the piecewise-linear
    gauge over the part of the span its samples cover, times the span.

    This is where a pod's window energy from power gauges alone is decided: the seam for a model
    that knows more than one or two readings (estimators.gauge_model)."""
    out = np.full(ids.size, np.nan)
    rows = window.rows(metric, keys)
    if rows.empty or ids.size == 0:
        return out
    asked = np.where(np.isfinite(start) & np.isfinite(end), _local_groups(rows, ids), -1)
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


@dataclass(frozen=True)
class _Shares:
    """One row per (GPU, pod) assignment of a GPU with a power figure (rule 3)."""

    gpu: IntArray  # id in space(_GPU)
    pod: IntArray  # id in space(_POD)
    ratio: FloatArray
    watts: FloatArray
    method: ObjectArray


def _assignments(window: _Window) -> tuple[IntArray, IntArray]:
    """(GPU ids, pod ids) of the pairs whose newest `gpu_assignment_info` value in the window is positive."""
    rows = window.current("gpu_assignment_info", [*_GPU, *_POD])
    on = _last_values(rows) > 0
    pairs = rows.ids[_last_known(rows)[on]]
    gpus = rows.space.project(window.space(_GPU))
    pods = rows.space.project(window.space(_POD))
    return gpus[pairs], pods[pairs]


def _split(window: _Window, gpus: _Power, tokens_per_second: FloatArray, utilization: FloatArray) -> _Shares:
    """Each assigned GPU's power split among its pods (`estimators.attribution.share_weights`);
    `tokens_per_second` and `utilization` are per pod id."""
    gpu, pod = _assignments(window)
    size = window.space(_GPU).size
    measured = np.flatnonzero(_has(size, gpus.figures.ids)[gpu])
    gpu, pod = gpu[measured], pod[measured]
    weight, split = share_weights(gpu, tokens_per_second[pod], utilization[pod])
    row_of = np.full(size, -1, np.int64)
    row_of[gpus.figures.ids] = np.arange(gpus.figures.ids.size)
    rows = row_of[gpu]
    method = gpus.method[rows] + split.astype(object)
    return _Shares(gpu, pod, weight, gpus.figures.value[rows] * weight, method)


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
    window: _Window,
    shares: _Shares,
    span: tuple[FloatArray, FloatArray],
    span_energy: FloatArray,
    models: GaugeModels | None,
) -> tuple[ObjectArray, ObjectArray, FloatArray]:
    """Each share's method, confidence and energy over its pod's token `span` (start, end), for
    gauge-only GPUs from `estimators.gauge_model`.

    A gauge-only GPU assigned to exactly one pod (method exactly `power_gauge`) takes the learned
    model's window energy where the model has learned enough to take part (method `power_model`,
    confidence from its relative error); otherwise, and on a shared GPU, the gauge stays and says it
    is a guess (confidence `low`). Each GPU's model then learns this pass's new pairs: estimate first,
    so a window is never judged by a model that has seen its own readings."""
    energy = span_energy.copy()
    method = shares.method.copy()
    on_gauge = np.zeros(method.size, dtype=bool)
    for name in {m for m in set(method) if m.startswith("power_gauge")}:
        on_gauge |= method == name
    confidence = np.full(method.size, None, dtype=object)
    confidence[on_gauge] = "low"
    start, end = span
    eligible = np.flatnonzero((method == "power_gauge") & np.isfinite(start) & (end > start))
    if models is None or eligible.size == 0:
        return method, confidence, energy
    gpu_labels = window.space(_GPU).columns(shares.gpu[eligible])
    pod_labels = window.space(_POD).columns(shares.pod[eligible])
    gpus = list(zip(*(gpu_labels[k] for k in _GPU), strict=True))
    pods = list(zip(*(pod_labels[k] for k in _POD), strict=True))
    tokens = _token_series(window, set(pods))
    gauges = window.rows("gpu_power_watts", _GPU)
    gauge_of, gauge_at = _series_of(gauges)
    for i, gpu, pod in zip(eligible, gpus, pods, strict=True):
        found = gauge_of.get(gpu)
        if pod not in tokens or found is None or gauge_at[found] == gauge_at[found + 1]:
            continue
        samples = slice(gauge_at[found], gauge_at[found + 1])
        gauge_t, gauge_w = gauges.times[samples], gauges.values[samples]
        intervals = token_intervals(*tokens[pod])
        model = models.model(gpu)
        served = estimate_windows(model, intervals, gauge_t, gauge_w, [start[i], end[i]]).iloc[0]
        if served["method"] == "power_model" and np.isfinite(served["energy_joules"]):
            energy[i] = served["energy_joules"]
            method[i] = "power_model"
            confidence[i] = served["confidence"]
        models.learn(gpu, gauge_pairs(intervals, gauge_t, gauge_w))
    return method, confidence, energy


@dataclass(frozen=True)
class _PodGpus:
    """Per pod id: what its GPU shares add up to (NaN / None where it has no share)."""

    has: BoolArray
    start: FloatArray  # the part of the window common to all its GPUs' readings
    end: FloatArray
    watts: FloatArray
    span_joules: FloatArray
    node: IntArray  # node id of its first share, -1 for none
    method: ObjectArray  # its shares' distinct methods, joined
    confidence: ObjectArray  # the lowest of its shares' confidences


def _per_pod(
    window: _Window,
    shares: _Shares,
    gpus: _Power,
    joules: FloatArray,
    method: ObjectArray,
    confidence: ObjectArray,
) -> _PodGpus:
    """The shares summed per pod; `joules` is each share's energy over its pod's token window."""
    size = window.space(_POD).size
    pod = shares.pod
    gpu_size = window.space(_GPU).size
    start = _on(gpu_size, gpus.figures.ids, gpus.figures.start)[shares.gpu]
    end = _on(gpu_size, gpus.figures.ids, gpus.figures.end)[shares.gpu]
    latest_start = np.full(size, np.nan)
    np.fmax.at(latest_start, pod, start)
    watts = _or_zero(_sum_into(size, pod, shares.watts))  # a pod's share of unknown power is 0
    first = np.full(size, -1, np.int64)
    first[pod[::-1]] = np.arange(pod.size - 1, -1, -1)  # written last to first: the first row stays
    has = first >= 0
    node_of_gpu = window.space(_GPU).project(window.space(["node"]))
    node = np.full(size, -1, np.int64)
    node[has] = node_of_gpu[shares.gpu[first[has]]]
    return _PodGpus(
        has,
        latest_start,
        _oldest_into(size, pod, end),
        np.where(has, watts, np.nan),
        _sum_into(size, pod, joules),
        node,
        _joined_methods(size, pod, method, first),
        _worst_confidence(size, pod, confidence),
    )


def _joined_methods(size: int, pod: IntArray, method: ObjectArray, first: IntArray) -> ObjectArray:
    """Per pod, its shares' distinct methods in order, joined by commas (usually there is one)."""
    out = np.full(size, None, dtype=object)
    has = first >= 0
    out[has] = method[first[has]]
    codes, names = pd.factorize(method)
    if names.size > 1:  # only then may a pod mix methods: find those pods without a loop over shares
        kinds = np.unique(pod * names.size + codes)  # sorted: each pod's kinds lie together
        owner = kinds // names.size
        mixed = np.flatnonzero(np.bincount(owner, minlength=size) > 1)
        bounds = zip(np.searchsorted(owner, mixed), np.searchsorted(owner, mixed, side="right"), strict=True)
        for p, (lo, hi) in zip(mixed, bounds, strict=True):
            out[p] = ",".join(sorted(names[kinds[lo:hi] % names.size]))
    return out


def _worst_confidence(size: int, pod: IntArray, confidence: ObjectArray) -> ObjectArray:
    """Per pod: the lowest confidence of its shares that carry one."""
    rank = np.full(confidence.size, len(CONFIDENCES), np.int64)
    for level, name in enumerate(CONFIDENCES):
        rank[confidence == name] = level
    worst = np.full(size, len(CONFIDENCES), np.int64)
    np.minimum.at(worst, pod, rank)
    return np.array([*CONFIDENCES, None], dtype=object)[worst]


@dataclass(frozen=True)
class _PodLoad:
    """Per pod id: its token figures (rule 5), NaN where unknown."""

    span: _Figures  # token windows: value = generated tokens in them
    tokens_per_second: FloatArray  # over the token window, else over the window
    prompt_per_second: FloatArray
    last_read: FloatArray


def _pod_load(window: _Window) -> _PodLoad:
    spans, span_rate = _token_windows(window)
    rated = _counter_rate(window, "generation_tokens_total", _POD)
    prompt = _counter_rate(window, "prompt_tokens_total", _POD)
    size = window.space(_POD).size
    over_span = _on(size, spans.ids, span_rate)
    over_window = _on(size, rated.ids, rated.value)
    token_rows = window.rows("generation_tokens_total", _POD)
    read, last_seconds = token_rows.newest()
    return _PodLoad(
        spans,
        np.where(np.isnan(over_span), over_window, over_span),
        _on(size, prompt.ids, prompt.value),
        _on(size, token_rows.ids[read], last_seconds),
    )


def _label_nodes(window: _Window) -> IntArray:
    """Per pod id: the node of its newest sample labelled with both (-1 for none)."""
    keys = [*_POD, "node"]
    labelled, newest = window.history.newest_ids(keys, window.start)
    space = window.space(keys)
    pods = space.project(window.space(_POD))[labelled]
    nodes = space.project(window.space(["node"]))[labelled]
    out = np.full(window.space(_POD).size, -1, np.int64)
    order = np.argsort(newest, kind="stable")
    out[pods[order]] = nodes[order]  # the newest last: it is the one that stays
    return out


def _pod_gpus(window: _Window, gpus: _Power, load: _PodLoad, gauge_models: GaugeModels | None) -> _PodGpus:
    """Per pod: its shares of its GPUs (rule 3), their energy over its token window (rules 5, 9)."""
    pod_size = window.space(_POD).size
    utilization = _gauge_mean(window.current("pod_gpu_utilization_ratio", _POD))
    shares = _split(window, gpus, load.tokens_per_second, _on(pod_size, utilization.ids, utilization.value))
    # Energy of each GPU share over the pod's token window (rule 5), from the energy counter read at
    # the span's edges, else from the power gauge over that same span.
    span = (
        _on(pod_size, load.span.ids, load.span.start)[shares.pod],
        _on(pod_size, load.span.ids, load.span.end)[shares.pod],
    )
    span_energy = _series_increase(window, "gpu_energy_joules_total", _GPU, shares.gpu, *span)
    missing = ~np.isfinite(span_energy)
    if missing.any():
        span_energy[missing] = _gauge_span_energy(
            window, "gpu_power_watts", _GPU, shares.gpu[missing], span[0][missing], span[1][missing]
        )
    method, confidence, joules = _with_gauge_models(window, shares, span, span_energy, gauge_models)
    return _per_pod(window, shares, gpus, shares.ratio * joules, method, confidence)


def _pod_frame(
    window: _Window, gpus: _Power, node_power: FloatArray, gauge_models: GaugeModels | None
) -> tuple[pd.DataFrame, IntArray]:
    """The pod frame (rules 3-5 and 9), and each row's node id (-1: unknown)."""
    load = _pod_load(window)
    per_pod = _pod_gpus(window, gpus, load, gauge_models)
    cpu = _counter_rate(window, "pod_cpu_energy_joules_total", _POD, "neighbour_rate")
    kepler = _counter_rate(window, "pod_gpu_energy_joules_total", _POD, "neighbour_rate")
    label_node = _label_nodes(window)
    pod_size = window.space(_POD).size
    pods = np.flatnonzero(
        per_pod.has
        | ~np.isnan(load.tokens_per_second)
        | _has(pod_size, load.span.ids)
        | ~np.isnan(load.prompt_per_second)
        | _has(pod_size, cpu.ids)
        | _has(pod_size, kepler.ids)
        | (label_node >= 0)
    )
    pods = window.space(_POD).sorted(pods)
    node = np.where(per_pod.node[pods] >= 0, per_pod.node[pods], label_node[pods])
    gpu = per_pod.watts[pods]
    kepler_watts = _on(pod_size, kepler.ids, kepler.value)[pods]
    use_kepler_gpu = np.isnan(gpu) & ~np.isnan(kepler_watts)
    measured = np.where(node >= 0, node_power[np.maximum(node, 0)], np.nan)
    cpu_watts, cpu_scaled = cpu_scale(
        node, np.where(use_kepler_gpu, kepler_watts, gpu), _on(pod_size, cpu.ids, cpu.value)[pods], measured
    )
    columns = {
        "namespace": window.space(_POD).columns(pods)["namespace"],
        "pod": window.space(_POD).columns(pods)["pod"],
        "node": _names(window.space(["node"]), node),
        "gpu_power_watts": np.where(use_kepler_gpu, kepler_watts, gpu),
        "cpu_power_watts": cpu_watts,
        "method": _pod_methods(
            np.where(use_kepler_gpu, "kepler_gpu", per_pod.method[pods]).astype(object),
            ~np.isnan(gpu) | use_kepler_gpu,
            cpu_watts,
            cpu_scaled,
        ),
        "confidence": _unless(use_kepler_gpu, per_pod.confidence[pods]),
        "span_gpu_joules": np.where(use_kepler_gpu, np.nan, per_pod.span_joules[pods]),
        "token_window_start_seconds": _on(pod_size, load.span.ids, load.span.start)[pods],
        "token_window_end_seconds": _on(pod_size, load.span.ids, load.span.end)[pods],
        "generation_tokens": _on(pod_size, load.span.ids, load.span.value)[pods],
        "generation_tokens_per_second": load.tokens_per_second[pods],
        "prompt_tokens_per_second": load.prompt_per_second[pods],
        "last_token_read_seconds": load.last_read[pods],
    }
    ends = {
        "window_start_seconds": np.where(
            per_pod.has[pods], per_pod.start[pods], _on(pod_size, kepler.ids, kepler.start)[pods]
        ),
        "window_end_seconds": np.where(
            per_pod.has[pods], per_pod.end[pods], _on(pod_size, kepler.ids, kepler.end)[pods]
        ),
    }
    return _pod_table(window, columns, ends), node


def _unless(taken: BoolArray, labels: ObjectArray) -> ObjectArray:
    """`labels` with None where `taken`."""
    out = labels.copy()
    out[taken] = None
    return out


def _pod_methods(
    gpu_method: ObjectArray, has_gpu: BoolArray, cpu_watts: FloatArray, cpu_scaled: BoolArray
) -> ObjectArray:
    """How each pod's power was found: its GPU method, "+" its CPU method, or "none"."""
    has_cpu = ~np.isnan(cpu_watts)
    cpu_label = np.where(cpu_scaled, "kepler_cpu_scaled", "kepler_cpu").astype(object)
    method = np.full(gpu_method.size, "none", dtype=object)
    method[has_gpu] = gpu_method[has_gpu]
    both = has_gpu & has_cpu
    method[both] = gpu_method[both] + "+" + cpu_label[both]
    method[has_cpu & ~has_gpu] = cpu_label[has_cpu & ~has_gpu]
    return method


def _pod_table(
    window: _Window, pods: dict[str, npt.NDArray[Any]], ends: dict[str, FloatArray]
) -> pd.DataFrame:
    """The pod frame (`POD_COLUMNS`) from each pod's figures: energies and tokens over its token window
    where it has one, else rate x window (rule 5)."""
    gpu, cpu = pods["gpu_power_watts"], pods["cpu_power_watts"]
    has_power = ~np.isnan(gpu) | ~np.isnan(cpu)
    span = pods["token_window_end_seconds"] - pods["token_window_start_seconds"]
    has_span = ~np.isnan(span) & (span > 0)
    seconds = np.where(has_span, span, window.seconds)
    span_gpu = np.where(~np.isnan(pods["span_gpu_joules"]) & has_span, pods["span_gpu_joules"], gpu * seconds)
    energy = np.where(has_power, _add(span_gpu, cpu * seconds), np.nan)
    generated = np.where(
        has_span, pods["generation_tokens"], pods["generation_tokens_per_second"] * window.seconds
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        per_token = energy / np.where(generated > 0, generated, np.nan)
    # Token figures from a counter last read over half a window ago described the past: they shared
    # out the GPU above, but are not published as now.
    stale = ~(pods["last_token_read_seconds"] >= _fresh_after(window))
    figures = {
        "generation_tokens": generated,
        "prompt_tokens": pods["prompt_tokens_per_second"] * seconds,
        "generation_tokens_per_second": pods["generation_tokens_per_second"],
        "watts_per_token": per_token,
    }
    # Power covers the span its GPUs' readings cover (the part common to all of them), not one
    # ending at `now`: usually the window's length ending at the newest reading.
    start, end = ends["window_start_seconds"], ends["window_end_seconds"]
    frame = {
        **pods,
        "power_watts": _add(gpu, cpu),
        "gpu_energy_joules": span_gpu,
        "energy_joules": energy,
        **{name: np.where(stale, np.nan, values) for name, values in figures.items()},
        "window_start_seconds": np.where(np.isnan(start), window.start, start),
        "window_end_seconds": np.where(np.isnan(end), window.end, end),
    }
    # Labels stay objects (NaN or None where unknown) and methods text, the dtypes the pipeline reads.
    typed = {name: pd.Series(frame[name], dtype=object) for name in (*_POD, "node", "confidence")}
    typed["method"] = pd.Series(frame["method"], dtype=str)
    if typed["confidence"].notna().any():  # as a merge of text columns leaves it
        typed["confidence"] = typed["confidence"].astype(str)
    return pd.DataFrame({name: typed.get(name, frame[name]) for name in POD_COLUMNS})


def _names(space: KeySpace, ids: IntArray) -> ObjectArray:
    """The label of each id of a one-key space, NaN for -1."""
    out = np.full(ids.size, np.nan, dtype=object)
    known = ids >= 0
    out[known] = space.columns(ids[known])[space.keys[0]]
    return out


def _with_recorded(pods: pd.DataFrame, nodes: IntArray, window: _Window) -> tuple[pd.DataFrame, IntArray]:
    """Pods whose figures recording rules computed take those (`estimators.recorded`) instead; and
    each row's node id."""
    if not any(metric in window.history.metrics for metric in RECORDED_COLUMNS):
        return pods, nodes  # the usual pass, without a prometheus_api collector
    recorded = recorded_pods(window.history.frame(list(RECORDED_METRICS), window.start), window.seconds)
    if recorded.empty:
        return pods, nodes
    recorded = recorded.reindex(columns=POD_COLUMNS)
    others = pods.merge(recorded[_POD], on=_POD, how="left", indicator=True)["_merge"] == "left_only"
    both = pd.concat([pods.loc[others.to_numpy()], recorded], ignore_index=True) if others.any() else recorded
    both = both.sort_values(_POD, ignore_index=True)
    known = both["node"].notna().to_numpy(bool)
    node_ids = np.full(len(both), -1, np.int64)
    node_ids[known] = window.space(["node"]).ids((str(n),) for n in both["node"][known])
    return both, node_ids


def _node_frame(
    window: _Window,
    gpus: _Power,
    measured: tuple[FloatArray, FloatArray],
    pods: pd.DataFrame,
    pod_nodes: IntArray,
    configured: IntArray,
) -> tuple[pd.DataFrame, IntArray]:
    """Per node: measured power (rule 6) where it has a meter, else the sum of its GPUs and its pods' CPU
    power; and each row's node id. `pod_nodes`: each pod row's node id; `configured`: node ids the
    racks name."""
    space = window.space(["node"])
    node_of_gpu = window.space(_GPU).project(space)[gpus.figures.ids]
    cpu_node, cpu_power = _pod_cpu_by_node(pods, pod_nodes)
    size = space.size  # after every node id this frame uses is interned
    gpu_watts = _sum_into(size, node_of_gpu, gpus.figures.value)
    gpu_end = _oldest_into(size, node_of_gpu, gpus.figures.end)
    cpu_watts = _sum_into(size, cpu_node, cpu_power)
    seen, _ = window.history.newest_ids(["node"], window.start)
    nodes = space.sorted(np.unique(np.concatenate((seen, configured))))
    meter_watts, meter_end = measured[0][nodes], measured[1][nodes]
    estimated = np.isnan(meter_watts)
    end = np.where(estimated, gpu_end[nodes], meter_end)
    frame = pd.DataFrame(
        {
            "node": space.columns(nodes)["node"],
            "node_power_watts": np.where(estimated, _add(gpu_watts[nodes], cpu_watts[nodes]), meter_watts),
            "gpu_power_watts": gpu_watts[nodes],
            "window_end_seconds": np.where(np.isnan(end), window.end, end),
            "estimated": estimated,
        }
    )
    return frame, nodes


def _pod_cpu_by_node(pods: pd.DataFrame, pod_nodes: IntArray) -> tuple[IntArray, FloatArray]:
    """(node id, CPU power) of each pod with a node and a power figure."""
    power = pods["power_watts"].to_numpy(np.float64)
    with_node = (pod_nodes >= 0) & ~np.isnan(power)
    gpu = _or_zero(pods["gpu_power_watts"].to_numpy(np.float64)[with_node])
    return pod_nodes[with_node], power[with_node] - gpu


def _rack_frame(
    window: _Window,
    nodes: tuple[pd.DataFrame, IntArray],
    membership: tuple[IntArray, IntArray],
    racks: pd.DataFrame,
) -> pd.DataFrame:
    """Per rack (rule 7): its PDUs' power when any reports, else its nodes' sum; margin, headroom and
    overdraw against its configured cap. `membership`: (node id, rack id) of each configured node."""
    rack_space = window.space(["rack"])
    pdus = _power(window, "pdu_energy_joules_total", "pdu_power_watts", _METER, _UNLABELLED_METER).figures
    rises = _largest_rise(window.current("pdu_power_watts", _METER, _UNLABELLED_METER))
    rack_of_meter = window.space(_METER).project(rack_space)
    config = racks.astype({"rack": object}).drop_duplicates("rack", keep="last")
    configured = rack_space.ids((str(r),) for r in config["rack"])
    node_space = window.space(["node"])
    node_frame, node_ids = nodes
    size = rack_space.size  # after every rack id this frame uses is interned
    pdu_racks = rack_of_meter[pdus.ids]
    measured = _sum_into(size, pdu_racks, pdus.value)
    measured_end = _oldest_into(size, pdu_racks, pdus.end)
    node_power = _on(node_space.size, node_ids, node_frame["node_power_watts"].to_numpy(np.float64))
    node_end = _on(node_space.size, node_ids, node_frame["window_end_seconds"].to_numpy(np.float64))
    member, rack_of_member = membership
    summed = _sum_into(size, rack_of_member, node_power[member])
    summed_end = _oldest_into(size, rack_of_member, node_end[member])
    names = rack_space.sorted(np.unique(np.concatenate((configured, pdu_racks, rack_of_member))))
    estimated = np.isnan(measured[names])
    power = np.where(estimated, summed[names], measured[names])
    end = np.where(estimated, summed_end[names], measured_end[names])
    cap = _on(size, configured, config["cap_watts"].to_numpy(np.float64))[names]
    margin_ratio = _or_zero(_on(size, configured, config["margin_ratio"].to_numpy(np.float64))[names])
    error_ratio = np.where(estimated, SUMMED_ESTIMATE_ERROR_RATIO, PDU_SENSOR_ERROR_RATIO)
    rise = _sum_into(size, rack_of_meter[rises.ids], rises.value)[names]
    margin = margin_watts(cap, margin_ratio, rise, power, error_ratio)
    headroom, overdraw = headroom_and_overdraw(cap, margin, power)
    return pd.DataFrame(
        {
            "rack": rack_space.columns(names)["rack"],
            "rack_power_watts": power,
            "estimated": estimated,
            "cap_watts": cap,
            "margin_watts": margin,
            "headroom_watts": headroom,
            "overdraw_watts": overdraw,
            "window_end_seconds": np.where(np.isnan(end), window.end, end),
        }
    )


def _membership(window: _Window, node_racks: Mapping[str, str]) -> tuple[IntArray, IntArray]:
    """(node id, rack id) of each node the racks name."""
    nodes = window.space(["node"]).ids((n,) for n in node_racks)
    racks = window.space(["rack"]).ids((r,) for r in node_racks.values())
    return nodes, racks


def _intern_pass_keys(window: _Window) -> None:
    """Give every label the pass meets its id first, so arrays sized to a key space hold all its ids
    (projecting one space onto another, or grouping a metric, interns new labels)."""
    for metric, keys, fill in (
        ("gpu_assignment_info", [*_GPU, *_POD], None),
        ("pdu_energy_joules_total", _METER, _UNLABELLED_METER),
        ("pdu_power_watts", _METER, _UNLABELLED_METER),
    ):
        window.rows(metric, keys, fill)
    window.history.intern([*_POD, "node"])
    window.history.intern(["node"])
    window.space([*_GPU, *_POD]).project(window.space(_GPU))
    window.space([*_GPU, *_POD]).project(window.space(_POD))
    window.space([*_POD, "node"]).project(window.space(_POD))
    window.space([*_POD, "node"]).project(window.space(["node"]))
    window.space(_METER).project(window.space(["rack"]))
    for metric in ("gpu_energy_joules_total", "gpu_power_watts"):
        window.rows(metric, _GPU)
    window.space(_GPU).project(window.space(["node"]))
    for metric in (
        "generation_tokens_total",
        "prompt_tokens_total",
        "pod_cpu_energy_joules_total",
        "pod_gpu_energy_joules_total",
        "pod_gpu_utilization_ratio",
    ):
        window.rows(metric, _POD)
    for metric in ("node_energy_joules_total", "node_power_watts"):
        window.rows(metric, ["node"])


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
    _intern_pass_keys(window)
    membership = _membership(window, node_racks)
    # Each GPU's and node's power once per pass: the pod and node frames both start from them.
    gpus = _power(window, "gpu_energy_joules_total", "gpu_power_watts", _GPU)
    measured = _measured_node_power(window)
    pods, pod_nodes = _with_recorded(*_pod_frame(window, gpus, measured[0], gauge_models), window)
    if gauge_models is not None and gauge_models.models:
        gauges = window.rows("gpu_power_watts", _GPU)
        seen = gauges.space.columns(gauges.ids[gauges.present()[0]])
        gauge_models.retain(set(zip(seen["node"], seen["gpu_uuid"], strict=True)))
    nodes = _node_frame(window, gpus, measured, pods, pod_nodes, membership[0])
    rack_frame = _rack_frame(window, nodes, membership, racks)
    return FleetEstimate(pods=pods, nodes=nodes[0], racks=rack_frame, latest_racks=_latest_rack_power(window))


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


def _latest_rack_power(window: _Window) -> pd.DataFrame:
    """Per rack: the sum of its PDUs' newest `pdu_power_watts` and the time of the oldest of those
    readings (`LATEST_RACK_COLUMNS`).

    The window average (`rack_power_watts`) suits the HPA; a capping loop that acts every second needs
    the newest reading. A PDU that went silent keeps its last reading in the sum, and its age makes
    the whole value stale, so a silent meter never makes a rack look lighter.
    """
    readings = window.rows("pdu_power_watts", _METER, _UNLABELLED_METER)
    if readings.empty:
        return pd.DataFrame(columns=LATEST_RACK_COLUMNS)
    meters, newest = readings.newest()
    value = np.full(len(readings.labels), np.nan)
    value[_last_known(readings)] = _last_values(readings)
    rack_space = window.space(["rack"])
    rack = readings.space.project(rack_space)[readings.ids[meters]]
    names = rack_space.sorted(np.unique(rack))
    total = np.bincount(rack, _or_zero(value[meters]), minlength=rack_space.size)
    return pd.DataFrame(
        {
            "rack": rack_space.columns(names)["rack"],
            "rack_power_latest_watts": total[names],
            "oldest_reading_seconds": _oldest_into(rack_space.size, rack, newest)[names],
        }
    )


GROUP_SUMMED = (
    "power_watts",
    "gpu_power_watts",
    "generation_tokens_per_second",
    "energy_joules",
    "generation_tokens",
)
"""The pod columns a group's figure is the sum of."""


@dataclass(frozen=True)
class GroupTotals:
    """Pods summed into groups (workloads, namespaces), one entry per group."""

    sums: dict[str, FloatArray]
    """Each of GROUP_SUMMED summed (NaN for a group with none known), and watts_per_token."""
    window_start_seconds: FloatArray
    window_end_seconds: FloatArray
    """The oldest of the pods' ends: a sum is only as recent as its oldest part."""
    pods: IntArray
    peak_power_watts: FloatArray
    """The hungriest pod's power_watts."""


def group_totals(columns: Mapping[str, FloatArray], group: IntArray, size: int) -> GroupTotals:
    """Sum the pod `columns` (GROUP_SUMMED and the window columns, one entry per pod) into groups
    0..size-1 by each pod's `group` (-1: in none).

    `watts_per_token` is the group's summed energy over its summed generated tokens, never a mean of
    the pods' ratios: an idle replica still costs joules, and a busy one weighs by its tokens.
    """
    member = group >= 0
    into = group[member]
    sums = {name: _sum_into(size, into, columns[name][member]) for name in GROUP_SUMMED}
    tokens = sums["generation_tokens"]
    with np.errstate(invalid="ignore", divide="ignore"):
        sums["watts_per_token"] = sums["energy_joules"] / np.where(tokens > 0, tokens, np.nan)
    peak = np.full(size, np.nan)
    np.fmax.at(peak, into, columns["power_watts"][member])
    return GroupTotals(
        sums,
        _oldest_into(size, into, columns["window_start_seconds"][member]),
        _oldest_into(size, into, columns["window_end_seconds"][member]),
        np.bincount(into, minlength=size).astype(np.int64),
        peak,
    )


def aggregate_pods(pods: pd.DataFrame, group_of_pod: pd.Series) -> pd.DataFrame:
    """`group_totals` of a pod frame (POD_COLUMNS) by a group label per pod (NaN: in none), as a frame
    of GROUP_COLUMNS sorted by group."""
    group, names = pd.factorize(group_of_pod.reindex(pods.index), sort=True)
    if names.size == 0:
        return pd.DataFrame(columns=GROUP_COLUMNS)
    columns = {
        name: pods[name].to_numpy(np.float64)
        for name in (*GROUP_SUMMED, "window_start_seconds", "window_end_seconds")
    }
    totals = group_totals(columns, group.astype(np.int64), names.size)
    return pd.DataFrame(
        {
            "group": names.to_numpy(object),
            **totals.sums,
            "window_start_seconds": totals.window_start_seconds,
            "window_end_seconds": totals.window_end_seconds,
            "pods": totals.pods,
        }
    )[GROUP_COLUMNS]


__all__ = [
    "FleetEstimate",
    "GroupTotals",
    "aggregate_pods",
    "estimate_fleet",
    "estimate_history",
    "group_totals",
    "replicas_within_budget",
]
