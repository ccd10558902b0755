"""Samples kept per series give the same estimates as re-reading the whole sample frame did.

The reference outputs under tests/data/estimator_reference were computed by the estimator of commit
b8cdeef (see make_reference.py there); the incremental test feeds a history poll by poll, with
evictions, late samples and series that come and go, and compares every pass with a batch estimate
over the same samples."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
from synthetic_fleet import COLUMNS, random_fleet

from adapter.pipeline import SampleHistory
from estimators import fleet, gauge_model
from estimators.fleet import estimate_fleet, estimate_history
from estimators.gauge_model import GaugeModels

REFERENCE = Path(__file__).resolve().parents[2] / "data" / "estimator_reference"
WINDOW_SECONDS = 60.0


def _reference_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_reference", REFERENCE / "make_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_same_frames(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Same rows in the same order, same labels and methods, numbers equal up to summation order."""
    assert list(actual.columns) == list(expected.columns)
    assert len(actual) == len(expected)
    for column in expected.columns:
        want, got = expected[column], actual[column]
        numeric = [
            pd.api.types.is_numeric_dtype(c) and not pd.api.types.is_bool_dtype(c) for c in (want, got)
        ]
        if all(numeric):
            np.testing.assert_allclose(
                got.to_numpy(np.float64), want.to_numpy(np.float64), rtol=1e-9, atol=1e-9, err_msg=column
            )
        else:
            as_text = [("" if pd.isna(v) else str(v)) for v in want]
            assert [("" if pd.isna(v) else str(v)) for v in got] == as_text, column


@pytest.mark.parametrize("case", ["fleet", "h100"])
def test_estimates_equal_those_of_the_frame_estimator_on_recorded_inputs(case: str) -> None:
    reference = _reference_module()
    inputs = (
        reference.fleet_input()
        if case == "fleet"
        else reference.h100_input(reference.ROOT / "data" / "h100-llama8b")
    )
    estimated = reference.estimate(fleet, gauge_model, inputs)
    assert len(estimated["pods"]) > 0
    for name in reference.FRAMES:
        expected = pd.read_csv(REFERENCE / f"{case}-{name}.csv")
        assert_same_frames(estimated[name], expected)


def _rows(batch: pd.DataFrame) -> list[tuple[str, float, float, dict[str, str]]]:
    labels = batch[COLUMNS[3:]].to_dict("records")
    return [
        (str(m), float(v), float(t), {k: x for k, x in named.items() if isinstance(x, str)})
        for m, v, t, named in zip(
            batch["metric"], batch["value"], batch["timestamp_seconds"], labels, strict=True
        )
    ]


@pytest.mark.parametrize("seed", [11, 12])
def test_a_history_fed_poll_by_poll_estimates_what_the_batch_estimator_does(seed: int) -> None:
    synthetic = random_fleet(np.random.default_rng(seed), nodes=8, polls=20)
    keep = 2 * WINDOW_SECONDS + synthetic.poll_seconds
    history = SampleHistory(keep_seconds=keep)
    incremental_models, batch_models = GaugeModels(), GaugeModels()
    arrived: list[tuple[float, pd.DataFrame]] = []
    passes = 0
    # Rows in a batch in any order: a late sample then arrives after its series' newer one.
    shuffle = np.random.default_rng(seed).permutation
    batches = [batch.iloc[shuffle(len(batch))] for batch in synthetic.batches()]
    for i, batch in enumerate(batches):
        received = float(batch["received_seconds"].iloc[0])
        history.add(str(batch["collector"].iloc[0]), _rows(batch), received)
        arrived.append((received, batch))
        if i + 1 < len(batches) and batches[i + 1]["received_seconds"].iloc[0] == received:
            continue  # one pass per poll, after its last collector's batch
        now = received + 0.25
        kept = pd.concat([b for at, b in arrived if at >= now - keep], ignore_index=True)[COLUMNS]
        common = {
            "node_racks": synthetic.node_racks,
            "racks": synthetic.racks,
            "window_seconds": WINDOW_SECONDS,
        }
        incremental = estimate_history(
            history.view(now), now_seconds=now, gauge_models=incremental_models, **common
        )
        batch_estimate = estimate_fleet(kept, now_seconds=now, gauge_models=batch_models, **common)
        for name in ("pods", "nodes", "racks", "latest_racks"):
            assert_same_frames(getattr(incremental, name), getattr(batch_estimate, name))
        passes += not incremental.pods.empty
    assert passes > 10


def test_a_token_scrape_without_a_value_leaves_a_gauge_only_gpu_on_its_readings() -> None:
    """A server answering NaN once (found by the randomised fleet: the pass used to raise, so every
    value of the fleet went stale) costs that scrape only; the GPU's model learns from the others."""
    times = np.arange(0.0, 300.0, 15.0)
    tokens = 900.0 * times
    tokens[8] = np.nan
    gpu = {"node": "node-1", "gpu_uuid": "GPU-0"}
    pod = {"namespace": "llm", "pod": "llama-0"}
    samples = pd.concat(
        [
            pd.DataFrame(
                {"metric": "gpu_power_watts", "value": 300.0 + times / 10, "timestamp_seconds": times, **gpu}
            ),
            pd.DataFrame(
                {"metric": "gpu_assignment_info", "value": 1.0, "timestamp_seconds": times, **gpu, **pod}
            ),
            pd.DataFrame(
                {"metric": "generation_tokens_total", "value": tokens, "timestamp_seconds": times + 1, **pod}
            ),
        ],
        ignore_index=True,
    )
    models = GaugeModels()
    racks = pd.DataFrame(columns=["rack", "cap_watts", "margin_ratio"])
    for now in times[4:] + 2.0:
        pods = estimate_fleet(
            samples,
            node_racks={},
            racks=racks,
            window_seconds=WINDOW_SECONDS,
            now_seconds=now,
            gauge_models=models,
        ).pods
        assert pods.loc[0, "gpu_power_watts"] == pytest.approx(300.0 + (now - 2.0) / 10 - 3.0, abs=3.5)
        assert pods.loc[0, "confidence"] == "low"
    assert models.model(("node-1", "GPU-0")).n_seen_ > 0
