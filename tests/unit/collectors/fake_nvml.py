"""FakeNvml: a stand-in for the `pynvml` module with the functions wattscale calls, raising pynvml's
own error classes. Values are in NVML's units (mW, mJ, MHz, percent)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    power_milliwatts: int = 150_000
    average_milliwatts: int | None = 150_000
    instant_milliwatts: int | None = 162_000
    energy_millijoules: int = 10_000_000
    limit_milliwatts: int = 700_000
    min_limit_milliwatts: int = 200_000
    max_limit_milliwatts: int = 700_000
    default_limit_milliwatts: int = 700_000
    utilization_percent: int = 50
    memory_utilization_percent: int = 20
    sm_clock_megahertz: int = 1980
    memory_clock_megahertz: int = 2619
    mig_uuids: list[str] = field(default_factory=list)
    failing: dict[str, type[pynvml.NVMLError]] = field(default_factory=dict)
    """NVML function name -> error it raises for this GPU."""
    lost: bool = False


class FakeNvml:
    NVMLError = pynvml.NVMLError
    NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM
    NVML_CLOCK_MEM = pynvml.NVML_CLOCK_MEM

    def __init__(self, gpus: list[FakeGpu], *, root: bool = True, driver_loaded: bool = True) -> None:
        self.gpus = gpus
        self.root = root
        self.driver_loaded = driver_loaded
        self.initialised = 0
        self.set_calls: list[tuple[str, int]] = []
        self.count_error: type[pynvml.NVMLError] | None = None

    def _gpu(self, handle: Any, function: str) -> FakeGpu:
        gpu: FakeGpu = handle.gpu
        if gpu.lost:
            raise pynvml.NVMLError_GpuIsLost()
        if function in gpu.failing:
            raise gpu.failing[function]()
        return gpu

    def nvmlInit(self) -> None:
        if not self.driver_loaded:
            raise pynvml.NVMLError_DriverNotLoaded()
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.initialised -= 1

    def nvmlDeviceGetCount(self) -> int:
        if self.count_error is not None:
            raise self.count_error()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        return SimpleNamespace(gpu=self.gpus[index])

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        if getattr(handle, "mig_uuid", None):
            return str(handle.mig_uuid)
        return self._gpu(handle, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetName(self, handle: Any) -> str:
        return self._gpu(handle, "nvmlDeviceGetName").name

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        return self._gpu(handle, "nvmlDeviceGetPowerUsage").power_milliwatts

    def nvmlDeviceGetFieldValues(self, handle: Any, field_ids: list[int]) -> list[Any]:
        gpu = self._gpu(handle, "nvmlDeviceGetFieldValues")
        by_id = {185: gpu.average_milliwatts, 186: gpu.instant_milliwatts}
        return [
            SimpleNamespace(
                fieldId=f,
                valueType=1,
                nvmlReturn=0 if by_id[f] is not None else pynvml.NVML_ERROR_NOT_SUPPORTED,
                value=SimpleNamespace(uiVal=by_id[f] or 0),
            )
            for f in field_ids
        ]

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        return self._gpu(handle, "nvmlDeviceGetTotalEnergyConsumption").energy_millijoules

    def nvmlDeviceGetPowerManagementLimit(self, handle: Any) -> int:
        return self._gpu(handle, "nvmlDeviceGetPowerManagementLimit").limit_milliwatts

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int:
        return self._gpu(handle, "nvmlDeviceGetEnforcedPowerLimit").limit_milliwatts

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: Any) -> list[int]:
        gpu = self._gpu(handle, "nvmlDeviceGetPowerManagementLimitConstraints")
        return [gpu.min_limit_milliwatts, gpu.max_limit_milliwatts]

    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle: Any) -> int:
        return self._gpu(handle, "nvmlDeviceGetPowerManagementDefaultLimit").default_limit_milliwatts

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        gpu = self._gpu(handle, "nvmlDeviceGetUtilizationRates")
        return SimpleNamespace(gpu=gpu.utilization_percent, memory=gpu.memory_utilization_percent)

    def nvmlDeviceGetClockInfo(self, handle: Any, clock: int) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetClockInfo")
        return gpu.sm_clock_megahertz if clock == pynvml.NVML_CLOCK_SM else gpu.memory_clock_megahertz

    def nvmlDeviceGetMigMode(self, handle: Any) -> list[int]:
        gpu = self._gpu(handle, "nvmlDeviceGetMigMode")
        if not gpu.mig_uuids:
            raise pynvml.NVMLError_NotSupported()
        return [1, 1]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any) -> int:
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, slot: int) -> Any:
        gpu = self._gpu(handle, "nvmlDeviceGetMigDeviceHandleByIndex")
        if slot >= len(gpu.mig_uuids):
            raise pynvml.NVMLError_NotFound()
        return SimpleNamespace(gpu=gpu, mig_uuid=gpu.mig_uuids[slot])

    def nvmlDeviceSetPowerManagementLimit(self, handle: Any, milliwatts: int) -> None:
        gpu = self._gpu(handle, "nvmlDeviceSetPowerManagementLimit")
        if not self.root:
            raise pynvml.NVMLError_NoPermission()
        self.set_calls.append((gpu.uuid, milliwatts))
        gpu.limit_milliwatts = milliwatts
