from __future__ import annotations

from pathlib import Path

import pynvml
import pytest
from fake_kubelet import FakeKubeletPodResources
from fake_nvml import FakeGpu, FakeNvml
from prometheus_client import CollectorRegistry

from collectors.base import Collector, CollectorError, Sample
from collectors.nvml import NvmlCollector, NvmlReader, NvmlSettings


def _collector(nvml: FakeNvml, registry: CollectorRegistry) -> NvmlCollector:
    return NvmlCollector(
        "nvml",
        NvmlSettings(node="gpu-node-1"),
        reader=NvmlReader(nvml, clock=lambda: 1000.0),
        registry=registry,
    )


def _by_gpu(samples: list[Sample] | tuple[Sample, ...]) -> dict[str, dict[str, float]]:
    found: dict[str, dict[str, float]] = {}
    for s in samples:
        found.setdefault(s.labels["gpu_uuid"], {})[s.metric] = s.value
    return found


async def test_reads_every_gpu_in_base_units(registry: CollectorRegistry) -> None:
    nvml = FakeNvml([FakeGpu("GPU-a"), FakeGpu("GPU-b", power_milliwatts=402_500)])
    collector: Collector = _collector(nvml, registry)
    samples = list(await collector.collect())
    assert {s.labels["node"] for s in samples} == {"gpu-node-1"}
    a = _by_gpu(samples)["GPU-a"]
    assert a == {
        "gpu_power_watts": 150.0,
        "gpu_power_average_watts": 150.0,
        "gpu_power_instant_watts": 162.0,
        "gpu_energy_joules_total": 10_000.0,
        "gpu_power_limit_watts": 700.0,
        "gpu_power_limit_min_watts": 200.0,
        "gpu_power_limit_max_watts": 700.0,
        "gpu_default_power_limit_watts": 700.0,
        "gpu_enforced_power_limit_watts": 700.0,
        "gpu_utilization_ratio": 0.5,
        "gpu_memory_utilization_ratio": 0.2,
        "gpu_sm_clock_hertz": 1.98e9,
        "gpu_memory_clock_hertz": 2.619e9,
    }
    assert _by_gpu(samples)["GPU-b"]["gpu_power_watts"] == 402.5
    assert {s.timestamp_seconds for s in samples} == {1000.0}
    await collector.aclose()


async def test_unsupported_and_forbidden_fields_leave_the_rest(registry: CollectorRegistry) -> None:
    older = FakeGpu(
        "GPU-old",
        average_milliwatts=None,  # field 185 exists only on Ampere and newer
        failing={
            "nvmlDeviceGetTotalEnergyConsumption": pynvml.NVMLError_NotSupported,
            "nvmlDeviceGetPowerManagementLimitConstraints": pynvml.NVMLError_NoPermission,
        },
    )
    reader = NvmlReader(FakeNvml([older]))
    (reading,) = reader.read_all()
    assert reading.power_watts == 150.0 and reading.power_instant_watts == 162.0
    assert reading.power_average_watts is None and reading.energy_joules_total is None
    assert reading.errors == {
        "power_average_watts": "not_supported",
        "energy_joules_total": "not_supported",
        "power_limit_constraints": "no_permission",
    }
    samples = list(await _collector(FakeNvml([older]), registry).collect())
    assert "gpu_energy_joules_total" not in _by_gpu(samples)["GPU-old"]


async def test_a_lost_gpu_does_not_stop_the_others(registry: CollectorRegistry) -> None:
    gpus = [FakeGpu("GPU-a"), FakeGpu("GPU-b")]
    nvml = FakeNvml(gpus)
    collector = _collector(nvml, registry)
    await collector.collect()
    gpus[0].lost = True
    samples = list(await collector.collect())
    assert set(_by_gpu(samples)) == {"GPU-b"}
    (lost, _) = NvmlReader(nvml).read_all()
    assert lost.lost and lost.errors == {"uuid": "gpu_is_lost"}


async def test_driver_reload_does_not_send_energy_back(registry: CollectorRegistry) -> None:
    gpu = FakeGpu("GPU-a", energy_millijoules=5_000_000)
    collector = _collector(FakeNvml([gpu]), registry)
    await collector.collect()
    gpu.energy_millijoules = 1_000  # the counter restarts when the driver reloads
    samples = list(await collector.collect())
    assert _by_gpu(samples)["GPU-a"]["gpu_energy_joules_total"] == pytest.approx(5001.0)


async def test_no_driver_is_a_clear_error(registry: CollectorRegistry) -> None:
    collector = _collector(FakeNvml([], driver_loaded=False), registry)
    with pytest.raises(CollectorError, match="NVML is not available"):
        await collector.collect()
    unknown = FakeNvml([FakeGpu("GPU-a")])
    unknown.count_error = pynvml.NVMLError_Unknown
    with pytest.raises(CollectorError, match="NVML could not list the GPUs"):
        await _collector(unknown, registry).collect()


def test_mig_devices_and_power_limits() -> None:
    nvml = FakeNvml([FakeGpu("GPU-a", mig_uuids=["MIG-1", "MIG-2"])], root=False)
    reader = NvmlReader(nvml)
    (reading,) = reader.read_all()
    assert reading.mig_uuids == ["MIG-1", "MIG-2"]
    change = reader.set_power_limit("GPU-a", 100.0, apply=False)
    assert (change.previous_watts, change.applied_watts, change.clamped, change.dry_run) == (
        700.0,
        200.0,
        True,
        True,
    )
    assert nvml.set_calls == []
    with pytest.raises(pynvml.NVMLError_NoPermission):
        reader.set_power_limit("GPU-a", 450.0, apply=True)
    with pytest.raises(KeyError):
        reader.set_power_limit("GPU-zzz", 450.0, apply=False)


async def test_pods_holding_each_gpu_come_from_the_kubelet(
    registry: CollectorRegistry, tmp_path: Path
) -> None:
    kubelet = FakeKubeletPodResources(tmp_path / "kubelet.sock")
    kubelet.pods = [("llm", "llama-0", "vllm", "nvidia.com/gpu", ["GPU-b"])]
    await kubelet.start()
    settings = NvmlSettings(node="gpu-node-1", pod_resources_socket=str(kubelet.socket_path))
    nvml = FakeNvml([FakeGpu("GPU-a"), FakeGpu("GPU-b")])
    collector = NvmlCollector("nvml", settings, reader=NvmlReader(nvml), registry=registry)
    try:
        samples = list(await collector.collect())
    finally:
        await kubelet.stop()
    assert [dict(s.labels) for s in samples if s.metric == "gpu_assignment_info"] == [
        {"node": "gpu-node-1", "gpu_uuid": "GPU-b", "namespace": "llm", "pod": "llama-0"}
    ]
