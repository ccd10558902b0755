"""Where the worker's time goes in one poll-and-pass over a simulated fleet, and what the server pays
to take the pass: cProfile of the worker's side, wall time of the server's.

    python bench/worker_profile.py --pods 1000
    python bench/worker_profile.py --pods 10000
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import gc
import pickle
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api_load import NAMESPACE, bench_collectors, bench_objects, worker_spec

from adapter.objects import StaticObjectIndex
from adapter.pipeline import Pipeline
from adapter.provider import StoreProvider
from adapter.query import parse_custom
from adapter.selfmetrics import PipelineMetrics
from adapter.store import MetricStore, ServedLayout
from adapter.value_table import ColumnEncoder
from adapter.worker import Report, settle_garbage_collection


async def main_async(args: argparse.Namespace) -> None:
    spec = worker_spec(args.pods, 1.0, 1.0)
    (collector,) = bench_collectors(args.pods, 1.0)
    index = StaticObjectIndex(bench_objects(args.pods))
    encoder = ColumnEncoder()
    sent: list[bytes] = []
    send_seconds: list[float] = []

    def send(values: object) -> None:
        started = time.process_time()
        layout, columns = encoder.encode(values)  # type: ignore[arg-type]
        sent.append(pickle.dumps(Report(time.time(), layout, columns), protocol=pickle.HIGHEST_PROTOCOL))
        send_seconds.append(time.process_time() - started)

    pipeline = Pipeline(
        [collector],
        index=index,
        settings=spec.settings,
        metrics=PipelineMetrics(),
        racks=lambda: list(spec.settings.racks),
        on_pass=send,
    )
    for _ in range(args.warmup_passes):  # fill the window: passes cost most once it is full
        await pipeline.poll(collector)
        await pipeline.estimate_once()
    settle_garbage_collection()  # as the worker process does once its pipeline is built
    collections: list[float] = []
    gc.callbacks.append(functools.partial(_time_collection, collections, [0.0]))
    polls, passes = [], []
    send_seconds.clear()
    for _ in range(args.passes):
        started = time.process_time()
        await pipeline.poll(collector)
        polls.append(time.process_time() - started)
        started = time.process_time()
        await pipeline.estimate_once()
        passes.append(time.process_time() - started)
    mean = lambda seconds: sum(seconds) / len(seconds) * 1000  # noqa: E731
    print(
        f"worker over {args.pods} pods (CPU time, mean of {args.passes}, not profiled): poll {mean(polls):.0f} ms "
        f"(simulated collector + adding its samples to the history); pass {mean(passes):.0f} ms, "
        f"of which encoding and pickling the report {mean(send_seconds):.1f} ms; "
        f"garbage collection {sum(collections) * 1000 / args.passes:.0f} ms per poll and pass"
    )
    gc.callbacks.clear()
    profile = cProfile.Profile()
    started = time.process_time()
    profile.enable()
    for _ in range(args.passes):
        await pipeline.poll(collector)
        await pipeline.estimate_once()
    profile.disable()
    per_pass = (time.process_time() - started) / args.passes * 1000
    print(
        f"worker: one poll + pass + report over {args.pods} pods: {per_pass:.0f} ms CPU (mean of {args.passes}, profiled)"
    )
    pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)

    store = MetricStore(max_age_seconds=120)
    reports: list[Report] = [pickle.loads(blob) for blob in sent]
    newest_layout = next(r.layout for r in reversed(reports) if r.layout is not None)
    assert newest_layout is not None
    layout = ServedLayout(newest_layout)
    started = time.process_time()
    report: Report = pickle.loads(sent[-1])
    assert report.columns is not None
    store.put_columns(layout, report.columns)
    taken = (time.process_time() - started) * 1000
    print(f"server: unpickle and take one pass of {len(sent[-1]) / 1e6:.2f} MB: {taken:.2f} ms")
    started = time.process_time()
    ServedLayout(newest_layout)
    print(
        f"server: index a new layout (when objects change): {(time.process_time() - started) * 1000:.1f} ms"
    )
    print_answer_cost(store, layout, report, args.pods)


def print_answer_cost(store: MetricStore, layout: ServedLayout, report: Report, pods: int) -> None:
    """What the first HPA query after a pass costs the server (the answer is derived again once per
    pass, then cached), and a cached one: CPU of `StoreProvider.custom_list`, mean of 5 passes."""
    assert report.columns is not None
    provider = StoreProvider(store, StaticObjectIndex(bench_objects(pods)))
    query = parse_custom(
        "v1beta2",
        ["namespaces", NAMESPACE, "pods", "*", "watts_per_token"],
        {"labelSelector": "app=llm-3"},
    )
    provider.custom_list(query)  # selectors are matched once per version of the object index
    first, cached = [], []
    for _ in range(5):
        store.put_columns(layout, report.columns)
        started = time.process_time()
        items = len(provider.custom_items(query))
        provider.custom_list(query)
        first.append(time.process_time() - started)
        started = time.process_time()
        provider.custom_list(query)
        cached.append(time.process_time() - started)
    print(
        f"server: the HPA query ({items} items) after a new pass: {sum(first) / 5 * 1000:.2f} ms CPU; "
        f"cached: {sum(cached) / 5 * 1000:.3f} ms"
    )


def _time_collection(
    collections: list[float], started: list[float], phase: str, info: dict[str, int]
) -> None:
    if phase == "start":
        started[0] = time.process_time()
    else:
        collections.append(time.process_time() - started[0])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--warmup-passes", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    asyncio.run(main_async(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
