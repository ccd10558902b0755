"""Kepler: per-pod CPU (and GPU) energy, both metric generations, detected per series.

- Legacy (up to 0.9.x): `kepler_container_{package,dram,gpu}_joules_total` with `container_namespace`,
  `pod_name` and `mode` (dynamic/idle). Pod CPU energy = package + dram over the pod's containers.
  `kepler_container_joules_total` is NOT read: it already includes package + dram + gpu + other, and
  adding it would count them twice. GPU energy uses `mode="dynamic"` only, because legacy Kepler
  spreads the node's idle GPU energy evenly over every container, GPU users or not.
- Rewrite (0.10+): `kepler_pod_{cpu,gpu}_joules_total` with `pod_namespace`, `pod_name`, `zone`,
  `state` and the constant `node_name`. RAPL zones overlap (package contains core and uncore; psys
  contains everything), so only the zones in `cpu_zones` are added (matched by prefix, so per-socket
  names such as `package-1` count once each), and terminated pods' series are dropped.

Energy counters are summed with `MonotonicSums`, so a container restart does not make a pod's
energy go backwards.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from collectors.base import Sample
from collectors.prometheus_text import ExporterCollector, ExporterSettings, first_label
from collectors.support import MonotonicSums, Series

_LEGACY_POD_CPU = frozenset({"kepler_container_package_joules_total", "kepler_container_dram_joules_total"})
_LEGACY_POD_GPU = "kepler_container_gpu_joules_total"
_LEGACY_NODE_CPU = frozenset({"kepler_node_package_joules_total", "kepler_node_dram_joules_total"})
_LEGACY_NODE_PLATFORM = "kepler_node_platform_joules_total"
_POD_CPU = "kepler_pod_cpu_joules_total"
_POD_GPU = "kepler_pod_gpu_joules_total"
_NODE_CPU = "kepler_node_cpu_joules_total"
_PLATFORM_WATTS = "kepler_platform_watts"

_Key = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True, slots=True, kw_only=True)
class KeplerSettings(ExporterSettings):
    cpu_zones: tuple[str, ...] = ("package", "dram")
    """Rewrite only: zone-name prefixes that add up to CPU energy without overlap."""
    include_idle: bool = True
    """Legacy only: add `mode="idle"` CPU energy (exported on bare metal) to `mode="dynamic"`."""
    node_labels: tuple[str, ...] = ("node_name", "node", "instance")
    discover_labels: Mapping[str, str] = field(default_factory=lambda: {"app.kubernetes.io/name": "kepler"})
    """Kepler's DaemonSet pods (its Helm chart's and manifests' label), scraped on their port `http`."""
    discover_port: str = "http"

    def problems(self) -> list[str]:
        found = ExporterSettings.problems(self)
        if not self.cpu_zones:
            found.append("cpu_zones: list at least one zone")
        overlapping = {"core", "uncore", "psys"} & {zone.split("-")[0] for zone in self.cpu_zones}
        if overlapping and "package" in self.cpu_zones:
            found.append(f"cpu_zones: {sorted(overlapping)} overlap package; adding them counts energy twice")
        if not self.node_labels:
            found.append("node_labels: list at least one label")
        return found


class KeplerCollector(ExporterCollector):
    settings_cls = KeplerSettings
    settings: KeplerSettings
    source_metrics = frozenset(
        {
            *_LEGACY_POD_CPU,
            _LEGACY_POD_GPU,
            *_LEGACY_NODE_CPU,
            _LEGACY_NODE_PLATFORM,
            _POD_CPU,
            _POD_GPU,
            _NODE_CPU,
            _PLATFORM_WATTS,
        }
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._counters = MonotonicSums()
        self.generation: str | None = None
        """"legacy" or "rewrite" once series were seen; for logs and tests."""

    def _zone_wanted(self, zone: str) -> bool:
        return any(zone == prefix or zone.startswith(prefix + "-") for prefix in self.settings.cpu_zones)

    def _classify(self, s: Series) -> tuple[str, tuple[tuple[str, str], ...]] | None:
        """(our metric, our labels) for a series we add up, or None to skip it."""
        labels = s.labels
        node = first_label(labels, *self.settings.node_labels)
        node_only = (("node", node),) if node else ()
        if s.name in _LEGACY_POD_CPU or s.name == _LEGACY_POD_GPU:
            mode = labels.get("mode", "dynamic")
            if s.name == _LEGACY_POD_GPU and mode != "dynamic":
                return None
            if mode == "idle" and not self.settings.include_idle:
                return None
            namespace, pod = labels.get("container_namespace", ""), labels.get("pod_name", "")
            if not namespace or not pod:
                return None
            metric = (
                "pod_gpu_energy_joules_total" if s.name == _LEGACY_POD_GPU else "pod_cpu_energy_joules_total"
            )
            return metric, (("namespace", namespace), ("pod", pod), *node_only)
        if s.name in (_POD_CPU, _POD_GPU):
            if labels.get("state") == "terminated":
                return None
            if s.name == _POD_CPU and not self._zone_wanted(labels.get("zone", "")):
                return None
            namespace, pod = labels.get("pod_namespace", ""), labels.get("pod_name", "")
            if not namespace or not pod:
                return None
            metric = "pod_gpu_energy_joules_total" if s.name == _POD_GPU else "pod_cpu_energy_joules_total"
            return metric, (("namespace", namespace), ("pod", pod), *node_only)
        if s.name in _LEGACY_NODE_CPU:
            return "node_cpu_energy_joules_total", node_only
        if s.name == _NODE_CPU:
            return (
                ("node_cpu_energy_joules_total", node_only)
                if self._zone_wanted(labels.get("zone", ""))
                else None
            )
        if s.name == _LEGACY_NODE_PLATFORM:
            return "node_energy_joules_total", node_only
        return None

    def translate(self, series: list[Series], now_seconds: float) -> list[Sample]:
        counters: list[tuple[_Key, object, float]] = []
        stamps: dict[_Key, float] = {}
        platform_watts: dict[str, float] = defaultdict(float)
        platform_stamps: dict[str, float] = {}
        legacy = rewrite = False
        for s in series:
            stamp = s.timestamp_seconds if s.timestamp_seconds is not None else now_seconds
            if s.name == _PLATFORM_WATTS:
                node = first_label(s.labels, *self.settings.node_labels)
                platform_watts[node] += s.value
                platform_stamps[node] = max(stamp, platform_stamps.get(node, stamp))
                rewrite = True
                continue
            classified = self._classify(s)
            if classified is None:
                continue
            legacy = legacy or s.name.startswith("kepler_container_") or s.name in _LEGACY_NODE_CPU
            rewrite = rewrite or s.name in (_POD_CPU, _POD_GPU, _NODE_CPU)
            key: _Key = classified
            counters.append((key, (s.name, tuple(sorted(s.labels.items()))), s.value))
            stamps[key] = max(stamp, stamps.get(key, stamp))
        self.generation = (
            "legacy"
            if legacy and not rewrite
            else "rewrite"
            if rewrite and not legacy
            else ("mixed" if legacy else None)
        )
        samples = [
            Sample(
                metric=metric, value=total, timestamp_seconds=stamps[(metric, labels)], labels=dict(labels)
            )
            for (metric, labels), total in self._counters.update(counters).items()
        ]
        samples.extend(
            Sample(
                metric="node_power_watts",
                value=watts,
                timestamp_seconds=platform_stamps[node],
                labels={"node": node},
            )
            for node, watts in platform_watts.items()
        )
        return samples
