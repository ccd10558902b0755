"""Accuracy of the estimators on the project's H100 trace, as reported in the estimators' notes.

    python bench/estimator_accuracy.py [--seeds 20] [--hour-seeds 10] [--only-hour]

1. Watts per token (`estimators.energy.watts_per_token`, the offline/CLI path) from realistic scrapes
   (15 s polls, +-0.5 s jitter, 5% dropped, optional GPU energy-counter restart) against the dense
   energy counter, per method, window and scrape phase.
2. The served metric (`estimators.fleet.estimate_fleet`, what the adapter publishes) on the same inputs.
3. The power model: time-ordered CV MAPE per regressor, and MAPE on the later `trace` phase when
   fitted on the calibration phases.
4. Gauge only, learning (`estimators.gauge_model`): the trace played back to back for an hour
   (`estimators.playback`, random idle pauses of up to 30 s between repeats), gauge scraped every 5/15/30 s and token counters every 15 s at
   independent phases, 5% of scrapes dropped, the token counters reset once; 30 s token-aligned
   windows. Error of watts per token against history length and gauge period, naive (the gauge
   mean, `estimators.energy`) against the online model; error by confidence label; GPUs of one key
   sharing the model.
5. Energy counter and token counters at independent phases, 30 s windows over the same hour:
   the counter read at the token scrapes evenly (`estimators.rates.counter_at`) against spread by
   the learned model (`estimators.gauge_model.shaped_counter_at`).
Prints numbers only.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import mean_absolute_percentage_error

from estimators.energy import watts_per_token
from estimators.fleet import estimate_fleet
from estimators.gauge_model import FEATURES as GAUGE_FEATURES
from estimators.gauge_model import (
    GaugePowerModel,
    gauge_pairs,
    modelled_energy,
    replay,
    shaped_counter_at,
)
from estimators.playback import play_back, scrape_gpu
from estimators.power_model import FEATURES, REGRESSORS, PowerModel, compare_regressors, trace_load_windows
from estimators.rates import counter_at
from estimators.sampling import (
    ScrapePlan,
    compare_to_truth,
    scrape_trace,
    step_value_at,
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


HISTORY_MINUTES = [0, 5, 15, 30, 60]
GAUGE_PERIODS = (5.0, 15.0, 30.0)


def _truth(samples: pd.DataFrame, steps: pd.DataFrame, starts: pd.Series, ends: pd.Series) -> np.ndarray:
    tokens = token_counters(steps)
    at = np.column_stack((starts, ends))
    energy = np.diff(np.interp(at, samples["t"], samples["energy_j"]), axis=1)[:, 0]
    generated = np.diff(
        step_value_at(tokens["timestamp_seconds"], tokens["generation_tokens_total"], at), axis=1
    )
    truth: np.ndarray = energy / np.where(generated[:, 0] > 0, generated[:, 0], np.nan)
    return truth


def _quantiles(errors: pd.Series) -> str:
    e = errors.abs().dropna()
    if e.empty:
        return f"{'-':>15s}"
    return f"{e.median():6.3f} {e.quantile(0.9):6.3f} {len(e):4d}"


def gauge_only(samples: pd.DataFrame, steps: pd.DataFrame, seeds: range) -> None:
    print(f"== gauge only, learning: {len(seeds)} seeds, 30 s windows, |relative error| of watts per token")
    rows = []
    for period in GAUGE_PERIODS:
        for seed in seeds:
            frame, replica = scrape_gpu(samples, steps, seed=seed, gauge_seconds=period)
            model = replay(GaugePowerModel(), [replica])
            gauge_frame = frame.loc[frame["metric"] != "gpu_energy_joules_total"]
            # The served gauge-only estimate, each window against the truth over its own span.
            naive = watts_per_token(gauge_frame, window_seconds=30.0, power_model=False)
            naive_truth = _truth(samples, steps, naive["window_start_seconds"], naive["window_end_seconds"])
            truth = _truth(samples, steps, model["window_start_seconds"], model["window_end_seconds"])
            rows.append(
                model.assign(
                    gauge_seconds=period, seed=seed, model_error=model["watts_per_token"] / truth - 1.0
                )
            )
            rows.append(
                naive[["window_start_seconds", "window_end_seconds"]].assign(
                    gauge_seconds=period, seed=seed, naive_error=naive["watts_per_token"] / naive_truth - 1.0
                )
            )
    out = pd.concat(rows, ignore_index=True)
    out["history"] = pd.cut(out["window_end_seconds"] / 60.0, HISTORY_MINUTES, labels=_history_labels())
    print("  (median p90 n per cell)")
    print(f"  {'history':10s} {'gauge':>6s} {'naive: median p90 n':>22s} {'model: median p90 n':>22s}")
    for (history, period), cell in out.groupby(["history", "gauge_seconds"], observed=True):
        print(
            f"  {history:10s} {period:5.0f}s {_quantiles(cell['naive_error']):>22s} {_quantiles(cell['model_error']):>22s}"
        )
    mature = out.loc[out["window_end_seconds"] >= 1800.0]
    print("  by gauge period, once 30 min of history exist:")
    for period, cell in mature.groupby("gauge_seconds"):
        print(
            f"  {'30-60 min':10s} {period:5.0f}s {_quantiles(cell['naive_error']):>22s} {_quantiles(cell['model_error']):>22s}"
        )
    print("  by confidence label (15 s gauge, all history): median p90 n")
    for label, cell in out.loc[out["gauge_seconds"] == 15.0].groupby("confidence"):
        print(f"    {label:7s} {_quantiles(cell['model_error'])}")
    model_form_floor(samples, steps, seeds)
    shared_key(samples, steps, seeds)


def model_form_floor(samples: pd.DataFrame, steps: pd.DataFrame, seeds: range) -> None:
    """The model's form alone: fitted to each token interval's true power (the dense energy counter)
    instead of gauge readings, over the whole hour. No history or gauge makes the model better."""
    errors = []
    counted = token_counters(steps)
    for seed in seeds:
        _, replica = scrape_gpu(samples, steps, seed=seed, gauge_seconds=15.0)
        intervals = replica.intervals.loc[~replica.intervals["reset"]]
        at = np.column_stack((intervals["start_seconds"], intervals["end_seconds"]))
        power = np.diff(np.interp(at, samples["t"], samples["energy_j"]), axis=1)[:, 0] / intervals["seconds"]
        best = GaugePowerModel(max_history=len(intervals)).fit(intervals[GAUGE_FEATURES], power)
        edges = replica.edges_seconds
        energy = np.diff(modelled_energy(best, replica.intervals)(edges))
        tokens = np.diff(
            step_value_at(counted["timestamp_seconds"], counted["generation_tokens_total"], edges)
        )
        truth = _truth(samples, steps, edges[:-1], edges[1:])
        errors.append(pd.Series(energy / np.where(tokens > 0, tokens, np.nan) / truth - 1.0))
    print(f"  model form floor (fitted to the dense counter, 15 s scrapes): {_quantiles(pd.concat(errors))}")


def shared_key(samples: pd.DataFrame, steps: pd.DataFrame, seeds: range) -> None:
    """GPUs of one key (GPU type, serving configuration) share one model: more pairs per minute."""
    print("  GPUs sharing the key's model (15 s gauge): median p90 n")
    columns = {}
    for gpus in (1, 4, 8):
        rows = []
        for first in range(0, gpus * max(2, len(seeds) // 2), gpus):
            replicas = [
                scrape_gpu(samples, steps, seed=1000 + first + k, gauge_seconds=15.0)[1] for k in range(gpus)
            ]
            out = replay(GaugePowerModel(), replicas)
            truth = _truth(samples, steps, out["window_start_seconds"], out["window_end_seconds"])
            rows.append(out.assign(error=out["watts_per_token"].to_numpy() / truth - 1.0))
        out = pd.concat(rows, ignore_index=True)
        history = pd.cut(out["window_end_seconds"] / 60.0, HISTORY_MINUTES, labels=_history_labels())
        columns[gpus] = out.groupby(history, observed=True)["error"].apply(_quantiles)
    print(f"  {'history':10s} " + " ".join(f"{f'{gpus} GPU(s)':>17s}" for gpus in columns))
    for label in _history_labels():
        cells = " ".join(f"{column.get(label, '-'):>17s}" for column in columns.values())
        print(f"  {label:10s} {cells}")


def _history_labels() -> list[str]:
    return [f"{a}-{b} min" for a, b in itertools.pairwise(HISTORY_MINUTES)]


def counter_phases(samples: pd.DataFrame, steps: pd.DataFrame, seeds: range) -> None:
    print(f"== energy counter at independent phases: {len(seeds)} seeds, 30 s token-aligned windows")
    rows = []
    for seed in seeds:
        frame, replica = scrape_gpu(samples, steps, seed=seed, gauge_seconds=15.0)
        energy = frame.loc[frame["metric"] == "gpu_energy_joules_total"].sort_values("timestamp_seconds")
        edges = replica.edges_seconds
        truth = np.diff(np.interp(edges, samples["t"], samples["energy_j"]))
        times, values = energy["timestamp_seconds"], energy["value"]
        even = np.diff(counter_at(times, values, edges, on_reset="neighbour_rate"))
        # Spread by the model as it stands at each window's end (the pairs known by then), evenly
        # until it has learned a few.
        pairs = gauge_pairs(replica.intervals, replica.gauge_times, replica.gauge_watts)
        known = np.searchsorted(pairs["interval_end_seconds"].to_numpy(np.float64), edges[1:], side="right")
        learner = GaugePowerModel()
        shaped = even.copy()
        learned = 0
        for i, now_known in enumerate(known):
            if now_known > learned:
                learner.partial_fit(
                    pairs.iloc[learned:now_known][GAUGE_FEATURES],
                    pairs.iloc[learned:now_known]["power_watts"],
                )
                learned = now_known
            if learned >= 8:
                shape = modelled_energy(learner, replica.intervals)
                shaped[i] = np.diff(shaped_counter_at(times, values, edges[i : i + 2], shape))[0]
        rows.append(
            pd.DataFrame({"end": edges[1:], "even": even / truth - 1.0, "shaped": shaped / truth - 1.0})
        )
    out = pd.concat(rows, ignore_index=True)
    print(
        f"  {'windows':22s} {'even: median p90 n':>20s} {'shaped: median p90 n':>22s} within 5% even/shaped"
    )
    for name, cell in [("all", out), ("after 30 min", out.loc[out["end"] >= 1800.0])]:
        within = f"{(cell['even'].abs() <= 0.05).mean():.2f}/{(cell['shaped'].abs() <= 0.05).mean():.2f}"
        print(f"  {name:22s} {_quantiles(cell['even']):>20s} {_quantiles(cell['shaped']):>22s} {within}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--hour-seeds", type=int, default=10, help="seeds for sections 4 and 5")
    parser.add_argument("--repeats", type=int, default=18, help="trace repeats played back (18: an hour)")
    parser.add_argument("--only-hour", action="store_true", help="sections 4 and 5 only")
    args = parser.parse_args()
    samples = pd.read_csv(TRACE / "samples.csv")
    steps = pd.read_csv(TRACE / "steps.csv")
    if not args.only_hour:
        offline(samples, steps, range(args.seeds))
        served(samples, steps, range(min(args.seeds, 6)))
        power_model(samples, steps)
    looped_samples, looped_steps = play_back(
        samples, steps, repeats=args.repeats, rng=np.random.default_rng(0)
    )
    gauge_only(looped_samples, looped_steps, range(args.hour_seeds))
    counter_phases(looped_samples, looped_steps, range(args.hour_seeds))


if __name__ == "__main__":
    main()
