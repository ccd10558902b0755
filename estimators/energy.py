"""Watts per token (joules per generated token) over windows, offline: the served estimator replayed.

Input: a long frame with columns `timestamp_seconds`, `metric`, `value`, and optionally label columns
(`gpu_uuid`, `pod`, ...). There is ONE watts-per-token rule, `estimators.fleet` rule 5, and this
module only replays it: each window is exactly the figure the server publishes for a pod whose newest
token sample is the window's end (the served pass just before the next token scrape arrives, or half
a window after it, whichever is first). A test feeds the same samples through `wattscale estimate`
and the running pipeline and checks they agree.

Without `gpu_assignment_info` samples the whole input is one pod: every GPU series (each distinct
label combination) belongs to it and is summed, and every token series is its token counter.
Windows chain backwards from the newest token sample: each window's start is the token sample
nearest to one window before its end (never less than half a window back), and is the previous
window's end. Method per window (column `method`): `energy_counter` (GPU energy counter read at
the window's edges), `energy_counter+reset_fill` (a counter restarted nearby: the lost part is
filled from the neighbouring rate), `power_model` (a gauge-only GPU: the learned power model blended
with the gauge readings, `estimators.gauge_model`, learning from earlier windows only, as the server
does), `power_gauge` (the power gauge's mean over the window, until that model has learned enough),
`none` (no power input). Column `confidence` (low/medium/high) rates the gauge-only windows.

Variants: `watts_per_token` divides by generated tokens (the served metric); `joules_per_token_with_prompt`
divides by generated plus prompt tokens. The idle (static) share is `idle_power_watts` x window
seconds per generated token; the dynamic share is the rest (never below zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from estimators.fleet import POD_COLUMNS, estimate_fleet
from estimators.gauge_model import GaugeModels
from estimators.rates import FloatArray, ResetRule, counter_at, gauge_integral

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
    "confidence",
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


POD = ("", "samples")
"""(namespace, pod) of input without pods: the whole input is one pod."""
_GPU_METRICS = ("gpu_energy_joules_total", "gpu_power_watts")
_POD_METRICS = ("generation_tokens_total", "prompt_tokens_total")


def as_one_pod(samples: pd.DataFrame, metrics: Metrics) -> pd.DataFrame:
    """Input without assignments made into one pod on all its GPUs, in the served estimator's labels."""
    labels = [c for c in samples.columns if c not in _BASE_COLUMNS]
    gpu_rows = samples["metric"].isin([metrics.energy, metrics.power])
    series = (
        samples[labels].astype(object).fillna("").astype(str).agg("|".join, axis=1)
        if labels
        else pd.Series("", index=samples.index)
    )
    namespace, pod = POD
    frame = pd.DataFrame(
        {
            "metric": samples["metric"]
            .replace({metrics.energy: _GPU_METRICS[0], metrics.power: _GPU_METRICS[1]})
            .replace({metrics.generation_tokens: _POD_METRICS[0], metrics.prompt_tokens: _POD_METRICS[1]}),
            "value": samples["value"].to_numpy(np.float64),
            "timestamp_seconds": samples["timestamp_seconds"].to_numpy(np.float64),
            "node": "",
            "gpu_uuid": series.where(gpu_rows, None),
            "namespace": pd.Series(namespace, index=samples.index, dtype=object).where(~gpu_rows, None),
            "pod": pd.Series(pod, index=samples.index, dtype=object).where(~gpu_rows, None),
        }
    )
    gpus = frame.loc[gpu_rows.to_numpy()]
    assigned = gpus.assign(metric="gpu_assignment_info", value=1.0, namespace=namespace, pod=pod)
    return pd.concat([frame, assigned], ignore_index=True)


def _pass_times(token_times: FloatArray, end: float, window_seconds: float) -> float:
    """When the server publishes the window ending at token sample `end`: just before the next token
    sample arrives, and no later than half a window after `end` (then it calls the figures stale)."""
    later = token_times[token_times > end]
    before_next = float(later[0]) - 1e-3 if later.size else float(token_times[-1])
    return max(end, min(before_next, end + 0.5 * window_seconds))


def served_windows(
    samples: pd.DataFrame, pod: tuple[str, str], *, window_seconds: float, power_model: bool = True
) -> pd.DataFrame:
    """The served estimator's pod rows (`estimators.fleet.POD_COLUMNS`) for `pod`, one per window,
    chained backwards from its newest token sample (module docstring), oldest first. `power_model=False`
    keeps a gauge-only GPU on the gauge's mean (the baseline the learned model is measured against)."""
    tokens = samples.loc[
        (samples["metric"] == "generation_tokens_total")
        & (samples["namespace"] == pod[0])
        & (samples["pod"] == pod[1])
    ]
    token_times = np.unique(tokens["timestamp_seconds"].to_numpy(np.float64))
    racks = pd.DataFrame(columns=["rack", "cap_watts", "margin_ratio"])

    def pod_row(now: float, models: GaugeModels | None) -> pd.DataFrame:
        pods = estimate_fleet(
            samples,
            node_racks={},
            racks=racks,
            window_seconds=window_seconds,
            now_seconds=now,
            gauge_models=models,
        ).pods
        return pods.loc[(pods["namespace"] == pod[0]) & (pods["pod"] == pod[1])]

    rows: list[pd.Series] = []
    passes: list[float] = []
    end = float(token_times[-1]) if token_times.size else np.nan
    while np.isfinite(end) and end > token_times[0]:
        now = _pass_times(token_times, end, window_seconds)
        row = pod_row(now, None)
        if row.empty or row["token_window_end_seconds"].iloc[0] != end:
            break
        rows.append(row.iloc[0])
        passes.append(now)
        end = float(row["token_window_start_seconds"].iloc[0])
    if power_model and any(str(row["method"]).startswith("power_gauge") for row in rows):
        # A gauge-only GPU: the server's power model learns pass by pass from the past, so replay
        # the same passes oldest first with one learning model (`estimators.gauge_model`).
        models = GaugeModels()
        rows = [pod_row(now, models).iloc[0] for now in passes[::-1]][::-1]
    return pd.DataFrame(rows[::-1], columns=POD_COLUMNS).reset_index(drop=True)


def watts_per_token(
    samples: pd.DataFrame,
    *,
    window_seconds: float,
    idle_power_watts: float | None = None,
    metrics: Metrics | None = None,
    power_model: bool = True,
) -> pd.DataFrame:
    """Joules per generated token for each window (columns `OUTPUT_COLUMNS`; rules in the module doc);
    per pod (columns `namespace`, `pod` first) when the input assigns GPUs to pods. `power_model`: as
    in `served_windows`.

    `idle_power_watts` is the static power of the GPUs summed (for one H100 about 75 W); by default
    the lowest power seen in any window, which overstates idle for a workload that never idles.
    """
    if not window_seconds > 0:
        raise ValueError(f"window_seconds must be > 0, got {window_seconds}")
    names = metrics or Metrics()
    frame = samples.astype({"timestamp_seconds": np.float64, "value": np.float64})
    if not (frame["metric"] == "gpu_assignment_info").any():
        return _figures(
            served_windows(
                as_one_pod(frame, names), POD, window_seconds=window_seconds, power_model=power_model
            ),
            idle_power_watts,
        )
    # Input with assignments (as `wattscale export` writes it): one set of windows per pod.
    tokens = frame.loc[frame["metric"] == names.generation_tokens, ["namespace", "pod"]].dropna()
    per_pod = [
        _figures(
            served_windows(
                frame, (str(ns), str(pod)), window_seconds=window_seconds, power_model=power_model
            ),
            idle_power_watts,
        ).assign(namespace=str(ns), pod=str(pod))
        for ns, pod in tokens.drop_duplicates().sort_values(["namespace", "pod"]).itertuples(index=False)
    ]
    if not per_pod:
        return pd.DataFrame(columns=["namespace", "pod", *OUTPUT_COLUMNS])
    return pd.concat(per_pod, ignore_index=True)[["namespace", "pod", *OUTPUT_COLUMNS]]


def _figures(pods: pd.DataFrame, idle_power_watts: float | None) -> pd.DataFrame:
    """`OUTPUT_COLUMNS` from the served estimator's pod rows."""
    start = pods["token_window_start_seconds"].to_numpy(np.float64)
    end = pods["token_window_end_seconds"].to_numpy(np.float64)
    seconds = end - start
    energy = pods["energy_joules"].to_numpy(np.float64)
    generated = pods["generation_tokens"].to_numpy(np.float64)
    prompt = pods["prompt_tokens"].to_numpy(np.float64)
    power = energy / seconds
    if idle_power_watts is None:
        idle = float(np.nanmin(power)) if np.isfinite(power).any() else np.nan
    else:
        idle = idle_power_watts
    method = pods["method"].astype(str).str.replace(r"/.*$", "", regex=True).replace({"": "none"})
    with np.errstate(divide="ignore", invalid="ignore"):
        tokens = np.where(generated > 0, generated, np.nan)
        with_prompt = generated + np.nan_to_num(prompt)
        out = pd.DataFrame(
            {
                "window_start_seconds": start,
                "window_end_seconds": end,
                "energy_joules": energy,
                "power_watts": power,
                "generation_tokens": generated,
                "prompt_tokens": prompt,
                "tokens_per_second": generated / seconds,
                "watts_per_token": pods["watts_per_token"].to_numpy(np.float64),
                "joules_per_token_with_prompt": energy / np.where(with_prompt > 0, with_prompt, np.nan),
                "idle_power_watts": idle,
                "idle_joules_per_token": idle * seconds / tokens,
                "dynamic_joules_per_token": np.maximum(energy - idle * seconds, 0.0) / tokens,
                "method": method.to_numpy(),
                "confidence": pods["confidence"].to_numpy(dtype=object),
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

    def per_window(metric: str, on_reset: ResetRule) -> FloatArray:
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
