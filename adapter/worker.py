"""The worker process: collectors, the object cache and estimation, away from the API's GIL.

The serving process only serves. A worker process (spawned, at lower CPU priority) polls every
collector, keeps the Kubernetes object cache, runs each estimator pass and sends the server a
`Report` after each pass (and at least every `report_every_seconds`): the pass as `Columns` (with
its `Layout` when the set of objects changed), what changed in the object index, its metric
families for `/metrics`, and which of its components restarted or cannot stay up.

If the worker dies the server keeps serving the last snapshot, whose values go stale by their own
timestamps, and its `Supervisor` starts a new worker with backoff. A worker whose server is gone
notices at its next report (the pipe is closed) and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import pickle
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, REGISTRY
from prometheus_client.metrics_core import Metric

from adapter.errors import ConfigError
from adapter.kube_cache import IndexDelta, KubeObjectCache, MirrorIndex
from adapter.objects import KubeObject, ObjectIndex, PodDirectory, StaticObjectIndex, StoreObjectIndex
from adapter.selfmetrics import PipelineMetrics, SelfMetrics
from adapter.settings import RackSettings, Settings
from adapter.store import Columns, Key, Layout, MetricStore, ServedLayout, StoredValue
from adapter.supervise import Supervisor
from collectors.base import Collector, DiscoversPods, PodEndpoint

if TYPE_CHECKING:
    from adapter.value_table import ColumnEncoder

log = logging.getLogger(__name__)

STOP_TIMEOUT_SECONDS = 10.0
WORKER_GC_THRESHOLDS = (20_000, 10, 10)
"""A pass makes and drops hundreds of thousands of objects, nearly all freed by reference counting.
At Python's default thresholds (700, 10, 10) the cycle collector also ran about one full collection
per pass: 8% of the worker's CPU over 160 passes of 1,000 pods, a fifth at 10,000 pods. At these, 0.8%
(1,000 pods), with the same RSS: garbage cycles still go within a young collection or two."""


class IndexSource(Protocol):
    """Where the object index comes from: built in the worker, seen by the server."""

    def serving_index(self, store: MetricStore) -> ObjectIndex:
        """The server's index; a `MirrorIndex` is kept by the worker's reports."""
        ...

    async def open(self, supervisor: Supervisor) -> ObjectIndex:
        """The worker's index, its background tasks started under `supervisor`."""
        ...


@dataclass(frozen=True, slots=True)
class StaticIndexSource:
    """A fixed set of objects, built the same way in both processes (the demo's fleet); with `pods`,
    the running pods the worker's collectors discover their exporters among."""

    objects: Callable[[], Iterable[KubeObject]]
    pods: tuple[PodEndpoint, ...] | None = None

    def serving_index(self, store: MetricStore) -> ObjectIndex:
        return StaticObjectIndex(self.objects())

    async def open(self, supervisor: Supervisor) -> ObjectIndex:
        return StaticObjectIndex(self.objects(), self.pods)


@dataclass(frozen=True, slots=True)
class NoIndexSource:
    """No cluster: the server knows the objects it has values for; estimation knows no labels."""

    def serving_index(self, store: MetricStore) -> ObjectIndex:
        return StoreObjectIndex(store)

    async def open(self, supervisor: Supervisor) -> ObjectIndex:
        return StaticObjectIndex([])


def offer_pod_targets(collectors: Iterable[Collector], index: ObjectIndex) -> None:
    """Collectors that can find their exporters among the cluster's pods (used when no URL is
    configured) read the running pods from the worker's own index, afresh at every poll."""
    targets = index.pod_targets() if isinstance(index, PodDirectory) else None
    if targets is None:
        return
    for collector in collectors:
        if isinstance(collector, DiscoversPods):
            collector.use_pod_targets(targets)


def configured_racks(settings: Settings, index: ObjectIndex) -> list[RackSettings]:
    return list(settings.racks)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSpec:
    """Everything the worker builds its pipeline from; pickled into the spawned process, so every
    callable is a module-level function (or a `functools.partial` of one)."""

    settings: Settings
    collectors: Callable[[], list[Collector]]
    """Raises `ConfigError` for bad collector settings: the server reports it and exits 2."""
    index: IndexSource = field(default_factory=NoIndexSource)
    racks: Callable[[Settings, ObjectIndex], list[RackSettings]] = configured_racks
    log_level: str = "info"
    report_every_seconds: float = 5.0


@dataclass(frozen=True, slots=True)
class Report:
    sent_seconds: float
    layout: Layout | None = None
    columns: Columns | None = None
    index: IndexDelta | None = None
    metrics: Sequence[Metric] = ()
    restarts: Sequence[str] = ()
    problems: Sequence[str] = ()
    config_problems: Sequence[str] = ()
    """Set in the only report of a worker whose collectors cannot be built."""


# --------------------------------------------------------------------------------------------------
# In the worker process


class _Outbox:
    def __init__(self, connection: Connection, metrics: PipelineMetrics, encoder: ColumnEncoder) -> None:
        self._connection = connection
        self._metrics = metrics
        self._encoder = encoder
        self._restarts: list[str] = []
        self.index: ObjectIndex | None = None
        self.supervisor: Supervisor | None = None
        self.closed = asyncio.Event()
        self._last_sent = 0.0

    def restarted(self, component: str) -> None:
        self._restarts.append(component)

    def send(self, values: Mapping[Key, StoredValue] | None = None, **extra: Any) -> None:
        layout, columns = self._encoder.encode(values) if values is not None else (None, None)
        report = Report(
            time.time(),
            layout,
            columns,
            self.index.take_delta() if isinstance(self.index, KubeObjectCache) else None,
            [*self._metrics.registry.collect(), *REGISTRY.collect()],
            self._restarts,
            self.supervisor.problems() if self.supervisor is not None else [],
            **extra,
        )
        self._restarts = []
        try:
            self._connection.send_bytes(pickle.dumps(report, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:  # the server is gone: so is the reason to run
            self.closed.set()
        self._last_sent = time.monotonic()

    async def keep_reporting(self, every_seconds: float) -> None:
        """Index changes, metrics and problems reach the server even when no pass runs."""
        while True:
            await asyncio.sleep(max(every_seconds - (time.monotonic() - self._last_sent), 0.05))
            if time.monotonic() - self._last_sent >= every_seconds:
                self.send()


def _run_in_background() -> None:
    # When the API and the worker want the same core, the API's request goes first: a SCHED_IDLE task
    # is preempted as soon as a normal one wakes, and gets the core only when its container's other
    # processes leave it. Under SCHED_BATCH and nice 10 a waking server still waited behind the
    # worker (at 10,000 pods, 4-10x more of the loop's time waiting for a CPU). A server saturated
    # for long leaves the worker little: its values then go stale and are answered as stale. Neither
    # call needs privileges; nice 10 is the fallback where SCHED_IDLE is refused.
    with contextlib.suppress(OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    with contextlib.suppress(OSError):
        os.nice(10)
    # The server reports its own process; the worker's would clash with it on one /metrics page.
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        with contextlib.suppress(KeyError):
            REGISTRY.unregister(collector)


def settle_garbage_collection() -> None:
    """What exists now (modules, collectors, the index) lives as long as the worker: out of the
    cycle collector's way, which then runs less often over what each pass makes."""
    gc.freeze()
    gc.set_threshold(*WORKER_GC_THRESHOLDS)


def worker_main(spec: WorkerSpec, connection: Connection) -> None:
    """The worker process's entry point."""
    from adapter import logs

    logs.configure(spec.log_level)
    # Ctrl-C reaches the whole process group: the server decides when its worker stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _run_in_background()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_work(spec, connection))


async def _work(spec: WorkerSpec, connection: Connection) -> None:
    from adapter.pipeline import Pipeline  # pandas and the estimators: only ever in the worker
    from adapter.value_table import ColumnEncoder  # numpy likewise

    metrics = PipelineMetrics()
    outbox = _Outbox(connection, metrics, ColumnEncoder())
    try:
        collectors = spec.collectors()
    except ConfigError as exc:
        outbox.send(config_problems=exc.problems)
        return
    supervisor = Supervisor(on_restart=outbox.restarted)
    outbox.supervisor = supervisor
    index = await spec.index.open(supervisor)
    outbox.index = index
    offer_pod_targets(collectors, index)
    pipeline = Pipeline(
        collectors,
        index=index,
        settings=spec.settings,
        metrics=metrics,
        racks=lambda: spec.racks(spec.settings, index),
        on_pass=outbox.send,
    )
    settle_garbage_collection()
    pipeline.start(supervisor)
    outbox.send()  # the server learns at once that the collectors are built
    supervisor.start("worker-report", lambda: outbox.keep_reporting(spec.report_every_seconds))
    try:
        await outbox.closed.wait()
    finally:
        await supervisor.stop()
        await pipeline.aclose()


# --------------------------------------------------------------------------------------------------
# In the serving process


class WorkerDiedError(Exception):
    pass


class WorkerProcess:
    """The server's side of one worker at a time: start it, apply its reports, notice its death.

    `run` is one life of the worker, for a `Supervisor` to restart. The store and the index keep the
    last pass when the worker dies: values go stale by their own timestamps, never wrong.
    """

    def __init__(
        self, spec: WorkerSpec, *, store: MetricStore, index: ObjectIndex, metrics: SelfMetrics
    ) -> None:
        self._spec = spec
        self._store = store
        self._index = index
        self._metrics = metrics
        self._layout: ServedLayout | None = None
        self.problems: Sequence[str] = ()
        self.pid: int | None = None
        self.reports = 0
        self.started: asyncio.Future[Sequence[str]] = asyncio.get_running_loop().create_future()
        """Resolves at the first report of the first worker: its config problems, if any."""

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        context = multiprocessing.get_context(
            "spawn"
        )  # a fork of a process with a loop and threads is unsafe
        receiving, sending = context.Pipe(duplex=False)
        process = context.Process(
            target=worker_main, args=(self._spec, sending), name="wattscale-worker", daemon=True
        )
        process.start()
        sending.close()
        self.pid = process.pid
        reader = asyncio.ensure_future(asyncio.to_thread(self._receive, receiving, loop))
        try:
            await asyncio.shield(reader)
        except asyncio.CancelledError:
            await asyncio.to_thread(_stop, process)
            await reader
            raise
        finally:
            receiving.close()
            self.problems = ()
        await asyncio.to_thread(_stop, process)
        raise WorkerDiedError(f"worker process {process.pid} ended with exit code {process.exitcode}")

    def _receive(self, connection: Connection, loop: asyncio.AbstractEventLoop) -> None:
        """In a thread: read reports until the worker's end of the pipe closes."""
        while True:
            try:
                data = connection.recv_bytes()
            except (EOFError, OSError):
                return
            loop.call_soon_threadsafe(self._apply, *self._decode(data))

    @staticmethod
    def _decode(
        data: bytes,
    ) -> tuple[Report, ServedLayout | None, dict[tuple[str, str], dict[str, KubeObject]] | None]:
        """Done in the reading thread, off the event loop: a new layout indexes every object's name, a
        full index every object (50 ms at 10,000 pods); the loop then swaps each in with one assignment."""
        report: Report = pickle.loads(data)
        layout = ServedLayout(report.layout) if report.layout is not None else None
        full = report.index is not None and report.index.full
        scopes = MirrorIndex.scopes(report.index.upserts) if report.index is not None and full else None
        return report, layout, scopes

    def _apply(
        self,
        report: Report,
        layout: ServedLayout | None,
        scopes: dict[tuple[str, str], dict[str, KubeObject]] | None,
    ) -> None:
        self.reports += 1
        if layout is not None:
            self._layout = layout
        if report.columns is not None and self._layout is not None:
            self._store.put_columns(self._layout, report.columns)
        if report.index is not None and isinstance(self._index, MirrorIndex):
            self._index.apply(report.index, scopes)
        self._metrics.forwarded.families = report.metrics
        for component in report.restarts:
            self._metrics.internal_restarts.labels(f"worker/{component}").inc()
        self.problems = [f"worker/{problem}" for problem in report.problems]
        if not self.started.done():
            self.started.set_result(report.config_problems)


def _stop(process: multiprocessing.process.BaseProcess) -> None:
    if process.is_alive():
        process.terminate()
        process.join(STOP_TIMEOUT_SECONDS)
    if process.is_alive():
        process.kill()
    process.join()
