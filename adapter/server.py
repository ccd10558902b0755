"""Run the API server and the pipeline together until cancelled: shared by `serve` and `demo`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from adapter.api import ApiSettings, create_app
from adapter.auth import Authorizer, RequestAuthenticator
from adapter.connections import GuardedAppRunner
from adapter.objects import ObjectIndex
from adapter.pipeline import Pipeline
from adapter.selfmetrics import SelfMetrics
from adapter.store import MetricStore
from adapter.tls import ServingTls, default_cert_dir, generate_self_signed

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServingSettings:
    bind_address: str = "0.0.0.0"
    port: int = 6443
    tls_cert_file: Path | None = None
    tls_private_key_file: Path | None = None
    cert_dir: Path | None = None
    reuse_port: bool = False
    """SO_REUSEPORT: replicas on one host share the port and the kernel spreads connections over them."""


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


@contextlib.asynccontextmanager
async def running(
    *,
    serving: ServingSettings,
    tls: ServingTls,
    pipeline: Pipeline,
    store: MetricStore,
    index: ObjectIndex,
    authenticator: RequestAuthenticator,
    authorizer: Authorizer | None,
    self_metrics: SelfMetrics,
    api_settings: ApiSettings,
) -> AsyncIterator[web.AppRunner]:
    """The API listening and the pipeline running; both stop when the block exits."""
    app = create_app(
        store=store,
        index=index,
        authenticator=authenticator,
        authorizer=authorizer,
        self_metrics_registry=self_metrics,
        settings=api_settings,
    )
    runner = GuardedAppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(
        runner,
        serving.bind_address,
        serving.port,
        ssl_context=tls.listening_context,
        backlog=1024,
        reuse_port=serving.reuse_port or None,
    )
    # Everything alive now (modules, the app) lives as long as the process: keep it out of the
    # collector's full passes, which would otherwise pause requests for tens of milliseconds.
    gc.freeze()
    background = PipelineThread(pipeline)
    background.start()
    try:
        await site.start()
        yield runner
    finally:
        await background.stop()
        await runner.cleanup()


class PipelineThread:
    """The pipeline on its own event loop in a background thread.

    Collectors parse what they fetch (hundreds of milliseconds for 1,000 pods of vLLM metrics) and
    the pipeline pickles samples for the estimator process: on the API's loop, every request queued
    behind that work. Here the API's loop only ever reads the store, which the pipeline replaces with
    one assignment.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pipeline", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._task = asyncio.current_task()
        self._ready.set()
        try:
            await self._pipeline.run()
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("pipeline.crashed")
        finally:
            await self._pipeline.aclose()  # on this loop: the collectors' sessions belong to it

    def start(self) -> None:
        # The pipeline thread gives up the GIL after 1 ms rather than 5, so a request waits less.
        sys.setswitchinterval(0.001)
        self._thread.start()
        self._ready.wait()

    async def stop(self) -> None:
        if self._task is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._task.cancel)
        await asyncio.to_thread(self._thread.join)
