"""One estimator pass over the whole fleet: what the adapter's pipeline calls every cycle.

Input is the pipeline's sample frame: columns `metric`, `value`, `timestamp_seconds` and one column
per label key (`node`, `gpu_uuid`, `namespace`, `pod`, `rack`, `pdu`, ...; NaN where a sample lacks it).
Output is three frames (pods, nodes, racks) whose columns are the served metrics.

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
   `prometheus_api` collector) takes those instead of rules 3-5 (`estimators.recorded`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from estimators.attribution import fit_cpu_to_node, split_gpu_power
from estimators.headroom import (
    PDU_SENSOR_ERROR_RATIO,
    SUMMED_ESTIMATE_ERROR_RATIO,
    headroom_and_overdraw,
    margin_watts,
    replicas_within_budget,
)
from estimators.rates import ResetRule, counters_at, series_rates
from estimators.recorded import recorded_pods

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


@dataclass(frozen=True)
class FleetEstimate:
    pods: pd.DataFrame
    nodes: pd.DataFrame
    racks: pd.DataFrame


def _with_labels(samples: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    missing = [label for label in labels if label not in samples.columns]
    if not missing:
        return samples
    return samples.assign(**{label: None for label in missing})


def _metric(samples: pd.DataFrame, metric: str, keys: list[str]) -> pd.DataFrame:
    rows = samples.loc[samples["metric"] == metric, [*keys, "timestamp_seconds", "value"]]
    return rows.dropna(subset=keys)


@dataclass(frozen=True)
class _Window:
    history: pd.DataFrame  # every sample up to `end`
    current: pd.DataFrame  # the samples inside [start, end]
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def _counter_rate(
    window: _Window, metric: str, keys: list[str], name: str, on_reset: ResetRule = "post_value"
) -> pd.DataFrame:
    """Rate per series over the window: columns `keys` + `name`; series without one are left out.

    Read at the window's edges (rule 2); where an edge is not covered, the rate over the window's own
    samples."""
    rows = _metric(window.history, metric, keys)
    if rows.empty:
        return pd.DataFrame(columns=[*keys, name])
    series = rows[keys].drop_duplicates(ignore_index=True)
    edges = pd.concat(
        [series.assign(at_seconds=window.start), series.assign(at_seconds=window.end)], ignore_index=True
    )
    at = counters_at(rows, keys, edges, on_reset=on_reset).reshape(2, len(series))
    rate = (at[1] - at[0]) / window.seconds
    from_edges = series.assign(**{name: rate}).dropna(subset=[name])
    uncovered = series.loc[~np.isfinite(rate)]
    if uncovered.empty:
        return from_edges.astype({name: np.float64})
    current = _metric(window.current, metric, keys).merge(uncovered, on=keys)
    fallback = series_rates(current, keys).dropna(subset=["rate_per_second"])
    fallback = fallback[keys].assign(**{name: fallback["rate_per_second"].astype(np.float64)})
    return pd.concat([from_edges, fallback], ignore_index=True).astype({name: np.float64})


def _gauge_mean(samples: pd.DataFrame, metric: str, keys: list[str], name: str) -> pd.DataFrame:
    rows = _metric(samples, metric, keys)
    means = rows.groupby(keys)["value"].mean().reset_index()
    return means[keys].assign(**{name: means["value"].astype(np.float64)})


def _power(window: _Window, energy_metric: str, gauge_metric: str, keys: list[str]) -> pd.DataFrame:
    """Columns `keys`, `power_watts`, `method`: energy-counter rate where it exists, else gauge mean."""
    from_counter = _counter_rate(window, energy_metric, keys, "power_watts", "neighbour_rate")
    # A restart near the window means part of it was filled from the neighbouring rate: say so.
    recent = window.history.loc[window.history["timestamp_seconds"] >= window.start - window.seconds]
    restarted = series_rates(_metric(recent, energy_metric, keys), keys)
    restarted = restarted.loc[restarted["resets"] > 0, keys].assign(_restarted=True)
    from_counter = from_counter.merge(restarted, on=keys, how="left")
    from_counter = from_counter.assign(
        method=np.where(from_counter["_restarted"].eq(True), "energy_counter+reset_fill", "energy_counter")
    ).drop(columns="_restarted")
    from_gauge = _gauge_mean(window.current, gauge_metric, keys, "power_watts").assign(method="power_gauge")
    covered = from_gauge[keys].merge(from_counter[keys], on=keys, how="left", indicator=True)["_merge"]
    from_gauge = from_gauge.loc[(covered == "left_only").to_numpy()]
    return pd.concat([from_counter, from_gauge], ignore_index=True)


def _largest_rise(samples: pd.DataFrame, metric: str, keys: list[str]) -> pd.DataFrame:
    """Largest rise of each gauge series over the window (a later value minus an earlier minimum)."""
    rows = _metric(samples, metric, keys).sort_values([*keys, "timestamp_seconds"])
    rows = rows.assign(rise_watts=rows["value"] - rows.groupby(keys)["value"].cummin())
    return rows.groupby(keys)["rise_watts"].max().reset_index()


def _outer_on(keys: list[str], frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Left-join every frame onto the union of their keys; empty frames still contribute columns."""
    union = pd.concat([f[keys] for f in frames], ignore_index=True).drop_duplicates(ignore_index=True)
    out = union.astype(object)
    for f in frames:
        out = out.merge(f.astype({k: object for k in keys}), on=keys, how="left")
    return out


def _measured_node_power(window: _Window) -> pd.Series:
    node_meters = _power(window, "node_energy_joules_total", "node_power_watts", ["node"])
    return _sum_by(node_meters, "node", "power_watts")


def _fresh_after(window: _Window) -> float:
    """A token counter last read before this is stale: its figures would describe the past."""
    return window.end - 0.5 * window.seconds


def _token_windows(window: _Window) -> pd.DataFrame:
    """Per pod: the token window of rule 5 and the generated tokens in it.

    Columns namespace, pod, token_window_start_seconds, token_window_end_seconds, generation_tokens.
    """
    columns = [*_POD, "token_window_start_seconds", "token_window_end_seconds", "generation_tokens"]
    rows = _metric(window.history, "generation_tokens_total", _POD)
    if rows.empty:
        return pd.DataFrame(columns=columns)
    latest = rows.groupby(_POD)["timestamp_seconds"].transform("max")
    rows = rows.assign(_latest=latest).loc[latest >= window.start]
    early = rows.loc[rows["timestamp_seconds"] <= rows["_latest"] - 0.5 * window.seconds]
    early = early.assign(_distance=(early["timestamp_seconds"] - (early["_latest"] - window.seconds)).abs())
    # Nearest to one window back; on a tie (a dropped scrape) the later sample, a longer span.
    early = early.sort_values([*_POD, "_distance", "timestamp_seconds"], ascending=[True, True, True, False])
    chosen = early.drop_duplicates(_POD, keep="first")[[*_POD, "timestamp_seconds", "_latest"]]
    spans = chosen.rename(
        columns={"timestamp_seconds": "token_window_start_seconds", "_latest": "token_window_end_seconds"}
    ).reset_index(drop=True)
    if spans.empty:
        return pd.DataFrame(columns=columns)
    edges = pd.concat(
        [
            spans[_POD].assign(at_seconds=spans["token_window_start_seconds"]),
            spans[_POD].assign(at_seconds=spans["token_window_end_seconds"]),
        ],
        ignore_index=True,
    )
    at = counters_at(rows, _POD, edges).reshape(2, len(spans))
    spans["generation_tokens"] = at[1] - at[0]
    return spans[columns]


def _series_increase(
    window: _Window, metric: str, keys: list[str], spans: pd.DataFrame, on_reset: ResetRule
) -> np.ndarray:
    """Increase of each row's series (`keys` columns of `spans`) over its own [start, end] span."""
    rows = _metric(window.history, metric, keys)
    if rows.empty or spans.empty:
        return np.full(len(spans), np.nan)
    edges = pd.concat(
        [
            spans[keys].assign(at_seconds=spans["token_window_start_seconds"].to_numpy()),
            spans[keys].assign(at_seconds=spans["token_window_end_seconds"].to_numpy()),
        ],
        ignore_index=True,
    )
    at = counters_at(rows, keys, edges, on_reset=on_reset).reshape(2, len(spans))
    increase: np.ndarray = at[1] - at[0]
    return increase


def _pod_frame(window: _Window, gpus: pd.DataFrame, node_power_watts: pd.Series) -> pd.DataFrame:
    token_spans = _token_windows(window)
    rated = _counter_rate(window, "generation_tokens_total", _POD, "window_tokens_per_second")
    token_rows = _metric(window.history, "generation_tokens_total", _POD)
    last_read = (
        token_rows.groupby(_POD)["timestamp_seconds"].max().reset_index(name="last_token_read_seconds")
    )
    prompt_rate = _counter_rate(window, "prompt_tokens_total", _POD, "prompt_tokens_per_second")
    cpu_power = _counter_rate(
        window, "pod_cpu_energy_joules_total", _POD, "cpu_power_watts", "neighbour_rate"
    )
    kepler_gpu = _counter_rate(
        window, "pod_gpu_energy_joules_total", _POD, "kepler_gpu_watts", "neighbour_rate"
    )

    span_seconds = token_spans["token_window_end_seconds"] - token_spans["token_window_start_seconds"]
    token_spans = token_spans.assign(span_tokens_per_second=token_spans["generation_tokens"] / span_seconds)
    load = _outer_on(_POD, [rated, token_spans[[*_POD, "span_tokens_per_second"]]])
    load["generation_tokens_per_second"] = load["span_tokens_per_second"].where(
        load["span_tokens_per_second"].notna(), load["window_tokens_per_second"]
    )
    utilization = _gauge_mean(window.current, "pod_gpu_utilization_ratio", _POD, "utilization_ratio")
    current = _metric(window.current, "gpu_assignment_info", [*_GPU, *_POD]).sort_values("timestamp_seconds")
    latest = current.groupby([*_GPU, *_POD])["value"].last().reset_index()
    assignments = latest.loc[latest["value"] > 0, [*_GPU, *_POD]]
    shares = split_gpu_power(
        gpus, assignments, _outer_on(_POD, [load[[*_POD, "generation_tokens_per_second"]], utilization])
    )
    # Energy of each GPU share over the pod's token window (rule 5); the share's power times the span
    # where the GPU has no counter covering it.
    shares = shares.merge(token_spans, on=_POD, how="left")
    span_energy = _series_increase(window, "gpu_energy_joules_total", _GPU, shares, "neighbour_rate")
    share_span = (shares["token_window_end_seconds"] - shares["token_window_start_seconds"]).to_numpy(
        np.float64
    )
    shares["span_gpu_joules"] = np.where(
        np.isfinite(span_energy),
        shares["share_ratio"].to_numpy(np.float64) * span_energy,
        shares["gpu_share_watts"].to_numpy(np.float64) * share_span,
    )
    by_pod = shares.groupby(_POD)
    gpu_per_pod = pd.DataFrame(
        {
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
    gpu_per_pod = gpu_per_pod.merge(joined, on=_POD, how="left")

    labelled = window.current.dropna(subset=[*_POD, "node"]).sort_values("timestamp_seconds")
    pod_nodes = labelled.groupby(_POD)["node"].last().reset_index()
    pod_nodes = pod_nodes.rename(columns={"node": "label_node"})
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
    numeric += ["token_window_start_seconds", "token_window_end_seconds"]
    pods[numeric] = pods[numeric].astype(np.float64)
    use_kepler_gpu = pods["gpu_power_watts"].isna() & pods["kepler_gpu_watts"].notna()
    pods.loc[use_kepler_gpu, "gpu_power_watts"] = pods.loc[use_kepler_gpu, "kepler_gpu_watts"]
    pods.loc[use_kepler_gpu, "gpu_method"] = "kepler_gpu"
    pods = fit_cpu_to_node(pods, node_power_watts)
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
    pods["window_start_seconds"] = float(window.start)
    pods["window_end_seconds"] = float(window.end)
    return pods.sort_values(_POD, ignore_index=True)[POD_COLUMNS]


def _with_recorded(pods: pd.DataFrame, window: _Window) -> pd.DataFrame:
    """Pods whose figures recording rules computed take those (`estimators.recorded`) instead."""
    recorded = recorded_pods(window.current, window.seconds)
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


def _node_frame(
    window: _Window,
    gpus: pd.DataFrame,
    measured: pd.Series,
    pods: pd.DataFrame,
    node_racks: Mapping[str, str],
) -> pd.DataFrame:
    gpu_sum = _sum_by(gpus, "node", "power_watts")
    with_node = pods.loc[pods["node"].notna() & pods["power_watts"].notna()]
    cpu = with_node.assign(cpu_watts=with_node["power_watts"] - with_node["gpu_power_watts"].fillna(0.0))
    cpu_by_node = _sum_by(cpu, "node", "cpu_watts")

    names = sorted(set(window.current["node"].dropna()) | set(node_racks))
    index = pd.Index(names, name="node", dtype=object)
    nodes = pd.DataFrame(index=index)
    nodes["gpu_power_watts"] = gpu_sum.reindex(index)
    node_power = measured.reindex(index)
    nodes["estimated"] = node_power.isna()
    summed = nodes["gpu_power_watts"].add(cpu_by_node.reindex(index), fill_value=0.0)
    nodes["node_power_watts"] = node_power.where(~nodes["estimated"], summed)
    nodes["window_end_seconds"] = float(window.end)
    return nodes.reset_index()[NODE_COLUMNS]


def _rack_frame(
    window: _Window, nodes: pd.DataFrame, node_racks: Mapping[str, str], racks: pd.DataFrame
) -> pd.DataFrame:
    # A rack with a single meter may not label it: the rack alone then names the series.
    def unlabelled(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.assign(pdu=frame["pdu"].astype(object).where(frame["pdu"].notna(), ""))

    window = _Window(unlabelled(window.history), unlabelled(window.current), window.start, window.end)
    samples = window.current
    pdus = _power(window, "pdu_energy_joules_total", "pdu_power_watts", ["rack", "pdu"])
    pdu_sum = _sum_by(pdus, "rack", "power_watts")
    rise_sum = _sum_by(_largest_rise(samples, "pdu_power_watts", ["rack", "pdu"]), "rack", "rise_watts")
    membership = pd.DataFrame({"node": list(node_racks), "rack": list(node_racks.values())}, dtype=object)
    node_sum = _sum_by(
        membership.merge(nodes[["node", "node_power_watts"]], on="node"), "rack", "node_power_watts"
    )

    config = racks.astype({"rack": object}).drop_duplicates("rack", keep="last").set_index("rack")
    names = sorted(set(config.index) | set(pdu_sum.index) | set(membership["rack"]))
    index = pd.Index(names, name="rack", dtype=object)
    out = pd.DataFrame(index=index)
    measured = pdu_sum.reindex(index)
    out["estimated"] = measured.isna()
    out["rack_power_watts"] = measured.where(~out["estimated"], node_sum.reindex(index))
    out["cap_watts"] = config["cap_watts"].reindex(index).astype(np.float64)
    margin_ratio = config["margin_ratio"].reindex(index).astype(np.float64).fillna(0.0)
    error_ratio = np.where(out["estimated"], SUMMED_ESTIMATE_ERROR_RATIO, PDU_SENSOR_ERROR_RATIO)
    out["margin_watts"] = margin_watts(
        out["cap_watts"], margin_ratio, rise_sum.reindex(index), out["rack_power_watts"], error_ratio
    )
    headroom, overdraw = headroom_and_overdraw(out["cap_watts"], out["margin_watts"], out["rack_power_watts"])
    out["headroom_watts"] = headroom
    out["overdraw_watts"] = overdraw
    out["window_end_seconds"] = float(window.end)
    return out.reset_index()[RACK_COLUMNS]


def estimate_fleet(
    samples: pd.DataFrame,
    *,
    node_racks: Mapping[str, str],
    racks: pd.DataFrame,
    window_seconds: float,
    now_seconds: float,
) -> FleetEstimate:
    """Pod, node and rack power over the window ending at `now_seconds` (rules in the module docstring).

    `racks` has columns `rack`, `cap_watts`, `margin_ratio`; `node_racks` maps node name -> rack.
    """
    if not window_seconds > 0:
        raise ValueError(f"window_seconds must be > 0, got {window_seconds}")
    labels = ["node", "gpu_uuid", "namespace", "pod", "rack", "pdu"]
    frame = _with_labels(samples, labels).astype({"value": np.float64, "timestamp_seconds": np.float64})
    # Every helper selects rows by metric: compare category codes, not strings.
    frame = frame.assign(metric=frame["metric"].astype("category"))
    history = frame.loc[frame["timestamp_seconds"] <= now_seconds]
    start = now_seconds - window_seconds
    window = _Window(history, history.loc[history["timestamp_seconds"] >= start], start, float(now_seconds))
    # Each GPU's and node's power once per pass: the pod and node frames both start from them.
    gpus = _power(window, "gpu_energy_joules_total", "gpu_power_watts", _GPU)
    measured = _measured_node_power(window)
    pods = _with_recorded(_pod_frame(window, gpus, measured), window)
    nodes = _node_frame(window, gpus, measured, pods, node_racks)
    rack_frame = _rack_frame(window, nodes, node_racks, racks)
    return FleetEstimate(pods=pods, nodes=nodes, racks=rack_frame)


def aggregate_pods(pods: pd.DataFrame, group_of_pod: pd.Series) -> pd.DataFrame:
    """Sum pods into groups (workloads, namespaces). Pods whose group is NaN are left out.

    `watts_per_token` is the group's summed energy over its summed generated tokens, never a mean of
    the pods' ratios: an idle replica still costs joules, and a busy one weighs by its tokens.
    """
    frame = pods.assign(group=group_of_pod.reindex(pods.index)).dropna(subset=["group"])
    if frame.empty:
        return pd.DataFrame(columns=GROUP_COLUMNS)
    grouped = frame.groupby("group", sort=True)
    out = grouped.agg(
        power_watts=("power_watts", lambda s: s.sum(min_count=1)),
        gpu_power_watts=("gpu_power_watts", lambda s: s.sum(min_count=1)),
        generation_tokens_per_second=("generation_tokens_per_second", lambda s: s.sum(min_count=1)),
        energy_joules=("energy_joules", lambda s: s.sum(min_count=1)),
        generation_tokens=("generation_tokens", lambda s: s.sum(min_count=1)),
        window_start_seconds=("window_start_seconds", "min"),
        window_end_seconds=("window_end_seconds", "max"),
        pods=("pod", "size"),
    )
    tokens = out["generation_tokens"].where(out["generation_tokens"] > 0)
    out["watts_per_token"] = out["energy_joules"] / tokens
    return out.reset_index()[GROUP_COLUMNS]


__all__ = ["FleetEstimate", "aggregate_pods", "estimate_fleet", "replicas_within_budget"]
