"""The policies the simulator compares (anchors-power.md 9.4), behind one small interface.

Each sees only what a real controller would: the PDU's 1 s average and each GPU's 1 s average power
(both with gain error), and the limits it commanded itself. "ours" is `poweroperator.policy`, the code
the live `wattscale capper` runs, not a copy of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from poweroperator.policy import (
    PRIORITY_HIGH,
    Action,
    FloatArray,
    IntArray,
    PolicyConfig,
    PolicyState,
    RackObservation,
    decide,
)

POLICIES: tuple[str, ...] = ("none", "static", "polca", "ours")


@dataclass(frozen=True, slots=True, kw_only=True)
class Readings:
    now_seconds: float
    rack_power_watts: float
    gpu_power_watts: FloatArray
    limits_watts: FloatArray
    """What this policy last commanded (the live loop knows what it asked the agents for)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RackSpec:
    cap_watts: float
    servers: int
    gpus_per_server: int
    server_base_watts: float
    rack_watts_per_gpu_watt: float
    limit_min_watts: FloatArray
    limit_max_watts: FloatArray
    priority: IntArray


class SimPolicy(Protocol):
    name: str
    emergencies: int
    """Emergency interventions (POLCA's powerbrake; ours: cuts above the hard threshold)."""

    def initial_limits(self) -> FloatArray: ...

    def step(self, readings: Readings) -> FloatArray: ...


class NoCap:
    name = "none"

    def __init__(self, rack: RackSpec) -> None:
        self.rack = rack
        self.emergencies = 0

    def initial_limits(self) -> FloatArray:
        return self.rack.limit_max_watts.copy()

    def step(self, readings: Readings) -> FloatArray:
        return readings.limits_watts


class StaticCap:
    """P1: one per-GPU limit that keeps even 8 GPUs at their limit in every server under the cap."""

    name = "static"

    def __init__(self, rack: RackSpec) -> None:
        self.rack = rack
        self.emergencies = 0

    def initial_limits(self) -> FloatArray:
        per_server_watts = self.rack.cap_watts / self.rack.servers - self.rack.server_base_watts
        per_gpu_watts = per_server_watts / (self.rack.gpus_per_server * self.rack.rack_watts_per_gpu_watt)
        return np.clip(
            np.full_like(self.rack.limit_max_watts, per_gpu_watts),
            self.rack.limit_min_watts,
            self.rack.limit_max_watts,
        )

    def step(self, readings: Readings) -> FloatArray:
        return readings.limits_watts


class PolcaStyle:
    """P2: thresholds on rack power / cap, translated from POLCA's A100 clock locks to H100 watt limits.

    Levels: 0 none; 1 (> 0.80) LP at 450 W; 2 (> 0.89) LP at 300 W; 3 (still > 0.89 a step later) HP at
    550 W too; 4 (>= 1.0) powerbrake, every GPU at 200 W. Each level is released 5 % below its threshold.
    """

    name = "polca"
    _ENTER = (0.0, 0.80, 0.89, 0.89, 1.0)
    _RELEASE = (0.0, 0.75, 0.84, 0.84, 0.95)

    def __init__(self, rack: RackSpec) -> None:
        self.rack = rack
        self.level = 0
        self.emergencies = 0

    def initial_limits(self) -> FloatArray:
        return self.rack.limit_max_watts.copy()

    def _limits(self) -> FloatArray:
        high = self.rack.priority >= PRIORITY_HIGH
        low_watts = (700.0, 450.0, 300.0, 300.0, 200.0)[self.level]
        high_watts = (700.0, 700.0, 700.0, 550.0, 200.0)[self.level]
        wanted = np.where(high, high_watts, low_watts)
        return np.clip(wanted, self.rack.limit_min_watts, self.rack.limit_max_watts)

    def step(self, readings: Readings) -> FloatArray:
        ratio = readings.rack_power_watts / self.rack.cap_watts
        if ratio >= self._ENTER[4]:
            self.emergencies += self.level != 4
            self.level = 4
        elif ratio > self._ENTER[2]:
            self.level = max(self.level, 3 if self.level >= 2 else 2)
        elif ratio > self._ENTER[1]:
            self.level = max(self.level, 1)
        while self.level > 0 and ratio < self._RELEASE[self.level]:
            self.level -= 1
        return self._limits()


class Ours:
    name = "ours"

    def __init__(self, rack: RackSpec, config: PolicyConfig | None = None) -> None:
        self.rack = rack
        self.config = config or PolicyConfig(
            cap_watts=rack.cap_watts, rack_watts_per_gpu_watt=rack.rack_watts_per_gpu_watt
        )
        self.state = PolicyState()
        self.emergencies = 0
        self.actions: dict[str, int] = {}

    def initial_limits(self) -> FloatArray:
        return self.rack.limit_max_watts.copy()

    def step(self, readings: Readings) -> FloatArray:
        decision = decide(
            self.config,
            self.state,
            RackObservation(
                now_seconds=readings.now_seconds,
                rack_power_watts=readings.rack_power_watts,
                rack_power_timestamp_seconds=readings.now_seconds,
                gpu_power_watts=readings.gpu_power_watts,
                gpu_limit_watts=readings.limits_watts,
                gpu_min_watts=self.rack.limit_min_watts,
                gpu_max_watts=self.rack.limit_max_watts,
                gpu_priority=self.rack.priority,
            ),
        )
        self.state = decision.state
        if decision.action is Action.EMERGENCY:
            self.emergencies += 1
        self.actions[decision.action.value] = self.actions.get(decision.action.value, 0) + 1
        return decision.limits_watts


def build(name: str, rack: RackSpec) -> SimPolicy:
    if name == "none":
        return NoCap(rack)
    if name == "static":
        return StaticCap(rack)
    if name == "polca":
        return PolcaStyle(rack)
    if name == "ours":
        return Ours(rack)
    raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}")
