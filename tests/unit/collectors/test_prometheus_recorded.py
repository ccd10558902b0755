"""The recorded-series collector: names it asks for, how increases become window averages, settings."""

from __future__ import annotations

import pytest
from collector_helpers import make
from prometheus_client import CollectorRegistry

from collectors.base import CollectorConfigError
from collectors.prometheus_recorded import RecordedSeriesCollector, RecordedSettings
from collectors.support import Series, build_settings


def test_increases_become_averages_over_the_rules_window() -> None:
    collector = make(
        RecordedSeriesCollector, CollectorRegistry(), prometheus_url="http://p:9090", window="2m"
    )
    pod = {"namespace": "llm", "pod": "llama-0"}
    gpu = {"node": "n1", "gpu_uuid": "GPU-1"}
    holder = "wattscale:gpu_holder_energy_joules:increase2m"
    samples = collector.translate(
        [
            # One GPU held by two pods: two copies of its energy, and an unheld GPU (no pod).
            Series(holder, {**gpu, **pod}, 30000.0, 99.0),
            Series(holder, {**gpu, "namespace": "llm", "pod": "llama-1"}, 30000.0, 99.0),
            Series(holder, {"node": "n1", "gpu_uuid": "GPU-2"}, 6000.0, 99.0),
            Series("wattscale:pod_generation_tokens:increase2m", pod, 60000.0, 100.0),
            # Another window's rules, and a series that lost its pod: neither describes what we serve.
            Series("wattscale:pod_generation_tokens:increase1m", pod, 1.0, 100.0),
            Series("wattscale:pod_cpu_energy_joules:increase2m", {"namespace": "llm"}, 1.0, 100.0),
        ],
        now_seconds=130.0,
    )
    got = sorted((s.metric, sorted(s.labels.items()), s.value, s.timestamp_seconds) for s in samples)
    assert got == sorted(
        [
            ("gpu_power_watts", sorted(gpu.items()), 250.0, 99.0),
            ("gpu_power_watts", [("gpu_uuid", "GPU-2"), ("node", "n1")], 50.0, 99.0),
            ("gpu_holder_power_watts", sorted({**gpu, **pod}.items()), 250.0, 99.0),
            (
                "gpu_holder_power_watts",
                sorted({**gpu, "namespace": "llm", "pod": "llama-1"}.items()),
                250.0,
                99.0,
            ),
            ("pod_generation_tokens_per_second", sorted(pod.items()), 500.0, 100.0),
        ]
    )
    assert "wattscale:pod_prompt_tokens:increase2m" in collector.query_names()


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"prometheus_url": "http://p:9090", "window": "1 minute"}, "window: want a Prometheus duration"),
        ({"scrape_urls": ["http://10.0.0.1/metrics"]}, "prometheus_url: required"),
        ({"prometheus_url": "http://p:9090", "query": "up"}, "query: not used"),
    ],
)
def test_settings_problems_are_reported(raw: dict[str, object], problem: str) -> None:
    with pytest.raises(CollectorConfigError, match=problem):
        build_settings(RecordedSettings, "recorded", raw)
