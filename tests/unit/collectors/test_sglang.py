from __future__ import annotations

from collector_helpers import ServeText, fixture_text, make
from prometheus_client import CollectorRegistry

from collectors.sglang import SglangCollector

POD = {"namespace": "llm", "pod": "sglang-0", "node": "node-1"}


async def test_reads_the_fixture(serve_text: ServeText, registry: CollectorRegistry) -> None:
    _, url = await serve_text(fixture_text("llm-servers/datadog-sglang-metrics.txt"))
    collector = make(SglangCollector, registry, scrape_urls=[{"url": url, "labels": POD}])
    try:
        samples = {s.metric: s for s in await collector.collect()}
    finally:
        await collector.aclose()
    assert {m: s.value for m, s in samples.items()} == {
        "generation_tokens_total": 32.0,
        "prompt_tokens_total": 5.0,
        "requests_running": 0.0,
        "requests_waiting": 0.0,
        "kv_cache_usage_ratio": 0.25,
    }
    assert dict(samples["generation_tokens_total"].labels) == POD


async def test_tensor_parallel_ranks_are_counted_once(
    serve_text: ServeText, registry: CollectorRegistry
) -> None:
    text = "".join(
        f'sglang:generation_tokens_total{{model_name="m",tp_rank="{rank}"}} 1000\n' for rank in (1, 0, 3, 2)
    )
    _, url = await serve_text(text)
    collector = make(SglangCollector, registry, scrape_urls=[{"url": url, "labels": POD}])
    try:
        assert [s.value for s in await collector.collect()] == [1000.0]
    finally:
        await collector.aclose()
