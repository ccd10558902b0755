from __future__ import annotations

import socket

import pytest
from collector_helpers import ServeText, fixture_text, make
from prometheus_client import CollectorRegistry

from collectors.base import CollectorConfigError, CollectorError
from collectors.prometheus_text import PrometheusTextCollector, parse_exposition
from collectors.support import TransientCollectorError


def _collector(registry: CollectorRegistry, **raw: object) -> PrometheusTextCollector:
    return make(PrometheusTextCollector, registry, **raw)


def test_parses_the_dcgm_fixture() -> None:
    series = parse_exposition(fixture_text("dcgm/datadog-dcgm-exporter-metrics.txt"))
    power = [s for s in series if s.name == "DCGM_FI_DEV_POWER_USAGE"]
    assert power[0].value == pytest.approx(8.969)
    assert power[0].labels["UUID"] == "GPU-20c56d28-0da5-6d26-a36a-e7af1ce2586e"


def test_malformed_text_is_a_collector_error() -> None:
    with pytest.raises(CollectorError, match="malformed Prometheus text"):
        parse_exposition('gpu_power_watts{node="a" 12\n')


def test_settings_take_at_most_one_mode() -> None:
    with pytest.raises(CollectorConfigError) as caught:
        PrometheusTextCollector.from_settings(
            "text", {"prometheus_url": "prometheus:9090", "scrape_urls": [{"url": "x", "port": 1}]}
        )
    assert set(caught.value.problems) >= {
        "prometheus_url, scrape_urls: set at most one of them (neither: discover pods)",
        "prometheus_url: want http(s)://host[:port], got 'prometheus:9090'",
        "scrape_urls[0]: unknown keys ['port'] (want url, labels)",
    }


async def test_passes_series_through_with_target_labels_and_renames(
    serve_text: ServeText, registry: CollectorRegistry
) -> None:
    _, url = await serve_text('# TYPE my_gpu_watts gauge\nmy_gpu_watts{gpu_uuid="GPU-1"} 151.5\nother 1\n')
    collector = _collector(
        registry,
        scrape_urls=[{"url": url, "labels": {"node": "node-1", "gpu_uuid": "ignored"}}],
        metrics=["my_gpu_watts"],
        rename={"my_gpu_watts": "gpu_power_watts"},
    )
    try:
        samples = await collector.collect()
    finally:
        await collector.aclose()
    assert [(s.metric, s.value, dict(s.labels)) for s in samples] == [
        ("gpu_power_watts", 151.5, {"node": "node-1", "gpu_uuid": "GPU-1"})
    ]


async def test_one_dead_target_does_not_stale_the_others(
    serve_text: ServeText, registry: CollectorRegistry
) -> None:
    live, url = await serve_text("x_watts 1\n")
    with socket.socket() as sock:  # a port nobody listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/metrics"
    collector = _collector(registry, scrape_urls=[url, dead], retries=0)
    try:
        samples = await collector.collect()
        assert [s.metric for s in samples] == ["x_watts"]
        labels = {"collector": "PrometheusTextCollector", "reason": "target"}
        assert registry.get_sample_value("wattscale_collector_source_errors_total", labels) == 1.0
        live.status = 503
        with pytest.raises(TransientCollectorError, match="all 2 targets failed"):
            await collector.collect()
    finally:
        await collector.aclose()


async def test_a_non_metrics_answer_fails_the_poll(
    serve_text: ServeText, registry: CollectorRegistry
) -> None:
    endpoint, url = await serve_text("<html>login</html>")
    collector = _collector(registry, scrape_urls=[url])
    try:
        with pytest.raises(CollectorError, match="malformed Prometheus text"):
            await collector.collect()
        assert endpoint.requests == 1  # not retried: the next try would be the same page
        endpoint.text = "x_watts 2\n"
        assert [s.value for s in await collector.collect()] == [2.0]
    finally:
        await collector.aclose()


async def test_oversized_answers_are_refused(serve_text: ServeText, registry: CollectorRegistry) -> None:
    _, url = await serve_text("x_watts 1\n" * 200)
    collector = _collector(registry, scrape_urls=[url], max_response_bytes=1024)
    try:
        with pytest.raises(CollectorError, match="larger than 1024 bytes"):
            await collector.collect()
    finally:
        await collector.aclose()
