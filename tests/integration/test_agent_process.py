"""`wattscale agent` as a real process on a machine without a GPU driver: it must stay up, say why it
has no readings, refuse power-limit changes, and the node_agent collector must report it clearly."""

from __future__ import annotations

import aiohttp
import pytest
from integration_peers import NodeAgentProcess
from prometheus_client import CollectorRegistry

from collectors.base import CollectorError
from collectors.node_agent import NodeAgentCollector, NodeAgentSettings
from collectors.support import build_settings


@pytest.fixture
async def agent_url(node_agent: NodeAgentProcess) -> str:
    return node_agent.url


async def test_agent_without_nvml_explains_itself(agent_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{agent_url}/v1/gpus") as response:
            assert response.status == 503
            status = await response.json()
        assert status["kind"] == "Status" and "NVML is not available" in status["message"]
        async with session.get(f"{agent_url}/healthz") as response:
            assert response.status == 503
        async with session.put(f"{agent_url}/v1/gpus/GPU-x/power-limit", json={"watts": 300}) as response:
            assert response.status == 403
        async with session.get(f"{agent_url}/metrics") as response:
            assert response.status == 200
            text = await response.text()
        # The family is declared, and no GPU reading is made up without NVML.
        assert "# TYPE wattscale_agent_gpu_power_watts gauge" in text
        assert "\nwattscale_agent_gpu_power_watts{" not in text

    settings = build_settings(NodeAgentSettings, "agents", {"agent_urls": [agent_url], "retries": 0})
    collector = NodeAgentCollector("agents", settings, registry=CollectorRegistry())
    try:
        with pytest.raises(CollectorError, match="HTTP 503: NVML is not available"):
            await collector.collect()
    finally:
        await collector.aclose()


async def test_agent_control_endpoint_refuses_without_its_token_and_outside_any_range(agent_url: str) -> None:
    url = f"{agent_url}/v1/gpus/GPU-x/power-limit"
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {"Authorization": "Bearer guess"}, {"Authorization": "t0ken"}):
            async with session.put(url, json={"watts": 300}, headers=headers) as response:
                assert response.status == 403, headers
                assert (await response.json())["reason"] == "Forbidden"
        token = {"Authorization": "Bearer t0ken"}
        for body in (
            '{"watts": -5}',
            '{"watts": 0}',
            '{"watts": NaN}',
            '{"watts": 1e400}',
            '{"watts": "300"x}',
        ):
            async with session.put(
                url, data=body, headers={**token, "Content-Type": "application/json"}
            ) as response:
                assert response.status == 400, body
                assert (await response.json())["kind"] == "Status"
