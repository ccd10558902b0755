"""What a monitoring system would have seen of a dense trace: scrapes at offsets, drops, restarts.

Tests and notebooks use this to turn the H100 trace (NVML every ~50 ms, every forward step timed) into
the samples a cluster really produces, and to compute the truth an estimate is judged against. All
functions are pure; reading the trace's files is the caller's business.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from estimators.rates import FloatArray


@dataclass(frozen=True, slots=True, kw_only=True)
class ScrapePlan:
    """When one target is scraped: every `interval_seconds` from `offset_seconds`, some dropped."""

    interval_seconds: float = 15.0
    offset_seconds: float = 0.0
    drop_ratio: float = 0.0
    jitter_seconds: float = 0.0

    def times(self, start_seconds: float, end_seconds: float, rng: np.random.Generator) -> FloatArray:
        grid = np.arange(start_seconds + self.offset_seconds, end_seconds, self.interval_seconds)
        grid = grid + rng.uniform(-self.jitter_seconds, self.jitter_seconds, grid.size)
        kept = rng.random(grid.size) >= self.drop_ratio
        times: FloatArray = np.sort(grid[kept & (grid >= start_seconds) & (grid <= end_seconds)])
        return times


def token_counters(steps: pd.DataFrame) -> pd.DataFrame:
    """Cumulative generated and prompt tokens after each forward step, as a server's counters would
    read. A decode step adds `tokens` generated tokens at its end; a prefill step adds prompt tokens.

    `steps` has the columns of the trace's steps.csv: t_end, kind ("prefill" or "decode"), tokens.
    Returns columns timestamp_seconds, generation_tokens_total, prompt_tokens_total.
    """
    ordered = steps.sort_values("t_end")
    generated = np.where(ordered["kind"] == "decode", ordered["tokens"], 0).cumsum()
    prompted = np.where(ordered["kind"] == "prefill", ordered["tokens"], 0).cumsum()
    return pd.DataFrame(
        {
            "timestamp_seconds": ordered["t_end"].to_numpy(np.float64),
            "generation_tokens_total": generated.astype(np.float64),
            "prompt_tokens_total": prompted.astype(np.float64),
        }
    )


def step_value_at(times: npt.ArrayLike, values: npt.ArrayLike, at_seconds: npt.ArrayLike) -> FloatArray:
    """The last value reported at or before each instant (0 before the first): how a counter or a
    gauge that changes in steps reads when scraped."""
    t = np.asarray(times, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    index = np.searchsorted(t, np.asarray(at_seconds, dtype=np.float64), side="right") - 1
    read: FloatArray = np.where(index >= 0, v[np.clip(index, 0, None)], 0.0)
    return read


def with_restart(times: npt.ArrayLike, values: npt.ArrayLike, restart_seconds: float) -> FloatArray:
    """A counter that restarted from zero at `restart_seconds` (its exporter or server restarted)."""
    t = np.asarray(times, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    at_restart = float(np.interp(restart_seconds, t, v))
    restarted: FloatArray = np.where(t >= restart_seconds, v - at_restart, v)
    return restarted


def long_frame(timestamps_seconds: npt.ArrayLike, metric: str, values: npt.ArrayLike) -> pd.DataFrame:
    """Rows of the `timestamp,metric,value` shape the estimators and `wattscale estimate` read."""
    return pd.DataFrame(
        {
            "timestamp_seconds": np.asarray(timestamps_seconds, dtype=np.float64),
            "metric": metric,
            "value": np.asarray(values, dtype=np.float64),
        }
    )


def true_joules_per_token(
    energy_times: npt.ArrayLike,
    energy_joules_total: npt.ArrayLike,
    tokens: pd.DataFrame,
    edges_seconds: npt.ArrayLike,
) -> pd.DataFrame:
    """The truth for windows [edges[i], edges[i+1]]: energy from the dense counter, generated tokens
    from the step log. Columns window_start_seconds, window_end_seconds, energy_joules,
    generation_tokens, watts_per_token."""
    edges = np.asarray(edges_seconds, dtype=np.float64)
    counter = np.asarray(energy_joules_total, dtype=np.float64)
    energy = np.diff(np.interp(edges, np.asarray(energy_times, dtype=np.float64), counter))
    generated = np.diff(step_value_at(tokens["timestamp_seconds"], tokens["generation_tokens_total"], edges))
    with np.errstate(divide="ignore", invalid="ignore"):
        per_token = energy / np.where(generated > 0, generated, np.nan)
    return pd.DataFrame(
        {
            "window_start_seconds": edges[:-1],
            "window_end_seconds": edges[1:],
            "energy_joules": energy,
            "generation_tokens": generated,
            "watts_per_token": per_token,
        }
    )


def scrape_trace(
    samples: pd.DataFrame,
    steps: pd.DataFrame,
    *,
    energy_plan: ScrapePlan,
    token_plan: ScrapePlan,
    rng: np.random.Generator,
    energy_restart_seconds: float | None = None,
    start_seconds: float | None = None,
    end_seconds: float | None = None,
) -> pd.DataFrame:
    """The H100 trace as a cluster would have scraped it, in the `timestamp,metric,value` shape.

    `samples` has the trace's samples.csv columns t, energy_j, power_w (`power_w` is NVML's 1 s
    average on an H100); `steps` has steps.csv's. `requests_running` is the batch of the step in
    progress at the scrape (0 between runs; the gap between steps of one run, under 50 ms, counts as
    running). The GPU exporter (energy counter and power gauge)
    follows `energy_plan`, the inference server (token counters) `token_plan`; the energy counter
    optionally restarts from zero at `energy_restart_seconds`.
    """
    start = float(steps["t_start"].min()) if start_seconds is None else start_seconds
    end = float(steps["t_end"].max()) if end_seconds is None else end_seconds
    t = samples["t"].to_numpy(np.float64)
    energy = samples["energy_j"].to_numpy(np.float64)
    if energy_restart_seconds is not None:
        energy = with_restart(t, energy, energy_restart_seconds)
    gpu_times = energy_plan.times(start, end, rng)
    token_times = token_plan.times(start, end, rng)
    tokens = token_counters(steps)
    ordered = steps.sort_values("t_start")
    step_index = np.searchsorted(ordered["t_start"].to_numpy(np.float64), token_times, side="right") - 1
    in_step = (step_index >= 0) & (
        token_times <= ordered["t_end"].to_numpy(np.float64)[np.clip(step_index, 0, None)] + 0.05
    )
    running = np.where(in_step, ordered["batch"].to_numpy(np.float64)[np.clip(step_index, 0, None)], 0.0)
    return pd.concat(
        [
            long_frame(gpu_times, "gpu_energy_joules_total", np.interp(gpu_times, t, energy)),
            long_frame(gpu_times, "gpu_power_watts", step_value_at(t, samples["power_w"], gpu_times)),
            long_frame(
                token_times,
                "generation_tokens_total",
                step_value_at(tokens["timestamp_seconds"], tokens["generation_tokens_total"], token_times),
            ),
            long_frame(
                token_times,
                "prompt_tokens_total",
                step_value_at(tokens["timestamp_seconds"], tokens["prompt_tokens_total"], token_times),
            ),
            long_frame(token_times, "requests_running", running),
        ],
        ignore_index=True,
    )


def compare_to_truth(estimate: pd.DataFrame, samples: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """`estimate` (from `estimators.energy.watts_per_token`) with the truth over the same windows
    (`true_watts_per_token`, from the dense energy counter and the step log) and `relative_error`."""
    if estimate.empty:
        return estimate.assign(true_watts_per_token=[], relative_error=[])
    edges = np.append(estimate["window_start_seconds"].to_numpy(), estimate["window_end_seconds"].iloc[-1])
    truth = true_joules_per_token(samples["t"], samples["energy_j"], token_counters(steps), edges)
    compared = estimate.assign(true_watts_per_token=truth["watts_per_token"].to_numpy())
    return compared.assign(
        relative_error=compared["watts_per_token"] / compared["true_watts_per_token"] - 1.0
    )
