"""CPU of turning one pass's estimate into the store's values (`adapter.pipeline.store_values`), the
part of a pass after `estimate_fleet`, over the synthetic fleet of `bench/estimator_cost.py`.

    python bench/store_values_cost.py --pods 10000 --repeat 5

Prints the best and median CPU time of `--repeat` calls (garbage collection included, the previous
pass's values alive as in the pipeline) and how many values one pass stores.
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

from adapter.pipeline import store_values
from estimators.fleet import estimate_fleet
from estimators.headroom import ReplicaBudgets


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    scrapes = int((2 * WINDOW_SECONDS + POLL_SECONDS) / POLL_SECONDS)
    samples, racks_of_nodes = synthetic_samples(args.pods, scrapes, np.random.default_rng(0))
    now = float(samples["timestamp_seconds"].max()) + 1.0
    racks = sorted(set(racks_of_nodes.values()))
    rack_frame = pd.DataFrame({"rack": racks, "cap_watts": 40_000.0, "margin_ratio": 0.1})
    estimate = estimate_fleet(
        samples, node_racks=racks_of_nodes, racks=rack_frame, window_seconds=WINDOW_SECONDS, now_seconds=now
    )
    index, budgets = _objects(samples), ReplicaBudgets()
    seconds: list[float] = []
    values: object = None
    for _ in range(args.repeat):
        started = time.process_time()
        values = store_values(
            estimate,
            index=index,
            racks_of_nodes=racks_of_nodes,
            window_seconds=WINDOW_SECONDS,
            replica_budgets=budgets,
        )
        seconds.append(time.process_time() - started)
    assert isinstance(values, dict)
    print(
        f"store_values over {args.pods} pods: {len(values)} values; CPU best {min(seconds) * 1000:.0f} ms, "
        f"median {statistics.median(seconds) * 1000:.0f} ms (of {args.repeat})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
