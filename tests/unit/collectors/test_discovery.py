"""With no URL configured, collectors find their exporters among the cluster's pods (a fake pod
source here; the adapter passes one backed by its object cache)."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

import pytest
from collector_helpers import ServeText, fixture_text, make
from prometheus_client import CollectorRegistry

from collectors.base import CollectorError, DiscoversPods, PodEndpoint
from collectors.discovery import pod_scrape_targets
from collectors.kepler import KeplerCollector
from collectors.vllm import VllmCollector

KEPLER_NODE_CPU = 'kepler_node_cpu_joules_total{zone="package",node_name="node-1"} 100\n'


class FakePods:
    """The pods a cluster runs; a test edits `pods` between polls as the object cache would."""

    def __init__(self, pods: Sequence[PodEndpoint] = ()) -> None:
        self.pods = list(pods)

    def __call__(self) -> Sequence[PodEndpoint]:
        return self.pods


def _pod(name: str, url: str, *, port_name: str = "metrics", **fields: object) -> PodEndpoint:
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    return PodEndpoint(
        namespace=str(fields.pop("namespace", "llm")),
        name=name,
        ip=parts.hostname,
        node=str(fields.pop("node", "node-1")),
        ports={port_name: parts.port},
        **fields,  # type: ignore[arg-type]
    )


def test_named_port_then_annotation_and_opt_outs() -> None:
    pods = [
        PodEndpoint(namespace="llm", name="named", ip="10.0.0.1", node="n1", ports={"metrics": 8000}),
        PodEndpoint(
            namespace="llm",
            name="annotated",
            ip="fd00::5",
            annotations={
                "prometheus.io/port": "9000",
                "prometheus.io/path": "stats",
                "prometheus.io/scheme": "https",
            },
        ),
        PodEndpoint(namespace="llm", name="pending", ip="", ports={"metrics": 8000}),
        PodEndpoint(
            namespace="llm",
            name="opted-out",
            ip="10.0.0.3",
            ports={"metrics": 8000},
            annotations={"prometheus.io/scrape": "false"},
        ),
        PodEndpoint(namespace="llm", name="no-port", ip="10.0.0.4", ports={"http": 8000}),
        PodEndpoint(
            namespace="llm", name="bad-port", ip="10.0.0.5", annotations={"prometheus.io/port": "http"}
        ),
    ]
    found = pod_scrape_targets(pods, match_labels={}, port_name="metrics")
    assert found == [
        ("https://[fd00::5]:9000/stats", {"namespace": "llm", "pod": "annotated"}),
        ("http://10.0.0.1:8000/metrics", {"namespace": "llm", "pod": "named", "node": "n1"}),
    ]


def test_only_pods_with_every_wanted_label() -> None:
    pods = [
        PodEndpoint(
            namespace="k",
            name="a",
            ip="10.0.0.1",
            labels={"app.kubernetes.io/name": "kepler"},
            ports={"http": 9102},
        ),
        PodEndpoint(
            namespace="k",
            name="b",
            ip="10.0.0.2",
            labels={"app.kubernetes.io/name": "other"},
            ports={"http": 9102},
        ),
    ]
    found = pod_scrape_targets(pods, match_labels={"app.kubernetes.io/name": "kepler"}, port_name="http")
    assert [target.labels["pod"] for target in found] == ["a"]


async def test_vllm_follows_its_pod_to_a_new_address(
    serve_text: ServeText, registry: CollectorRegistry
) -> None:
    text = fixture_text("llm-servers/datadog-vllm-metrics.txt")
    _, first_url = await serve_text(text)
    second, second_url = await serve_text(
        text.replace(
            'vllm:generation_tokens_total{model_name="facebook/opt-125m"} 7.0',
            'vllm:generation_tokens_total{model_name="facebook/opt-125m"} 9.0',
        )
    )
    pods = FakePods([_pod("llama-0", first_url)])
    collector = make(VllmCollector, registry)  # no prometheus_url, no scrape_urls
    assert isinstance(collector, DiscoversPods)
    collector.use_pod_targets(pods)
    try:
        before = {s.metric: s for s in await collector.collect()}
        # The pod is rescheduled: new IP and port in the cache, nothing in the collector's settings.
        pods.pods = [_pod("llama-0", second_url, node="node-2")]
        after = {s.metric: s for s in await collector.collect()}
    finally:
        await collector.aclose()
    assert before["generation_tokens_total"].value == 7.0
    assert dict(before["generation_tokens_total"].labels) == {
        "namespace": "llm",
        "pod": "llama-0",
        "node": "node-1",
    }
    assert after["generation_tokens_total"].value == 9.0
    assert dict(after["generation_tokens_total"].labels) == {
        "namespace": "llm",
        "pod": "llama-0",
        "node": "node-2",
    }
    assert second.requests == 1


async def test_kepler_scrapes_only_its_daemonset_pods(
    serve_text: ServeText, registry: CollectorRegistry
) -> None:
    kepler, kepler_url = await serve_text(KEPLER_NODE_CPU)
    other, other_url = await serve_text("")
    pods = FakePods(
        [
            _pod(
                "kepler-abcde",
                kepler_url,
                port_name="http",
                namespace="kepler",
                labels={"app.kubernetes.io/name": "kepler"},
            ),
            _pod("web", other_url, port_name="http"),
        ]
    )
    collector = make(KeplerCollector, registry)
    collector.use_pod_targets(pods)
    try:
        samples = list(await collector.collect())
    finally:
        await collector.aclose()
    assert [(s.metric, s.value, dict(s.labels)) for s in samples] == [
        ("node_cpu_energy_joules_total", 100.0, {"node": "node-1"})
    ]
    assert (kepler.requests, other.requests) == (1, 0)


async def test_without_a_url_or_pods_the_poll_fails_and_says_why(registry: CollectorRegistry) -> None:
    collector = make(VllmCollector, registry)
    with pytest.raises(CollectorError, match="no prometheus_url or scrape_urls, and no cluster"):
        await collector.collect()
    collector.use_pod_targets(FakePods([PodEndpoint(namespace="llm", name="x", ip="10.0.0.1")]))
    with pytest.raises(CollectorError, match="no running pod with labels any names port 'metrics'"):
        await collector.collect()
    await collector.aclose()
