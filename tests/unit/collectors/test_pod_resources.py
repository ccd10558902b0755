from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fake_kubelet import FakeKubeletPodResources

from collectors.base import CollectorError
from collectors.pod_resources import gpu_pods, list_pod_devices

GPUS = [("GPU-a", 0, []), ("GPU-b", 1, ["MIG-b1", "MIG-b2"]), ("GPU-c", 2, [])]


@pytest.fixture
async def kubelet(tmp_path: Path) -> AsyncIterator[FakeKubeletPodResources]:
    fake = FakeKubeletPodResources(tmp_path / "kubelet.sock")
    await fake.start()
    yield fake
    await fake.stop()


async def test_list_maps_uuids_mig_slices_time_slices_and_indices(kubelet: FakeKubeletPodResources) -> None:
    kubelet.pods = [
        ("llm", "llama-0", "vllm", "nvidia.com/gpu", ["GPU-a"]),
        ("llm", "small-0", "vllm", "nvidia.com/mig-1g.10gb", ["MIG-b1"]),
        ("llm", "small-1", "vllm", "nvidia.com/mig-1g.10gb", ["MIG-b2"]),
        ("llm", "shared-0", "vllm", "nvidia.com/gpu", ["GPU-c::0"]),
        ("llm", "shared-1", "vllm", "nvidia.com/gpu", ["GPU-c::3"]),
        ("batch", "indexed-0", "job", "nvidia.com/gpu", ["0"]),
        ("net", "sriov-0", "app", "intel.com/sriov", ["0000:3b:00.1"]),
        ("llm", "elsewhere-0", "vllm", "nvidia.com/gpu", ["GPU-not-here"]),
    ]
    devices = await list_pod_devices(str(kubelet.socket_path))
    assert ("llm", "llama-0", "nvidia.com/gpu", "GPU-a") in devices
    assert gpu_pods(devices, GPUS) == {
        "GPU-a": [("batch", "indexed-0"), ("llm", "llama-0")],
        "GPU-b": [("llm", "small-0"), ("llm", "small-1")],
        "GPU-c": [("llm", "shared-0"), ("llm", "shared-1")],
    }


async def test_a_missing_socket_is_a_collector_error(tmp_path: Path) -> None:
    with pytest.raises(CollectorError, match=r"kubelet pod-resources at .*UNAVAILABLE"):
        await list_pod_devices(str(tmp_path / "absent.sock"), timeout_seconds=1.0)
