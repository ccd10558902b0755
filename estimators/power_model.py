"""GPU power from serving load, and what one more replica would cost.

`PowerModel` follows scikit-learn's conventions (`__init__` stores, `fit` learns `attr_`, `predict`
checks it is fitted) so it can be cross-validated, grid-searched and cloned like any regressor.

Features (columns, per replica, averaged over a window): `generation_tokens_per_second`,
`prompt_tokens_per_second`, `requests_running`. Target: the replica's GPU power in watts.

Why the default regressor is linear with non-negative coefficients: energy is additive. Over a window,
joules = static power x seconds + joules per prompt token x prompt tokens + joules per generated token x
generated tokens + a cost per request held in the batch (KV-cache reads). Divide by the window and power
is linear in the three rates, and no rate can lower the power. `compare_regressors` measures this
against flexible models by time-ordered cross-validation; on the H100 trace the linear model has the
lowest error on unseen later windows (the flexible ones fit the sweep and miss the mixed trace phase).
"""

from __future__ import annotations

from typing import Self

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.model_selection import TimeSeriesSplit, cross_val_score
from sklearn.neighbors import KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import PolynomialFeatures, SplineTransformer, StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data

FEATURES = ["generation_tokens_per_second", "prompt_tokens_per_second", "requests_running"]
REGRESSORS = ("linear", "poly2", "spline", "random_forest", "gradient_boosting", "knn")


def _make_regressor(name: str, random_state: int | None) -> BaseEstimator:
    if name == "linear":
        return LinearRegression(positive=True)
    if name == "poly2":
        return make_pipeline(StandardScaler(), PolynomialFeatures(2), Ridge(alpha=1e-3))
    if name == "spline":
        return make_pipeline(SplineTransformer(n_knots=5, degree=3), Ridge(alpha=1e-3))
    if name == "random_forest":
        return RandomForestRegressor(
            n_estimators=100, min_samples_leaf=2, random_state=random_state, n_jobs=1
        )
    if name == "gradient_boosting":
        return GradientBoostingRegressor(random_state=random_state)
    if name == "knn":
        return make_pipeline(StandardScaler(), KNeighborsRegressor(n_neighbors=3, weights="distance"))
    raise ValueError(f"regressor must be one of {', '.join(REGRESSORS)}; got {name!r}")


class PowerModel(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """GPU power of one replica from its load; marginal watts of one more replica.

    Parameters are stored as given and checked in `fit` (scikit-learn's rule, so `set_params` and
    `__init__` behave alike). Learned: `estimator_` (the fitted regressor), `n_features_in_`,
    `feature_names_in_` (when fitted on a DataFrame), `idle_power_watts_` (prediction at zero load),
    `peak_features_` and `peak_power_watts_` (the training row the model puts highest, i.e. one
    replica's peak draw).
    """

    def __init__(self, regressor: str = "linear", random_state: int | None = None) -> None:
        self.regressor = regressor
        self.random_state = random_state

    def fit(self, X: npt.ArrayLike | pd.DataFrame, y: npt.ArrayLike) -> Self:
        X_checked, y_checked = validate_data(self, X, y, y_numeric=True, reset=True)
        self.estimator_ = clone(_make_regressor(self.regressor, self.random_state))
        self.estimator_.fit(X_checked, y_checked)
        zero = np.zeros((1, X_checked.shape[1]))
        self.idle_power_watts_ = float(self.estimator_.predict(zero)[0])
        fitted = self.estimator_.predict(X_checked)
        peak = int(np.argmax(fitted))
        self.peak_features_ = np.asarray(X_checked[peak], dtype=np.float64)
        self.peak_power_watts_ = float(fitted[peak])
        return self

    def predict(self, X: npt.ArrayLike | pd.DataFrame) -> npt.NDArray[np.float64]:
        check_is_fitted(self)
        X_checked = validate_data(self, X, reset=False)
        predicted: npt.NDArray[np.float64] = np.asarray(self.estimator_.predict(X_checked), dtype=np.float64)
        return predicted

    def _predict_rows(self, rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        frame: npt.ArrayLike | pd.DataFrame = rows
        if hasattr(self, "feature_names_in_"):
            frame = pd.DataFrame(rows, columns=self.feature_names_in_)
        return self.predict(frame)

    def workload_power_watts(self, total_load: npt.ArrayLike, replicas: int) -> float:
        """Power of `replicas` replicas sharing `total_load` (summed features) evenly."""
        check_is_fitted(self)
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        load = np.asarray(total_load, dtype=np.float64).reshape(1, -1)
        return replicas * float(self._predict_rows(load / replicas)[0])

    def marginal_watts(self, total_load: npt.ArrayLike, replicas: int) -> float:
        """Extra watts if one more replica shared the current total load (N -> N + 1 replicas).

        For the linear model this is the static power of a replica: the load moves, it does not grow.
        """
        return self.workload_power_watts(total_load, replicas + 1) - self.workload_power_watts(
            total_load, replicas
        )

    def marginal_watts_at_peak(self) -> float:
        """Extra watts of one more replica when every replica runs at its peak load: its full peak draw.
        This is what `replicas_within_budget` divides the headroom by."""
        check_is_fitted(self)
        return self.peak_power_watts_


def compare_regressors(
    X: pd.DataFrame,
    y: pd.Series,
    *,
    names: tuple[str, ...] = REGRESSORS,
    n_splits: int = 3,
    gap: int = 0,
    min_train_fraction: float = 0.5,
    random_state: int = 0,
) -> pd.DataFrame:
    """Time-ordered cross-validated MAPE of each regressor, best first (columns regressor, mape_mean,
    mape_std).

    Rows must be in time order. Each fold trains on everything before its test block and tests on
    the next block; the first fold trains on at least `min_train_fraction` of the rows, because a
    power model fitted on a few seconds of one batch size says nothing. `gap` rows are left out
    between train and test so that overlapping windows do not leak.
    """
    test_size = int((len(X) * (1.0 - min_train_fraction) - gap) // n_splits)
    if test_size < 1:
        raise ValueError(
            f"{len(X)} rows are too few for {n_splits} folds with a gap of {gap} and "
            f"{min_train_fraction:.0%} of rows to train on first"
        )
    splitter = TimeSeriesSplit(n_splits=n_splits, gap=gap, test_size=test_size)
    rows = []
    for name in names:
        scores = -cross_val_score(
            PowerModel(regressor=name, random_state=random_state),
            X,
            y,
            cv=splitter,
            scoring="neg_mean_absolute_percentage_error",
            error_score="raise",
        )
        rows.append({"regressor": name, "mape_mean": float(scores.mean()), "mape_std": float(scores.std())})
    return pd.DataFrame(rows).sort_values("mape_mean", ignore_index=True)


def trace_load_windows(
    samples: pd.DataFrame, steps: pd.DataFrame, *, window_seconds: float = 30.0, step_seconds: float = 2.0
) -> pd.DataFrame:
    """Training rows from the H100 trace: sliding windows with the three load features and the GPU
    power from the energy counter. `requests_running` is the time-weighted batch size (0 between runs).

    Columns window_start_seconds, window_end_seconds, FEATURES..., power_watts.
    """
    from estimators.sampling import step_value_at, token_counters

    # Warm-up steps include one-off kernel compilation: not the power of serving.
    served = steps.loc[steps["phase"] != "warmup"] if "phase" in steps.columns else steps
    start = float(served["t_start"].min())
    end = float(served["t_end"].max())
    starts = np.arange(start, end - window_seconds + 1e-9, step_seconds)
    ends = starts + window_seconds
    t = samples["t"].to_numpy(np.float64)
    energy = samples["energy_j"].to_numpy(np.float64)
    tokens = token_counters(steps)
    generated = tokens["generation_tokens_total"]
    prompted = tokens["prompt_tokens_total"]
    when = tokens["timestamp_seconds"]
    batch_seconds = np.zeros(starts.size)
    for step_start, step_end, batch in steps[["t_start", "t_end", "batch"]].to_numpy(np.float64):
        overlap = np.clip(np.minimum(ends, step_end) - np.maximum(starts, step_start), 0.0, None)
        batch_seconds += overlap * batch
    return pd.DataFrame(
        {
            "window_start_seconds": starts,
            "window_end_seconds": ends,
            "generation_tokens_per_second": (
                step_value_at(when, generated, ends) - step_value_at(when, generated, starts)
            )
            / window_seconds,
            "prompt_tokens_per_second": (
                step_value_at(when, prompted, ends) - step_value_at(when, prompted, starts)
            )
            / window_seconds,
            "requests_running": batch_seconds / window_seconds,
            "power_watts": (np.interp(ends, t, energy) - np.interp(starts, t, energy)) / window_seconds,
        }
    )


def h100_reference_model() -> PowerModel:
    """A `PowerModel` fitted on the shipped H100 serving curve (`estimators.power_curve`): one H100
    replica of a Llama-3.1-8B-shaped server, 512-token prompts, 96 generated tokens per request.

    For a fleet without history of its own: `h100_reference_model().marginal_watts_at_peak()` is one
    GPU's modelled peak draw (about 400 W), the divisor `replicas_within_budget` needs per GPU.
    """
    from estimators.power_curve import load_h100_table

    table = load_h100_table()
    rows = table.loc[table["phase"].isin(["idle", "serving"])]
    prompt_per_generated = 512.0 / 96.0
    X = pd.DataFrame(
        {
            "generation_tokens_per_second": rows["tokens_per_second"].to_numpy(np.float64),
            "prompt_tokens_per_second": rows["tokens_per_second"].to_numpy(np.float64) * prompt_per_generated,
            "requests_running": rows["batch"].to_numpy(np.float64),
        }
    )
    return PowerModel().fit(X, rows["power_watts"].to_numpy(np.float64))
