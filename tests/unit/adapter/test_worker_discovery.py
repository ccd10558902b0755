"""The worker hands its pod directory to the collectors that discover their exporters: a vLLM
collector configured with no URL at all scrapes the pod the worker's index says is running, and the
server serves that pod's token rate."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from adapter.catalogue import PODS
from adapter.plugins import settings_collectors
from adapter.selfmetrics import SelfMetrics
from adapter.settings import Settings
from adapter.store import MetricStore, ObjectRef
from adapter.supervise import Supervisor
from adapter.worker import StaticIndexSource, WorkerProcess, WorkerSpec
from collectors.base import PodEndpoint

VLLM_FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "llm-servers" / "datadog-vllm-metrics.txt"
FIXTURE_COUNTER = 'vllm:generation_tokens_total{model_name="facebook/opt-125m"} 7.0'
TOKENS_PER_SECOND = 40.0
POD = ObjectRef(PODS, "llm", "llama-0")
DEADLINE_SECONDS = 90.0


def vllm_app(tokens_per_second: float) -> web.Application:
    """vLLM's /metrics (a recorded answer) whose generation counter grows at `tokens_per_second`."""
    text = VLLM_FIXTURE.read_text()
    assert FIXTURE_COUNTER in text
    started = time.time()

    async def metrics(request: web.Request) -> web.Response:
        tokens = 7.0 + tokens_per_second * (time.time() - started)
        body = text.replace(FIXTURE_COUNTER, FIXTURE_COUNTER.replace(" 7.0", f" {tokens:.3f}"))
        return web.Response(text=body, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.05)


async def test_a_collector_without_a_url_scrapes_the_pods_the_workers_index_lists(
    aiohttp_server: Any,
) -> None:
    server = await aiohttp_server(vllm_app(TOKENS_PER_SECOND), host="127.0.0.1")
    pod = PodEndpoint(
        namespace=POD.namespace, name=POD.name, ip="127.0.0.1", node="node-1", ports={"metrics": server.port}
    )
    settings = Settings.from_mapping(
        {
            "window_seconds": 5,
            "max_age_seconds": 60,
            "estimate_interval_seconds": 0.5,
            "collectors": [
                {"name": "llama", "type": "vllm", "interval_seconds": 1, "timeout_seconds": 1}
            ],  # no URL
        }
    )
    spec = WorkerSpec(
        settings=settings,
        collectors=functools.partial(settings_collectors, settings),
        index=StaticIndexSource(list, pods=(pod,)),
        log_level="warning",
    )
    store = MetricStore(max_age_seconds=60)
    worker = WorkerProcess(spec, store=store, index=spec.index.serving_index(store), metrics=SelfMetrics())
    supervisor = Supervisor()
    supervisor.start("worker", worker.run)
    try:
        async with asyncio.timeout(DEADLINE_SECONDS):
            assert not await worker.started  # no collector problems
        await until(
            lambda: (
                store.generation > 0
                and POD.name in store.values_of(PODS, POD.namespace, "generation_tokens_per_second")
            ),
            "the discovered pod's token rate",
        )
        served = store.get(POD, "generation_tokens_per_second").value
    finally:
        await supervisor.stop()
    assert abs(served - TOKENS_PER_SECOND) <= 0.1 * TOKENS_PER_SECOND
