"""Write the H100 trace as a cluster would have scraped it, in `wattscale estimate`'s input format.

    python data/h100-llama8b/scrape_to_csv.py --output /tmp/h100.csv
    wattscale estimate watts-per-token --input /tmp/h100.csv --window 30s

Columns `timestamp,metric,value`: gpu_energy_joules_total and gpu_power_watts from the GPU exporter,
generation_tokens_total, prompt_tokens_total and requests_running from the inference server, each
scraped every `--interval` seconds at its own phase, with `--drop` of the scrapes lost.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from estimators.sampling import ScrapePlan, scrape_trace

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=15.0, help="scrape interval, seconds")
    parser.add_argument(
        "--token-offset", type=float, default=None, help="server scrape phase after the GPU's"
    )
    parser.add_argument("--drop", type=float, default=0.05, help="fraction of scrapes lost")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    offset = rng.uniform(0.0, args.interval)
    token_offset = (
        rng.uniform(0.0, args.interval) if args.token_offset is None else offset + args.token_offset
    )
    frame = scrape_trace(
        pd.read_csv(HERE / "samples.csv"),
        pd.read_csv(HERE / "steps.csv"),
        energy_plan=ScrapePlan(interval_seconds=args.interval, offset_seconds=offset, drop_ratio=args.drop),
        token_plan=ScrapePlan(
            interval_seconds=args.interval, offset_seconds=token_offset % args.interval, drop_ratio=args.drop
        ),
        rng=rng,
    )
    frame = frame.rename(columns={"timestamp_seconds": "timestamp"}).sort_values(["timestamp", "metric"])
    frame.to_csv(args.output, index=False, columns=["timestamp", "metric", "value"], float_format="%.4f")
    print(f"wrote {len(frame)} rows to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
