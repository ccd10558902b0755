"""What the adapter serves: every metric name, the resources it exists on, its unit and meaning.

Discovery, the README table and the store's validation all read this one table, so a metric cannot
be served without being listed (and documented).
"""

from __future__ import annotations

from dataclasses import dataclass

PODS = "pods"
NODES = "nodes"
NAMESPACES = "namespaces"
DEPLOYMENTS = "deployments.apps"
INFERENCE_SERVICES = "inferenceservices.serving.kserve.io"
POWER_BUDGETS = "powerbudgets.wattscale.io"

POWER_BUDGET_GROUP = "wattscale.io"
KSERVE_LABEL = "serving.kserve.io/inferenceservice"
WORKLOADS = (PODS, DEPLOYMENTS, INFERENCE_SERVICES, NAMESPACES)

KINDS = {
    PODS: ("Pod", "/v1"),
    NODES: ("Node", "/v1"),
    NAMESPACES: ("Namespace", "/v1"),
    DEPLOYMENTS: ("Deployment", "apps/v1"),
    INFERENCE_SERVICES: ("InferenceService", "serving.kserve.io/v1beta1"),
    POWER_BUDGETS: ("PowerBudget", f"{POWER_BUDGET_GROUP}/v1alpha1"),
}
"""Kind and `describedObject.apiVersion` per resource. Core kinds get "/v1", as custom-metrics-apiserver's
`helpers.ReferenceFor` writes them (bug-compatible; nothing in the HPA reads the field)."""

CLUSTER_SCOPED = frozenset({NODES, NAMESPACES, POWER_BUDGETS})


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    unit: str
    resources: tuple[str, ...]
    meaning: str
    resolution: float = 1.0
    """Served values are rounded to this: watts to 1 W (NVML itself is accurate to about +-5 W), J/token to 1m."""


CATALOGUE: tuple[MetricSpec, ...] = (
    MetricSpec(
        "watts_per_token",
        "J/token",
        WORKLOADS,
        "average power divided by generation token rate over the window, i.e. joules per generated token "
        "(workloads and namespaces: summed energy over summed tokens)",
        resolution=0.001,
    ),
    MetricSpec(
        "gpu_power_watts", "W", (*WORKLOADS, NODES), "average power of the GPUs assigned over the window"
    ),
    MetricSpec(
        "power_watts", "W", WORKLOADS, "GPU power plus CPU/DRAM power where a source (Kepler) reports it"
    ),
    MetricSpec("generation_tokens_per_second", "tokens/s", WORKLOADS, "rate of generated (output) tokens"),
    MetricSpec(
        "replicas_within_budget",
        "replicas",
        (DEPLOYMENTS, INFERENCE_SERVICES),
        "current replicas plus those that fit the rack's headroom (minus those an overdraw takes) at one replica's "
        "peak power (the most any replica drew, forgotten with a 6 h half-life); held within half a replica and "
        "raised only after 2 min, so an autoscaler on it does not flap",
    ),
    MetricSpec(
        "node_power_watts", "W", (NODES,), "node power: measured where a source has it, else GPUs + CPU"
    ),
    MetricSpec(
        "rack_power_watts",
        "W",
        (NODES, POWER_BUDGETS),
        "power of the node's rack: PDU inlet, else sum of nodes",
    ),
    MetricSpec(
        "rack_power_headroom_watts",
        "W",
        (NODES, POWER_BUDGETS),
        "cap x (1 - margin) - rack power, never negative",
    ),
    MetricSpec(
        "rack_power_overdraw_watts",
        "W",
        (NODES, POWER_BUDGETS),
        "rack power - cap x (1 - margin), never negative",
    ),
    MetricSpec("rack_power_cap_watts", "W", (NODES, POWER_BUDGETS), "the rack's configured power cap"),
    MetricSpec(
        "rack_power_latest_watts",
        "W",
        (NODES, POWER_BUDGETS),
        "sum of the rack's PDUs' newest readings, stamped with the oldest of them; racks with a PDU only",
    ),
)

METRICS_BY_NAME = {spec.name: spec for spec in CATALOGUE}
