"""A PowerBudget object (wattscale.io/v1alpha1) read into typed settings, every problem listed at once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from poweroperator.policy import PRIORITY_BY_CLASS, PolicyConfig

GROUP = "wattscale.io"
VERSION = "v1alpha1"
PLURAL = "powerbudgets"
KIND = "PowerBudget"
MODES = ("dryRun", "enforce")
WORKLOAD_KINDS = ("Deployment", "InferenceService")


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    kind: str
    namespace: str
    name: str
    priority: int
    replica_peak_power_watts: float | None = None
    scaled_object: str | None = None

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetSpec:
    name: str
    uid: str
    generation: int
    node_selector: str
    """Label selector in the `a=b,c in (d)` form the list API takes."""
    cap_watts: float
    margin_ratio: float
    soft_ratio: float
    hard_ratio: float
    hysteresis_ratio: float
    restore_after_seconds: float
    guard_ratio: float | None
    guard_priority_step_watts: float
    stale_after_seconds: float
    stale_lower_after_seconds: float
    rack_watts_per_gpu_watt: float
    default_priority: int
    workloads: tuple[Workload, ...]
    enforce: bool

    def policy_config(self) -> PolicyConfig:
        return PolicyConfig(
            cap_watts=self.cap_watts,
            soft_ratio=self.soft_ratio,
            hard_ratio=self.hard_ratio,
            hysteresis_ratio=self.hysteresis_ratio,
            restore_after_seconds=self.restore_after_seconds,
            guard_ratio=self.guard_ratio,
            guard_priority_step_watts=self.guard_priority_step_watts,
            stale_after_seconds=self.stale_after_seconds,
            stale_lower_after_seconds=self.stale_lower_after_seconds,
            rack_watts_per_gpu_watt=self.rack_watts_per_gpu_watt,
        )


class BudgetError(ValueError):
    def __init__(self, name: str, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(f"PowerBudget {name}: " + "; ".join(self.problems))


def _number(spec: Mapping[str, Any], key: str, default: float, problems: list[str], path: str) -> float:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.append(f"{path}{key}: want a number, got {value!r}")
        return default
    return float(value)


def label_selector(raw: object) -> str:
    """A metav1.LabelSelector as the `labelSelector` query string."""
    if not isinstance(raw, Mapping):
        raise ValueError("nodeSelector: want an object with matchLabels and/or matchExpressions")
    parts = [f"{key}={value}" for key, value in sorted((raw.get("matchLabels") or {}).items())]
    for expression in raw.get("matchExpressions") or []:
        key, operator = expression.get("key"), expression.get("operator")
        values = ",".join(str(v) for v in expression.get("values") or [])
        if operator == "In":
            parts.append(f"{key} in ({values})")
        elif operator == "NotIn":
            parts.append(f"{key} notin ({values})")
        elif operator == "Exists":
            parts.append(str(key))
        elif operator == "DoesNotExist":
            parts.append(f"!{key}")
        else:
            raise ValueError(f"nodeSelector.matchExpressions: unknown operator {operator!r}")
    if not parts:
        raise ValueError("nodeSelector: empty; a budget must name its nodes")
    return ",".join(parts)


def parse_budget(raw: Mapping[str, Any]) -> BudgetSpec:
    metadata = raw.get("metadata") or {}
    name = str(metadata.get("name") or "")
    spec = raw.get("spec") or {}
    problems: list[str] = []
    try:
        selector = label_selector(spec.get("nodeSelector"))
    except ValueError as exc:
        problems.append(str(exc))
        selector = ""
    cap = _number(spec, "capWatts", 0.0, problems, "spec.")
    if cap <= 0:
        problems.append(f"spec.capWatts: must be > 0, got {cap:g}")
    thresholds = spec.get("thresholds") or {}
    soft = _number(thresholds, "softRatio", 0.97, problems, "spec.thresholds.")
    hard = _number(thresholds, "hardRatio", 0.99, problems, "spec.thresholds.")
    guard = _number(thresholds, "guardRatio", 0.98, problems, "spec.thresholds.")
    mode = spec.get("mode", "dryRun")
    if mode not in MODES:
        problems.append(f"spec.mode: want one of {', '.join(MODES)}, got {mode!r}")
    default_class = spec.get("defaultPriorityClass", "low")
    if default_class not in PRIORITY_BY_CLASS:
        problems.append(f"spec.defaultPriorityClass: want low or high, got {default_class!r}")
    workloads = []
    for index, item in enumerate(spec.get("workloads") or []):
        path = f"spec.workloads[{index}]."
        kind, priority_class = item.get("kind"), item.get("priorityClass", "low")
        if kind not in WORKLOAD_KINDS:
            problems.append(f"{path}kind: want one of {', '.join(WORKLOAD_KINDS)}, got {kind!r}")
        if priority_class not in PRIORITY_BY_CLASS:
            problems.append(f"{path}priorityClass: want low or high, got {priority_class!r}")
        if not item.get("namespace") or not item.get("name"):
            problems.append(f"{path}namespace, name: both required")
        peak = item.get("replicaPeakPowerWatts")
        if peak is not None and (not isinstance(peak, int | float) or peak <= 0):
            problems.append(f"{path}replicaPeakPowerWatts: must be a number > 0, got {peak!r}")
            peak = None
        workloads.append(
            Workload(
                kind=str(kind),
                namespace=str(item.get("namespace") or ""),
                name=str(item.get("name") or ""),
                priority=PRIORITY_BY_CLASS.get(str(priority_class), 0),
                replica_peak_power_watts=float(peak) if peak is not None else None,
                scaled_object=item.get("scaledObject"),
            )
        )
    budget = BudgetSpec(
        name=name,
        uid=str(metadata.get("uid") or ""),
        generation=int(metadata.get("generation") or 0),
        node_selector=selector,
        cap_watts=cap,
        margin_ratio=_number(spec, "marginRatio", 0.1, problems, "spec."),
        soft_ratio=soft,
        hard_ratio=hard,
        hysteresis_ratio=_number(thresholds, "hysteresisRatio", 0.05, problems, "spec.thresholds."),
        restore_after_seconds=_number(thresholds, "restoreAfterSeconds", 10.0, problems, "spec.thresholds."),
        guard_ratio=guard if guard > 0 else None,
        guard_priority_step_watts=_number(
            thresholds, "guardPriorityStepWatts", 250.0, problems, "spec.thresholds."
        ),
        stale_after_seconds=_number(thresholds, "staleAfterSeconds", 5.0, problems, "spec.thresholds."),
        stale_lower_after_seconds=_number(
            thresholds, "staleLowerAfterSeconds", 15.0, problems, "spec.thresholds."
        ),
        rack_watts_per_gpu_watt=_number(spec, "rackWattsPerGpuWatt", 1.45, problems, "spec."),
        default_priority=PRIORITY_BY_CLASS.get(str(default_class), 0),
        workloads=tuple(workloads),
        enforce=mode == "enforce",
    )
    if not 0 <= budget.margin_ratio < 1:
        problems.append(f"spec.marginRatio: want a number in [0, 1), got {budget.margin_ratio:g}")
    if cap > 0:
        problems.extend(f"spec.thresholds/{p}" for p in budget.policy_config().problems())
    if problems:
        raise BudgetError(name, problems)
    return budget
