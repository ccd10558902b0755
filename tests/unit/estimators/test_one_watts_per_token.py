"""Issue 13 item 5: `wattscale estimate` and the running server give the same watts per token."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adapter.catalogue import PODS
from adapter.cli import main
from adapter.objects import StaticObjectIndex
from adapter.pipeline import SampleHistory, estimate_pass
from adapter.store import ObjectRef
from estimators.sampling import ScrapePlan, scrape_trace

TRACE = Path(__file__).resolve().parents[3] / "data" / "h100-llama8b"
WINDOW_SECONDS = 30.0


def _replayed_samples(seed: int) -> pd.DataFrame:
    """The H100 trace as a cluster scrapes it, labelled as the collectors label it."""
    rng = np.random.default_rng(seed)
    frame = scrape_trace(
        pd.read_csv(TRACE / "samples.csv"),
        pd.read_csv(TRACE / "steps.csv"),
        energy_plan=ScrapePlan(interval_seconds=15.0, offset_seconds=rng.uniform(0, 15), drop_ratio=0.05),
        token_plan=ScrapePlan(interval_seconds=15.0, offset_seconds=rng.uniform(0, 15), drop_ratio=0.05),
        rng=rng,
    )
    frame = frame[frame["metric"] != "requests_running"]
    gpu = frame["metric"].str.startswith("gpu_")
    frame = frame.assign(
        timestamp_seconds=frame["timestamp_seconds"] + 1_790_000_000.0,
        node="node-1",
        gpu_uuid=np.where(gpu, "GPU-0", None),
        namespace=np.where(gpu, None, "llm"),
        pod=np.where(gpu, None, "llama-0"),
    )
    assigned = frame[frame["metric"] == "gpu_power_watts"].assign(
        metric="gpu_assignment_info", value=1.0, namespace="llm", pod="llama-0"
    )
    return pd.concat([frame, assigned], ignore_index=True).sort_values("timestamp_seconds", kind="stable")


def _served(samples: pd.DataFrame) -> dict[float, tuple[float, float]]:
    """Token window end -> (watts_per_token, window seconds) as the store held it, from a pass after
    every scrape; for each end, the last pass before the next token scrape (within half a window)."""
    history = SampleHistory(keep_seconds=3 * WINDOW_SECONDS)
    index = StaticObjectIndex([])
    served: dict[float, tuple[float, float]] = {}
    ref = ObjectRef(PODS, "llm", "llama-0")
    for now, batch in samples.groupby("timestamp_seconds", sort=True):
        rows = [
            (
                r.metric,
                r.value,
                r.timestamp_seconds,
                {
                    k: getattr(r, k)
                    for k in ("node", "gpu_uuid", "namespace", "pod")
                    if isinstance(getattr(r, k), str)
                },
            )
            for r in batch.itertuples()
        ]
        history.add("scrape", rows, float(now))
        values = estimate_pass(
            history, now_seconds=float(now), index=index, racks=[], window_seconds=WINDOW_SECONDS
        )
        value = values.get((ref, "watts_per_token"))
        if value is not None and float(now) <= value.timestamp_seconds + 0.5 * WINDOW_SECONDS:
            served[value.timestamp_seconds] = (value.value, value.window_seconds)
    return served


@pytest.mark.parametrize("seed", [0])
def test_cli_and_served_path_agree_on_the_replayed_h100_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], seed: int
) -> None:
    samples = _replayed_samples(seed)
    source = tmp_path / "samples.csv"
    samples.rename(columns={"timestamp_seconds": "timestamp"}).to_csv(source, index=False)
    assert main(["estimate", "watts-per-token", "--input", str(source), "--window", "30s"]) == 0
    offline = pd.read_csv(io.StringIO(capsys.readouterr().out))
    served = _served(samples)
    assert len(offline) >= 5
    compared = 0
    for row in offline.itertuples():
        value, window = served[row.window_end]
        assert window == pytest.approx(row.window_end - row.window_start, abs=1e-6)
        assert value == pytest.approx(row.watts_per_token, abs=0.0011)  # served to 1 mJ
        compared += 1
    assert compared == len(offline)
