"""The PowerBudget API (wattscale.io/v1alpha1): objects read into typed settings, every problem listed at once.

One source of truth: the policy's tunables, their CRD names, bounds and descriptions are the rows of
`POLICY_FIELDS`; their defaults are `PolicyConfig`'s. The parser reads the rows, and the CRD
(`poweroperator.crd`, written to apiservice/powerbudget-crd.yaml) is generated from the same rows, so
the API server's defaults and bounds cannot drift from the code's. The metrics server reads racks with
this parser too: it is the one definition of a valid budget.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from collectors.config_fields import UNBOUNDED, Bounds, check_number, read_fields, setting
from collectors.label_selectors import EVERYTHING, Selector, SelectorError, selector_from_object
from poweroperator.policy import PRIORITY_BY_CLASS, PolicyConfig

GROUP = "wattscale.io"
VERSION = "v1alpha1"
PLURAL = "powerbudgets"
KIND = "PowerBudget"
MODES = ("dryRun", "enforce")
WORKLOAD_KINDS = ("Deployment", "InferenceService")
SCALING_MODES = ("unmanaged", "managed")
POWER_TRIGGER = "wattscale_budget"
"""The name of the trigger the operator adds; a demand trigger may not take it."""
TRIGGER_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
"""Trigger names are identifiers in KEDA's scalingModifiers formula (expr), so no dashes."""


@dataclass(frozen=True, slots=True)
class SpecField:
    section: str | None
    """"thresholds" or None (top level of spec)."""
    name: str
    attribute: str
    """The PolicyConfig field it sets; its default is the API's default."""
    minimum: float
    maximum: float | None
    description: str

    @property
    def bounds(self) -> Bounds:
        return Bounds(minimum=self.minimum, maximum=self.maximum)

    @property
    def default(self) -> float:
        value = next(f.default for f in dataclasses.fields(PolicyConfig) if f.name == self.attribute)
        return 0.0 if value is None else float(value)  # type: ignore[arg-type]


POLICY_FIELDS: tuple[SpecField, ...] = (
    SpecField(
        "thresholds",
        "softRatio",
        "soft_ratio",
        0.1,
        1.5,
        "Above softRatio x cap, low-priority GPUs are limited back to it.",
    ),
    SpecField(
        "thresholds",
        "hardRatio",
        "hard_ratio",
        0.1,
        1.5,
        "Above hardRatio x cap, high-priority GPUs are limited too.",
    ),
    SpecField(
        "thresholds",
        "hysteresisRatio",
        "hysteresis_ratio",
        0,
        0.5,
        "Limits come back only below (softRatio - hysteresisRatio) x cap; placement marks clear above "
        "hysteresisRatio x cap of headroom.",
    ),
    SpecField(
        "thresholds",
        "restoreAfterSeconds",
        "restore_after_seconds",
        0,
        None,
        "How long the rack must stay below that line before limits go up.",
    ),
    SpecField(
        "thresholds",
        "guardRatio",
        "guard_ratio",
        0,
        2,
        "Keep non-GPU power + rackWattsPerGpuWatt x sum(GPU limits) under guardRatio x cap, so a prefill "
        "burst on every GPU at once cannot outrun the loop. 0 turns the guard off.",
    ),
    SpecField(
        "thresholds",
        "staleAfterSeconds",
        "stale_after_seconds",
        1,
        None,
        "Rack power older than this is stale: limits are held, never raised. Keep it above the PDU's poll "
        "interval.",
    ),
    SpecField(
        "thresholds",
        "staleLowerAfterSeconds",
        "stale_lower_after_seconds",
        1,
        None,
        "Stale for this long, the least important GPUs are lowered one step per period.",
    ),
    SpecField(
        "thresholds",
        "guardPriorityStepWatts",
        "guard_priority_step_watts",
        0,
        1000,
        "Within the guard, high-priority GPUs get this many watts more limit than low-priority ones (all of "
        "it to high priority first would stall low-priority prefill at peak load).",
    ),
    SpecField(
        None,
        "rackWattsPerGpuWatt",
        "rack_watts_per_gpu_watt",
        1,
        3,
        "Rack watts that follow one GPU watt (fans, PSU loss); ~1.45 for DGX-class H100 servers. Erring high "
        "keeps the guard safe.",
    ),
)
MARGIN_RATIO_DEFAULT = 0.1
MARGIN_RATIO_MAX = 0.5
# The bounds of the spec's other numbers, for the parser and the CRD (poweroperator.crd) alike.
CAP_WATTS = Bounds(minimum=1)
MARGIN_RATIO = Bounds(minimum=0, maximum=MARGIN_RATIO_MAX)
REPLICA_PEAK_POWER_WATTS = Bounds(minimum=1)
REPLICA_TARGET = Bounds(above=0)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScalingFields:
    """The numbers of `spec.workloads[].scaling`, declared once: the parser reads them and the CRD's
    schema (bounds, defaults) is generated from them."""

    min_replicas: int = setting(1, minimum=1, key="minReplicas")
    max_replicas: int | None = setting(None, minimum=1, key="maxReplicas")
    polling_interval_seconds: int = setting(15, minimum=1, key="pollingIntervalSeconds")
    scale_down_stabilization_seconds: int = setting(
        60, minimum=0, maximum=3600, key="scaleDownStabilizationSeconds"
    )
    fallback_failure_threshold: int = setting(3, minimum=1, key="fallbackFailureThreshold")

    def problems(self) -> list[str]:
        if self.max_replicas is None:
            return ["maxReplicas: required when managed"]
        if self.min_replicas > self.max_replicas:
            return [f"minReplicas: minReplicas {self.min_replicas} > maxReplicas {self.max_replicas}"]
        return []


REPLICA_TARGET_DEFAULT = 1.0
"""A demand trigger's `replicaTarget` when it names none."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DemandTrigger:
    """One of the user's KEDA triggers, passed through as given, with how much of it one replica serves."""

    name: str
    type: str
    metadata: Mapping[str, str]
    authentication_ref: Mapping[str, str] | None
    replica_target: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Scaling:
    """A managed workload: the operator owns its ScaledObject (see poweroperator.keda)."""

    min_replicas: int
    max_replicas: int
    polling_interval_seconds: int
    scale_down_stabilization_seconds: int
    fallback_failure_threshold: int
    demand: tuple[DemandTrigger, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    kind: str
    namespace: str
    name: str
    priority: int
    replica_peak_power_watts: float | None = None
    scaled_object: str | None = None
    scaling: Scaling | None = None
    """None: unmanaged (the default)."""

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetSpec:
    name: str
    uid: str
    generation: int
    node_selector: Selector
    """`str()` of it is the `a=b,c in (d)` form the list API takes."""
    margin_ratio: float
    policy: PolicyConfig
    default_priority: int
    workloads: tuple[Workload, ...]
    enforce: bool

    @property
    def cap_watts(self) -> float:
        return self.policy.cap_watts


class BudgetError(ValueError):
    def __init__(self, name: str, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(f"PowerBudget {name}: " + "; ".join(self.problems))


def _number(
    raw: Mapping[str, Any],
    key: str,
    default: float,
    problems: list[str],
    path: str,
    bounds: Bounds = UNBOUNDED,
) -> float:
    value = raw.get(key, default)
    return float(value) if check_number(value, f"{path}{key}", problems, bounds) else default


def _node_selector(raw: object, problems: list[str]) -> Selector:
    """The rack's nodes; a budget must name them (an empty selector would take every node)."""
    if not isinstance(raw, Mapping):
        problems.append("nodeSelector: want an object with matchLabels and/or matchExpressions")
        return EVERYTHING
    try:
        selector = selector_from_object(raw)
    except SelectorError as exc:
        problems.append(f"nodeSelector.{exc}")
        return EVERYTHING
    if selector.empty:
        problems.append("nodeSelector: empty; a budget must name its nodes")
    return selector


def _policy(spec: Mapping[str, Any], cap: float, problems: list[str]) -> PolicyConfig:
    values: dict[str, Any] = {}
    for field in POLICY_FIELDS:
        where = spec if field.section is None else (spec.get(field.section) or {})
        path = "spec." if field.section is None else f"spec.{field.section}."
        values[field.attribute] = _number(where, field.name, field.default, problems, path, field.bounds)
    if values["guard_ratio"] <= 0:
        values["guard_ratio"] = None
    return PolicyConfig(cap_watts=cap, **values)


def _demand(raw: object, path: str, problems: list[str]) -> DemandTrigger | None:
    if not isinstance(raw, Mapping):
        problems.append(f"{path}: want a KEDA trigger object")
        return None
    name, kind, metadata = raw.get("name"), raw.get("type"), raw.get("metadata")
    if not isinstance(name, str) or not TRIGGER_NAME.match(name) or name == POWER_TRIGGER:
        problems.append(
            f"{path}.name: want an identifier [a-z][a-z0-9_]* other than {POWER_TRIGGER}, got {name!r}"
        )
    if not isinstance(kind, str) or not kind:
        problems.append(f"{path}.type: required (a KEDA trigger type)")
    if not isinstance(metadata, Mapping) or not all(isinstance(v, str) for v in metadata.values()):
        problems.append(f"{path}.metadata: want a map of strings")
        metadata = {}
    target = _number(raw, "replicaTarget", REPLICA_TARGET_DEFAULT, problems, f"{path}.", REPLICA_TARGET)
    auth = raw.get("authenticationRef")
    return DemandTrigger(
        name=str(name),
        type=str(kind),
        metadata=dict(metadata),
        authentication_ref=dict(auth) if isinstance(auth, Mapping) else None,
        replica_target=target,
    )


def _scaling(raw: object, path: str, problems: list[str]) -> Scaling | None:
    """The same rules as the CRD's CEL validations, for objects that never went through the API server."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        problems.append(f"{path}: want an object")
        return None
    mode = raw.get("mode", "unmanaged")
    if mode not in SCALING_MODES:
        problems.append(f"{path}.mode: want one of {', '.join(SCALING_MODES)}, got {mode!r}")
    if mode != "managed":
        return None
    fields = read_fields(ScalingFields, raw, problems, path=f"{path}.", also_known=("mode", "demand"))
    triggers = raw.get("demand") or []
    if not isinstance(triggers, list) or not triggers:
        problems.append(f"{path}.demand: one or more KEDA triggers required when managed")
        triggers = []
    demand = [d for i, t in enumerate(triggers) if (d := _demand(t, f"{path}.demand[{i}]", problems))]
    names = [d.name for d in demand]
    if len(set(names)) != len(names):
        problems.append(f"{path}.demand: trigger names must be unique, got {names}")
    if fields is None or fields.max_replicas is None:
        return None  # reported: a required key is missing
    return Scaling(
        min_replicas=fields.min_replicas,
        max_replicas=fields.max_replicas,
        polling_interval_seconds=fields.polling_interval_seconds,
        scale_down_stabilization_seconds=fields.scale_down_stabilization_seconds,
        fallback_failure_threshold=fields.fallback_failure_threshold,
        demand=tuple(demand),
    )


def _workload(item: Mapping[str, Any], path: str, problems: list[str]) -> Workload:
    kind, priority_class = item.get("kind"), item.get("priorityClass", "low")
    if kind not in WORKLOAD_KINDS:
        problems.append(f"{path}kind: want one of {', '.join(WORKLOAD_KINDS)}, got {kind!r}")
    if priority_class not in PRIORITY_BY_CLASS:
        problems.append(f"{path}priorityClass: want low or high, got {priority_class!r}")
    if not item.get("namespace") or not item.get("name"):
        problems.append(f"{path}namespace, name: both required")
    peak = item.get("replicaPeakPowerWatts")
    if peak is not None and not check_number(
        peak, f"{path}replicaPeakPowerWatts", problems, REPLICA_PEAK_POWER_WATTS
    ):
        peak = None
    return Workload(
        kind=str(kind),
        namespace=str(item.get("namespace") or ""),
        name=str(item.get("name") or ""),
        priority=PRIORITY_BY_CLASS.get(str(priority_class), 0),
        replica_peak_power_watts=float(peak) if peak is not None else None,
        scaled_object=item.get("scaledObject"),
        scaling=_scaling(item.get("scaling"), f"{path}scaling", problems),
    )


def parse_budget(raw: Mapping[str, Any]) -> BudgetSpec:
    metadata = raw.get("metadata") or {}
    name = str(metadata.get("name") or "")
    spec = raw.get("spec") or {}
    problems: list[str] = []
    selector = _node_selector(spec.get("nodeSelector"), problems)
    if "capWatts" not in spec:
        problems.append("spec.capWatts: required")
    cap = _number(spec, "capWatts", 0.0, problems, "spec.", CAP_WATTS) if "capWatts" in spec else 0.0
    mode = spec.get("mode", "dryRun")
    if mode not in MODES:
        problems.append(f"spec.mode: want one of {', '.join(MODES)}, got {mode!r}")
    default_class = spec.get("defaultPriorityClass", "low")
    if default_class not in PRIORITY_BY_CLASS:
        problems.append(f"spec.defaultPriorityClass: want low or high, got {default_class!r}")
    workloads = tuple(
        _workload(item, f"spec.workloads[{index}].", problems)
        for index, item in enumerate(spec.get("workloads") or [])
    )
    policy = _policy(spec, cap, problems)
    margin = _number(
        spec,
        "marginRatio",
        MARGIN_RATIO_DEFAULT,
        problems,
        "spec.",
        MARGIN_RATIO,
    )
    if cap > 0:
        problems.extend(f"spec.thresholds/{p}" for p in policy.problems())
    if problems:
        raise BudgetError(name, problems)
    return BudgetSpec(
        name=name,
        uid=str(metadata.get("uid") or ""),
        generation=int(metadata.get("generation") or 0),
        node_selector=selector,
        margin_ratio=margin,
        policy=policy,
        default_priority=PRIORITY_BY_CLASS.get(str(default_class), 0),
        workloads=workloads,
        enforce=mode == "enforce",
    )
