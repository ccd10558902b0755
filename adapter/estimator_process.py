"""Estimator passes in a child process.

A pass is mostly pandas, which holds the GIL for much of its second: in the server's own process
it would stall the event loop and every API request with it. In a child process the kernel's
scheduler, not the GIL, shares the CPU, and it favours the API loop when a request wakes it. The
child keeps the sample history, so each poll sends only its new samples.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from adapter.objects import KubeObject, ObjectIndex, StaticObjectIndex
from adapter.pipeline import INDEXED_RESOURCES, SampleHistory, SampleRow, estimate_pass, sample_rows
from adapter.settings import RackSettings
from adapter.store import Key, StoredValue
from collectors.base import Sample

log = logging.getLogger(__name__)

# State of the child process; the parent never touches these.
_history: SampleHistory | None = None
_index: ObjectIndex = StaticObjectIndex([])


def _start(keep_seconds: float) -> None:
    global _history
    _history = SampleHistory(keep_seconds)
    # Background work: when the API and a pass want the same core, the API's request goes first.
    # SCHED_BATCH stops a pass from preempting a waking request; nice 10 leaves it about a tenth
    # of the CPU weight while both run. Neither needs privileges.
    with contextlib.suppress(OSError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    with contextlib.suppress(OSError):
        os.nice(10)


def _add(collector: str, rows: Sequence[SampleRow], received_seconds: float) -> None:
    assert _history is not None
    _history.add(collector, rows, received_seconds)


def _set_index(objects: Sequence[KubeObject]) -> None:
    global _index
    _index = StaticObjectIndex(objects)


def _estimate(
    now_seconds: float, racks: Sequence[RackSettings], window_seconds: float
) -> dict[Key, StoredValue]:
    assert _history is not None
    return estimate_pass(
        _history, now_seconds=now_seconds, index=_index, racks=racks, window_seconds=window_seconds
    )


class ProcessEstimator:
    def __init__(self, keep_seconds: float) -> None:
        self._keep_seconds = keep_seconds
        self._executor = self._new_executor()
        self._index_version: int | None = None

    def _new_executor(self) -> ProcessPoolExecutor:
        # spawn: a fork of a process running an event loop and threads is not safe.
        context = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(1, mp_context=context, initializer=_start, initargs=(self._keep_seconds,))

    async def _call(self, function: object, *args: object) -> object:
        loop = asyncio.get_running_loop()
        executor = self._executor
        try:
            return await loop.run_in_executor(executor, function, *args)  # type: ignore[arg-type]
        except BrokenProcessPool:
            # The child died (out of memory, killed): start a new one. Its history is gone, so values
            # go stale for a window and then come back; the API keeps serving meanwhile. Every call
            # in flight sees the same death: only the first replaces the pool, or the later ones
            # would shut down the replacement (and the calls already sent to it).
            if self._executor is executor:
                log.error("estimator.process_died")
                executor.shutdown(wait=False, cancel_futures=True)
                self._executor = self._new_executor()
                self._index_version = None
            raise

    async def add(self, collector: str, samples: Sequence[Sample], received_seconds: float) -> None:
        await self._call(_add, collector, sample_rows(samples), received_seconds)

    async def estimate(
        self, *, now_seconds: float, index: ObjectIndex, racks: Sequence[RackSettings], window_seconds: float
    ) -> dict[Key, StoredValue]:
        version = index.version()
        if version != self._index_version:
            objects = [obj for resource in INDEXED_RESOURCES for obj in index.objects(resource, None)]
            await self._call(_set_index, objects)
            self._index_version = version
        values = await self._call(_estimate, now_seconds, list(racks), window_seconds)
        assert isinstance(values, dict)
        return values

    async def aclose(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
