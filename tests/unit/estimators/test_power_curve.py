"""The H100 curve shipped as package data: what the simulated collector draws its GPU power from."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from estimators.power_curve import (
    load_h100_decode_curve,
    load_h100_power_curve,
    load_h100_prefill_power,
    power_watts_at_batch,
    tokens_per_second_at_batch,
)

TRACE = Path(__file__).resolve().parents[3] / "data" / "h100-llama8b"


def test_serving_curve_spans_idle_to_full_batch_as_the_trace_readme_says() -> None:
    curve = load_h100_power_curve()
    assert list(curve.columns) == ["batch", "power_watts", "tokens_per_second"]
    assert curve["batch"].is_monotonic_increasing
    assert curve["batch"].iloc[0] == 0
    assert curve["power_watts"].iloc[0] == pytest.approx(74.0, abs=3.0)
    at = curve.set_index("batch")
    assert at.loc[1, "power_watts"] == pytest.approx(148.0, abs=3.0)
    assert at.loc[256, "power_watts"] == pytest.approx(398.0, abs=3.0)
    assert at.loc[256, "tokens_per_second"] == pytest.approx(1845.0, rel=0.01)
    # More batch never costs less power nor yields fewer tokens (within the sensor's noise).
    assert (curve["power_watts"].diff().dropna() > -2.0).all()
    assert curve["tokens_per_second"].is_monotonic_increasing


def test_serving_curve_matches_the_recorded_runs() -> None:
    runs = pd.read_csv(TRACE / "runs.csv")
    sweep = runs.loc[runs["phase"] == "sweep"].set_index("batch")
    curve = load_h100_power_curve().set_index("batch").loc[sweep.index]
    np.testing.assert_allclose(curve["power_watts"], sweep["mean_power_w"], rtol=0.02)
    np.testing.assert_allclose(curve["tokens_per_second"], sweep["tokens_per_s"], rtol=0.02)


def test_decode_alone_draws_less_than_serving_and_prefill_draws_most() -> None:
    decode = load_h100_decode_curve().set_index("batch")
    serving = load_h100_power_curve().set_index("batch")
    assert (decode.loc[64:, "power_watts"] < serving.loc[64:, "power_watts"]).all()
    prefill = load_h100_prefill_power()
    assert prefill["power_watts"].max() > 650.0
    assert prefill["power_watts"].max() <= 700.0 + 5.0  # the averaged counter respects the 700 W limit


def test_interpolation_between_measured_batches_and_clamping_beyond() -> None:
    assert power_watts_at_batch(0.0) == pytest.approx(load_h100_power_curve()["power_watts"].iloc[0])
    mid = power_watts_at_batch([96.0])[0]
    assert power_watts_at_batch(64.0) < mid < power_watts_at_batch(128.0)
    assert power_watts_at_batch(1000.0) == pytest.approx(power_watts_at_batch(256.0))
    assert tokens_per_second_at_batch(0.0) == 0.0


def test_shipped_table_is_what_the_derivation_script_produces() -> None:
    spec = importlib.util.spec_from_file_location("derive_power_curve", TRACE / "derive_power_curve.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("derive_power_curve", module)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0
