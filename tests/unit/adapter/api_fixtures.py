"""A store and object index with hand-written values at a fixed time, and the API app over them."""

from __future__ import annotations

from aiohttp import web

from adapter.api import ApiSettings, create_app
from adapter.auth import AllowAllAuthenticator
from adapter.catalogue import DEPLOYMENTS, INFERENCE_SERVICES, NAMESPACES, NODES, PODS, POWER_BUDGETS
from adapter.objects import KubeObject, StaticObjectIndex
from adapter.selfmetrics import SelfMetrics
from adapter.store import MetricStore, ObjectRef, StoredValue
from collectors.label_selectors import parse_selector

NOW = 1748779200.0  # 2025-06-01T12:00:00Z, the reference's example time
SAMPLE_TIME = NOW - 5.0  # 2025-06-01T11:59:55Z


def _value(value: float, **labels: str) -> StoredValue:
    return StoredValue(value, SAMPLE_TIME, 60.0, labels)


def example_store() -> MetricStore:
    store = MetricStore(max_age_seconds=120.0, clock=lambda: NOW)
    values = {
        (ObjectRef(PODS, "inference", "llm-7d9f-abcde"), "watts_per_token"): _value(
            1.5, method="energy_counter"
        ),
        (ObjectRef(PODS, "inference", "llm-7d9f-fghij"), "watts_per_token"): _value(
            0.25, method="power_gauge"
        ),
        (ObjectRef(PODS, "inference", "chat-5c8b-klmno"), "watts_per_token"): _value(
            2.0, method="energy_counter"
        ),
        (ObjectRef(PODS, "inference", "llm-7d9f-abcde"), "gpu_power_watts"): _value(398.0),
        (ObjectRef(PODS, "inference", "llm-7d9f-fghij"), "gpu_power_watts"): _value(148.0),
        (ObjectRef(PODS, "inference", "chat-5c8b-klmno"), "gpu_power_watts"): StoredValue(
            300.0, NOW - 600.0, 60.0
        ),
        (ObjectRef(DEPLOYMENTS, "inference", "llm"), "power_watts"): _value(1500.0),
        (ObjectRef(INFERENCE_SERVICES, "inference", "chat"), "watts_per_token"): _value(0.75),
        (ObjectRef(NAMESPACES, "", "inference"), "watts_per_token"): _value(1.08),
        (ObjectRef(NODES, "", "node-1"), "rack_power_headroom_watts"): _value(4250.0, rack="r12"),
        (ObjectRef(NODES, "", "node-1"), "node_power_watts"): _value(3000.0),
        (ObjectRef(NODES, "", "node-2"), "node_power_watts"): StoredValue(2500.0, NOW - 600.0, 60.0),
        (ObjectRef(POWER_BUDGETS, "", "r12"), "rack_power_headroom_watts"): _value(4250.0, rack="r12"),
    }
    store.put_all(values)
    return store


def example_index() -> StaticObjectIndex:
    llm = {"app": "llm", "tier": "interactive"}
    return StaticObjectIndex(
        [
            KubeObject(PODS, "inference", "llm-7d9f-abcde", llm, node="node-1"),
            KubeObject(PODS, "inference", "llm-7d9f-fghij", llm, node="node-1"),
            KubeObject(PODS, "inference", "chat-5c8b-klmno", {"app": "chat", "tier": "batch"}, node="node-2"),
            KubeObject(
                DEPLOYMENTS, "inference", "llm", {}, pod_selector=parse_selector("app=llm"), replicas=2
            ),
            KubeObject(INFERENCE_SERVICES, "inference", "chat", {}),
            KubeObject(NODES, "", "node-1", {"wattscale.io/rack": "r12"}),
            KubeObject(NODES, "", "node-2", {"wattscale.io/rack": "r12"}),
        ]
    )


def example_app(*, external: bool = True) -> web.Application:
    return create_app(
        store=example_store(),
        index=example_index(),
        authenticator=AllowAllAuthenticator(),
        authorizer=None,
        self_metrics_registry=SelfMetrics(),
        settings=ApiSettings(enable_external_metrics=external),
        clock=lambda: NOW,
    )
