"""Regenerate the estimator reference outputs that tests/unit/estimators/test_estimator_reference.py
compares the estimator against.

The reference is what the estimator of commit b8cdeef (the last one that re-read the whole sample
frame every pass, before samples were kept per series) computed on two inputs built by this
checkout: a seeded randomised fleet (`tests/unit/estimators/synthetic_fleet.py`) and the H100 trace
scraped as a cluster would (`estimators.sampling.scrape_trace`), each estimated at several `now`.
Those outputs were produced with that commit's estimators package, extracted outside the repository:

    mkdir -p /tmp/reference && git archive b8cdeef estimators | tar -x -C /tmp/reference
    python tests/data/estimator_reference/make_reference.py --estimators /tmp/reference

Run without --estimators it records this checkout's estimator instead: only do that on purpose,
when a rule changes, and say so in the commit.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "unit" / "estimators"))

from synthetic_fleet import COLUMNS, random_fleet  # noqa: E402

from estimators.energy import Metrics, as_one_pod  # noqa: E402
from estimators.sampling import ScrapePlan, scrape_trace  # noqa: E402

FLEET_SEED = 0
H100_SEED = 4
WINDOW_SECONDS = 60.0
FRAMES = ("pods", "nodes", "racks", "latest_racks")


def fleet_input() -> tuple[pd.DataFrame, dict[str, str], pd.DataFrame, list[float]]:
    """(samples, node_racks, racks, nows) of the randomised fleet."""
    fleet = random_fleet(np.random.default_rng(FLEET_SEED))
    start = float(fleet.samples["timestamp_seconds"].min())
    nows = [start + offset for offset in (20.0, 67.0, 141.5, 202.0, 290.0, 352.0, 400.0)]
    return fleet.samples[COLUMNS], fleet.node_racks, fleet.racks, nows


def h100_input(trace: Path) -> tuple[pd.DataFrame, dict[str, str], pd.DataFrame, list[float]]:
    """(samples, node_racks, racks, nows) of the H100 trace scraped every 15 s (the energy counter
    restarting once), made one pod on one GPU (`estimators.energy.as_one_pod`: empty node and GPU
    labels) in one rack."""
    rng = np.random.default_rng(H100_SEED)
    plan = ScrapePlan(
        interval_seconds=15.0, offset_seconds=rng.uniform(0, 15), drop_ratio=0.05, jitter_seconds=0.5
    )
    tokens = ScrapePlan(
        interval_seconds=15.0, offset_seconds=rng.uniform(0, 15), drop_ratio=0.05, jitter_seconds=0.5
    )
    frame = scrape_trace(
        pd.read_csv(trace / "samples.csv"),
        pd.read_csv(trace / "steps.csv"),
        energy_plan=plan,
        token_plan=tokens,
        rng=rng,
        energy_restart_seconds=90.0,
    )
    frame = frame[frame["metric"] != "requests_running"]
    samples = as_one_pod(frame, Metrics()).sort_values("timestamp_seconds", kind="stable")
    samples = samples.reindex(columns=COLUMNS).reset_index(drop=True)
    samples = samples.astype({label: object for label in COLUMNS[3:]})
    start, end = float(samples["timestamp_seconds"].min()), float(samples["timestamp_seconds"].max())
    nows = list(np.linspace(start + 40.0, end, 8))
    racks = pd.DataFrame({"rack": ["rack-1"], "cap_watts": [1_000.0], "margin_ratio": [0.1]})
    return samples, {"": "rack-1"}, racks, nows


def estimate(
    fleet: ModuleType,
    models: ModuleType,
    inputs: tuple[pd.DataFrame, dict[str, str], pd.DataFrame, list[float]],
) -> dict[str, pd.DataFrame]:
    """Every pass's frames, one frame per kind with a `now_seconds` column; the gauge models carried
    from pass to pass as the pipeline carries them."""
    samples, node_racks, racks, nows = inputs
    gauge_models = models.GaugeModels()
    out: dict[str, list[pd.DataFrame]] = {name: [] for name in FRAMES}
    for now in nows:
        result = fleet.estimate_fleet(
            samples,
            node_racks=node_racks,
            racks=racks,
            window_seconds=WINDOW_SECONDS,
            now_seconds=now,
            gauge_models=gauge_models,
        )
        for name in FRAMES:
            out[name].append(getattr(result, name).assign(now_seconds=now))
    return {name: pd.concat(frames, ignore_index=True) for name, frames in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--estimators", type=Path, help="folder holding the reference `estimators` package")
    parser.add_argument("--trace", type=Path, default=ROOT / "data" / "h100-llama8b")
    args = parser.parse_args()
    if args.estimators is not None:
        for name in [m for m in sys.modules if m == "estimators" or m.startswith("estimators.")]:
            del sys.modules[name]  # the inputs were built above; estimate with the reference package
        sys.path.insert(0, str(args.estimators.resolve()))
    fleet = importlib.import_module("estimators.fleet")
    models = importlib.import_module("estimators.gauge_model")
    print(f"estimating with {fleet.__file__}")
    for case, inputs in (("fleet", fleet_input()), ("h100", h100_input(args.trace))):
        for name, frame in estimate(fleet, models, inputs).items():
            frame.to_csv(HERE / f"{case}-{name}.csv", index=False, float_format="%.17g")


if __name__ == "__main__":
    main()
