"""Cost of one estimator pass (what the pipeline runs every cycle) over large fleets, and memory.

    python bench/estimator_cost.py [--pods 1000 10000 50000] [--repeat 5] [--json]

For each fleet size: a synthetic sample history the shape the pipeline keeps (one GPU per pod,
8 GPUs per node, 4 nodes per rack with one PDU, 20 pods per Deployment; every series polled every
15 s over two 60 s windows and a poll: GPU energy counter and power gauge, assignment, generation
and prompt token counters, Kepler CPU energy, PDU power), fed into the pipeline's `SampleHistory`
poll by poll as the collectors deliver it (each poll's append is timed), then the whole served
pass `adapter.pipeline.estimate_pass` (estimators over the per-series store, Deployment grouping,
store values) timed `--repeat` times on one core, and the estimator alone
(`estimators.fleet.estimate_history`). Prints best and median of both, the append cost, and the
process RSS (current and peak) after the passes; `--json` prints one JSON object per size instead,
for the scaling curve. Nothing is asserted (timings vary by machine).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd

from adapter.catalogue import DEPLOYMENTS, PODS
from adapter.objects import KubeObject, StaticObjectIndex
from adapter.pipeline import SampleHistory, SampleRow, estimate_pass
from adapter.selectors import parse_selector
from adapter.settings import RackSettings
from estimators.fleet import estimate_history

PODS_PER_DEPLOYMENT = 20
WINDOW_SECONDS = 60.0
POLL_SECONDS = 15.0


def synthetic_samples(
    pods: int, scrapes: int, rng: np.random.Generator
) -> tuple[pd.DataFrame, dict[str, str]]:
    pod_index = np.arange(pods)
    node_of_pod = pod_index // 8
    nodes = int(node_of_pod.max()) + 1
    node_names = np.array([f"node-{n}" for n in range(nodes)])
    pod_names = np.array([f"llama-{p // PODS_PER_DEPLOYMENT}-{p}" for p in pod_index])
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


def _polls(samples: pd.DataFrame) -> Iterator[tuple[float, list[SampleRow]]]:
    """The samples as the collectors deliver them: one batch per poll, received as the poll ends
    (made one at a time, so the process holds only the history, as the worker does)."""
    labels = [c for c in samples.columns if c not in ("metric", "value", "timestamp_seconds")]
    poll = (samples["timestamp_seconds"] // POLL_SECONDS).astype(int)
    for k, batch in samples.groupby(poll, sort=True):
        named = batch[labels].to_dict("records")
        rows: list[SampleRow] = [
            (m, float(v), float(t), {key: x for key, x in n.items() if isinstance(x, str)})
            for m, v, t, n in zip(
                batch["metric"], batch["value"], batch["timestamp_seconds"], named, strict=True
            )
        ]
        yield (int(k) + 1) * POLL_SECONDS, rows


def _objects(samples: pd.DataFrame) -> StaticObjectIndex:
    pods = samples["pod"].dropna().unique()
    groups = sorted({str(p).rsplit("-", 1)[0] for p in pods})
    objects = [KubeObject(PODS, "llm", str(p), labels={"app": str(p).rsplit("-", 1)[0]}) for p in pods]
    objects += [KubeObject(DEPLOYMENTS, "llm", g, pod_selector=parse_selector(f"app={g}")) for g in groups]
    return StaticObjectIndex(objects)


def _rss_megabytes() -> tuple[float, float]:
    """(current, peak) resident set size of this process, MB."""
    with open("/proc/self/statm") as statm:
        current = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # ru_maxrss is KiB


def measure(pods: int, repeat: int) -> dict[str, float | int]:
    scrapes = int((2 * WINDOW_SECONDS + POLL_SECONDS) / POLL_SECONDS)
    samples, node_racks = synthetic_samples(pods, scrapes, np.random.default_rng(0))
    now = float(samples["timestamp_seconds"].max()) + 1.0
    racks = [
        RackSettings(
            name=rack, cap_watts=40_000.0, margin_ratio=0.1, node_selector=parse_selector(f"rack={rack}")
        )
        for rack in sorted(set(node_racks.values()))
    ]
    rack_frame = pd.DataFrame({"rack": [r.name for r in racks], "cap_watts": 40_000.0, "margin_ratio": 0.1})
    index = _objects(samples)
    history = SampleHistory(keep_seconds=2 * WINDOW_SECONDS + POLL_SECONDS)
    appends = []
    for received, rows in _polls(samples):
        started = time.perf_counter()
        history.add("fleet", rows, received)
        appends.append(time.perf_counter() - started)
    passes, estimator = [], []
    values = {}
    for _ in range(repeat):
        started = time.perf_counter()
        values = estimate_pass(
            history, now_seconds=now, index=index, racks=racks, window_seconds=WINDOW_SECONDS
        )
        passes.append(time.perf_counter() - started)
        started = time.perf_counter()
        estimate_history(
            history.view(now),
            node_racks=node_racks,
            racks=rack_frame,
            window_seconds=WINDOW_SECONDS,
            now_seconds=now,
        )
        estimator.append(time.perf_counter() - started)
    current, peak = _rss_megabytes()
    return {
        "pods": pods,
        "nodes": len(set(node_racks)),
        "gpus": pods,
        "sample_rows": len(samples),
        "stored_values": len(values),
        "pass_seconds_best": min(passes),
        "pass_seconds_median": float(np.median(passes)),
        "estimate_seconds_best": min(estimator),
        "estimate_seconds_median": float(np.median(estimator)),
        "append_poll_seconds_median": float(np.median(appends)),
        "append_poll_seconds_max": max(appends),
        "rows_per_poll": len(samples) // len(appends),
        "rss_megabytes": current,
        "peak_rss_megabytes": peak,
        "repeat": repeat,
        "load_average_1m": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pods", type=int, nargs="+", default=[1_000, 10_000, 50_000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="one JSON object per fleet size")
    args = parser.parse_args()
    for pods in args.pods:
        result = measure(pods, args.repeat)
        if args.json:
            print(json.dumps(result), flush=True)
            continue
        print(
            f"pods={result['pods']} nodes={result['nodes']} sample rows={result['sample_rows']}: "
            f"pass best {result['pass_seconds_best']:.3f} s, median {result['pass_seconds_median']:.3f} s "
            f"(estimator best {result['estimate_seconds_best']:.3f} s, "
            f"median {result['estimate_seconds_median']:.3f} s); "
            f"append one poll ({result['rows_per_poll']} rows) median "
            f"{result['append_poll_seconds_median']:.3f} s, max {result['append_poll_seconds_max']:.3f} s; "
            f"RSS {result['rss_megabytes']:.0f} MB, peak {result['peak_rss_megabytes']:.0f} MB; "
            f"load average {result['load_average_1m']:.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
