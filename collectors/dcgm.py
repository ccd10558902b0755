"""NVIDIA dcgm-exporter: GPU power, energy, limit and utilisation, once per GPU, plus which pods hold it.

With pod mapping on, dcgm-exporter copies every GPU series once per pod holding the GPU (and once per
MIG instance), so a time-sliced GPU shows up N times. Summing those counts it N times. Here each
GPU's readings are emitted once, keyed by (node, gpu_uuid), and the sharing is reported separately
as `gpu_assignment_info` per pod; the estimators split the GPU among its pods.

Units: `DCGM_FI_DEV_POWER_USAGE` is W; `DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION` is mJ since the driver
loaded (reset-proofed here); `DCGM_FI_DEV_GPU_UTIL` is percent. The host label is `Hostname` in every
release so far and `hostname` on dcgm-exporter's main branch; both are read. In Prometheus mode the
exporter's `pod`/`namespace` clash with the target's own and become `exported_pod`/`exported_namespace`
unless `honor_labels` is set; both spellings are read, and the exporter's own pod is ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from collectors.base import Sample
from collectors.prometheus_text import ExporterCollector, ExporterSettings, first_label
from collectors.support import MonotonicSums, Series

# source name -> (our metric, scale to base units, is a counter)
_GPU_SERIES: dict[str, tuple[str, float, bool]] = {
    "DCGM_FI_DEV_POWER_USAGE": ("gpu_power_watts", 1.0, False),
    "DCGM_FI_DEV_POWER_USAGE_INSTANT": ("gpu_power_instant_watts", 1.0, False),
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": ("gpu_energy_joules_total", 1e-3, True),
    "DCGM_FI_DEV_POWER_MGMT_LIMIT": ("gpu_power_limit_watts", 1.0, False),
    "DCGM_FI_DEV_GPU_UTIL": ("gpu_utilization_ratio", 1e-2, False),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class DcgmSettings(ExporterSettings):
    node_labels: tuple[str, ...] = ("node", "Hostname", "hostname")
    """The first present names the node; Prometheus relabelling often provides `node`."""
    ignore_pods_matching: str = "dcgm-exporter"
    """A pod name that matches is the exporter itself (a target label), not a GPU holder."""
    discover_labels: Mapping[str, str] = field(
        default_factory=lambda: {"app.kubernetes.io/name": "dcgm-exporter"}
    )
    """dcgm-exporter's DaemonSet pods (its Helm chart's label), on their port `metrics`."""

    def problems(self) -> list[str]:
        found = ExporterSettings.problems(self)
        if not self.node_labels:
            found.append("node_labels: list at least one label")
        try:
            re.compile(self.ignore_pods_matching)
        except re.error as exc:
            found.append(f"ignore_pods_matching: not a regular expression: {exc}")
        return found


class DcgmCollector(ExporterCollector):
    settings_cls = DcgmSettings
    settings: DcgmSettings
    source_metrics = frozenset(_GPU_SERIES)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._energy = MonotonicSums()
        self._ignore_pods = re.compile(self.settings.ignore_pods_matching)

    def _holder(self, labels: Mapping[str, str]) -> tuple[str, str] | None:
        pod = first_label(labels, "exported_pod", "pod", "pod_name")
        namespace = first_label(labels, "exported_namespace", "namespace", "pod_namespace")
        if not pod or not namespace or (self._ignore_pods.pattern and self._ignore_pods.search(pod)):
            return None
        return namespace, pod

    def translate(self, series: list[Series], now_seconds: float) -> list[Sample]:
        # (metric, node, uuid) -> (value, timestamp); copies of one GPU series carry the same value.
        readings: dict[tuple[str, str, str], tuple[float, float]] = {}
        holders: dict[tuple[str, str, str, str], float] = {}
        energy: list[tuple[tuple[str, str], object, float]] = []
        energy_stamps: dict[tuple[str, str], float] = {}
        for s in series:
            spec = _GPU_SERIES.get(s.name)
            uuid = first_label(s.labels, "UUID", "uuid")
            if spec is None or not uuid:
                continue
            metric, scale, is_counter = spec
            node = first_label(s.labels, *self.settings.node_labels)
            stamp = s.timestamp_seconds if s.timestamp_seconds is not None else now_seconds
            holder = self._holder(s.labels)
            if holder is not None:
                holders[(node, uuid, *holder)] = max(stamp, holders.get((node, uuid, *holder), stamp))
            if is_counter:
                if (node, uuid) not in energy_stamps:
                    energy.append(((node, uuid), (s.name, node, uuid), s.value * scale))
                energy_stamps[(node, uuid)] = max(stamp, energy_stamps.get((node, uuid), stamp))
            else:
                previous = readings.get((metric, node, uuid))
                if previous is None or stamp > previous[1]:
                    readings[(metric, node, uuid)] = (s.value * scale, stamp)
        samples = [
            Sample(
                metric=metric, value=value, timestamp_seconds=stamp, labels={"node": node, "gpu_uuid": uuid}
            )
            for (metric, node, uuid), (value, stamp) in readings.items()
        ]
        for (node, uuid), total in self._energy.update(energy).items():
            samples.append(
                Sample(
                    metric="gpu_energy_joules_total",
                    value=total,
                    timestamp_seconds=energy_stamps[(node, uuid)],
                    labels={"node": node, "gpu_uuid": uuid},
                )
            )
        for (node, uuid, namespace, pod), stamp in holders.items():
            samples.append(
                Sample(
                    metric="gpu_assignment_info",
                    value=1.0,
                    timestamp_seconds=stamp,
                    labels={"node": node, "gpu_uuid": uuid, "namespace": namespace, "pod": pod},
                )
            )
        return samples
