"""Run the API server and its worker process together until cancelled: shared by `serve` and `demo`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from adapter.api import ApiSettings, create_app
from adapter.auth import Authorizer, RequestAuthenticator
from adapter.connections import GuardedAppRunner
from adapter.errors import ConfigError
from adapter.objects import ObjectIndex
from adapter.selfmetrics import SelfMetrics
from adapter.store import MetricStore
from adapter.supervise import Supervisor
from adapter.tls import ServingTls, default_cert_dir, generate_self_signed
from adapter.worker import WorkerProcess, WorkerSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServingSettings:
    bind_address: str = "0.0.0.0"
    port: int = 6443
    tls_cert_file: Path | None = None
    tls_private_key_file: Path | None = None
    cert_dir: Path | None = None


def serving_tls(
    settings: ServingSettings, *, request_client_certificates: bool, client_ca_pem: str = ""
) -> ServingTls:
    if settings.tls_cert_file and settings.tls_private_key_file:
        cert, key = settings.tls_cert_file, settings.tls_private_key_file
    else:
        hosts = sorted({"localhost", "127.0.0.1", "::1", settings.bind_address} - {"0.0.0.0", "::"})
        cert, key = generate_self_signed(settings.cert_dir or default_cert_dir(), hosts)
        log.warning("tls.self_signed", extra={"cert": str(cert), "hosts": hosts})
    return ServingTls(
        cert, key, request_client_certificates=request_client_certificates, client_ca_pem=client_ca_pem
    )


async def until_signalled() -> None:
    """Return on SIGTERM (how Kubernetes stops a pod) or SIGINT (Ctrl-C), so shutdown runs in order."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


@dataclass(slots=True)
class Running:
    runner: web.AppRunner
    worker: WorkerProcess
    supervisor: Supervisor


@contextlib.asynccontextmanager
async def running(
    *,
    serving: ServingSettings,
    tls: ServingTls,
    worker: WorkerSpec,
    store: MetricStore,
    index: ObjectIndex,
    authenticator: RequestAuthenticator,
    authorizer: Authorizer | None,
    self_metrics: SelfMetrics,
    api_settings: ApiSettings,
    supervisor: Supervisor | None = None,
) -> AsyncIterator[Running]:
    """The worker process started (its collectors built) and the API listening; both stop when the
    block exits. Raises `ConfigError` if the worker cannot build its collectors. `supervisor` (one is
    made if not given) keeps the worker running; the caller may put its own long-lived tasks under it."""
    supervisor = supervisor or Supervisor(
        on_restart=lambda component: self_metrics.internal_restarts.labels(component).inc()
    )
    process = WorkerProcess(worker, store=store, index=index, metrics=self_metrics)
    supervisor.start("worker", process.run)
    try:
        await _worker_started(process)
        app = create_app(
            store=store,
            index=index,
            authenticator=authenticator,
            authorizer=authorizer,
            self_metrics_registry=self_metrics,
            settings=api_settings,
            liveness=lambda: [*supervisor.problems(), *process.problems],
        )
        runner = GuardedAppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(
            runner, serving.bind_address, serving.port, ssl_context=tls.listening_context, backlog=1024
        )
        # Everything alive now (modules, the app) lives as long as the process: keep it out of the
        # collector's full passes, which would otherwise pause requests for tens of milliseconds.
        gc.freeze()
        try:
            await site.start()
            yield Running(runner, process, supervisor)
        finally:
            await runner.cleanup()
    finally:
        await supervisor.stop()


async def _worker_started(process: WorkerProcess) -> None:
    problems = await process.started
    if problems:
        raise ConfigError(list(problems))
