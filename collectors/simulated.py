"""A simulated fleet of H100 LLM servers: the demo's source, and the integration tests' load knob.

GPU power and token rate follow the batch sweep of a real H100 trace (`data/h100_decode_sweep.csv`):
a pod at `load` 1.0 runs batch 256 on each of its GPUs (~398 W, ~1,845 tokens/s per GPU); an
unassigned GPU idles at 74 W. Counters (GPU energy, tokens) are integrated between polls, so the
estimators see what NVML and vLLM would report. A `fleet_file` is re-read at every poll, which lets
a test change the load of named pods while the adapter runs.
"""

from __future__ import annotations

import bisect
import csv
import json
import math
import random
import time
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Self

from collectors.base import CollectorConfigError, CollectorError, Sample

IDLE_GPU_POWER_WATTS = 74.35
HOST_POWER_WATTS = 450.0
"""CPUs, memory, fans and NICs of an 8-GPU server at inference load."""
POD_CPU_POWER_WATTS = 35.0
PDU_LOSS_RATIO = 0.03
PEAK_BATCH = 256
PROMPT_TOKENS_PER_GENERATED = 2.5
DIURNAL_PERIOD_SECONDS = 600.0
"""The demo compresses a day of load into ten minutes, so its metrics visibly move."""
SURGE_GPU_POWER_WATTS = 700.0
"""An H100 SXM at its board limit: what a rack in `surge_racks` draws on every GPU (the demo's knob)."""


@dataclass(frozen=True, slots=True)
class PowerCurve:
    batch: tuple[float, ...]
    power_watts: tuple[float, ...]
    tokens_per_second: tuple[float, ...]

    @classmethod
    def h100(cls) -> PowerCurve:
        text = resources.files("collectors").joinpath("data/h100_decode_sweep.csv").read_text()
        rows = list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))
        return cls(
            tuple(float(row["batch"]) for row in rows),
            tuple(float(row["power_watts"]) for row in rows),
            tuple(float(row["tokens_per_second"]) for row in rows),
        )

    def at(self, batch: float) -> tuple[float, float]:
        """(power W, tokens/s) of one GPU at this batch size, linear between measured points."""
        if batch <= 0:
            return IDLE_GPU_POWER_WATTS, 0.0
        if batch <= self.batch[0]:  # between idle and batch 1, scale from idle
            share = batch / self.batch[0]
            return (
                IDLE_GPU_POWER_WATTS + share * (self.power_watts[0] - IDLE_GPU_POWER_WATTS),
                share * self.tokens_per_second[0],
            )
        batch = min(batch, self.batch[-1])
        upper = bisect.bisect_left(self.batch, batch)
        lower = max(upper - 1, 0)
        span = self.batch[upper] - self.batch[lower] or 1.0
        share = (batch - self.batch[lower]) / span
        return (
            self.power_watts[lower] + share * (self.power_watts[upper] - self.power_watts[lower]),
            self.tokens_per_second[lower]
            + share * (self.tokens_per_second[upper] - self.tokens_per_second[lower]),
        )


@dataclass(frozen=True, slots=True)
class SimNode:
    name: str
    rack: str = ""
    gpus: int = 8
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SimPod:
    namespace: str
    name: str
    node: str
    gpus: int = 1
    load: float | None = None
    """0..1 of peak batch; None = the demo's diurnal curve with a per-pod phase."""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SimWorkload:
    """A Deployment or InferenceService of the fleet, for the demo's object index."""

    kind: str  # "Deployment" or "InferenceService"
    namespace: str
    name: str
    selector: Mapping[str, str]
    replicas: int


@dataclass(frozen=True, slots=True)
class Fleet:
    nodes: tuple[SimNode, ...]
    pods: tuple[SimPod, ...]
    workloads: tuple[SimWorkload, ...] = ()

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Fleet:
        try:
            nodes = tuple(
                SimNode(
                    str(n["name"]), str(n.get("rack", "")), int(n.get("gpus", 8)), dict(n.get("labels", {}))
                )
                for n in raw.get("nodes", [])
            )
            pods = tuple(
                SimPod(
                    str(p["namespace"]),
                    str(p["name"]),
                    str(p["node"]),
                    int(p.get("gpus", 1)),
                    None if p.get("load") is None else min(max(float(p["load"]), 0.0), 1.0),
                    dict(p.get("labels", {})),
                )
                for p in raw.get("pods", [])
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CollectorError(f"simulated fleet: malformed entry: {exc!r}") from exc
        return cls(nodes, pods)


def demo_fleet() -> Fleet:
    """Namespace `llm` on two racks of four 8-GPU H100 servers: three Deployments and one InferenceService."""
    nodes = tuple(
        SimNode(
            f"h100-{rack[-1]}{index}", rack, 8, {"wattscale.io/rack": rack, "nvidia.com/gpu.product": "H100"}
        )
        for rack in ("rack-a", "rack-b")
        for index in range(1, 5)
    )
    plan = [
        ("Deployment", "llama-8b", 6, 1, "7d9f5c6b4", {"app": "llama-8b", "tier": "interactive"}),
        ("Deployment", "mistral-7b", 4, 1, "5b8c7d9f2", {"app": "mistral-7b", "tier": "batch"}),
        ("Deployment", "qwen-72b", 2, 4, "6c4d8b7f9", {"app": "qwen-72b", "tier": "interactive"}),
        (
            "InferenceService",
            "granite-chat",
            3,
            2,
            "predictor-8f7c6",
            {"app": "granite-chat", "tier": "interactive"},
        ),
    ]
    rng = random.Random(7)
    free = {node.name: node.gpus for node in nodes}
    pods: list[SimPod] = []
    workloads: list[SimWorkload] = []
    for kind, name, replicas, gpus, hash_suffix, labels in plan:
        selector = dict(labels)
        if kind == "InferenceService":
            selector = {"serving.kserve.io/inferenceservice": name}
            labels = {**labels, **selector, "component": "predictor"}
        workloads.append(SimWorkload(kind, "llm", name, selector, replicas))
        for _ in range(replicas):
            node = next(n for n in sorted(free, key=lambda n: (-free[n], n)) if free[n] >= gpus)
            free[node] -= gpus
            suffix = "".join(rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
            pods.append(SimPod("llm", f"{name}-{hash_suffix}-{suffix}", node, gpus, None, labels))
    return Fleet(nodes, tuple(pods), tuple(workloads))


def demo_load(pod: SimPod, now_seconds: float) -> float:
    """A compressed diurnal curve between 10% and 95% of peak, each pod a little out of phase."""
    phase = (sum(map(ord, pod.name)) % 97) / 97.0 * 0.6
    wave = 0.5 - 0.5 * math.cos(2 * math.pi * (now_seconds / DIURNAL_PERIOD_SECONDS + phase))
    return 0.10 + 0.85 * wave


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulatedSettings:
    interval_seconds: float = 1.0
    fleet_file: str | None = None
    seed: int = 0
    noise_ratio: float = 0.01

    def problems(self) -> list[str]:
        found = []
        if not self.interval_seconds > 0:
            found.append(f"interval_seconds: must be > 0, got {self.interval_seconds}")
        if not 0 <= self.noise_ratio < 0.5:
            found.append(f"noise_ratio: must be in [0, 0.5), got {self.noise_ratio}")
        if self.fleet_file is not None and not Path(self.fleet_file).is_file():
            found.append(f"fleet_file: no such file {self.fleet_file!r}")
        return found


class SimulatedCollector:
    def __init__(
        self,
        name: str,
        settings: SimulatedSettings,
        *,
        fleet: Fleet | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.interval_seconds = settings.interval_seconds
        self.poll_timeout_seconds = settings.interval_seconds  # no I/O: only a bug could make it hang
        self._settings = settings
        self._fixed_fleet = fleet
        self._clock = clock
        self._curve = PowerCurve.h100()
        self._rng = random.Random(settings.seed)
        self._last_poll_seconds: float | None = None
        self._counters: dict[tuple[str, ...], float] = {}
        self.surge_racks: Container[str] = set()
        """Racks whose GPUs all draw SURGE_GPU_POWER_WATTS (a synchronised burst), until removed."""

    @classmethod
    def from_settings(cls, name: str, raw: Mapping[str, object]) -> Self:
        known = {"interval_seconds", "fleet_file", "seed", "noise_ratio"}
        problems = [f"{key}: unknown setting" for key in raw if key not in known]
        try:
            settings = SimulatedSettings(
                interval_seconds=float(raw.get("interval_seconds", 1.0)),  # type: ignore[arg-type]
                fleet_file=None if raw.get("fleet_file") is None else str(raw["fleet_file"]),
                seed=int(raw.get("seed", 0)),  # type: ignore[call-overload]
                noise_ratio=float(raw.get("noise_ratio", 0.01)),  # type: ignore[arg-type]
            )
        except (TypeError, ValueError) as exc:
            raise CollectorConfigError(name, [*problems, f"malformed value: {exc}"]) from exc
        problems += settings.problems()
        if problems:
            raise CollectorConfigError(name, problems)
        return cls(name, settings)

    def fleet(self) -> Fleet:
        if self._fixed_fleet is not None:
            return self._fixed_fleet
        if self._settings.fleet_file is None:
            self._fixed_fleet = demo_fleet()
            return self._fixed_fleet
        try:
            raw = json.loads(Path(self._settings.fleet_file).read_text())
        except (OSError, ValueError) as exc:
            raise CollectorError(f"simulated fleet file {self._settings.fleet_file!r}: {exc}") from exc
        if not isinstance(raw, dict):
            raise CollectorError(f"simulated fleet file {self._settings.fleet_file!r}: want a JSON object")
        return Fleet.from_json(raw)

    def _noisy(self, value: float) -> float:
        return value * (1.0 + self._rng.uniform(-self._settings.noise_ratio, self._settings.noise_ratio))

    def _count(self, key: tuple[str, ...], increase: float) -> float:
        self._counters[key] = self._counters.get(key, 0.0) + increase
        return self._counters[key]

    async def collect(self) -> Sequence[Sample]:
        fleet = self.fleet()
        now = self._clock()
        elapsed = 0.0 if self._last_poll_seconds is None else max(now - self._last_poll_seconds, 0.0)
        self._last_poll_seconds = now
        samples: list[Sample] = []

        def emit(metric: str, value: float, **labels: str) -> None:
            samples.append(Sample(metric=metric, value=value, timestamp_seconds=now, labels=labels))

        pods_on: dict[str, list[SimPod]] = {}
        for pod in fleet.pods:
            pods_on.setdefault(pod.node, []).append(pod)
        rack_power: dict[str, float] = {}
        for node in fleet.nodes:
            node_gpu_power = 0.0
            node_pods = pods_on.get(node.name, [])
            assigned: list[tuple[SimPod | None, float, float]] = []
            for pod in node_pods:
                load = demo_load(pod, now) if pod.load is None else pod.load
                power, tokens = self._curve.at(load * PEAK_BATCH)
                assigned.extend((pod, power, tokens) for _ in range(pod.gpus))
            assigned.extend(
                (None, IDLE_GPU_POWER_WATTS, 0.0) for _ in range(max(node.gpus - len(assigned), 0))
            )
            for gpu_index, (owner, power, _tokens) in enumerate(assigned[: node.gpus]):
                uuid = f"GPU-{node.name}-{gpu_index:02d}"
                power_watts = self._noisy(SURGE_GPU_POWER_WATTS if node.rack in self.surge_racks else power)
                node_gpu_power += power_watts
                emit("gpu_power_watts", power_watts, node=node.name, gpu_uuid=uuid)
                energy = self._count(("gpu", uuid), power_watts * elapsed)
                emit("gpu_energy_joules_total", energy, node=node.name, gpu_uuid=uuid)
                if owner is not None:
                    labels = {
                        "node": node.name,
                        "gpu_uuid": uuid,
                        "namespace": owner.namespace,
                        "pod": owner.name,
                    }
                    emit("gpu_assignment_info", 1.0, **labels)
            for pod in node_pods:
                load = demo_load(pod, now) if pod.load is None else pod.load
                _, tokens_per_gpu = self._curve.at(load * PEAK_BATCH)
                generated_tokens = tokens_per_gpu * pod.gpus * elapsed
                generated = self._count(("gen", pod.namespace, pod.name), generated_tokens)
                emit("generation_tokens_total", generated, namespace=pod.namespace, pod=pod.name)
                prompt = self._count(
                    ("prompt", pod.namespace, pod.name), generated_tokens * PROMPT_TOKENS_PER_GENERATED
                )
                emit("prompt_tokens_total", prompt, namespace=pod.namespace, pod=pod.name)
                emit(
                    "requests_running",
                    round(load * PEAK_BATCH) * pod.gpus,
                    namespace=pod.namespace,
                    pod=pod.name,
                )
                cpu = self._count(("cpu", pod.namespace, pod.name), POD_CPU_POWER_WATTS * elapsed)
                emit(
                    "pod_cpu_energy_joules_total", cpu, node=node.name, namespace=pod.namespace, pod=pod.name
                )
            node_power = node_gpu_power + HOST_POWER_WATTS
            emit("node_power_watts", node_power, node=node.name, **({"rack": node.rack} if node.rack else {}))
            if node.rack:
                rack_power[node.rack] = rack_power.get(node.rack, 0.0) + node_power
        for rack, power in sorted(rack_power.items()):
            inlet_watts = power * (1.0 + PDU_LOSS_RATIO)
            emit("pdu_power_watts", inlet_watts, rack=rack, pdu=f"{rack}-pdu")
            energy = self._count(("pdu", rack), inlet_watts * elapsed)
            emit("pdu_energy_joules_total", energy, rack=rack, pdu=f"{rack}-pdu")
        return samples

    async def aclose(self) -> None:
        return None
