"""The node agent's HTTP API (contract: GET /v1/gpus, GET /metrics, PUT /v1/gpus/{uuid}/power-limit)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from fake_kubelet import FakeKubeletPodResources
from fake_nvml import FakeGpu, FakeNvml
from prometheus_client.parser import text_string_to_metric_families

from collectors.agent_server import AgentSettings, create_agent_app, refresh
from collectors.nvml import NvmlReader

MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]
TOKEN = "s3cret-token"


@pytest.fixture
async def kubelet(tmp_path: Path) -> AsyncIterator[FakeKubeletPodResources]:
    fake = FakeKubeletPodResources(tmp_path / "kubelet.sock")
    fake.pods = [
        ("llm", "llama-0", "vllm", "nvidia.com/gpu", ["GPU-a::0"]),
        ("llm", "llama-1", "vllm", "nvidia.com/gpu", ["GPU-a::1"]),
    ]
    await fake.start()
    yield fake
    await fake.stop()


def _app(
    tmp_path: Path, nvml: FakeNvml, kubelet: FakeKubeletPodResources | None, **settings: Any
) -> web.Application:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    return create_agent_app(
        AgentSettings(
            node="gpu-node-1",
            interval_seconds=3600.0,  # the test drives refreshes itself
            pod_resources_socket=str(kubelet.socket_path) if kubelet else None,
            control_token_file=str(token_file),
            **settings,
        ),
        NvmlReader(nvml),
    )


async def test_gpus_document_and_metrics(
    tmp_path: Path, aiohttp_client: MakeClient, kubelet: FakeKubeletPodResources
) -> None:
    gpus = [
        FakeGpu("GPU-a"),
        FakeGpu(
            "GPU-b",
            failing={"nvmlDeviceGetTotalEnergyConsumption": __import__("pynvml").NVMLError_NotSupported},
        ),
    ]
    app = _app(tmp_path, FakeNvml(gpus), kubelet)
    client = await aiohttp_client(app)
    body = await (await client.get("/v1/gpus")).json()
    assert body["node"] == "gpu-node-1"
    a, b = body["gpus"]
    assert {
        k: a[k] for k in ("uuid", "index", "power_watts", "power_average_watts", "power_instant_watts")
    } == {
        "uuid": "GPU-a",
        "index": 0,
        "power_watts": 150.0,
        "power_average_watts": 150.0,
        "power_instant_watts": 162.0,
    }
    assert (a["energy_joules_total"], a["power_limit_watts"], a["power_limit_min_watts"]) == (
        10000.0,
        700.0,
        200.0,
    )
    assert (a["power_limit_max_watts"], a["default_power_limit_watts"]) == (700.0, 700.0)
    assert a["pods"] == [{"namespace": "llm", "pod": "llama-0"}, {"namespace": "llm", "pod": "llama-1"}]
    assert b["energy_joules_total"] is None and b["errors"] == {"energy_joules_total": "not_supported"}

    text = await (await client.get("/metrics")).text()
    samples = {
        (s.name, s.labels.get("gpu_uuid"), s.labels.get("pod")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("wattscale_agent_gpu_power_watts", "GPU-a", None)] == 150.0
    assert samples[("wattscale_agent_gpu_energy_joules_total", "GPU-a", None)] == 10000.0
    assert samples[("wattscale_agent_gpu_assignment_info", "GPU-a", "llama-1")] == 1.0
    assert ("wattscale_agent_gpu_energy_joules_total", "GPU-b", None) not in samples
    assert all(name.startswith("wattscale_agent_") for name, _, _ in samples)


async def test_power_limit_needs_the_token_and_is_dry_run_by_default(
    tmp_path: Path, aiohttp_client: MakeClient
) -> None:
    nvml = FakeNvml([FakeGpu("GPU-a")])
    client = await aiohttp_client(_app(tmp_path, nvml, None))
    url = "/v1/gpus/GPU-a/power-limit"
    refused = await client.put(url, json={"watts": 450})
    assert refused.status == 403
    assert (await refused.json())["kind"] == "Status"
    wrong = await client.put(url, json={"watts": 450}, headers={"Authorization": "Bearer guess"})
    assert wrong.status == 403
    auth = {"Authorization": f"Bearer {TOKEN}"}
    answer = await (await client.put(url, json={"watts": 450}, headers=auth)).json()
    assert answer == {
        "uuid": "GPU-a",
        "previous_watts": 700.0,
        "applied_watts": 450.0,
        "clamped": False,
        "dry_run": True,
    }
    assert nvml.set_calls == []
    assert (await client.put("/v1/gpus/GPU-x/power-limit", json={"watts": 450}, headers=auth)).status == 404
    assert (await client.put(url, json={"power": 1}, headers=auth)).status == 400


async def test_power_limit_is_clamped_and_applied_when_allowed(
    tmp_path: Path, aiohttp_client: MakeClient
) -> None:
    nvml = FakeNvml([FakeGpu("GPU-a")])
    client = await aiohttp_client(_app(tmp_path, nvml, None, allow_power_limit_changes=True))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    answer = await (await client.put("/v1/gpus/GPU-a/power-limit", json={"watts": 50}, headers=auth)).json()
    assert answer == {
        "uuid": "GPU-a",
        "previous_watts": 700.0,
        "applied_watts": 200.0,
        "clamped": True,
        "dry_run": False,
    }
    assert nvml.set_calls == [("GPU-a", 200_000)]
    nvml.root = False
    denied = await client.put("/v1/gpus/GPU-a/power-limit", json={"watts": 400}, headers=auth)
    assert denied.status == 403
    assert "needs root" in (await denied.json())["message"]


async def test_without_a_driver_the_agent_says_so(tmp_path: Path, aiohttp_client: MakeClient) -> None:
    app = _app(tmp_path, FakeNvml([], driver_loaded=False), None)
    client = await aiohttp_client(app)
    answer = await client.get("/v1/gpus")
    assert answer.status == 503
    assert "NVML is not available" in (await answer.json())["message"]
    assert (await client.get("/healthz")).status == 503


async def test_a_lost_gpu_and_a_kubelet_outage_keep_the_agent_serving(
    tmp_path: Path, aiohttp_client: MakeClient, kubelet: FakeKubeletPodResources
) -> None:
    gpus = [FakeGpu("GPU-a"), FakeGpu("GPU-b")]
    app = _app(tmp_path, FakeNvml(gpus), kubelet)
    client = await aiohttp_client(app)
    assert (await client.get("/v1/gpus")).status == 200  # the first read, with the kubelet up
    gpus[1].lost = True
    await kubelet.stop()
    await refresh(app)
    body = await (await client.get("/v1/gpus")).json()
    assert [g["lost"] for g in body["gpus"]] == [False, True]
    assert body["gpus"][0]["pods"] == [
        {"namespace": "llm", "pod": "llama-0"},
        {"namespace": "llm", "pod": "llama-1"},
    ]
    assert "UNAVAILABLE" in body["pod_mapping_error"]
    assert (await client.get("/healthz")).status == 200


async def test_without_the_token_secret_every_change_is_refused(
    tmp_path: Path, aiohttp_client: MakeClient
) -> None:
    settings = AgentSettings(node="n", interval_seconds=3600.0, control_token_file=str(tmp_path / "absent"))
    client = await aiohttp_client(create_agent_app(settings, NvmlReader(FakeNvml([FakeGpu("GPU-a")]))))
    answer = await client.put(
        "/v1/gpus/GPU-a/power-limit", json={"watts": 300}, headers={"Authorization": "Bearer "}
    )
    assert answer.status == 403
