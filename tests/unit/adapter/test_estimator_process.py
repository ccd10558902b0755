"""The estimator child process dies (out of memory, killed): the pipeline carries on with a new one."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable

from adapter.estimator_process import ProcessEstimator
from adapter.objects import StaticObjectIndex
from adapter.pipeline import Pipeline, history_seconds
from adapter.selfmetrics import SelfMetrics
from adapter.settings import Settings
from adapter.store import MetricStore
from collectors.simulated import Fleet, SimNode, SimPod, SimulatedCollector, SimulatedSettings

DEADLINE_SECONDS = 60.0


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.02)


def child_pids(estimator: ProcessEstimator) -> set[int]:
    return set(estimator._executor._processes)  # type: ignore[attr-defined]


async def test_the_pipeline_outlives_a_killed_estimator_process() -> None:
    fleet = Fleet(nodes=(SimNode("node-1", "rack-a", 2),), pods=(SimPod("llm", "llama-0", "node-1", 1, 0.5),))
    collector = SimulatedCollector("sim", SimulatedSettings(interval_seconds=0.1), fleet=fleet)
    settings = Settings.from_mapping({"window_seconds": 5, "estimate_interval_seconds": 0.1})
    store = MetricStore(max_age_seconds=60)
    estimator = ProcessEstimator(history_seconds(settings, [collector]))
    pipeline = Pipeline(
        [collector],
        store=store,
        index=StaticObjectIndex([]),
        settings=settings,
        self_metrics=SelfMetrics(),
        estimator=estimator,
    )
    running = asyncio.create_task(pipeline.run())
    try:
        await until(lambda: store.generation >= 2, "the first passes")
        (first,) = child_pids(estimator)
        os.kill(first, signal.SIGKILL)
        killed_at = store.generation
        await until(lambda: running.done() or store.generation >= killed_at + 3, "passes after the kill")
        assert not running.done(), running.exception()
        assert first not in child_pids(estimator)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await pipeline.aclose()


async def test_callers_that_see_the_same_death_start_one_new_process() -> None:
    estimator = ProcessEstimator(keep_seconds=10.0)
    created: list[object] = []
    new_executor = estimator._new_executor

    def counting() -> object:
        created.append(new_executor())
        return created[-1]

    estimator._new_executor = counting  # type: ignore[method-assign,assignment]
    try:
        await estimator.add("sim", [], 1.0)  # the child is up
        (pid,) = child_pids(estimator)
        os.kill(pid, signal.SIGKILL)
        results = await asyncio.gather(
            *(estimator.add("sim", [], 2.0) for _ in range(4)), return_exceptions=True
        )
        assert results and all(isinstance(r, Exception) for r in results if r is not None)
        assert len(created) == 1, "each caller that saw the death replaced the process again"
        await estimator.add("sim", [], 3.0)  # the one replacement works
    finally:
        await estimator.aclose()
