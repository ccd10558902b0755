"""The adapter-side collector against real agent apps (FakeNvml inside), in both read modes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from fake_nvml import FakeGpu, FakeNvml
from prometheus_client import CollectorRegistry

from collectors.agent_server import AgentSettings, create_agent_app
from collectors.base import CollectorConfigError, CollectorError, Sample
from collectors.node_agent import NodeAgentCollector, NodeAgentSettings
from collectors.nvml import NvmlReader
from collectors.support import build_settings

Serve = Callable[..., Awaitable[TestServer]]


async def _agent(aiohttp_server: Serve, node: str, gpus: list[FakeGpu]) -> str:
    app = create_agent_app(AgentSettings(node=node, interval_seconds=3600.0), NvmlReader(FakeNvml(gpus)))
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


def _collector(registry: CollectorRegistry, **raw: Any) -> NodeAgentCollector:
    settings = build_settings(NodeAgentSettings, "agents", {"backoff_seconds": 0.0, **raw})
    return NodeAgentCollector("agents", settings, registry=registry)


def _values(samples: list[Sample] | tuple[Sample, ...], metric: str) -> dict[tuple[str, str], float]:
    return {(s.labels["node"], s.labels["gpu_uuid"]): s.value for s in samples if s.metric == metric}


@pytest.mark.parametrize("source", ["gpus", "metrics"])
async def test_reads_every_agent(aiohttp_server: Serve, registry: CollectorRegistry, source: str) -> None:
    urls = [
        await _agent(
            aiohttp_server, "node-1", [FakeGpu("GPU-a"), FakeGpu("GPU-b", power_milliwatts=300_000)]
        ),
        await _agent(aiohttp_server, "node-2", [FakeGpu("GPU-c", energy_millijoules=42_000)]),
    ]
    collector = _collector(registry, agent_urls=urls, source=source)
    try:
        samples = list(await collector.collect())
    finally:
        await collector.aclose()
    assert _values(samples, "gpu_power_watts") == {
        ("node-1", "GPU-a"): 150.0,
        ("node-1", "GPU-b"): 300.0,
        ("node-2", "GPU-c"): 150.0,
    }
    assert _values(samples, "gpu_energy_joules_total")[("node-2", "GPU-c")] == 42.0
    assert _values(samples, "gpu_power_limit_min_watts")[("node-1", "GPU-a")] == 200.0


async def test_a_dead_agent_is_left_out(
    aiohttp_server: Serve, registry: CollectorRegistry, tmp_path: Path
) -> None:
    live = await _agent(aiohttp_server, "node-1", [FakeGpu("GPU-a")])
    collector = _collector(registry, agent_urls=[live, "http://127.0.0.1:9"], retries=0)
    try:
        assert set(_values(list(await collector.collect()), "gpu_power_watts")) == {("node-1", "GPU-a")}
    finally:
        await collector.aclose()
    alone = _collector(registry, agent_urls=["http://127.0.0.1:9"], retries=0)
    try:
        with pytest.raises(CollectorError, match="all 1 targets failed"):
            await alone.collect()
    finally:
        await alone.aclose()


def test_settings() -> None:
    with pytest.raises(CollectorConfigError) as caught:
        NodeAgentCollector.from_settings("agents", {"agent_service": "agents", "source": "xml"})
    assert caught.value.problems == [
        "source: want one of gpus, metrics, got 'xml'",
        "agent_service: want name:port, got 'agents'",
    ]
