"""Per-GPU-holder energy and per-pod tokens that Prometheus (or Thanos, Mimir, VictoriaMetrics) already
recorded.

The recording rules in `apiservice/recording-rules/wattscale-rules.yaml` pre-compute each GPU's energy
once per pod holding it, and per pod the Kepler CPU energy and the generated and prompt tokens of the
last window (`...:increase1m`). This collector reads only those series, a few per pod, and turns each
increase into the window's average rate:

    wattscale:gpu_holder_energy_joules:increase<w> -> gpu_power_watts                  node, gpu_uuid
                                                      gpu_holder_power_watts           node, gpu_uuid, namespace, pod
    wattscale:pod_cpu_energy_joules:increase<w>    -> pod_cpu_power_watts              namespace, pod
    wattscale:pod_generation_tokens:increase<w>    -> pod_generation_tokens_per_second namespace, pod
    wattscale:pod_prompt_tokens:increase<w>        -> pod_prompt_tokens_per_second     namespace, pod

A GPU's holder series are copies of one counter: its power is emitted once per GPU (for the node's
sum) and once per holding pod, which the estimator splits among a shared GPU's pods as it splits one read
from the exporters (`estimators.recorded`). Each sample
is stamped with the rule evaluation that recorded it, so its age is exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from collectors.base import Sample
from collectors.prometheus_text import ExporterCollector, ExporterSettings
from collectors.support import Series

_HOLDER_ENERGY = "wattscale:gpu_holder_energy_joules"
_POD_RECORDED = {
    "wattscale:pod_cpu_energy_joules": "pod_cpu_power_watts",
    "wattscale:pod_generation_tokens": "pod_generation_tokens_per_second",
    "wattscale:pod_prompt_tokens": "pod_prompt_tokens_per_second",
}
_GPU = ("node", "gpu_uuid")
_POD = ("namespace", "pod")
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
        return frozenset(
            f"{name}:increase{self.settings.window}" for name in (_HOLDER_ENERGY, *_POD_RECORDED)
        )

    def translate(self, series: list[Series], now_seconds: float) -> list[Sample]:
        suffix = f":increase{self.settings.window}"
        samples: list[Sample] = []
        gpus: dict[tuple[str, ...], Sample] = {}
        for s in series:
            if not s.name.endswith(suffix):
                continue  # another window's rules describe another window
            name = s.name.removesuffix(suffix)
            at = s.timestamp_seconds if s.timestamp_seconds is not None else now_seconds
            if name == _HOLDER_ENERGY:
                self._holder(s, at, gpus, samples)
            elif name in _POD_RECORDED and _has(s, _POD):
                samples.append(self._average(_POD_RECORDED[name], s, _POD, at))
        return samples + list(gpus.values())

    def _holder(
        self, s: Series, at: float, gpus: dict[tuple[str, ...], Sample], samples: list[Sample]
    ) -> None:
        """One GPU power per GPU (the newest of its copies), and one per holding pod."""
        if not _has(s, _GPU):
            return
        gpu = tuple(s.labels[key] for key in _GPU)
        known = gpus.get(gpu)
        if known is None or at > known.timestamp_seconds:
            gpus[gpu] = self._average("gpu_power_watts", s, _GPU, at)
        if _has(s, _POD):
            samples.append(self._average("gpu_holder_power_watts", s, (*_GPU, *_POD), at))

    def _average(self, metric: str, s: Series, keys: tuple[str, ...], at: float) -> Sample:
        labels = {key: s.labels[key] for key in keys}
        return Sample(
            metric=metric, value=s.value / self.settings.window_seconds, timestamp_seconds=at, labels=labels
        )


def _has(s: Series, keys: tuple[str, ...]) -> bool:
    """Whether the series names its object: one without it describes nothing we serve."""
    return all(s.labels.get(key) for key in keys)
