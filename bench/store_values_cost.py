"""CPU of what the worker does with one pass's estimate (the part of a pass after the estimator):
`adapter.pipeline.store_values` turns it into the store's values, and `ColumnEncoder.encode` into the
columns sent to the server. Over the synthetic fleet of `bench/estimator_cost.py`.

    python bench/store_values_cost.py --pods 16 1000 10000 --repeat 20

Prints, per fleet size, the best and median CPU time of `--repeat` passes of each part and of both
(garbage collection included, the previous pass's values alive, the workload grouping and replica
budgets kept between passes as in the pipeline) and how many values one pass stores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pandas as pd
from estimator_cost import POLL_SECONDS, WINDOW_SECONDS, _objects, synthetic_samples

from adapter.pipeline import PodWorkloads, store_values
from adapter.value_table import ColumnEncoder
from estimators.fleet import estimate_fleet
from estimators.headroom import ReplicaBudgets


def _milliseconds(seconds: list[float]) -> str:
    return f"best {min(seconds) * 1000:.1f} ms, median {statistics.median(seconds) * 1000:.1f} ms"


def measure(pods: int, repeat: int) -> None:
    scrapes = int((2 * WINDOW_SECONDS + POLL_SECONDS) / POLL_SECONDS)
    samples, racks_of_nodes = synthetic_samples(pods, scrapes, np.random.default_rng(0))
    now = float(samples["timestamp_seconds"].max()) + 1.0
    racks = sorted(set(racks_of_nodes.values()))
    rack_frame = pd.DataFrame({"rack": racks, "cap_watts": 40_000.0, "margin_ratio": 0.1})
    estimate = estimate_fleet(
        samples, node_racks=racks_of_nodes, racks=rack_frame, window_seconds=WINDOW_SECONDS, now_seconds=now
    )
    index, budgets, workloads, encoder = _objects(samples), ReplicaBudgets(), PodWorkloads(), ColumnEncoder()
    storing: list[float] = []
    encoding: list[float] = []
    values: object = None
    for _ in range(repeat + 1):  # the first pass finds the workloads and sends the layout: not counted
        started = time.process_time()
        values = store_values(
            estimate,
            index=index,
            racks_of_nodes=racks_of_nodes,
            window_seconds=WINDOW_SECONDS,
            replica_budgets=budgets,
            workloads=workloads,
        )
        stored = time.process_time()
        encoder.encode(values)  # type: ignore[arg-type]
        storing.append(stored - started)
        encoding.append(time.process_time() - stored)
    storing, encoding = storing[1:], encoding[1:]
    both = [s + e for s, e in zip(storing, encoding, strict=True)]
    print(
        f"{pods} pods, {len(values)} values (CPU, of {repeat}): store_values {_milliseconds(storing)}; "  # type: ignore[arg-type]
        f"encode {_milliseconds(encoding)}; both {_milliseconds(both)}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, nargs="+", default=[16, 10_000])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    for pods in args.pods:
        measure(pods, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
