"""The worker process: it hands the server whole passes; when it dies the server serves the last
pass and starts a new worker; a worker that keeps dying fails /livez."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from api_fixtures import NOW, example_store

from adapter.api import ApiSettings
from adapter.auth import AllowAllAuthenticator
from adapter.catalogue import PODS
from adapter.commands.demo import demo_collectors, demo_objects
from adapter.selfmetrics import SelfMetrics
from adapter.server import Running, ServingSettings, running, serving_tls
from adapter.settings import Settings
from adapter.store import MetricStore, ObjectRef, ServedLayout, StoredValue
from adapter.supervise import Backoff, Supervisor
from adapter.value_table import ColumnEncoder
from adapter.worker import StaticIndexSource, WorkerProcess, WorkerSpec

DEADLINE_SECONDS = 90.0
POD = ObjectRef(PODS, "llm", "llama-8b-7d9f5c6b4-ngq2c")


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def demo_spec() -> WorkerSpec:
    settings = Settings.from_mapping({"window_seconds": 10, "max_age_seconds": 600})
    return WorkerSpec(
        settings=settings,
        collectors=demo_collectors,
        index=StaticIndexSource(demo_objects),
        log_level="warning",
    )


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[Running, MetricStore, SelfMetrics, str]]:
    spec = demo_spec()
    store = MetricStore(max_age_seconds=600)
    metrics = SelfMetrics()
    serving = ServingSettings(bind_address="127.0.0.1", port=free_port(), cert_dir=tmp_path)
    supervisor = Supervisor(
        on_restart=lambda c: metrics.internal_restarts.labels(c).inc(),
        backoff=Backoff(initial_seconds=0.05),
    )
    async with running(
        serving=serving,
        tls=serving_tls(serving, request_client_certificates=False),
        worker=spec,
        store=store,
        index=spec.index.serving_index(store),
        authenticator=AllowAllAuthenticator(),
        authorizer=None,
        self_metrics=metrics,
        api_settings=ApiSettings(),
        supervisor=supervisor,
    ) as state:
        yield state, store, metrics, f"https://127.0.0.1:{serving.port}"


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url, ssl=False) as response:
        return response.status, await response.text()


async def test_a_killed_worker_is_restarted_and_the_last_pass_is_served_meanwhile(
    server: tuple[Running, MetricStore, SelfMetrics, str],
) -> None:
    state, store, metrics, url = server
    await until(
        lambda: store.generation > 0 and POD.name in store.values_of(PODS, "llm", "gpu_power_watts"), "a pass"
    )
    first = state.worker.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    generation = store.generation
    served = store.get(POD, "gpu_power_watts")
    await until(lambda: state.worker.pid != first, "a new worker")
    # Until the new worker's first pass, the last one is what the API serves, unchanged.
    if store.generation == generation:
        assert store.get(POD, "gpu_power_watts") == served
    await until(lambda: store.generation > generation, "a pass of the new worker")
    assert store.get(POD, "gpu_power_watts").timestamp_seconds > served.timestamp_seconds
    restarts = metrics.registry.get_sample_value("wattscale_internal_restarts_total", {"component": "worker"})
    assert restarts == 1
    assert await get(f"{url}/livez") == (200, "ok")
    status, text = await get(f"{url}/metrics")
    assert status == 200
    assert 'wattscale_collector_up{collector="simulated"} 1.0' in text  # the worker's, forwarded
    assert 'wattscale_internal_restarts_total{component="worker"} 1.0' in text


async def test_a_worker_that_keeps_dying_fails_livez() -> None:
    spec = WorkerSpec(settings=Settings(), collectors=functools.partial(sys.exit, 3), log_level="critical")
    store = MetricStore(max_age_seconds=60)
    process = WorkerProcess(spec, store=store, index=spec.index.serving_index(store), metrics=SelfMetrics())
    supervisor = Supervisor(backoff=Backoff(initial_seconds=0.01, unhealthy_after_failures=2))
    supervisor.start("worker", process.run)
    try:
        await until(lambda: bool(supervisor.problems()), "two deaths in a row")
        assert supervisor.problems() == ["worker: failed 2 times in a row"]
    finally:
        await supervisor.stop()


async def test_livez_answers_with_the_liveness_problems(aiohttp_client: Callable[..., object]) -> None:
    from adapter.api import create_app

    problems: list[str] = []
    app = create_app(
        store=example_store(),
        index=StaticIndexSource(list).serving_index(example_store()),
        authenticator=AllowAllAuthenticator(),
        authorizer=None,
        self_metrics_registry=SelfMetrics(),
        liveness=lambda: problems,
    )
    client = await aiohttp_client(app)  # type: ignore[operator]
    assert (await client.get("/livez")).status == 200
    problems.append("worker: failed 5 times in a row")
    response = await client.get("/livez")
    assert response.status == 503
    assert await response.text() == "not ok: worker: failed 5 times in a row"
    assert (await client.get("/livez/ping")).status == 200  # ping only says the server answers


def test_serve_reports_collector_problems_found_by_the_worker_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("collectors:\n  - {name: a, type: no-such-source}\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "adapter.cli",
            "serve",
            "--config",
            str(config),
            "--insecure-disable-auth",
            "--secure-port",
            str(free_port()),
            "--cert-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "collectors.a.type: unknown collector 'no-such-source'" in result.stderr


def test_columns_carry_every_value_and_a_layout_only_when_objects_change() -> None:
    values = dict(example_store().snapshot().values)  # type: ignore[union-attr]
    encoder = ColumnEncoder()
    layout, columns = encoder.encode(values)
    assert layout is not None
    received = MetricStore(max_age_seconds=120.0, clock=lambda: NOW)
    received.put_columns(ServedLayout(layout), columns)
    expected = example_store()
    for (ref, metric), value in values.items():
        assert received.snapshot().lookup(ref, metric) == value
    for resource, namespace, metric in {(r.resource, r.namespace, m) for r, m in values}:
        assert dict(received.values_of(resource, namespace, metric)) == dict(
            expected.values_of(resource, namespace, metric)
        )
    assert received.objects(PODS, "inference") == expected.objects(PODS, "inference")
    # The next pass of the same objects: numbers only.
    moved = {
        key: StoredValue(v.value + 1, v.timestamp_seconds + 1, v.window_seconds, v.labels)
        for key, v in values.items()
    }
    again, columns = encoder.encode(moved)
    assert again is None
    received.put_columns(ServedLayout(layout), columns)
    assert (
        received.snapshot().lookup(POD_OF_EXAMPLE, "gpu_power_watts")
        == moved[(POD_OF_EXAMPLE, "gpu_power_watts")]
    )
    # A new object: a new layout.
    moved[(ObjectRef(PODS, "inference", "new-pod"), "gpu_power_watts")] = StoredValue(1.0, NOW, 60.0)
    changed, columns = encoder.encode(moved)
    assert changed is not None and changed.layout_id == layout.layout_id + 1
    received.put_columns(ServedLayout(changed), columns)
    assert received.get(ObjectRef(PODS, "inference", "new-pod"), "gpu_power_watts").value == 1.0


POD_OF_EXAMPLE = ObjectRef(PODS, "inference", "llm-7d9f-abcde")
