"""Accuracy of the estimators on the project's H100 trace, as reported in the estimators' notes.

    python bench/estimator_accuracy.py [--seeds 20]

1. Watts per token (`estimators.energy.watts_per_token`, the offline/CLI path) from realistic scrapes
   (15 s polls, +-0.5 s jitter, 5% dropped, optional GPU energy-counter restart) against the dense
   energy counter, per method, window and scrape phase.
2. The served metric (`estimators.fleet.estimate_fleet`, what the adapter publishes) on the same inputs.
3. The power model: time-ordered CV MAPE per regressor, and MAPE on the later `trace` phase when
   fitted on the calibration phases.
Prints numbers only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import mean_absolute_percentage_error

from estimators.energy import watts_per_token
from estimators.fleet import estimate_fleet
from estimators.power_model import FEATURES, REGRESSORS, PowerModel, compare_regressors, trace_load_windows
from estimators.sampling import (
    ScrapePlan,
    compare_to_truth,
    scrape_trace,
    token_counters,
    true_joules_per_token,
)

TRACE = Path(__file__).resolve().parent.parent / "data" / "h100-llama8b"
RACKS = pd.DataFrame(columns=["rack", "cap_watts", "margin_ratio"])


def scraped(
    samples: pd.DataFrame, steps: pd.DataFrame, seed: int, *, co_scheduled: bool, restart: bool
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    offset = rng.uniform(0.0, 15.0)
    token_offset = offset if co_scheduled else rng.uniform(0.0, 15.0)
    return scrape_trace(
        samples,
        steps,
        energy_plan=ScrapePlan(
            interval_seconds=15.0, offset_seconds=offset, drop_ratio=0.05, jitter_seconds=0.5
        ),
        token_plan=ScrapePlan(
            interval_seconds=15.0, offset_seconds=token_offset, drop_ratio=0.05, jitter_seconds=0.5
        ),
        rng=rng,
        energy_restart_seconds=rng.uniform(60.0, 180.0) if restart else None,
    )


def describe(errors: pd.Series) -> str:
    e = errors.abs().dropna()
    return (
        f"n={len(e):4d} within5%={(e <= 0.05).mean():.2f} median={e.median():.3f} "
        f"p90={e.quantile(0.9):.3f} max={e.max():.3f}"
    )


def offline(samples: pd.DataFrame, steps: pd.DataFrame, seeds: range) -> None:
    print("== watts per token, estimators.energy (token-aligned windows)")
    for window in (30.0, 60.0):
        for name, co, restart, counter in [
            ("counter, co-scheduled", True, False, True),
            ("counter, co-scheduled, restart", True, True, True),
            ("counter, independent phases", False, False, True),
            ("gauge only, co-scheduled", True, False, False),
        ]:
            rows = []
            for seed in seeds:
                frame = scraped(samples, steps, seed, co_scheduled=co, restart=restart)
                if not counter:
                    frame = frame[frame["metric"] != "gpu_energy_joules_total"]
                rows.append(compare_to_truth(watts_per_token(frame, window_seconds=window), samples, steps))
            out = pd.concat(rows, ignore_index=True)
            print(f"  {window:.0f}s {name:32s} {describe(out['relative_error'])}")
            if restart:
                clean = out[out["method"] == "energy_counter"]["relative_error"]
                print(f"  {window:.0f}s {'  (windows without the restart)':32s} {describe(clean)}")


def served(samples: pd.DataFrame, steps: pd.DataFrame, seeds: range) -> None:
    print("== watts per token, estimators.fleet (the served metric; pod token window)")
    tokens = token_counters(steps)
    for window in (30.0, 60.0):
        for name, co in [("co-scheduled", True), ("independent phases", False)]:
            errors = []
            for seed in seeds:
                frame = scraped(samples, steps, seed, co_scheduled=co, restart=False)
                gpu = frame["metric"].str.startswith("gpu_")
                frame = frame.assign(
                    node="n",
                    gpu_uuid=np.where(gpu, "g", None),
                    namespace=np.where(gpu, None, "llm"),
                    pod=np.where(gpu, None, "p"),
                )
                assigned = frame[frame["metric"] == "gpu_power_watts"].assign(
                    metric="gpu_assignment_info", value=1.0, namespace="llm", pod="p"
                )
                frame = pd.concat([frame, assigned], ignore_index=True)
                for now in np.arange(60.0, 212.0, 12.0):
                    pod = estimate_fleet(
                        frame, node_racks={}, racks=RACKS, window_seconds=window, now_seconds=now
                    ).pods.iloc[0]
                    edges = [pod["token_window_start_seconds"], pod["token_window_end_seconds"]]
                    if not np.isfinite(edges).all() or not np.isfinite(pod["watts_per_token"]):
                        continue
                    truth = true_joules_per_token(samples["t"], samples["energy_j"], tokens, edges)[
                        "watts_per_token"
                    ].iloc[0]
                    errors.append(pod["watts_per_token"] / truth - 1.0)
            print(f"  {window:.0f}s {name:32s} {describe(pd.Series(errors))}")


def power_model(samples: pd.DataFrame, steps: pd.DataFrame) -> None:
    print("== power model")
    cut = float(steps.loc[steps["phase"] == "trace", "t_start"].min())
    for window in (15.0, 30.0, 60.0):
        rows = trace_load_windows(samples, steps, window_seconds=window, step_seconds=2.0)
        try:
            cv = compare_regressors(rows[FEATURES], rows["power_watts"], gap=int(window / 2))
            cv_text = " ".join(f"{r.regressor}={r.mape_mean:.3f}" for r in cv.itertuples())
        except ValueError as exc:
            cv_text = f"(no CV: {exc})"
        train = rows[rows["window_end_seconds"] <= cut]
        test = rows[rows["window_start_seconds"] >= cut]
        held = {
            name: mean_absolute_percentage_error(
                test["power_watts"],
                PowerModel(name, random_state=0)
                .fit(train[FEATURES], train["power_watts"])
                .predict(test[FEATURES]),
            )
            for name in REGRESSORS
        }
        print(f"  {window:.0f}s windows: time-ordered CV MAPE: {cv_text}")
        print(
            f"  {window:.0f}s windows: hold-out (trace phase, {len(test)} windows) MAPE: "
            + " ".join(f"{k}={v:.3f}" for k, v in held.items())
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    samples = pd.read_csv(TRACE / "samples.csv")
    steps = pd.read_csv(TRACE / "steps.csv")
    offline(samples, steps, range(args.seeds))
    served(samples, steps, range(min(args.seeds, 6)))
    power_model(samples, steps)


if __name__ == "__main__":
    main()
