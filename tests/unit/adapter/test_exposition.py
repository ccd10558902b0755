"""`/metrics/power`: the store's fresh values as Prometheus series, stale ones left out, bounded."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient
from api_fixtures import NOW, SAMPLE_TIME
from prometheus_client.parser import text_string_to_metric_families

from adapter.catalogue import DEPLOYMENTS, NAMESPACES, NODES, PODS, POWER_BUDGETS
from adapter.exposition import FAMILIES, PowerCollector
from adapter.store import MetricStore, ObjectRef, StoredValue


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_fresh_values_are_series_with_their_labels(
    api: TestClient[web.Request, web.Application],
) -> None:
    response = await api.get("/metrics/power")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = _samples(await response.text())
    pod = {"namespace": "inference", "pod": "llm-7d9f-abcde"}
    assert (
        samples[
            (
                "wattscale_pod_watts_per_token",
                frozenset({**pod, "method": "energy_counter", "confidence": ""}.items()),
            )
        ]
        == 1.5
    )
    assert samples[("wattscale_pod_gpu_power_watts", frozenset(pod.items()))] == 398.0
    workload = {"namespace": "inference", "kind": "Deployment", "workload": "llm"}
    assert samples[("wattscale_workload_power_watts", frozenset(workload.items()))] == 1500.0
    assert samples[("wattscale_rack_power_headroom_watts", frozenset({"rack": "r12"}.items()))] == 4250.0
    assert (
        samples[("wattscale_namespace_watts_per_token", frozenset({"namespace": "inference"}.items()))]
        == 1.08
    )


async def test_stale_values_are_left_out(api: TestClient[web.Request, web.Application]) -> None:
    text = await (await api.get("/metrics/power")).text()
    # chat-5c8b-klmno's GPU power and node-2's power are 600 s old, past the store's 120 s max age.
    assert 'pod="chat-5c8b-klmno"' not in text.split("wattscale_pod_gpu_power_watts")[-1].split("# HELP")[0]
    assert 'node="node-2"' not in text
    assert 'node="node-1"' in text


async def test_series_carry_no_timestamp(api: TestClient[web.Request, web.Application]) -> None:
    text = await (await api.get("/metrics/power")).text()
    assert all(
        sample.timestamp is None
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    )


def _fleet_store(pods: int) -> MetricStore:
    store = MetricStore(max_age_seconds=120.0, clock=lambda: NOW)
    values = {}
    for index in range(pods):
        ref = ObjectRef(PODS, "llm", f"pod-{index:05d}")
        for metric in ("watts_per_token", "gpu_power_watts", "power_watts", "generation_tokens_per_second"):
            values[(ref, metric)] = StoredValue(1.0, SAMPLE_TIME, 60.0, {"method": "energy_counter"})
    values[(ObjectRef(DEPLOYMENTS, "llm", "big"), "power_watts")] = StoredValue(1.0, SAMPLE_TIME, 60.0)
    values[(ObjectRef(NAMESPACES, "", "llm"), "power_watts")] = StoredValue(1.0, SAMPLE_TIME, 60.0)
    values[(ObjectRef(NODES, "", "n1"), "node_power_watts")] = StoredValue(1.0, SAMPLE_TIME, 60.0)
    values[(ObjectRef(POWER_BUDGETS, "", "r1"), "rack_power_watts")] = StoredValue(
        1.0, SAMPLE_TIME, 60.0, {"estimated": "true"}
    )
    store.put_all(values)
    return store


def _series_by_family(collector: PowerCollector) -> dict[str, int]:
    return {family.name: len(family.samples) for family in collector.collect()}


def test_pod_series_stop_at_the_limit_and_say_how_many_pods_were_left_out() -> None:
    counts = _series_by_family(PowerCollector(_fleet_store(30), clock=lambda: NOW, max_pod_series=40))
    pod_families = [f.name for f in FAMILIES if f.name.startswith("wattscale_pod_")]
    assert {counts[name] for name in pod_families} == {10}
    omitted = next(
        f
        for f in PowerCollector(_fleet_store(30), clock=lambda: NOW, max_pod_series=40).collect()
        if f.name == "wattscale_exposition_pods_omitted"
    )
    assert omitted.samples[0].value == 20


def test_four_series_per_pod() -> None:
    small = sum(_series_by_family(PowerCollector(_fleet_store(10), clock=lambda: NOW)).values())
    large = sum(_series_by_family(PowerCollector(_fleet_store(110), clock=lambda: NOW)).values())
    assert large - small == 4 * 100


def test_nothing_before_the_first_pass() -> None:
    assert list(PowerCollector(MetricStore(max_age_seconds=60.0)).collect()) == []


async def test_a_value_ages_out_even_when_no_new_snapshot_arrives() -> None:
    from adapter.exposition import PowerExposition

    now = [NOW]
    store = _fleet_store(1)
    exposition = PowerExposition(store, clock=lambda: now[0])
    assert b'pod="pod-00000"' in await exposition.body()
    now[0] = SAMPLE_TIME + 121.0  # past max age, same store generation (the pipeline stopped)
    assert b'pod="pod-00000"' not in await exposition.body()


def test_a_learned_power_model_s_confidence_is_a_label() -> None:
    store = MetricStore(max_age_seconds=120.0, clock=lambda: NOW)
    pod = ObjectRef(PODS, "llm", "gauge-only-0")
    labels = {"method": "power_model", "confidence": "medium"}
    store.put_all({(pod, "watts_per_token"): StoredValue(0.4, SAMPLE_TIME, 30.0, labels)})
    series = [
        sample
        for family in PowerCollector(store, clock=lambda: NOW).collect()
        for sample in family.samples
        if sample.name == "wattscale_pod_watts_per_token"
    ]
    assert [(s.labels, s.value) for s in series] == [
        ({"namespace": "llm", "pod": "gauge-only-0", **labels}, 0.4)
    ]
