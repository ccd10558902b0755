from __future__ import annotations

import pytest
from collector_helpers import ServeText, fixture_text, make
from prometheus_client import CollectorRegistry

from collectors.base import Sample
from collectors.dcgm import DcgmCollector

UUID = "GPU-20c56d28-0da5-6d26-a36a-e7af1ce2586e"


def _of(samples: list[Sample] | tuple[Sample, ...], metric: str) -> list[tuple[dict[str, str], float]]:
    return sorted(((dict(s.labels), s.value) for s in samples if s.metric == metric), key=str)


async def test_reads_power_and_energy_from_the_fixture(
    serve_text: ServeText, registry: CollectorRegistry
) -> None:
    _, url = await serve_text(fixture_text("dcgm/datadog-dcgm-exporter-metrics.txt"))
    collector = make(DcgmCollector, registry, scrape_urls=[url])
    try:
        samples = list(await collector.collect())
    finally:
        await collector.aclose()
    gpu = {"node": "424773df46e0", "gpu_uuid": UUID}
    assert _of(samples, "gpu_power_watts")[0] == (gpu, pytest.approx(8.969))
    # mJ since driver load -> J
    assert _of(samples, "gpu_energy_joules_total")[0] == (gpu, pytest.approx(128996.013))
    assert (
        {"node": "551bdf382151", "gpu_uuid": "GPU-9ef1b6d0-3643-5dd7-b823-c0ec20dcf2d5"},
        70.0,
    ) in _of(samples, "gpu_power_limit_watts")


def _shared_text(energy_millijoules: int) -> str:
    a = 'gpu="0",UUID="GPU-a",Hostname="node-1"'
    return (
        "# TYPE DCGM_FI_DEV_POWER_USAGE gauge\n"
        f'DCGM_FI_DEV_POWER_USAGE{{{a},pod="llama-0",namespace="llm",container="vllm"}} 300\n'
        f'DCGM_FI_DEV_POWER_USAGE{{{a},pod="llama-1",namespace="llm",container="vllm"}} 300\n'
        'DCGM_FI_DEV_POWER_USAGE{gpu="1",UUID="GPU-b",Hostname="node-1"} 70\n'
        "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n"
        f'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{a},pod="llama-0",namespace="llm"}} {energy_millijoules}\n'
        f'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{a},pod="llama-1",namespace="llm"}} {energy_millijoules}\n'
        "# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n"
        'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-a",hostname="node-1",pod="llama-0",namespace="llm"} 87\n'
    )


async def test_a_time_sliced_gpu_is_counted_once(serve_text: ServeText, registry: CollectorRegistry) -> None:
    endpoint, url = await serve_text(_shared_text(5_000_000))
    collector = make(DcgmCollector, registry, scrape_urls=[url])
    try:
        samples = list(await collector.collect())
        a = {"node": "node-1", "gpu_uuid": "GPU-a"}
        assert _of(samples, "gpu_power_watts") == [
            (a, 300.0),
            ({"node": "node-1", "gpu_uuid": "GPU-b"}, 70.0),
        ]
        assert _of(samples, "gpu_energy_joules_total") == [(a, 5000.0)]
        assert _of(samples, "gpu_utilization_ratio") == [(a, 0.87)]
        assert _of(samples, "gpu_assignment_info") == [
            ({**a, "namespace": "llm", "pod": "llama-0"}, 1.0),
            ({**a, "namespace": "llm", "pod": "llama-1"}, 1.0),
        ]
        # The driver reloads: the counter restarts, the energy we report does not go back.
        endpoint.text = _shared_text(1_000)
        samples = list(await collector.collect())
        assert _of(samples, "gpu_energy_joules_total") == [(a, 5001.0)]
    finally:
        await collector.aclose()


async def test_prometheus_renamed_pod_labels_and_the_exporters_own_pod(
    serve_text: ServeText, registry: CollectorRegistry
) -> None:
    text = (
        'DCGM_FI_DEV_POWER_USAGE{UUID="GPU-a",Hostname="h",node="node-7",pod="dcgm-exporter-x1",'
        'namespace="gpu-operator",exported_pod="llama-0",exported_namespace="llm"} 250\n'
        'DCGM_FI_DEV_POWER_USAGE{UUID="GPU-b",Hostname="h",node="node-7",pod="nvidia-dcgm-exporter-x1",'
        'namespace="gpu-operator"} 60\n'
    )
    _, url = await serve_text(text)
    collector = make(DcgmCollector, registry, scrape_urls=[url])
    try:
        samples = list(await collector.collect())
    finally:
        await collector.aclose()
    assert _of(samples, "gpu_assignment_info") == [
        ({"node": "node-7", "gpu_uuid": "GPU-a", "namespace": "llm", "pod": "llama-0"}, 1.0)
    ]
