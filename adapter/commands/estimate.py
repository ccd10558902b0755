"""`wattscale estimate`: the estimators on a CSV of samples, for offline analysis.

    wattscale estimate watts-per-token --input F.csv --window 30s [--output OUT.csv]
    wattscale estimate power-model --input F.csv [--window 30s] [--step 5s] [--regressor linear]

The input is the samples CSV of `adapter.samples_csv` (`timestamp,metric,value[,labels]`, times as
epoch seconds or RFC 3339; `--input -` reads standard input); window edges are written back as epoch
seconds at full precision. Durations take `30s`, `5m`, `2h`. watts-per-token reads the
counters `gpu_energy_joules_total`, `generation_tokens_total`, `prompt_tokens_total` and the gauge
`gpu_power_watts` (either power input may be missing) and writes CSV
`window_start,window_end,watts_per_token,power_watts,tokens_per_second,method` (`--all-columns`
adds the prompt-inclusive and idle/dynamic variants). power-model also reads the `requests_running`
gauge, compares regressors by time-ordered cross-validation and fits the chosen one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from adapter.samples_csv import read_samples, write_table
from collectors.durations import duration_seconds

HELP = "Estimate watts per token or fit the power model from a CSV of samples (offline)."

_OUTPUT = {
    "window_start_seconds": "window_start",
    "window_end_seconds": "window_end",
    "watts_per_token": "watts_per_token",
    "power_watts": "power_watts",
    "tokens_per_second": "tokens_per_second",
    "method": "method",
    "confidence": "confidence",
}


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="estimate", metavar="ESTIMATE", required=True)
    wpt = sub.add_parser("watts-per-token", help="joules per generated token per window")
    wpt.add_argument(
        "--input", required=True, help="CSV with timestamp,metric,value[,labels]; - for standard input"
    )
    wpt.add_argument("--window", type=duration_seconds, default=30.0, help="window length (default 30s)")
    wpt.add_argument("--idle-power-watts", type=float, default=None, help="static power for the idle share")
    wpt.add_argument(
        "--all-columns", action="store_true", help="also prompt-inclusive and idle/dynamic columns"
    )
    wpt.add_argument("--output", type=Path, default=None, help="write here instead of standard output")
    model = sub.add_parser("power-model", help="fit GPU power from load; report cross-validated error")
    model.add_argument(
        "--input", required=True, help="CSV with timestamp,metric,value[,labels]; - for standard input"
    )
    model.add_argument("--window", type=duration_seconds, default=30.0, help="window length (default 30s)")
    model.add_argument(
        "--step", type=duration_seconds, default=None, help="window start spacing (default: window/10)"
    )
    model.add_argument(
        "--regressor", default=None, help="fit this one instead of the best by cross-validation"
    )
    model.add_argument(
        "--splits", type=int, default=3, help="time-ordered cross-validation folds (default 3)"
    )


def _watts_per_token(args: argparse.Namespace) -> int:
    from estimators.energy import watts_per_token

    samples = read_samples(args.input)
    if not (samples["metric"] == "generation_tokens_total").any():
        raise ValueError(f"{args.input}: no generation_tokens_total samples")
    result = watts_per_token(samples, window_seconds=args.window, idle_power_watts=args.idle_power_watts)
    # Input that assigns GPUs to pods (as `wattscale export` writes it) gives windows per pod.
    columns = {c: c for c in ("namespace", "pod") if c in result.columns} | _OUTPUT
    if args.all_columns:
        columns.update({c: c for c in result.columns if c not in columns})
    table = result[list(columns)].rename(columns=columns)
    write_table(table, args.output, exact_columns=["window_start", "window_end"])
    return 0


def _power_model(args: argparse.Namespace, out: TextIO) -> int:
    from estimators.energy import load_windows
    from estimators.power_model import FEATURES, REGRESSORS, PowerModel, compare_regressors

    samples = read_samples(args.input)
    step = args.step if args.step is not None else args.window / 10.0
    rows = load_windows(samples, window_seconds=args.window, step_seconds=step)
    # requests_running is optional: without it the model learns from the two token rates alone.
    features = [f for f in FEATURES if rows[f].notna().any()]
    rows = rows.dropna(subset=features)
    gap = round(args.window / step)
    needed = 2 * (args.splits + gap)
    if len(rows) < needed:
        raise ValueError(
            f"{args.input}: {len(rows)} complete windows of {args.window:g}s; "
            f"cross-validation with {args.splits} folds needs at least {needed}: use a shorter --window or --step"
        )
    if args.regressor is not None and args.regressor not in REGRESSORS:
        raise ValueError(f"--regressor must be one of {', '.join(REGRESSORS)}; got {args.regressor!r}")
    scores = compare_regressors(rows[features], rows["power_watts"], n_splits=args.splits, gap=gap)
    chosen = args.regressor or str(scores["regressor"].iloc[0])
    model = PowerModel(regressor=chosen, random_state=0).fit(rows[features], rows["power_watts"])
    out.write(
        f"# {len(rows)} windows of {args.window:g}s every {step:g}s; time-ordered CV, {args.splits} folds\n"
    )
    out.write(f"# features: {', '.join(features)}\n")
    out.write("regressor,cv_mape,cv_mape_std\n")
    for row in scores.itertuples():
        out.write(f"{row.regressor},{row.mape_mean:.4f},{row.mape_std:.4f}\n")
    out.write(f"# chosen: {chosen}\n")
    out.write(f"# idle_power_watts: {model.idle_power_watts_:.1f}\n")
    out.write(f"# peak_power_watts (one more replica at peak): {model.marginal_watts_at_peak():.1f}\n")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        if args.estimate == "watts-per-token":
            return _watts_per_token(args)
        return _power_model(args, sys.stdout)
    except (OSError, ValueError) as exc:
        print(f"wattscale estimate: {exc}", file=sys.stderr)
        return 2
