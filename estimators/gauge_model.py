"""Window energy from power gauges and exact token counts, with a power model learned online.

Why: a GPU exporter that gives a power gauge but no energy counter shows one 1 s average every scrape
(15 s). Under LLM batching one such reading scatters about 45% around the window's mean power, and
readings a few seconds apart scatter independently, so the one or two readings inside a 30 s window
cannot tell its energy. What is known exactly is the token counters' increase between their scrapes,
and power follows those counts: energy is additive, so over a token interval

    joules = (idle + busy x busy_ratio) x seconds + J/generated token x generated + J/prompt token x prompt

with every term non-negative. `GaugePowerModel` learns that model online from past (gauge reading,
rates of the token interval containing it) pairs: a reading taken at a moment independent of the load
is an unbiased sample of its interval's mean power, so least squares over many pairs converges on the
interval's mean power however noisy each reading is.

A window (its edges are token scrapes, so it is a run of whole token intervals) then has two estimates
of its mean power: the model's, from its exact token counts, and the direct one, the mean of the gauge
readings inside it. They are blended by inverse variance. The model's variance is its coefficients'
covariance carried to the window's token counts plus the error of the model's form; the readings'
is their scatter around the model. Both come from the model's one-step-ahead residuals (each reading
against the model as it was before learning it), read as a variogram: what residuals of neighbouring
readings share is the model form's error (it depends on the load, which persists), what they do not
share is the gauge's own scatter (its nugget).

`confidence`: `low` until the model has learned `min_history` pairs, for a window holding a token
counter restart, or when the estimate's relative standard deviation exceeds `MEDIUM_RELATIVE_STD`;
`medium` up to it; `high` at or below `HIGH_RELATIVE_STD`. `method` is `power_model` when the model
took part (once `is_measured`), `power_gauge` before.

Energy counters scraped at other moments than the token counters (the usual case: the GPU exporter
and the inference server are scraped at unrelated phases):
`shaped_counter_at` reads an energy counter at the token scrapes, spreading each scrape interval's
exact joules over time in proportion to the power the model gives the token intervals it overlaps,
instead of evenly. The counter's increase between its own scrapes is kept exactly.

All functions are pure and take time as data.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Self

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.linear_model import LinearRegression
from sklearn.utils.validation import check_is_fitted, validate_data

from estimators.rates import FloatArray, _as_sorted, counter_at, reset_corrected

FEATURES = ["busy_ratio", "generation_tokens_per_second", "prompt_tokens_per_second"]
COEFFICIENTS = ["idle_watts", "busy_watts", "joules_per_generated_token", "joules_per_prompt_token"]
HIGH_RELATIVE_STD = 0.05
MEDIUM_RELATIVE_STD = 0.15
INTERVAL_COLUMNS = [
    "start_seconds",
    "end_seconds",
    "seconds",
    "generation_tokens",
    "prompt_tokens",
    *FEATURES,
    "reset",
]
WINDOW_COLUMNS = [
    "window_start_seconds",
    "window_end_seconds",
    "energy_joules",
    "power_watts",
    "generation_tokens",
    "prompt_tokens",
    "watts_per_token",
    "model_power_watts",
    "gauge_power_watts",
    "gauge_readings",
    "relative_std",
    "method",
    "confidence",
]
MEASURED_RESIDUALS = 8
_MIN_VARIANCE = 1e-6  # (0.1%)^2: no estimate is ever taken as exact


def token_intervals(
    times_seconds: npt.ArrayLike, generation_total: npt.ArrayLike, prompt_total: npt.ArrayLike | None = None
) -> pd.DataFrame:
    """The token counters' scrape intervals: exact tokens between consecutive scrapes (columns
    `INTERVAL_COLUMNS`). A counter that went down restarted inside the interval: its tokens are the
    value after the restart (what is known, a lower bound) and `reset` is True.

    `busy_ratio` is 1 where any token was counted, else 0: a server with requests draws its busy power
    however few tokens it makes."""
    t = np.asarray(times_seconds, dtype=np.float64)
    order = np.argsort(t, kind="stable")
    t = t[order]
    generated = np.asarray(generation_total, dtype=np.float64)[order]
    prompted = (
        np.zeros_like(generated)
        if prompt_total is None
        else np.asarray(prompt_total, dtype=np.float64)[order]
    )
    if t.size < 2:
        return pd.DataFrame(columns=INTERVAL_COLUMNS).astype({c: np.float64 for c in INTERVAL_COLUMNS[:-1]})
    gen_steps = np.diff(reset_corrected(generated))
    prompt_steps = np.diff(reset_corrected(prompted))
    seconds = np.diff(t)
    reset = (np.diff(generated) < 0) | (np.diff(prompted) < 0)
    busy = ((gen_steps + prompt_steps) > 0).astype(np.float64)
    return (
        pd.DataFrame(
            {
                "start_seconds": t[:-1],
                "end_seconds": t[1:],
                "seconds": seconds,
                "generation_tokens": gen_steps,
                "prompt_tokens": prompt_steps,
                "busy_ratio": busy,
                "generation_tokens_per_second": gen_steps / seconds,
                "prompt_tokens_per_second": prompt_steps / seconds,
                "reset": reset,
            }
        )
        .loc[seconds > 0]
        .reset_index(drop=True)
    )


def gauge_pairs(
    intervals: pd.DataFrame, gauge_times: npt.ArrayLike, gauge_watts: npt.ArrayLike
) -> pd.DataFrame:
    """One row per gauge reading that falls inside a token interval without a restart: the interval's
    `FEATURES`, `power_watts` (the reading), `timestamp_seconds` and `interval_end_seconds` (when the
    pair became known: the scrape that closed the interval)."""
    t = np.asarray(gauge_times, dtype=np.float64)
    watts = np.asarray(gauge_watts, dtype=np.float64)
    columns = [*FEATURES, "power_watts", "timestamp_seconds", "interval_end_seconds"]
    if intervals.empty or t.size == 0:
        return pd.DataFrame(columns=columns, dtype=np.float64)
    starts = intervals["start_seconds"].to_numpy(np.float64)
    ends = intervals["end_seconds"].to_numpy(np.float64)
    index = np.searchsorted(starts, t, side="right") - 1
    inside = (index >= 0) & np.isfinite(watts)
    inside &= t < ends[np.clip(index, 0, None)]
    chosen = intervals.iloc[index[inside]]
    keep = ~chosen["reset"].to_numpy(bool)
    chosen = chosen.loc[keep]
    return pd.DataFrame(
        {
            **{name: chosen[name].to_numpy(np.float64) for name in FEATURES},
            "power_watts": watts[inside][keep],
            "timestamp_seconds": t[inside][keep],
            "interval_end_seconds": chosen["end_seconds"].to_numpy(np.float64),
        }
    )[columns]


class GaugePowerModel(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """Mean GPU power of a token interval from its load (`FEATURES`), learned online from gauge readings.

    Power = idle + sum of non-negative coefficients x features, idle non-negative too: scikit-learn's
    `LinearRegression(positive=True)` (non-negative least squares) on the features with a column of
    ones and no free intercept. Weighted by 1 / predicted power squared (refitted once with the
    first fit's predictions): a reading's scatter grows with the power it reads, and equal weights
    let the few prefill spikes steer the fit. `partial_fit` keeps the newest `max_history` pairs and
    refits on them, so the model follows a change of workload within that many readings.

    `model_form_std` is the relative error of the model's form itself (the best such model's error on a
    30 s window), which gauge readings cannot measure within hours (they scatter ten times more):
    4% by default, what the best fit to the dense energy counter of the H100 trace leaves (median 2%,
    p90 6%; `bench/estimator_accuracy.py`).

    Learned: `coef_` (idle watts, then one per feature: for `FEATURES` busy watts, J/generated token,
    J/prompt token), `coef_covariance_` (their covariance, from the weighted residuals), `n_seen_`
    (pairs learned) and, from one-step-ahead relative residuals (each batch of pairs is predicted
    before it is learned; the newest `max_history` kept in `residuals_`), `shared_variance_` (what
    neighbouring residuals share: the model form's own error, relative, squared; never below
    `model_form_std` squared) and
    `gauge_variance_` (one reading's scatter around its interval's mean, relative, squared).
    """

    coef_: FloatArray
    coef_covariance_: FloatArray
    history_X_: FloatArray
    history_y_: FloatArray
    residuals_: FloatArray
    n_seen_: int
    shared_variance_: float
    gauge_variance_: float

    def __init__(self, max_history: int = 2000, min_history: int = 60, model_form_std: float = 0.04) -> None:
        self.max_history = max_history
        self.min_history = min_history
        self.model_form_std = model_form_std

    def fit(self, X: npt.ArrayLike | pd.DataFrame, y: npt.ArrayLike) -> Self:
        for name in ("coef_", "history_X_", "history_y_", "residuals_", "n_seen_"):
            if hasattr(self, name):
                delattr(self, name)
        return self.partial_fit(X, y)

    def partial_fit(self, X: npt.ArrayLike | pd.DataFrame, y: npt.ArrayLike) -> Self:
        if self.max_history < 2 or self.min_history < 0 or not self.model_form_std >= 0:
            raise ValueError(
                "max_history must be >= 2, min_history and model_form_std >= 0; got "
                f"{self.max_history}, {self.min_history}, {self.model_form_std}"
            )
        first = not hasattr(self, "coef_")
        X_checked, y_checked = validate_data(self, X, y, y_numeric=True, reset=first)
        rows = np.column_stack((np.ones(len(X_checked)), X_checked))
        if first:
            self.history_X_ = np.empty((0, rows.shape[1]))
            self.history_y_ = np.empty(0)
            self.residuals_ = np.empty(0)
            self.n_seen_ = 0
        else:
            predicted = rows @ self.coef_
            with np.errstate(invalid="ignore", divide="ignore"):
                relative = (y_checked - predicted) / np.where(predicted > 0, predicted, np.nan)
            self.residuals_ = np.append(self.residuals_, relative[np.isfinite(relative)])[-self.max_history :]
        self.history_X_ = np.vstack((self.history_X_, rows))[-self.max_history :]
        self.history_y_ = np.append(self.history_y_, y_checked)[-self.max_history :]
        self.n_seen_ += len(X_checked)
        self.coef_, self.coef_covariance_ = _weighted_nonnegative_fit(self.history_X_, self.history_y_)
        shared, self.gauge_variance_ = _variance_components(self.residuals_)
        self.shared_variance_ = max(shared, self.model_form_std**2)
        return self

    def predict(self, X: npt.ArrayLike | pd.DataFrame) -> npt.NDArray[np.float64]:
        check_is_fitted(self)
        X_checked = validate_data(self, X, reset=False)
        predicted: npt.NDArray[np.float64] = X_checked @ self.coef_[1:] + self.coef_[0]
        return predicted

    def energy(self, totals: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """(joules, relative variance) of runs of intervals from their totals: one row per run of
        [seconds, then each feature integrated over the run] - for `FEATURES`: seconds, busy seconds,
        generated tokens, prompt tokens, the window's exact counts. The variance carries the
        coefficients' uncertainty through and adds the model form's own error (`shared_variance_`)."""
        check_is_fitted(self)
        rows = np.atleast_2d(np.asarray(totals, dtype=np.float64))
        joules = rows @ self.coef_
        spread = np.einsum("ij,jk,ik->i", rows, self.coef_covariance_, rows)
        with np.errstate(invalid="ignore", divide="ignore"):
            relative = np.where(joules > 0, spread / joules**2 + self.shared_variance_, np.inf)
        return joules, relative

    @property
    def is_measured(self) -> bool:
        """Whether the model's own error has been measured on `MEASURED_RESIDUALS` readings it had not
        learned yet: until then its variance is unknown and a window cannot weigh it."""
        return hasattr(self, "residuals_") and self.residuals_.size >= MEASURED_RESIDUALS

    @property
    def has_history(self) -> bool:
        """Whether enough pairs were learned for the model's figures to be trusted (`min_history`)."""
        return hasattr(self, "n_seen_") and self.n_seen_ >= max(self.min_history, 8)


def _weighted_nonnegative_fit(rows: FloatArray, watts: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Non-negative coefficients weighted by 1 / predicted power squared, and their covariance."""
    regression = LinearRegression(positive=True, fit_intercept=False)
    coef = np.asarray(regression.fit(rows, watts).coef_, dtype=np.float64)
    predicted = rows @ coef
    floor = max(float(np.mean(np.abs(watts))) * 0.05, 1e-9)  # no weight blows up near zero power
    weights = 1.0 / np.maximum(predicted, floor) ** 2
    coef = np.asarray(regression.fit(rows, watts, sample_weight=weights).coef_, dtype=np.float64)
    residuals = watts - rows @ coef
    free = max(rows.shape[0] - rows.shape[1], 1)
    scale = float(np.sum(weights * residuals**2)) / free
    covariance = scale * np.linalg.pinv((rows * weights[:, None]).T @ rows)
    return coef, covariance


def _variance_components(residuals: FloatArray) -> tuple[float, float]:
    """(shared, gauge) relative variances from one-step-ahead residuals in time order (class doc).

    With fewer than `MEASURED_RESIDUALS` nothing is known: both are 1 (100%)."""
    if residuals.size < MEASURED_RESIDUALS:
        return 1.0, 1.0
    total = float(np.mean(residuals**2))
    centred = residuals - residuals.mean()
    shared = float(np.mean(centred[1:] * centred[:-1])) + float(residuals.mean() ** 2)
    shared = min(max(shared, _MIN_VARIANCE), total)
    return shared, max(total - shared, _MIN_VARIANCE)


def estimate_windows(
    model: GaugePowerModel,
    intervals: pd.DataFrame,
    gauge_times: npt.ArrayLike,
    gauge_watts: npt.ArrayLike,
    edges_seconds: npt.ArrayLike,
) -> pd.DataFrame:
    """Energy and watts per token of each window [edges[i], edges[i+1]] (columns `WINDOW_COLUMNS`).

    Edges should be token scrapes (`estimators.playback.token_window_edges`): a window is then
    a run of whole token intervals and its token counts are exact. The model's power (from those
    counts) and the mean of the gauge readings inside the window are blended by inverse variance
    (module doc). A model not yet `is_measured` leaves the gauge mean alone (`power_gauge`, confidence
    low); a
    window with no reading takes the model alone. A window that holds a token-counter restart has a
    lower bound for its tokens: confidence low.
    """
    edges = np.asarray(edges_seconds, dtype=np.float64)
    if edges.size < 2:
        return pd.DataFrame(columns=WINDOW_COLUMNS)
    starts, ends = edges[:-1], edges[1:]
    seconds = ends - starts
    in_window = _interval_window(intervals, edges)
    covered = in_window >= 0
    by_window = intervals.loc[covered].groupby(in_window[covered])

    def summed(column: str) -> FloatArray:
        return by_window[column].sum().reindex(range(starts.size)).to_numpy(np.float64)

    generated, prompted = summed("generation_tokens"), summed("prompt_tokens")
    reset = summed("reset") > 0
    fitted = model.is_measured
    busy_seconds = (intervals["busy_ratio"] * intervals["seconds"]).loc[covered]
    busy = busy_seconds.groupby(in_window[covered]).sum().reindex(range(starts.size)).to_numpy(np.float64)
    whole = np.isclose(summed("seconds"), seconds)  # every token interval of the window is known
    model_power = np.full(starts.size, np.nan)
    model_var = np.full(starts.size, np.inf)
    if fitted:
        joules, relative = model.energy(np.column_stack((seconds, busy, generated, prompted)))
        model_power = np.where(whole, joules / seconds, np.nan)
        model_var = np.where(whole, relative, np.inf)

    gauge_power, readings = _gauge_means(gauge_times, gauge_watts, starts, ends)
    gauge_var = model.gauge_variance_ if fitted else np.inf
    use_model = np.isfinite(model_power) & np.isfinite(model_var)
    use_gauge = readings > 0
    weight_model = np.where(use_model, 1.0 / model_var, 0.0)
    weight_gauge = np.where(use_gauge, readings / gauge_var, 0.0) if fitted else use_gauge.astype(np.float64)
    total_weight = weight_model + weight_gauge
    with np.errstate(invalid="ignore", divide="ignore"):
        power = (
            weight_model * np.nan_to_num(model_power) + weight_gauge * np.nan_to_num(gauge_power)
        ) / np.where(total_weight > 0, total_weight, np.nan)
        relative_std = np.where(fitted, np.sqrt(1.0 / total_weight), np.inf)
        watts_per_token = power * seconds / np.where(generated > 0, generated, np.nan)
    method = np.where(use_model, "power_model", np.where(use_gauge, "power_gauge", "none"))
    trusted = model.has_history & ~reset & np.isfinite(power)
    confidence = np.where(
        trusted & (relative_std <= HIGH_RELATIVE_STD),
        "high",
        np.where(trusted & (relative_std <= MEDIUM_RELATIVE_STD), "medium", "low"),
    )
    return pd.DataFrame(
        {
            "window_start_seconds": starts,
            "window_end_seconds": ends,
            "energy_joules": power * seconds,
            "power_watts": power,
            "generation_tokens": generated,
            "prompt_tokens": prompted,
            "watts_per_token": watts_per_token,
            "model_power_watts": model_power,
            "gauge_power_watts": gauge_power,
            "gauge_readings": readings,
            "relative_std": relative_std,
            "method": method,
            "confidence": confidence,
        }
    )[WINDOW_COLUMNS]


def _interval_window(intervals: pd.DataFrame, edges: FloatArray) -> npt.NDArray[np.int64]:
    """Index of the window wholly containing each interval, -1 for none (one that straddles an edge
    that is not a token scrape is left out: its tokens are not the window's)."""
    starts = intervals["start_seconds"].to_numpy(np.float64)
    ends = intervals["end_seconds"].to_numpy(np.float64)
    window = np.searchsorted(edges, starts, side="right") - 1
    inside = (window >= 0) & (window < edges.size - 1)
    inside &= ends <= edges[np.clip(window + 1, 0, edges.size - 1)] + 1e-9
    return np.where(inside, window, -1)


def _gauge_means(
    gauge_times: npt.ArrayLike, gauge_watts: npt.ArrayLike, starts: FloatArray, ends: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Mean of the gauge readings inside each [start, end) and how many there were."""
    t = np.asarray(gauge_times, dtype=np.float64)
    watts = np.asarray(gauge_watts, dtype=np.float64)
    keep = np.isfinite(t) & np.isfinite(watts)
    t, watts = t[keep], watts[keep]
    order = np.argsort(t, kind="stable")
    t, watts = t[order], watts[order]
    cumulative = np.concatenate(([0.0], np.cumsum(watts)))
    lo = np.searchsorted(t, starts, side="left")
    hi = np.searchsorted(t, ends, side="left")
    count = (hi - lo).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (cumulative[hi] - cumulative[lo]) / np.where(count > 0, count, np.nan)
    return mean, count


def modelled_energy(model: GaugePowerModel, intervals: pd.DataFrame) -> Callable[[FloatArray], FloatArray]:
    """The joules the model gives the token intervals, cumulated from the first interval's start: a
    primitive of the modelled power for `shaped_counter_at`. NaN outside the intervals."""
    check_is_fitted(model)
    if intervals.empty:
        return lambda at: np.full(np.shape(at), np.nan)
    joules = model.predict(intervals[FEATURES]) * intervals["seconds"].to_numpy(np.float64)
    edges = np.append(intervals["start_seconds"].to_numpy(np.float64), intervals["end_seconds"].iloc[-1])
    cumulative = np.concatenate(([0.0], np.cumsum(joules)))

    def primitive(at: FloatArray) -> FloatArray:
        value: FloatArray = np.interp(at, edges, cumulative, left=np.nan, right=np.nan)
        return value

    return primitive


def shaped_counter_at(
    times: npt.ArrayLike,
    values: npt.ArrayLike,
    at_seconds: npt.ArrayLike,
    power_at: Callable[[FloatArray], FloatArray] | None,
) -> FloatArray:
    """An energy counter read at `at_seconds` (reset-corrected, 0 at its first sample, as
    `estimators.rates.counter_at` with `on_reset="neighbour_rate"`).

    Between two scrapes the interval's exact increase is spread in proportion to the integral of
    `power_at` (a primitive: joules of the modelled power from any fixed origin to each instant),
    instead of evenly in time; where the modelled integral over the interval is not positive, or
    `power_at` is None, evenly (linear interpolation). Outside the sampled span: `counter_at`.
    """
    t, v = _as_sorted(times, values)  # the same samples `counter_at` reads
    at = np.asarray(at_seconds, dtype=np.float64)
    linear = counter_at(t, v, at, on_reset="neighbour_rate")
    if power_at is None or t.size < 2:
        return linear
    counter = reset_corrected(v, t, on_reset="neighbour_rate")
    inside = (at > t[0]) & (at < t[-1])
    right = np.searchsorted(t, at[inside], side="left")
    left = right - 1
    primitive_at = power_at(at[inside])
    primitive_left = power_at(t[left])
    primitive_right = power_at(t[right])
    modelled = primitive_right - primitive_left
    usable = np.isfinite(modelled) & (modelled > 0) & np.isfinite(primitive_at)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.clip((primitive_at - primitive_left) / modelled, 0.0, 1.0)
    shaped = counter[left] + share * (counter[right] - counter[left])
    out = linear.copy()
    out[inside] = np.where(usable, shaped, linear[inside])
    return out


@dataclass(frozen=True, slots=True)
class Replica:
    """One GPU's history as scraped: its server's token intervals, its gauge readings, the window
    edges it is estimated over (token scrapes)."""

    intervals: pd.DataFrame
    gauge_times: FloatArray
    gauge_watts: FloatArray
    edges_seconds: FloatArray


def replay(model: GaugePowerModel, replicas: Sequence[Replica]) -> pd.DataFrame:
    """What a server does window after window for the GPUs of one key (GPU type and serving
    configuration), which share `model`: estimate each window, in order of its end, with the model
    as it stands, then learn every replica's (reading, interval) pairs known by then. Only the past
    reaches each estimate.

    `model` is updated in place. Returns `estimate_windows`' columns plus `replica` (index into
    `replicas`) and `pairs_learned` (the pairs the model had learned when it estimated the window)."""
    pairs = pd.concat(
        [gauge_pairs(r.intervals, r.gauge_times, r.gauge_watts) for r in replicas], ignore_index=True
    )
    pairs = pairs.sort_values("interval_end_seconds", kind="stable", ignore_index=True)
    known = pairs["interval_end_seconds"].to_numpy(np.float64)
    windows = [
        (float(end), index, float(start))
        for index, replica in enumerate(replicas)
        for start, end in itertools.pairwise(np.asarray(replica.edges_seconds, dtype=np.float64))
    ]
    rows = []
    learned = 0
    for end, index, start in sorted(windows):
        replica = replicas[index]
        # Only the window's own intervals and readings: the same result, without scanning the rest.
        starts = replica.intervals["start_seconds"].to_numpy(np.float64)
        near = replica.intervals.iloc[np.searchsorted(starts, start) : np.searchsorted(starts, end)]
        window = estimate_windows(model, near, replica.gauge_times, replica.gauge_watts, [start, end])
        rows.append(window.assign(replica=index, pairs_learned=getattr(model, "n_seen_", 0)))
        now_known = int(np.searchsorted(known, end, side="right"))
        if now_known > learned:
            new = pairs.iloc[learned:now_known]
            model.partial_fit(new[FEATURES], new["power_watts"])
            learned = now_known
    if not rows:
        return pd.DataFrame(columns=[*WINDOW_COLUMNS, "replica", "pairs_learned"])
    return pd.concat(rows, ignore_index=True)


GpuKey = tuple[str, str]
"""(node, gpu_uuid)."""


@dataclass
class GaugeModels:
    """What the served path remembers between passes for gauge-only GPUs: each GPU's learned
    `GaugePowerModel` and the end of the newest token interval it has learned from, so each pass
    learns only the pairs that closed since (estimate first, then learn: a window is never judged by
    a model that has seen its own readings)."""

    models: dict[GpuKey, GaugePowerModel] = field(default_factory=dict)
    learned_until: dict[GpuKey, float] = field(default_factory=dict)

    def model(self, gpu: GpuKey) -> GaugePowerModel:
        return self.models.setdefault(gpu, GaugePowerModel())

    def learn(self, gpu: GpuKey, pairs: pd.DataFrame) -> None:
        """Learn the pairs (`gauge_pairs`) whose interval closed after the last one learned."""
        new = pairs.loc[pairs["interval_end_seconds"] > self.learned_until.get(gpu, -np.inf)]
        if new.empty:
            return
        self.model(gpu).partial_fit(new[FEATURES], new["power_watts"])
        self.learned_until[gpu] = float(new["interval_end_seconds"].max())

    def retain(self, gpus: set[GpuKey]) -> None:
        """Forget GPUs no longer seen (removed nodes, replaced boards)."""
        for gone in set(self.models) - gpus:
            del self.models[gone]
            self.learned_until.pop(gone, None)
