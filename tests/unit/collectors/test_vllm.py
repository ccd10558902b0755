from __future__ import annotations

from collector_helpers import ServeText, fixture_text, make
from prometheus_client import CollectorRegistry

from collectors.base import Sample
from collectors.vllm import VllmCollector

POD = {"namespace": "llm", "pod": "llama-0"}


def _by_metric(samples: list[Sample] | tuple[Sample, ...]) -> dict[str, Sample]:
    return {s.metric: s for s in samples}


async def test_reads_the_fixture_and_maps_it_to_the_scrape_targets_pod(
    serve_text: ServeText, registry: CollectorRegistry
) -> None:
    _, url = await serve_text(fixture_text("llm-servers/datadog-vllm-metrics.txt"))
    collector = make(VllmCollector, registry, scrape_urls=[{"url": url, "labels": POD}])
    try:
        samples = _by_metric(list(await collector.collect()))
    finally:
        await collector.aclose()
    assert {m: s.value for m, s in samples.items()} == {
        "generation_tokens_total": 7.0,
        "prompt_tokens_total": 5.0,
        "requests_running": 0.0,
        "requests_waiting": 0.0,
        "kv_cache_usage_ratio": 0.0,
    }
    assert all(dict(s.labels) == POD for s in samples.values())


V1 = """# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{{engine="0",model_name="llama"}} {g0}
vllm:generation_tokens_total{{engine="1",model_name="llama"}} {g1}
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="llama"}} 3
vllm:num_requests_running{{engine="1",model_name="llama"}} 4
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="llama"}} 0.25
vllm:kv_cache_usage_perc{{engine="1",model_name="llama"}} 0.5
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{{engine="0",model_name="llama"}} 0.99
"""


async def test_engines_are_summed_and_a_restart_does_not_lose_tokens(
    serve_text: ServeText, registry: CollectorRegistry
) -> None:
    endpoint, url = await serve_text(V1.format(g0=100, g1=50))
    collector = make(VllmCollector, registry, scrape_urls=[{"url": url, "labels": POD}])
    try:
        first = _by_metric(list(await collector.collect()))
        assert first["generation_tokens_total"].value == 150.0
        assert first["requests_running"].value == 7.0
        # The new KV name wins over the deprecated one, and the fullest engine counts.
        assert first["kv_cache_usage_ratio"].value == 0.5
        endpoint.text = V1.format(g0=130, g1=60)
        assert _by_metric(list(await collector.collect()))["generation_tokens_total"].value == 190.0
        # Engine 1 restarts: its counter starts again from 5; the pod's total keeps going up.
        endpoint.text = V1.format(g0=140, g1=5)
        assert _by_metric(list(await collector.collect()))["generation_tokens_total"].value == 205.0
    finally:
        await collector.aclose()


async def test_old_kv_cache_name_is_read_when_alone(
    serve_text: ServeText, registry: CollectorRegistry
) -> None:
    _, url = await serve_text('vllm:gpu_cache_usage_perc{model_name="m"} 0.75\n')
    collector = make(VllmCollector, registry, scrape_urls=[{"url": url, "labels": POD}])
    try:
        assert [(s.metric, s.value) for s in await collector.collect()] == [("kv_cache_usage_ratio", 0.75)]
    finally:
        await collector.aclose()
