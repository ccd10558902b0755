"""Cost of one estimator pass (what the pipeline runs every cycle) over a large fleet.

    python bench/estimator_cost.py [--pods 10000] [--scrapes 5] [--repeat 3]

Builds a synthetic sample frame the shape the pipeline hands to `estimators.fleet.estimate_fleet`:
one GPU per pod, 8 GPUs per node, 4 nodes per rack with one PDU, every series scraped `--scrapes`
times in a 60 s window (GPU energy counter and power gauge, assignment, generation and prompt token
counters, Kepler CPU energy, PDU power), and times `estimate_fleet` plus `aggregate_pods` by
deployment. Prints numbers only; nothing is asserted (timings vary by machine).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from estimators.fleet import aggregate_pods, estimate_fleet


def synthetic_samples(
    pods: int, scrapes: int, rng: np.random.Generator
) -> tuple[pd.DataFrame, dict[str, str]]:
    pod_index = np.arange(pods)
    node_of_pod = pod_index // 8
    nodes = int(node_of_pod.max()) + 1
    node_names = np.array([f"node-{n}" for n in range(nodes)])
    pod_names = np.array([f"llama-{p // 50}-{p}" for p in pod_index])
    gpu_uuids = np.array([f"GPU-{p}" for p in pod_index])
    power = rng.uniform(150.0, 400.0, pods)
    tokens_per_second = rng.uniform(10.0, 1800.0, pods)
    frames = []
    for k in range(scrapes):
        t = 15.0 * k + rng.uniform(0.0, 2.0, pods)
        common = {"node": node_names[node_of_pod], "namespace": "llm"}
        frames.append(
            pd.DataFrame(
                {
                    "metric": "gpu_energy_joules_total",
                    "value": 1e7 + power * t,
                    "timestamp_seconds": t,
                    "gpu_uuid": gpu_uuids,
                    **common,
                }
            )
        )
        frames.append(
            pd.DataFrame(
                {
                    "metric": "gpu_power_watts",
                    "value": power,
                    "timestamp_seconds": t,
                    "gpu_uuid": gpu_uuids,
                    **common,
                }
            )
        )
        frames.append(
            pd.DataFrame(
                {
                    "metric": "gpu_assignment_info",
                    "value": 1.0,
                    "timestamp_seconds": t,
                    "gpu_uuid": gpu_uuids,
                    "pod": pod_names,
                    **common,
                }
            )
        )
        frames.append(
            pd.DataFrame(
                {
                    "metric": "generation_tokens_total",
                    "value": tokens_per_second * t,
                    "timestamp_seconds": t + 1.0,
                    "pod": pod_names,
                    "namespace": "llm",
                }
            )
        )
        frames.append(
            pd.DataFrame(
                {
                    "metric": "prompt_tokens_total",
                    "value": 5.0 * tokens_per_second * t,
                    "timestamp_seconds": t + 1.0,
                    "pod": pod_names,
                    "namespace": "llm",
                }
            )
        )
        frames.append(
            pd.DataFrame(
                {
                    "metric": "pod_cpu_energy_joules_total",
                    "value": 20.0 * t,
                    "timestamp_seconds": t,
                    "pod": pod_names,
                    **common,
                }
            )
        )
        rack_t = 15.0 * k + 0.5
        racks = nodes // 4 + 1
        frames.append(
            pd.DataFrame(
                {
                    "metric": "pdu_power_watts",
                    "value": rng.uniform(8000, 12000, racks),
                    "timestamp_seconds": rack_t,
                    "rack": [f"rack-{r}" for r in range(racks)],
                    "pdu": "p1",
                }
            )
        )
    samples = pd.concat(frames, ignore_index=True)
    node_racks = {name: f"rack-{n // 4}" for n, name in enumerate(node_names)}
    return samples, node_racks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--scrapes", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    samples, node_racks = synthetic_samples(args.pods, args.scrapes, np.random.default_rng(0))
    racks = pd.DataFrame(
        {"rack": sorted(set(node_racks.values())), "cap_watts": 40_000.0, "margin_ratio": 0.1}
    )
    fleet_seconds, group_seconds = [], []
    for _ in range(args.repeat):
        started = time.perf_counter()
        estimate = estimate_fleet(
            samples, node_racks=node_racks, racks=racks, window_seconds=60.0, now_seconds=62.0
        )
        middle = time.perf_counter()
        groups = aggregate_pods(estimate.pods, estimate.pods["pod"].str.rsplit("-", n=1).str[0])
        fleet_seconds.append(middle - started)
        group_seconds.append(time.perf_counter() - middle)
    print(
        f"pods={len(estimate.pods)} nodes={len(estimate.nodes)} racks={len(estimate.racks)} groups={len(groups)}"
    )
    print(f"sample rows={len(samples)}")
    print(
        f"estimate_fleet seconds: best {min(fleet_seconds):.3f}, median {float(np.median(fleet_seconds)):.3f}"
    )
    print(
        f"aggregate_pods seconds: best {min(group_seconds):.3f}, median {float(np.median(group_seconds)):.3f}"
    )
    print(f"per pod: {min(fleet_seconds) / len(estimate.pods) * 1e6:.1f} us")


if __name__ == "__main__":
    main()
