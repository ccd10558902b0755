"""The one protocol every source implements.

Data flows one way: a `Collector` polls its source and returns `Sample`s; the adapter's pipeline
keeps a short history of them, hands that to `estimators/`, and writes the derived values into the
metric store. Collectors never import `adapter` or `estimators`.

Exceptions::

    CollectorError                 a poll failed; the pipeline marks this collector's metrics stale
     +-- CollectorConfigError      the settings are wrong; raised by `from_settings`, at start-up

Sample metric names carry their unit, and counters end in `_total`. The names the estimators
understand (anything else is kept and passed through, never dropped):

    gpu_power_watts                  gauge    node, gpu_uuid          (NVML/DCGM)
    gpu_energy_joules_total          counter  node, gpu_uuid
    gpu_assignment_info              1        node, gpu_uuid, namespace, pod   (GPU -> pod; several pods = shared)
    gpu_power_limit_watts            gauge    node, gpu_uuid  (also _min_watts, _max_watts)
    gpu_utilization_ratio            gauge    node, gpu_uuid
    node_power_watts                 gauge    node
    node_energy_joules_total         counter  node
    pod_cpu_energy_joules_total      counter  node, namespace, pod   (Kepler package+dram, zones summed once)
    pod_gpu_energy_joules_total      counter  node, namespace, pod   (Kepler GPU, when present)
    generation_tokens_total          counter  namespace, pod         (vLLM, TGI, SGLang)
    prompt_tokens_total              counter  namespace, pod
    requests_running                 gauge    namespace, pod
    requests_waiting                 gauge    namespace, pod
    kv_cache_usage_ratio             gauge    namespace, pod
    pdu_power_watts                  gauge    rack, pdu
    pdu_energy_joules_total          counter  rack, pdu
    pod_gpu_power_watts              gauge    namespace, pod, node    window averages that recording
    pod_cpu_power_watts              gauge    namespace, pod          rules computed (prometheus_api);
    pod_generation_tokens_per_second gauge    namespace, pod          the estimator takes them as they
    pod_prompt_tokens_per_second     gauge    namespace, pod          are, newest first; a holder's GPU
    gpu_holder_power_watts           gauge    node, gpu_uuid,         power is split among its pods
                                              namespace, pod
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class CollectorError(Exception):
    """A poll failed (timeout, refused connection, malformed answer). Never half a batch."""


class CollectorConfigError(CollectorError):
    """The collector's settings are wrong. The message lists every problem, each with its key."""

    def __init__(self, collector: str, problems: Sequence[str]) -> None:
        self.collector = collector
        self.problems = list(problems)
        super().__init__(f"{collector}: {len(self.problems)} problem(s): " + "; ".join(self.problems))


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    """One reading of one series, as the source reported it."""

    metric: str
    value: float
    timestamp_seconds: float
    """The source's own timestamp when it has one (Prometheus, NVML), else the poll time."""
    labels: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "metric": self.metric,
            "value": self.value,
            "timestamp_seconds": self.timestamp_seconds,
            "labels": dict(self.labels),
        }


@runtime_checkable
class Collector(Protocol):
    """One source. `collect` is one poll; the pipeline calls it every `interval_seconds`."""

    name: str
    interval_seconds: float
    poll_timeout_seconds: float
    """The longest one `collect()` may take, retries included. The collector's own timeouts should
    end a poll first (so it can count why); the pipeline cancels a poll that outlives this, as a hang."""

    async def collect(self) -> Sequence[Sample]: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class PodEndpoint:
    """A running pod as target discovery needs it: where it is and which ports it names."""

    namespace: str
    name: str
    ip: str
    """Empty until the pod has one."""
    node: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, int] = field(default_factory=dict)
    """Named container ports (`ports[].name` -> `containerPort`) of all its containers."""


class PodTargets(Protocol):
    """The pods the cluster runs now, read afresh at every poll (pod IPs change). The adapter passes
    one, backed by the object cache it already keeps, to every collector that `use_pod_targets`."""

    def __call__(self) -> Sequence[PodEndpoint]: ...


@runtime_checkable
class DiscoversPods(Protocol):
    """A collector that finds its exporters among the cluster's pods when no URL is configured."""

    def use_pod_targets(self, pods: PodTargets) -> None: ...


class CollectorFactory(Protocol):
    """What an entry point in the `wattscale.collectors` group resolves to: usually the class itself,
    whose `from_settings` classmethod validates the raw settings (raising `CollectorConfigError` that
    lists every problem) and builds the collector."""

    def from_settings(self, name: str, raw: Mapping[str, object]) -> Collector: ...
