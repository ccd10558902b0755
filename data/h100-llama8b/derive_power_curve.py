"""Regenerate `estimators/data/h100_power_curve.csv` from this folder's H100 trace.

    python data/h100-llama8b/derive_power_curve.py            # rewrites the package table
    python data/h100-llama8b/derive_power_curve.py --check    # exits 1 if the table is stale

Every power figure is energy over time from NVML's energy counter (`energy_j`), interpolated at
the start and end of each span from `steps.csv`: the power gauge is a 1 s average that lags
short phases, the counter does not.

Rows (column `phase`):
- `idle`: the GPU before the model was loaded (phase `start`), batch 0. About 74 W.
- `idle_loaded`: the 8 s idle phase after warm-up, model resident, clocks still up. About 126 W.
- `serving`: one row per `sweep` run as a whole (prefill of a 512-token prompt, then 96 decode steps):
  what a replica kept busy at that batch size draws on average, prefill included. tokens_per_second
  counts generated tokens. About 148 W at batch 1 and 398 W at batch 256.
- `decode`: one row per `sweep` run (512-token prompts, 96 new tokens): the decode steps only, from
  the first decode step's start to the last one's end. tokens_per_second counts generated tokens.
- `prefill`: one row per prefill step of the `sweep` and `prefill` phases; tokens_per_second counts
  prompt tokens processed, prompt_tokens is the prompt length. Steps shorter than about 0.3 s span
  only a few counter updates (NVML refreshes energy about every 100 ms), so those rows are coarse.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from estimators.rates import counter_at

HERE = Path(__file__).resolve().parent
TABLE = HERE.parent.parent / "estimators" / "data" / "h100_power_curve.csv"
HEADER = (
    "# Derived from data/h100-llama8b (one H100 SXM, Llama-3.1-8B-shaped decoder, eager PyTorch)\n"
    "# by data/h100-llama8b/derive_power_curve.py; power = NVML energy-counter difference / seconds.\n"
)


def derive(samples: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    t = samples["t"].to_numpy()
    energy = samples["energy_j"].to_numpy()

    def mean_power_watts(start_seconds: float, end_seconds: float) -> float:
        joules = np.diff(counter_at(t, energy, [start_seconds, end_seconds]))[0]
        return float(joules / (end_seconds - start_seconds))

    rows: list[dict[str, object]] = []
    for phase, source in [("idle", "start"), ("idle_loaded", "idle")]:
        span = samples.loc[samples["phase"] == source, "t"]
        rows.append(
            {
                "phase": phase,
                "batch": 0,
                "prompt_tokens": 0,
                "seconds": span.max() - span.min(),
                "power_watts": mean_power_watts(span.min(), span.max()),
                "tokens_per_second": 0.0,
            }
        )

    # A run starts at each prefill step; its decode steps follow until the next prefill.
    steps = steps.assign(run=(steps["kind"] == "prefill").cumsum())
    for _, run in steps.loc[steps["phase"] == "sweep"].groupby("run"):
        decode = run.loc[run["kind"] == "decode"]
        start, end = decode["t_start"].min(), decode["t_end"].max()
        prompt = int(run.loc[run["kind"] == "prefill", "kv_len"].iloc[0])
        run_start = run["t_start"].min()
        rows.append(
            {
                "phase": "serving",
                "batch": int(run["batch"].iloc[0]),
                "prompt_tokens": prompt,
                "seconds": end - run_start,
                "power_watts": mean_power_watts(run_start, end),
                "tokens_per_second": decode["tokens"].sum() / (end - run_start),
            }
        )
        rows.append(
            {
                "phase": "decode",
                "batch": int(run["batch"].iloc[0]),
                "prompt_tokens": prompt,
                "seconds": end - start,
                "power_watts": mean_power_watts(start, end),
                "tokens_per_second": decode["tokens"].sum() / (end - start),
            }
        )
    prefills = steps.loc[steps["phase"].isin(["sweep", "prefill"]) & (steps["kind"] == "prefill")]
    for start, end, batch, prompt, tokens in prefills[
        ["t_start", "t_end", "batch", "kv_len", "tokens"]
    ].to_numpy():
        rows.append(
            {
                "phase": "prefill",
                "batch": int(batch),
                "prompt_tokens": int(prompt),
                "seconds": end - start,
                "power_watts": mean_power_watts(start, end),
                "tokens_per_second": tokens / (end - start),
            }
        )
    table = pd.DataFrame(rows)
    return table.round({"seconds": 3, "power_watts": 2, "tokens_per_second": 1})


def render(table: pd.DataFrame) -> str:
    return HEADER + table.to_csv(index=False, lineterminator="\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the shipped table differs")
    args = parser.parse_args(argv)
    text = render(derive(pd.read_csv(HERE / "samples.csv"), pd.read_csv(HERE / "steps.csv")))
    if args.check:
        stale = not TABLE.exists() or TABLE.read_text() != text
        print(f"{TABLE.name}: {'stale' if stale else 'up to date'}")
        return 1 if stale else 0
    TABLE.write_text(text)
    print(f"wrote {TABLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
