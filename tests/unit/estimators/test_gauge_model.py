"""Gauge-only power model: scikit-learn conformance, learning from noisy readings, blending, confidence,
only the past, and the model-shaped energy counter."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import NotFittedError, SkipTestWarning
from sklearn.utils.estimator_checks import check_estimator

from estimators.gauge_model import (
    FEATURES,
    GaugePowerModel,
    Replica,
    estimate_windows,
    gauge_pairs,
    modelled_energy,
    replay,
    shaped_counter_at,
    token_intervals,
)
from estimators.playback import play_back, scrape_gpu
from estimators.rates import counter_at

TRACE = Path(__file__).resolve().parents[3] / "data" / "h100-llama8b"
IDLE, BUSY, PER_GENERATED, PER_PROMPT = 60.0, 90.0, 0.12, 0.015


def test_scikit_learn_conventions() -> None:
    """scikit-learn's conformance suite; only the array-API check may skip (it needs SciPy's opt-in)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkipTestWarning)
        results = check_estimator(GaugePowerModel(), on_fail=None)
    assert len(results) > 40
    assert [r["check_name"] for r in results if r["status"] == "failed"] == []
    assert {r["check_name"] for r in results if r["status"] == "skipped"} <= {"check_array_api_input"}


def _server(seconds: float, rng: np.random.Generator, scrape: float = 15.0) -> pd.DataFrame:
    """Token scrapes of a server whose load changes every scrape: columns t, generated, prompt."""
    times = np.arange(0.0, seconds, scrape) + rng.uniform(-0.5, 0.5, int(np.ceil(seconds / scrape)))
    generated_rate = rng.uniform(0.0, 2000.0, times.size)
    generated_rate[rng.random(times.size) < 0.1] = 0.0  # some intervals idle
    prompt_rate = generated_rate * rng.uniform(2.0, 8.0, times.size)
    dt = np.diff(times, append=times[-1] + scrape)
    return pd.DataFrame(
        {
            "t": times,
            "generated": np.concatenate(([0.0], np.cumsum(generated_rate * dt)[:-1])),
            "prompt": np.concatenate(([0.0], np.cumsum(prompt_rate * dt)[:-1])),
        }
    )


def _true_power(intervals: pd.DataFrame) -> np.ndarray:
    return (
        IDLE
        + BUSY * intervals["busy_ratio"].to_numpy()
        + PER_GENERATED * intervals["generation_tokens_per_second"].to_numpy()
        + PER_PROMPT * intervals["prompt_tokens_per_second"].to_numpy()
    )


def _readings(intervals: pd.DataFrame, rng: np.random.Generator, per_interval: int = 1) -> pd.DataFrame:
    """Gauge readings at random moments: the interval's mean power times skewed noise of mean 1 (mostly
    below the mean, now and then a spike, as under batching)."""
    rows = intervals.loc[intervals.index.repeat(per_interval)]
    at = rows["start_seconds"].to_numpy() + rng.uniform(0.0, 1.0, len(rows)) * rows["seconds"].to_numpy()
    noise = rng.gamma(shape=2.0, scale=0.5, size=len(rows))
    return pd.DataFrame({"t": at, "watts": _true_power(rows) * noise}).sort_values("t")


def test_token_intervals_are_exact_and_mark_a_counter_restart() -> None:
    intervals = token_intervals(
        [0.0, 15.0, 30.0, 45.0], [0.0, 300.0, 300.0, 40.0], [0.0, 1000.0, 1000.0, 500.0]
    )
    assert intervals["generation_tokens"].tolist() == [300.0, 0.0, 40.0]
    assert intervals["prompt_tokens"].tolist() == [1000.0, 0.0, 500.0]
    assert intervals["busy_ratio"].tolist() == [1.0, 0.0, 1.0]
    assert intervals["reset"].tolist() == [False, False, True]
    assert intervals["generation_tokens_per_second"].tolist() == [20.0, 0.0, 40.0 / 15.0]


def test_pairs_leave_out_readings_outside_intervals_and_in_restarted_ones() -> None:
    intervals = token_intervals([0.0, 15.0, 30.0], [0.0, 300.0, 10.0])
    pairs = gauge_pairs(intervals, [-1.0, 5.0, 20.0, 31.0], [1.0, 200.0, 300.0, 400.0])
    assert pairs["power_watts"].tolist() == [200.0]
    assert pairs["interval_end_seconds"].tolist() == [15.0]
    assert pairs["generation_tokens_per_second"].tolist() == [20.0]


def test_learns_the_power_model_from_readings_that_scatter_70_percent() -> None:
    rng = np.random.default_rng(1)
    server = _server(4 * 3600.0, rng)
    intervals = token_intervals(server["t"], server["generated"], server["prompt"])
    readings = _readings(intervals, rng)
    pairs = gauge_pairs(intervals, readings["t"], readings["watts"])
    model = GaugePowerModel(max_history=10_000).fit(pairs[FEATURES], pairs["power_watts"])
    assert (model.coef_ >= 0).all()
    relative = model.predict(intervals[FEATURES]) / _true_power(intervals) - 1.0
    assert np.median(np.abs(relative)) < 0.05
    reading_error = readings["watts"].to_numpy() / _true_power(intervals) - 1.0
    assert np.median(np.abs(reading_error)) > 0.3  # what one reading alone would have said


def test_partial_fit_learns_what_fit_learns_and_forgets_beyond_max_history() -> None:
    rng = np.random.default_rng(2)
    X = rng.uniform(0.0, 1000.0, (300, 3))
    y = 50.0 + X @ np.array([1.0, 0.1, 0.01]) * rng.uniform(0.8, 1.2, 300)
    whole = GaugePowerModel(max_history=1000).fit(X, y)
    online = GaugePowerModel(max_history=1000)
    for part in np.array_split(np.arange(300), 7):
        online.partial_fit(X[part], y[part])
    np.testing.assert_allclose(online.coef_, whole.coef_, rtol=1e-6, atol=1e-9)
    assert online.n_seen_ == 300

    changed = GaugePowerModel(max_history=100).fit(X, y)
    changed.partial_fit(X[:100], 2.0 * y[:100])  # the workload now draws twice the power
    np.testing.assert_allclose(
        changed.predict(X[:100]), GaugePowerModel().fit(X[:100], 2 * y[:100]).predict(X[:100])
    )


def test_unfitted_model_refuses_to_predict() -> None:
    with pytest.raises(NotFittedError):
        GaugePowerModel().predict(np.zeros((1, 3)))


def _fitted(rng: np.random.Generator, pairs: int) -> tuple[GaugePowerModel, pd.DataFrame]:
    server = _server(pairs * 15.0, rng)
    intervals = token_intervals(server["t"], server["generated"], server["prompt"])
    readings = _readings(intervals, rng)
    learned = gauge_pairs(intervals, readings["t"], readings["watts"])
    model = GaugePowerModel(min_history=60)
    for chunk in np.array_split(learned.index, 20):  # in steps, so there are one-step-ahead residuals
        model.partial_fit(learned.loc[chunk, FEATURES], learned.loc[chunk, "power_watts"])
    return model, intervals


def test_before_enough_history_the_window_says_so() -> None:
    intervals = token_intervals([0.0, 15.0, 30.0], [0.0, 300.0, 900.0], [0.0, 2000.0, 5000.0])
    unfitted = estimate_windows(GaugePowerModel(), intervals, [10.0, 25.0], [100.0, 300.0], [0.0, 30.0])
    assert unfitted[["method", "confidence"]].iloc[0].tolist() == ["power_gauge", "low"]
    assert unfitted["power_watts"].iloc[0] == pytest.approx(200.0)
    assert unfitted["generation_tokens"].iloc[0] == 900.0
    assert unfitted["watts_per_token"].iloc[0] == pytest.approx(200.0 * 30.0 / 900.0)

    # Fitted, but its error not yet measured on readings it had not seen: the readings alone.
    once = GaugePowerModel().fit(
        np.array([[1.0, 10.0, 50.0], [1.0, 20.0, 90.0], [0.0, 0.0, 0.0]]), [150.0, 170.0, 60.0]
    )
    unmeasured = estimate_windows(once, intervals, [10.0, 25.0], [100.0, 300.0], [0.0, 30.0])
    assert unmeasured[["method", "confidence"]].iloc[0].tolist() == ["power_gauge", "low"]

    model, _ = _fitted(np.random.default_rng(3), pairs=40)  # under min_history
    young = estimate_windows(model, intervals, [10.0, 25.0], [100.0, 300.0], [0.0, 30.0])
    assert young[["method", "confidence"]].iloc[0].tolist() == ["power_model", "low"]


def test_with_history_the_model_outweighs_two_scattered_readings() -> None:
    rng = np.random.default_rng(4)
    model, intervals = _fitted(rng, pairs=1500)
    edges = intervals["start_seconds"].to_numpy()[::2]
    truth = _true_power(intervals)
    true_window = (
        pd.Series(truth * intervals["seconds"].to_numpy()).groupby(np.arange(len(intervals)) // 2).sum()
    )
    readings = _readings(intervals, rng)
    windows = estimate_windows(model, intervals, readings["t"], readings["watts"], edges)
    error = windows["energy_joules"].to_numpy() / true_window.to_numpy()[: len(windows)] - 1.0
    gauge_error = (
        windows["gauge_power_watts"] * (edges[1:] - edges[:-1]) / true_window.to_numpy()[: len(windows)] - 1
    )
    assert set(windows["method"]) == {"power_model"}
    assert set(windows["confidence"]) <= {"medium", "high"}
    assert np.median(np.abs(error)) < 0.05 < np.nanmedian(np.abs(gauge_error))
    # Each value lies between its two estimates: a blend, never an extrapolation.
    low = np.fmin(windows["model_power_watts"], windows["gauge_power_watts"])
    high = np.fmax(windows["model_power_watts"], windows["gauge_power_watts"])
    assert ((windows["power_watts"] >= low - 1e-9) & (windows["power_watts"] <= high + 1e-9)).all()


def test_a_window_without_readings_takes_the_model_and_one_with_a_restart_is_low_confidence() -> None:
    model, _ = _fitted(np.random.default_rng(5), pairs=1500)
    intervals = token_intervals([0.0, 15.0, 30.0, 45.0, 60.0], [0.0, 300.0, 900.0, 100.0, 700.0])
    windows = estimate_windows(model, intervals, [], [], [0.0, 30.0, 60.0])
    expected = model.predict(intervals.loc[:1, FEATURES]).mean()
    assert windows["power_watts"].iloc[0] == pytest.approx(expected)
    assert windows["gauge_readings"].tolist() == [0.0, 0.0]
    assert windows["confidence"].tolist()[1] == "low"
    assert windows["confidence"].tolist()[0] != "low"


def test_replay_uses_only_the_past() -> None:
    rng = np.random.default_rng(6)
    server = _server(1800.0, rng)
    intervals = token_intervals(server["t"], server["generated"], server["prompt"])
    readings = _readings(intervals, rng)
    edges = intervals["start_seconds"].to_numpy()[::2]
    first = replay(
        GaugePowerModel(), [Replica(intervals, readings["t"].to_numpy(), readings["watts"].to_numpy(), edges)]
    )
    later = readings["t"] > edges[30]
    altered = readings.assign(watts=readings["watts"].where(~later, readings["watts"] * 3.0))
    second = replay(
        GaugePowerModel(), [Replica(intervals, altered["t"].to_numpy(), altered["watts"].to_numpy(), edges)]
    )
    pd.testing.assert_frame_equal(first.iloc[:30], second.iloc[:30])
    assert not np.allclose(first["power_watts"].iloc[31:], second["power_watts"].iloc[31:])
    assert first["pairs_learned"].is_monotonic_increasing


def test_shaped_counter_reads_the_exact_energy_when_the_model_has_the_shape() -> None:
    # Power 100 W for 10 s then 400 W for 10 s; the counter is scraped at 0 and 20 only.
    power_at = lambda at: np.where(at < 10.0, 100.0 * at, 1000.0 + 400.0 * (at - 10.0))  # noqa: E731
    counter_times, counter_values = [0.0, 20.0, 40.0], [5000.0, 10000.0, 15000.0]
    shaped = shaped_counter_at(counter_times, counter_values, [0.0, 10.0, 20.0], power_at)
    np.testing.assert_allclose(shaped, [0.0, 1000.0, 5000.0])
    linear = counter_at(counter_times, counter_values, [0.0, 10.0, 20.0], on_reset="neighbour_rate")
    np.testing.assert_allclose(
        shaped_counter_at(counter_times, counter_values, [0.0, 10.0, 20.0], None), linear
    )
    assert linear[1] == pytest.approx(2500.0)  # what even spreading says: 150% too much


def test_shaped_counter_keeps_the_counters_own_increases_and_restarts() -> None:
    model, intervals = _fitted(np.random.default_rng(7), pairs=200)
    shape = modelled_energy(model, intervals)
    times = np.arange(0.0, 3000.0, 15.0) + 4.0
    values = 1000.0 + 200.0 * times
    values[times > 1500.0] -= values[times > 1500.0][0]  # the exporter restarted
    at = np.sort(np.concatenate((times, intervals["start_seconds"].to_numpy()[:100])))
    shaped = shaped_counter_at(times, values, at, shape)
    linear = counter_at(times, values, at, on_reset="neighbour_rate")
    on_scrapes = np.isin(at, times)
    np.testing.assert_allclose(shaped[on_scrapes], linear[on_scrapes])
    assert np.all(np.diff(shaped[np.isfinite(shaped)]) >= -1e-9)


def test_play_back_keeps_counting_across_repeats() -> None:
    samples = pd.read_csv(TRACE / "samples.csv")
    steps = pd.read_csv(TRACE / "steps.csv")
    looped_samples, looped_steps = play_back(samples, steps, repeats=3)
    once_samples, once_steps = play_back(samples, steps, repeats=1)
    assert looped_samples["t"].is_monotonic_increasing and looped_samples["energy_j"].is_monotonic_increasing
    assert len(looped_steps) == 3 * len(once_steps) and looped_steps["t_start"].is_monotonic_increasing
    # The second repeat starts where the first left off, one sample period later, with its energy.
    seam = len(once_samples)
    period = float(np.median(np.diff(once_samples["t"])))
    assert looped_samples["t"].iloc[seam] - looped_samples["t"].iloc[seam - 1] == pytest.approx(period)
    one_repeat = float(once_samples["energy_j"].iloc[-1])
    assert float(looped_samples["energy_j"].iloc[-1]) == pytest.approx(3 * one_repeat, rel=0.01)
    assert looped_steps["phase"].isin(["sweep", "prefill", "trace"]).all()

    paused_samples, paused_steps = play_back(samples, steps, repeats=3, rng=np.random.default_rng(0))
    assert (paused_samples["phase"] == "pause").any() and paused_samples["t"].max() > looped_samples[
        "t"
    ].max()
    # A pause idles: no steps in it, and the counter never jumps: no rise faster than the trace's own.
    rises = np.diff(paused_samples["energy_j"]) / np.diff(paused_samples["t"])
    assert (
        rises.min() >= 0
        and rises.max() <= 1.000001 * (np.diff(samples["energy_j"]) / np.diff(samples["t"])).max()
    )
    assert len(paused_steps) == len(looped_steps)
    assert {"warmup", "init"}.isdisjoint(looped_samples["phase"])


def test_scrape_gpu_restarts_the_server_once_and_windows_at_token_scrapes() -> None:
    samples, steps = play_back(
        pd.read_csv(TRACE / "samples.csv"),
        pd.read_csv(TRACE / "steps.csv"),
        repeats=4,
        rng=np.random.default_rng(0),
    )
    frame, replica = scrape_gpu(samples, steps, seed=3, gauge_seconds=5.0)
    assert replica.intervals["reset"].sum() == 1
    token_times = frame.loc[frame["metric"] == "generation_tokens_total", "timestamp_seconds"]
    assert np.isin(replica.edges_seconds, token_times).all()
    assert np.median(np.diff(replica.gauge_times)) == pytest.approx(5.0, abs=0.6)


def test_gpus_of_one_key_teach_one_model() -> None:
    rng = np.random.default_rng(8)
    replicas = []
    for _ in range(2):
        server = _server(600.0, rng)
        intervals = token_intervals(server["t"], server["generated"], server["prompt"])
        readings = _readings(intervals, rng)
        edges = intervals["start_seconds"].to_numpy()[::2]
        replicas.append(Replica(intervals, readings["t"].to_numpy(), readings["watts"].to_numpy(), edges))
    model = GaugePowerModel()
    out = replay(model, replicas)
    alone = replay(GaugePowerModel(), replicas[:1])
    last_end = max(r.edges_seconds[-1] for r in replicas)
    known = [gauge_pairs(r.intervals, r.gauge_times, r.gauge_watts)["interval_end_seconds"] for r in replicas]
    assert model.n_seen_ == sum(int((k <= last_end).sum()) for k in known)
    assert set(out["replica"]) == {0, 1}
    # Windows are estimated in time order across GPUs, each with what both had taught by then.
    assert out["window_end_seconds"].is_monotonic_increasing
    last_of_first = out.loc[out["replica"] == 0, "pairs_learned"].iloc[-1]
    assert last_of_first > alone["pairs_learned"].iloc[-1]


def test_shaped_counter_reads_unordered_duplicated_and_missing_scrapes_as_counter_at_does() -> None:
    power_at = lambda at: 100.0 * np.asarray(at)  # noqa: E731  (constant power: even spreading)
    times = [20.0, 0.0, 10.0, 10.0, 30.0, 40.0]
    values = [3000.0, 1000.0, 2000.0, 2000.0, np.nan, 4000.0]
    at = np.array([5.0, 15.0, 25.0, 35.0])
    np.testing.assert_allclose(
        shaped_counter_at(times, values, at, power_at),
        counter_at(times, values, at, on_reset="neighbour_rate"),
    )
