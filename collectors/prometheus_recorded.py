"""Per-pod energy and tokens that Prometheus (or Thanos, Mimir, VictoriaMetrics) already recorded.

The recording rules in `apiservice/recording-rules/wattscale-rules.yaml` pre-compute, per pod, the
GPU energy share, the Kepler CPU energy and the generated and prompt tokens of the last window
(`...:increase1m`), and each GPU's energy. This collector reads only those series, a few per pod,
and turns each increase into the window's average rate:

    wattscale:pod_gpu_energy_joules:increase<w>   -> pod_gpu_power_watts               namespace, pod, node
    wattscale:pod_cpu_energy_joules:increase<w>   -> pod_cpu_power_watts               namespace, pod
    wattscale:pod_generation_tokens:increase<w>   -> pod_generation_tokens_per_second  namespace, pod
    wattscale:pod_prompt_tokens:increase<w>       -> pod_prompt_tokens_per_second      namespace, pod
    wattscale:gpu_energy_joules:increase<w>       -> gpu_power_watts                   node, gpu_uuid

Each sample is stamped with the rule evaluation that recorded it, so its age is exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from collectors.base import Sample
from collectors.prometheus_text import ExporterCollector, ExporterSettings
from collectors.support import Series

_RECORDED = {
    "wattscale:pod_gpu_energy_joules": ("pod_gpu_power_watts", ("namespace", "pod", "node")),
    "wattscale:pod_cpu_energy_joules": ("pod_cpu_power_watts", ("namespace", "pod")),
    "wattscale:pod_generation_tokens": ("pod_generation_tokens_per_second", ("namespace", "pod")),
    "wattscale:pod_prompt_tokens": ("pod_prompt_tokens_per_second", ("namespace", "pod")),
    "wattscale:gpu_energy_joules": ("gpu_power_watts", ("node", "gpu_uuid")),
}
_DURATION = re.compile(r"^([1-9][0-9]*)(s|m|h)$")
_SECONDS = {"s": 1, "m": 60, "h": 3600}


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordedSettings(ExporterSettings):
    window: str = "1m"
    """The recording rules' range, as written in their names (`increase1m`)."""

    @property
    def window_seconds(self) -> float:
        match = _DURATION.match(self.window)
        return float(int(match.group(1)) * _SECONDS[match.group(2)]) if match else float("nan")

    def problems(self) -> list[str]:
        found = ExporterSettings.problems(self)
        if self.prometheus_url is None:
            found.append("prometheus_url: required; recorded series are read from a Prometheus API")
        if self.query is not None:
            found.append("query: not used; the recorded series are named by `window`")
        if not _DURATION.match(self.window):
            found.append(f"window: want a Prometheus duration such as 1m or 90s, got {self.window!r}")
        return found


class RecordedSeriesCollector(ExporterCollector):
    """Entry point `prometheus_api`: reads the recording rules' series from a Prometheus-compatible API."""

    settings_cls: ClassVar[type[ExporterSettings]] = RecordedSettings
    settings: RecordedSettings

    def query_names(self) -> frozenset[str]:
        return frozenset(f"{name}:increase{self.settings.window}" for name in _RECORDED)

    def translate(self, series: list[Series], now_seconds: float) -> list[Sample]:
        suffix = f":increase{self.settings.window}"
        window_seconds = self.settings.window_seconds
        samples: list[Sample] = []
        for s in series:
            recorded = _RECORDED.get(s.name.removesuffix(suffix)) if s.name.endswith(suffix) else None
            if recorded is None:
                continue
            metric, keys = recorded
            labels = {key: s.labels[key] for key in keys if s.labels.get(key)}
            if not all(key in labels for key in keys[:2]):
                continue  # a series without its object's identity describes nothing we serve
            samples.append(
                Sample(
                    metric=metric,
                    value=s.value / window_seconds,
                    timestamp_seconds=s.timestamp_seconds if s.timestamp_seconds is not None else now_seconds,
                    labels=labels,
                )
            )
        return samples
