"""Local NVIDIA GPUs through NVML (`pynvml` from the `nvidia-ml-py` package), and the collector over them.

`NvmlReader` is the blocking part, shared with the node agent (`collectors.agent_server`): every NVML
call happens inside it, and callers run it with `asyncio.to_thread`. Units are converted here:
NVML reports power and limits in mW and energy in mJ.

Two power readings are kept apart. `nvmlDeviceGetPowerUsage` is a 1 s trailing average on Ampere
(except GA100) and newer; the field values `NVML_FI_DEV_POWER_AVERAGE` (185) and
`NVML_FI_DEV_POWER_INSTANT` (186) name each one explicitly. For energy over a window, the total
energy counter is exact and is what the estimators use; the readings are for spikes and limits.

Every field is read on its own: a GPU that answers `NotSupported` or `NoPermission` for one field
keeps its other fields (the reason is kept in `errors`), and a GPU that is lost (`GpuIsLost`) is
reported as lost without stopping the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from prometheus_client import CollectorRegistry

from collectors.base import CollectorError, Sample
from collectors.support import MonotonicSums, PolledCollector, PollSettings, build_settings

# pynvml error class name -> the reason we report
_REASONS = {
    "NVMLError_NotSupported": "not_supported",
    "NVMLError_NoPermission": "no_permission",
    "NVMLError_GpuIsLost": "gpu_is_lost",
    "NVMLError_Timeout": "timeout",
    "NVMLError_ResetRequired": "reset_required",
    "NVMLError_Unknown": "unknown",
}
_FIELD_POWER_AVERAGE = 185
_FIELD_POWER_INSTANT = 186
_VALUE_ATTR = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}


def reason_of(exc: BaseException) -> str:
    return _REASONS.get(type(exc).__name__, type(exc).__name__)


class GpuLostError(Exception):
    pass


@dataclass
class GpuReading:
    """One GPU at one moment; `None` where NVML could not say (the reason is in `errors`)."""

    uuid: str
    index: int
    name: str = ""
    timestamp_seconds: float = 0.0
    power_watts: float | None = None
    power_average_watts: float | None = None
    power_instant_watts: float | None = None
    energy_joules_total: float | None = None
    power_limit_watts: float | None = None
    enforced_power_limit_watts: float | None = None
    power_limit_min_watts: float | None = None
    power_limit_max_watts: float | None = None
    default_power_limit_watts: float | None = None
    utilization_ratio: float | None = None
    memory_utilization_ratio: float | None = None
    sm_clock_hertz: float | None = None
    memory_clock_hertz: float | None = None
    mig_uuids: list[str] = field(default_factory=list)
    lost: bool = False
    errors: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PowerLimitChange:
    uuid: str
    previous_watts: float
    applied_watts: float
    clamped: bool
    dry_run: bool


class NvmlReader:
    """Blocking NVML access. `nvml` is the `pynvml` module, or a stand-in with the same functions."""

    def __init__(self, nvml: Any = None, clock: Callable[[], float] = time.time) -> None:
        if nvml is None:
            import pynvml

            nvml = pynvml
        self._nvml = nvml
        self._clock = clock
        self._started = False

    def start(self) -> None:
        """nvmlInit; raises `CollectorError` when there is no driver or library."""
        if self._started:
            return
        try:
            self._nvml.nvmlInit()
        except self._nvml.NVMLError as exc:
            raise CollectorError(f"NVML is not available: {exc} ({reason_of(exc)})") from exc
        self._started = True

    def stop(self) -> None:
        if self._started:
            self._started = False
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlShutdown()

    def _handles(self) -> list[tuple[int, Any]]:
        nvml = self._nvml
        count = nvml.nvmlDeviceGetCount()
        return [(index, nvml.nvmlDeviceGetHandleByIndex(index)) for index in range(count)]

    def _read(self, reading: GpuReading, key: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except self._nvml.NVMLError as exc:
            reason = reason_of(exc)
            reading.errors[key] = reason
            if reason == "gpu_is_lost":
                reading.lost = True
                raise GpuLostError from exc
            return None

    @staticmethod
    def _field_value(value: Any) -> float | None:
        if getattr(value, "nvmlReturn", 0) != 0:
            return None
        attr = _VALUE_ATTR.get(getattr(value, "valueType", 1), "uiVal")
        return float(getattr(value.value, attr))

    def read_all(self) -> list[GpuReading]:
        self.start()
        try:
            handles = self._handles()
        except self._nvml.NVMLError as exc:
            raise CollectorError(f"NVML could not list the GPUs: {exc} ({reason_of(exc)})") from exc
        return [self._read_one(index, handle) for index, handle in handles]

    def _read_one(self, index: int, handle: Any) -> GpuReading:
        nvml = self._nvml
        reading = GpuReading(uuid=f"index-{index}", index=index, timestamp_seconds=self._clock())
        milli = 1e-3
        try:
            uuid = self._read(reading, "uuid", lambda: nvml.nvmlDeviceGetUUID(handle))
            if uuid is not None:
                reading.uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
            name = self._read(reading, "name", lambda: nvml.nvmlDeviceGetName(handle))
            reading.name = (
                (name.decode() if isinstance(name, bytes) else str(name)) if name is not None else ""
            )
            power = self._read(reading, "power_watts", lambda: nvml.nvmlDeviceGetPowerUsage(handle))
            reading.power_watts = power * milli if power is not None else None
            fields = self._read(
                reading,
                "power_fields",
                lambda: nvml.nvmlDeviceGetFieldValues(handle, [_FIELD_POWER_AVERAGE, _FIELD_POWER_INSTANT]),
            )
            if fields is not None:
                average, instant = (self._field_value(v) for v in fields)
                reading.power_average_watts = average * milli if average is not None else None
                reading.power_instant_watts = instant * milli if instant is not None else None
                if average is None:
                    reading.errors["power_average_watts"] = "not_supported"
                if instant is None:
                    reading.errors["power_instant_watts"] = "not_supported"
            energy = self._read(
                reading, "energy_joules_total", lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            )
            reading.energy_joules_total = energy * milli if energy is not None else None
            limit = self._read(
                reading, "power_limit_watts", lambda: nvml.nvmlDeviceGetPowerManagementLimit(handle)
            )
            reading.power_limit_watts = limit * milli if limit is not None else None
            enforced = self._read(
                reading, "enforced_power_limit_watts", lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle)
            )
            reading.enforced_power_limit_watts = enforced * milli if enforced is not None else None
            bounds = self._read(
                reading,
                "power_limit_constraints",
                lambda: nvml.nvmlDeviceGetPowerManagementLimitConstraints(handle),
            )
            if bounds is not None:
                reading.power_limit_min_watts = bounds[0] * milli
                reading.power_limit_max_watts = bounds[1] * milli
            default = self._read(
                reading,
                "default_power_limit_watts",
                lambda: nvml.nvmlDeviceGetPowerManagementDefaultLimit(handle),
            )
            reading.default_power_limit_watts = default * milli if default is not None else None
            rates = self._read(reading, "utilization", lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
            if rates is not None:
                reading.utilization_ratio = rates.gpu / 100.0
                reading.memory_utilization_ratio = rates.memory / 100.0
            sm = self._read(
                reading, "sm_clock", lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)
            )
            reading.sm_clock_hertz = sm * 1e6 if sm is not None else None
            mem = self._read(
                reading, "memory_clock", lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM)
            )
            reading.memory_clock_hertz = mem * 1e6 if mem is not None else None
            reading.mig_uuids = self._mig_uuids(reading, handle)
        except GpuLostError:
            pass
        return reading

    def _mig_uuids(self, reading: GpuReading, handle: Any) -> list[str]:
        """UUIDs of the MIG devices on this GPU (the kubelet hands those out under MIG)."""
        nvml = self._nvml
        try:
            current, _pending = nvml.nvmlDeviceGetMigMode(handle)
        except nvml.NVMLError as exc:
            if reason_of(exc) == "gpu_is_lost":
                reading.lost = True
                raise GpuLostError from exc
            return []  # not a MIG-capable GPU
        if not current:
            return []
        found = []
        for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except nvml.NVMLError:
                continue  # an empty slot answers NotFound
            uuid = nvml.nvmlDeviceGetUUID(mig)
            found.append(uuid.decode() if isinstance(uuid, bytes) else str(uuid))
        return found

    def set_power_limit(self, uuid: str, watts: float, *, apply: bool) -> PowerLimitChange:
        """Clamp `watts` to the GPU's constraints and, if `apply`, set it. Raises `KeyError` for an
        unknown GPU and `pynvml.NVMLError` (e.g. NoPermission) when the driver refuses."""
        self.start()
        nvml = self._nvml
        for _index, handle in self._handles():
            found = nvml.nvmlDeviceGetUUID(handle)
            if (found.decode() if isinstance(found, bytes) else str(found)) != uuid:
                continue
            low, high = nvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
            previous = nvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000.0
            wanted_milliwatts = round(watts * 1000.0)
            applied_milliwatts = min(max(wanted_milliwatts, int(low)), int(high))
            if apply:
                nvml.nvmlDeviceSetPowerManagementLimit(handle, applied_milliwatts)
            return PowerLimitChange(
                uuid=uuid,
                previous_watts=previous,
                applied_watts=applied_milliwatts / 1000.0,
                clamped=applied_milliwatts != wanted_milliwatts,
                dry_run=not apply,
            )
        raise KeyError(uuid)


def default_node_name() -> str:
    return os.environ.get("NODE_NAME") or socket.gethostname()


def reading_samples(node: str, reading: GpuReading, energy_joules: float | None) -> list[Sample]:
    """Our samples for one GPU (`energy_joules` is the reset-proofed counter)."""
    labels = {"node": node, "gpu_uuid": reading.uuid}
    stamp = reading.timestamp_seconds
    values = {
        "gpu_power_watts": reading.power_watts,
        "gpu_power_average_watts": reading.power_average_watts,
        "gpu_power_instant_watts": reading.power_instant_watts,
        "gpu_energy_joules_total": energy_joules,
        "gpu_power_limit_watts": reading.power_limit_watts,
        "gpu_power_limit_min_watts": reading.power_limit_min_watts,
        "gpu_power_limit_max_watts": reading.power_limit_max_watts,
        "gpu_default_power_limit_watts": reading.default_power_limit_watts,
        "gpu_enforced_power_limit_watts": reading.enforced_power_limit_watts,
        "gpu_utilization_ratio": reading.utilization_ratio,
        "gpu_memory_utilization_ratio": reading.memory_utilization_ratio,
        "gpu_sm_clock_hertz": reading.sm_clock_hertz,
        "gpu_memory_clock_hertz": reading.memory_clock_hertz,
    }
    return [
        Sample(metric=metric, value=value, timestamp_seconds=stamp, labels=labels)
        for metric, value in values.items()
        if value is not None
    ]


@dataclass(frozen=True, slots=True, kw_only=True)
class NvmlSettings(PollSettings):
    node: str = ""
    """The `node` label; defaults to $NODE_NAME, else the host name."""
    interval_seconds: float = 5.0
    pod_resources_socket: str | None = None
    """The kubelet's pod-resources socket: when set, `gpu_assignment_info` says which pods hold each GPU."""

    def problems(self) -> list[str]:
        return PollSettings.problems(self)


class NvmlCollector(PolledCollector):
    """This machine's GPUs. For a cluster, run `wattscale agent` on each GPU node and read it with
    the `node_agent` collector instead; this one suits a single host or the agent itself."""

    settings: NvmlSettings

    def __init__(
        self,
        name: str,
        settings: NvmlSettings,
        *,
        reader: NvmlReader | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name, settings, registry=registry, clock=clock)
        self.node = settings.node or default_node_name()
        self._reader = reader if reader is not None else NvmlReader(clock=clock)
        self._energy = MonotonicSums()
        self._lost: set[str] = set()

    @classmethod
    def from_settings(cls, name: str, raw: Mapping[str, object]) -> Self:
        return cls(name, build_settings(NvmlSettings, name, raw))

    async def _poll(self) -> list[Sample]:
        readings = await asyncio.to_thread(self._reader.read_all)
        samples = self.samples_from(readings)
        socket_path = self.settings.pod_resources_socket
        if socket_path is not None:
            from collectors.pod_resources import gpu_pods, list_pod_devices

            devices = await list_pod_devices(socket_path, timeout_seconds=self.settings.timeout_seconds)
            holders = gpu_pods(devices, [(r.uuid, r.index, r.mig_uuids) for r in readings if not r.lost])
            stamp = self._clock()
            samples.extend(
                Sample(
                    metric="gpu_assignment_info",
                    value=1.0,
                    timestamp_seconds=stamp,
                    labels={"node": self.node, "gpu_uuid": uuid, "namespace": namespace, "pod": pod},
                )
                for uuid, pods in sorted(holders.items())
                for namespace, pod in pods
            )
        return samples

    def samples_from(self, readings: list[GpuReading]) -> list[Sample]:
        energy = self._energy.update(
            (r.uuid, r.uuid, r.energy_joules_total) for r in readings if r.energy_joules_total is not None
        )
        samples: list[Sample] = []
        for reading in readings:
            if reading.lost:
                if reading.uuid not in self._lost:
                    self._lost.add(reading.uuid)
                    self._log.warning(
                        "collector.gpu_lost", extra={"event": "collector.gpu_lost", "gpu_uuid": reading.uuid}
                    )
                continue
            self._lost.discard(reading.uuid)
            samples.extend(reading_samples(self.node, reading, energy.get(reading.uuid)))
        return samples

    async def aclose(self) -> None:
        await asyncio.to_thread(self._reader.stop)
