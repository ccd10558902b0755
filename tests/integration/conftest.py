"""Fixtures that start the real peers (see integration_peers)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from integration_peers import (
    NodeAgentProcess,
    PrometheusServers,
    ReplayExporter,
    VictoriaMetricsServers,
    free_port,
    wait_for,
)
from monitoring_stack import Stack, monitoring_stack


@pytest.fixture
async def replay_exporter() -> AsyncIterator[Callable[[Callable[[float], str]], Awaitable[ReplayExporter]]]:
    started: list[ReplayExporter] = []

    async def start(render: Callable[[float], str]) -> ReplayExporter:
        exporter = ReplayExporter(render)
        await exporter.start()
        started.append(exporter)
        return exporter

    yield start
    for exporter in started:
        await exporter.stop()


@pytest.fixture
async def start_prometheus(tmp_path: Path) -> AsyncIterator[PrometheusServers]:
    servers = PrometheusServers(tmp_path)
    yield servers
    await servers.stop_all()


@pytest.fixture
async def start_victoria_metrics(tmp_path: Path) -> AsyncIterator[VictoriaMetricsServers]:
    servers = VictoriaMetricsServers(tmp_path)
    yield servers
    await servers.stop_all()


@pytest.fixture(scope="session")
def monitoring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`wattscale demo`, Prometheus with the shipped rules, Alertmanager and a webhook receiver, shared
    by the alerting and dashboard tests (see monitoring_stack)."""
    with monitoring_stack(tmp_path_factory.mktemp("monitoring")) as stack:
        yield stack


@pytest.fixture
async def node_agent(tmp_path: Path) -> AsyncIterator[NodeAgentProcess]:
    """`wattscale agent` as its own process (on this machine: no GPU driver, so it answers 503)."""
    port = free_port()
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    log = (tmp_path / "agent.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "adapter.cli",
        "agent",
        "--bind-address=127.0.0.1",
        f"--port={port}",
        "--node-name=cpu-node-1",
        "--pod-resources-socket=",
        f"--control-token-file={token}",
        "--interval-seconds=0.5",
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    async def listening() -> bool:
        assert process.returncode is None, (tmp_path / "agent.log").read_text()
        try:
            async with aiohttp.ClientSession() as session, session.get(f"{url}/healthz") as response:
                return response.status in (200, 503)
        except aiohttp.ClientConnectionError:
            return False

    try:
        await wait_for(listening, timeout_seconds=30, what="the agent to listen")
        yield NodeAgentProcess(url, process)
    finally:
        process.terminate()
        await process.wait()
        log.close()
