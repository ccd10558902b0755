"""Counter rates under resets, gaps, unaligned timestamps; each extrapolation rule of estimators.rates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from estimators.rates import (
    counter_at,
    counters_at,
    gauge_integral,
    reset_corrected,
    reset_intervals,
    series_rates,
    window_increases,
)


def test_reset_counts_the_value_after_the_restart_as_prometheus_does() -> None:
    corrected = reset_corrected([100.0, 160.0, 20.0, 50.0])
    np.testing.assert_allclose(corrected, [0.0, 60.0, 80.0, 110.0])
    assert reset_intervals([0.0, 15.0, 30.0, 45.0], [100.0, 160.0, 20.0, 50.0]).tolist() == [[15.0, 30.0]]


def test_neighbour_rate_fills_an_energy_counter_restart() -> None:
    # 10 J/s throughout; the exporter restarted at 25 s, so the sample at 30 s only counted 50 J.
    times = [0.0, 10.0, 20.0, 30.0, 40.0]
    values = [0.0, 100.0, 200.0, 50.0, 150.0]
    np.testing.assert_allclose(reset_corrected(values, times, on_reset="post_value")[-1], 350.0)
    np.testing.assert_allclose(reset_corrected(values, times, on_reset="neighbour_rate")[-1], 400.0)
    with pytest.raises(ValueError, match="times"):
        reset_corrected(values, on_reset="neighbour_rate")


def test_unaligned_windows_are_read_by_interpolation_and_gaps_keep_the_total() -> None:
    # A 15 s scrape was missed (no sample at 30 s): the 15..45 s increase is still known exactly.
    times = [0.0, 15.0, 45.0, 60.0]
    values = [0.0, 150.0, 450.0, 600.0]
    np.testing.assert_allclose(window_increases(times, values, [7.5, 37.5, 60.0]), [300.0, 225.0])
    # Unsorted input and a duplicated timestamp (a re-scrape) give the same answer.
    np.testing.assert_allclose(
        window_increases([60.0, 0.0, 45.0, 15.0, 15.0], [600.0, 0.0, 450.0, 150.0, 150.0], [7.5, 37.5]),
        [300.0],
    )


def test_extrapolation_is_bounded_by_about_one_scrape_interval() -> None:
    times = [10.0, 25.0, 40.0]
    values = [100.0, 250.0, 400.0]
    at = counter_at(times, values, [0.0, 50.0, 55.0, 60.0])
    # 10 s before the first sample and 10 s after the last: within 1.1 x 15 s, at the edge rates.
    np.testing.assert_allclose(at[:3], [-100.0, 400.0, 450.0])
    assert np.isnan(at[3])  # 20 s past the last sample is a guess we refuse to make
    explicit = counter_at(times, values, [60.0], max_extrapolation_seconds=30.0)
    np.testing.assert_allclose(explicit, [500.0])


def test_extrapolation_never_runs_a_counter_below_zero() -> None:
    at = counter_at([10.0, 20.0], [5.0, 105.0], [0.0], max_extrapolation_seconds=15.0)
    np.testing.assert_allclose(at, [-5.0])  # the counter read 5 at 10 s: at most 5 came before


def test_single_sample_has_no_rate() -> None:
    at = counter_at([10.0], [5.0], [10.0, 11.0])
    assert at[0] == 0.0 and np.isnan(at[1])


def test_gauge_integral_reports_what_it_covers() -> None:
    times = [0.0, 10.0, 20.0]
    watts = [100.0, 300.0, 300.0]
    joules, covered = gauge_integral(times, watts, [0.0, 20.0, 100.0], [20.0, 40.0, 110.0])
    # 0..20 s: trapezoids 2000 + 3000 J; 20..40 s: held 5 s (half an interval) at 300 W; 100 s: nothing.
    np.testing.assert_allclose(joules, [5000.0, 1500.0, 0.0])
    np.testing.assert_allclose(covered, [20.0, 5.0, 0.0])


def test_series_rates_per_series_with_a_reset() -> None:
    frame = pd.DataFrame(
        {
            "pod": ["a", "a", "a", "b", "b", "c"],
            "timestamp_seconds": [0.0, 15.0, 30.0, 3.0, 18.0, 5.0],
            "value": [0.0, 150.0, 30.0, 10.0, 40.0, 7.0],
        }
    )
    rates = series_rates(frame, ["pod"]).set_index("pod")
    assert rates.loc["a", "increase"] == pytest.approx(180.0)
    assert rates.loc["a", "rate_per_second"] == pytest.approx(6.0)
    assert rates.loc["a", "resets"] == 1
    assert rates.loc["b", "rate_per_second"] == pytest.approx(2.0)
    assert np.isnan(rates.loc["c", "rate_per_second"])
    assert series_rates(frame.iloc[:0], ["pod"]).empty


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.integers(0, 300_000).map(lambda ms: ms / 1000.0),  # scrape times, millisecond resolution
            st.floats(0.0, 1e4, allow_nan=False),
        ),
        min_size=1,
        max_size=30,
    ),
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "zz"]), st.integers(-50_000, 350_000).map(lambda ms: ms / 1000.0)
        ),
        min_size=1,
        max_size=10,
    ),
    st.sampled_from(["post_value", "neighbour_rate"]),
)
def test_vectorised_counters_at_agrees_with_counter_at(
    rows: list[tuple[str, float, float]], asks: list[tuple[str, float]], on_reset: str
) -> None:
    frame = pd.DataFrame(rows, columns=["pod", "timestamp_seconds", "value"])
    queries = pd.DataFrame(asks, columns=["pod", "at_seconds"])
    got = counters_at(frame, ["pod"], queries, on_reset=on_reset)  # type: ignore[arg-type]
    for i, (pod, at) in enumerate(asks):
        series = frame[frame["pod"] == pod].drop_duplicates("timestamp_seconds", keep="last")
        if series.empty:
            assert np.isnan(got[i])
            continue
        expected = counter_at(
            series["timestamp_seconds"],
            series["value"],
            [at],
            on_reset=on_reset,  # type: ignore[arg-type]
        )[0]
        np.testing.assert_allclose(got[i], expected, rtol=1e-9, atol=1e-6, equal_nan=True)
