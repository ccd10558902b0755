"""PowerModel: scikit-learn conformance, regressor choice on the H100 trace, marginal replica watts."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import NotFittedError, SkipTestWarning
from sklearn.metrics import mean_absolute_percentage_error
from sklearn.utils.estimator_checks import check_estimator

from estimators.power_model import (
    FEATURES,
    REGRESSORS,
    PowerModel,
    compare_regressors,
    h100_reference_model,
    trace_load_windows,
)

TRACE = Path(__file__).resolve().parents[3] / "data" / "h100-llama8b"


@pytest.mark.parametrize("estimator", [PowerModel(), PowerModel(regressor="random_forest", random_state=0)])
def test_scikit_learn_conventions(estimator: PowerModel) -> None:
    """scikit-learn's whole conformance suite. Run through `check_estimator(on_fail=None)` rather than
    `parametrize_with_checks` because one check (array-API input) skips itself without SciPy's
    opt-in flag, and this project's suite has no skipped tests; every other check must pass."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkipTestWarning)
        results = check_estimator(estimator, on_fail=None)
    assert len(results) > 40
    failed = [f"{r['check_name']}: {r['exception']!r}" for r in results if r["status"] == "failed"]
    assert failed == []
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    assert skipped <= {"check_array_api_input"}


@pytest.fixture(scope="module")
def trace() -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_csv(TRACE / "samples.csv"), pd.read_csv(TRACE / "steps.csv")


def _split(
    trace: tuple[pd.DataFrame, pd.DataFrame], window_seconds: float
) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame, pd.Series]:
    """Train on the calibration part (idle, batch sweep, long prefills); hold out the later `trace`
    phase, whose batch changes every 5 s and whose prompts are shorter: unseen in time and in mix."""
    samples, steps = trace
    rows = trace_load_windows(samples, steps, window_seconds=window_seconds, step_seconds=2.0)
    cut = float(steps.loc[steps["phase"] == "trace", "t_start"].min())
    train = rows[rows["window_end_seconds"] <= cut]
    test = rows[rows["window_start_seconds"] >= cut]
    return train[FEATURES], train["power_watts"], test[FEATURES], test["power_watts"]


@pytest.mark.parametrize("window_seconds", [30.0, 60.0])
def test_linear_model_within_5_percent_mape_on_the_later_hold_out(
    trace: tuple[pd.DataFrame, pd.DataFrame], window_seconds: float
) -> None:
    X_train, y_train, X_test, y_test = _split(trace, window_seconds)
    assert len(X_test) >= 10
    model = PowerModel().fit(X_train, y_train)
    assert mean_absolute_percentage_error(y_test, model.predict(X_test)) <= 0.05


def test_linear_is_the_best_regressor_by_time_ordered_cross_validation(
    trace: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    samples, steps = trace
    rows = trace_load_windows(samples, steps, window_seconds=30.0, step_seconds=2.0)
    scores = compare_regressors(rows[FEATURES], rows["power_watts"], gap=15, n_splits=3)
    assert set(scores["regressor"]) == set(REGRESSORS)
    assert scores["regressor"].iloc[0] == "linear"
    X_train, y_train, X_test, y_test = _split(trace, 30.0)
    held_out = {
        name: mean_absolute_percentage_error(
            y_test, PowerModel(regressor=name, random_state=0).fit(X_train, y_train).predict(X_test)
        )
        for name in REGRESSORS
    }
    assert min(held_out, key=held_out.__getitem__) == "linear"


def test_marginal_watts_of_one_more_replica(trace: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    X_train, y_train, _, _ = _split(trace, 30.0)
    model = PowerModel().fit(X_train, y_train)
    # Static power of a loaded H100 replica: between bare idle (~75 W) and a small batch (~160 W).
    assert 75.0 < model.idle_power_watts_ < 200.0
    # Peak of one replica: the big-batch, long-prefill windows, under the 700 W limit.
    assert 300.0 < model.marginal_watts_at_peak() < 700.0
    load = pd.Series(
        {
            "generation_tokens_per_second": 3000.0,
            "prompt_tokens_per_second": 9000.0,
            "requests_running": 300.0,
        }
    )
    extra = model.marginal_watts(load.to_numpy(), replicas=3)
    # Spreading the same load over one more replica costs about one replica's static power.
    assert extra == pytest.approx(model.idle_power_watts_, rel=0.05)
    assert model.workload_power_watts(load.to_numpy(), 4) > model.workload_power_watts(load.to_numpy(), 3)
    assert model.get_params() == {"regressor": "linear", "random_state": None}


def test_unfitted_and_unknown_regressor_are_refused() -> None:
    with pytest.raises(NotFittedError):
        PowerModel().predict(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="regressor must be one of"):
        PowerModel(regressor="magic").fit(np.zeros((4, 3)), np.ones(4))
    with pytest.raises(ValueError, match="replicas"):
        PowerModel().fit(np.eye(3), np.ones(3)).marginal_watts(np.ones(3), replicas=0)


def test_reference_model_from_the_shipped_h100_curve() -> None:
    model = h100_reference_model()
    # One H100 at batch 256 draws about 398 W in the trace; the model's peak is that row.
    assert model.marginal_watts_at_peak() == pytest.approx(398.0, rel=0.05)
    busy = pd.DataFrame([[1844.6, 1844.6 * 512 / 96, 256.0]], columns=FEATURES)
    assert model.predict(busy)[0] == pytest.approx(398.0, rel=0.05)
