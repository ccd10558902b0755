"""Kepler, DCGM and vLLM collectors read a REAL Prometheus server that scrapes replayed exporters;
what they return must be exactly what the exporters served, and the fleet estimate built from it
must give the pod the watts and joules per token the replayed counters imply."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest
import replay_fixtures as replay
from integration_peers import (
    ReplayExporter,
    StartExporter,
    StartPrometheus,
    Target,
    make_collector,
    poll_for_span,
    run_collect_once,
    start_replayed_fleet,
    wait_for,
)

from collectors.base import CollectorError, Sample
from collectors.dcgm import DcgmCollector
from collectors.kepler import KeplerCollector
from collectors.support import TransientCollectorError
from collectors.vllm import VllmCollector
from estimators.fleet import estimate_fleet

pytestmark = pytest.mark.prometheus


def _frame(samples: Sequence[Sample]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"metric": s.metric, "value": s.value, "timestamp_seconds": s.timestamp_seconds, **s.labels}
            for s in samples
        ]
    )


def _served(exporter: ReplayExporter, pattern: str) -> dict[float, float]:
    """value -> time served, for the series whose line matches `pattern` (value in group 1)."""
    found: dict[float, float] = {}
    for served_at, text in exporter.served:
        match = re.search(pattern, text, re.MULTILINE)
        assert match, pattern
        found[float(match.group(1))] = served_at
    return found


async def test_collectors_read_back_what_the_exporters_served_and_the_estimate_matches(
    replay_exporter: StartExporter, start_prometheus: StartPrometheus
) -> None:
    exporters, base_url, _ = await start_replayed_fleet(replay_exporter, start_prometheus)
    collectors = [
        make_collector(cls, prometheus_url=base_url)
        for cls in (DcgmCollector, VllmCollector, KeplerCollector)
    ]
    try:
        samples = await poll_for_span(collectors, span_seconds=5.0)
    finally:
        for collector in collectors:
            await collector.aclose()

    # Exactly the served values, stamped with the scrape that fetched them.
    tokens = _served(
        exporters["vllm"], r'^vllm:generation_tokens_total\{model_name="facebook/opt-125m"\} (\S+)$'
    )
    energy = _served(
        exporters["dcgm"], rf"^DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION\{{[^}}]*{replay.GPU_UUID}[^}}]*\}} (\S+)$"
    )
    energy_joules = {value / 1000.0: at for value, at in energy.items()}
    pod_labels = {**replay.POD, "node": replay.NODE}
    gpu_labels = {"node": replay.NODE, "gpu_uuid": replay.GPU_UUID}
    for sample in samples:
        if sample.metric == "generation_tokens_total" and sample.labels["pod"] == replay.POD["pod"]:
            assert dict(sample.labels) == pod_labels
            assert sample.value in tokens
            # Prometheus stamps a sample with the start of its scrape, just before we served it.
            assert -0.05 <= tokens[sample.value] - sample.timestamp_seconds < 0.5
        if sample.metric == "gpu_energy_joules_total" and dict(sample.labels) == gpu_labels:
            assert min(abs(sample.value - served) for served in energy_joules) < 1e-6
        if sample.metric == "gpu_power_watts" and dict(sample.labels) == gpu_labels:
            assert sample.value == replay.GPU_POWER_WATTS
    # dcgm-exporter serves the shared GPU twice; one poll reads it once and names both holders.
    dcgm = make_collector(DcgmCollector, prometheus_url=base_url)
    try:
        one_poll = list(await dcgm.collect())
    finally:
        await dcgm.aclose()
    for metric in ("gpu_power_watts", "gpu_energy_joules_total"):
        assert [dict(s.labels) for s in one_poll if s.metric == metric].count(gpu_labels) == 1
    assignments = {tuple(sorted(s.labels.items())) for s in samples if s.metric == "gpu_assignment_info"}
    assert assignments == {
        tuple(sorted({**gpu_labels, **replay.POD}.items())),
        tuple(sorted({**gpu_labels, **replay.SHARING_POD}.items())),
    }

    # The estimator's view of the pod, from the samples alone.
    frame = _frame(samples)
    stamps = frame.loc[frame["metric"] == "generation_tokens_total", "timestamp_seconds"]
    estimate = estimate_fleet(
        frame,
        node_racks={},
        racks=pd.DataFrame(columns=["rack", "cap_watts", "margin_ratio"]),
        window_seconds=float(stamps.max() - stamps.min()) + 0.5,
        now_seconds=float(stamps.max()),
    )
    pods = estimate.pods.set_index(["namespace", "pod"])
    pod, sharing = pods.loc[("llm", "llama-0")], pods.loc[("llm", "llama-1")]
    # The GPU's 250 W counted once, split by the two pods' token rates (500 and 1500 tokens/s).
    total_tokens = replay.GENERATION_TOKENS_PER_SECOND + replay.SHARING_POD_TOKENS_PER_SECOND
    share = replay.GPU_POWER_WATTS * replay.GENERATION_TOKENS_PER_SECOND / total_tokens
    assert pod["gpu_power_watts"] + sharing["gpu_power_watts"] == pytest.approx(
        replay.GPU_POWER_WATTS, rel=0.03
    )
    nodes = estimate.nodes.set_index("node")
    assert nodes.loc[replay.NODE, "gpu_power_watts"] == pytest.approx(replay.GPU_POWER_WATTS, rel=0.03)
    cpu_watts = replay.CPU_PACKAGE_WATTS + replay.CPU_DRAM_WATTS
    assert pod["gpu_power_watts"] == pytest.approx(share, rel=0.05)
    assert pod["power_watts"] == pytest.approx(share + cpu_watts, rel=0.05)
    assert pod["generation_tokens_per_second"] == pytest.approx(replay.GENERATION_TOKENS_PER_SECOND, rel=0.03)
    assert pod["watts_per_token"] == pytest.approx(
        (share + cpu_watts) / replay.GENERATION_TOKENS_PER_SECOND, rel=0.06
    )
    sharing_watts = replay.GPU_POWER_WATTS - share
    assert sharing["watts_per_token"] == pytest.approx(
        sharing_watts / replay.SHARING_POD_TOKENS_PER_SECOND, rel=0.06
    )


async def test_scrape_mode_reads_the_same_exporters_without_prometheus(
    replay_exporter: StartExporter,
) -> None:
    start = time.time()
    vllm = await replay_exporter(lambda now: replay.render_vllm(now, start))
    kepler = await replay_exporter(lambda now: replay.render_kepler_legacy(now, start))
    vllm_collector = make_collector(VllmCollector, scrape_urls=[{"url": vllm.url, "labels": replay.POD}])
    kepler_collector = make_collector(
        KeplerCollector, scrape_urls=[{"url": kepler.url, "labels": {"node": replay.NODE}}]
    )
    try:
        (first, *_) = [s for s in await vllm_collector.collect() if s.metric == "generation_tokens_total"]
        served_at, _ = vllm.served[-1]
        assert first.value == replay.generation_tokens(served_at - start)
        cpu = [s for s in await kepler_collector.collect() if s.metric == "pod_cpu_energy_joules_total"]
        served_at, _ = kepler.served[-1]
        (llama,) = [s for s in cpu if s.labels["pod"] == "llama-0"]
        watts = replay.CPU_PACKAGE_WATTS + replay.CPU_DRAM_WATTS
        assert llama.value == pytest.approx(watts * (served_at - start), rel=1e-9)
        assert kepler_collector.generation == "legacy"  # type: ignore[attr-defined]
    finally:
        await vllm_collector.aclose()
        await kepler_collector.aclose()


async def test_faults_against_the_real_server(
    replay_exporter: StartExporter, start_prometheus: StartPrometheus
) -> None:
    start = time.time()
    vllm = await replay_exporter(lambda now: replay.render_vllm(now, start))
    base_url = await start_prometheus([Target(vllm.url, replay.POD, "vllm")])

    bad_query = make_collector(
        VllmCollector, prometheus_url=base_url, query="sum(vllm:generation_tokens_total"
    )
    with pytest.raises(CollectorError, match="bad_data") as caught:
        await bad_query.collect()
    assert not isinstance(caught.value, TransientCollectorError)
    await bad_query.aclose()

    # The server restarts its counters (a vLLM pod restart): what we report never goes back.
    collector = make_collector(VllmCollector, prometheus_url=base_url)
    readings: list[float] = []

    async def tokens_seen(minimum: int) -> bool:
        found = [s.value for s in await collector.collect() if s.metric == "generation_tokens_total"]
        if found and (not readings or found[0] != readings[-1]):
            readings.append(found[0])
        return len(readings) >= minimum

    try:
        await wait_for(lambda: tokens_seen(2), timeout_seconds=30, what="two token readings")
        restart = time.time()
        vllm.render = lambda now: replay.render_vllm(now, restart)
        await wait_for(lambda: tokens_seen(5), timeout_seconds=30, what="readings after the restart")
    finally:
        await collector.aclose()
    assert readings == sorted(readings)
    assert readings[-1] > readings[1]

    # A hanging exporter behind a timeout, and a refused connection.
    vllm.hang = True
    hanging = make_collector(
        VllmCollector, scrape_urls=[vllm.url], timeout_seconds=0.3, interval_seconds=1.0, retries=0
    )
    with pytest.raises(TransientCollectorError, match=r"no answer within 0\.3 s"):
        await hanging.collect()
    await hanging.aclose()
    vllm.stop_hanging()
    refused = make_collector(VllmCollector, prometheus_url="http://127.0.0.1:9", retries=1)
    with pytest.raises(TransientCollectorError, match="ClientConnectorError"):
        await refused.collect()
    await refused.aclose()


async def test_wattscale_collect_prints_the_normalised_samples(
    replay_exporter: StartExporter, start_prometheus: StartPrometheus, tmp_path: Path
) -> None:
    exporters, base_url, _ = await start_replayed_fleet(replay_exporter, start_prometheus)
    config = {
        "collectors": [
            {"name": "dcgm", "type": "dcgm", "prometheus_url": base_url},
            {"name": "vllm", "type": "vllm", "prometheus_url": base_url},
            {"name": "kepler", "type": "kepler", "prometheus_url": base_url},
            {
                "name": "raw",
                "type": "prometheus_text",
                "prometheus_url": base_url,
                "metrics": ["DCGM_FI_DEV_POWER_USAGE"],
                "rename": {"DCGM_FI_DEV_POWER_USAGE": "dcgm_power_watts"},
            },
            {
                "name": "vllm-query",
                "type": "vllm",
                "prometheus_url": base_url,
                "query": 'vllm:generation_tokens_total{pod="llama-1"}',
            },
            {
                "name": "vllm-direct",
                "type": "vllm",
                "scrape_urls": [{"url": exporters["vllm"].url, "labels": replay.POD}],
            },
        ]
    }
    status, lines, stderr = await run_collect_once(config, tmp_path)
    assert status == 0, stderr
    seen = {(line["collector"], line["metric"]) for line in lines}
    assert {
        ("dcgm", "gpu_power_watts"),
        ("dcgm", "gpu_energy_joules_total"),
        ("dcgm", "gpu_assignment_info"),
        ("vllm", "generation_tokens_total"),
        ("vllm-direct", "generation_tokens_total"),
        ("kepler", "pod_cpu_energy_joules_total"),
    } <= seen
    (power,) = [
        line
        for line in lines
        if line["metric"] == "gpu_power_watts" and line["labels"]["gpu_uuid"] == replay.GPU_UUID
    ]
    assert power["value"] == replay.GPU_POWER_WATTS
    assert power["labels"] == {"node": replay.NODE, "gpu_uuid": replay.GPU_UUID}
    tokens = {
        line["labels"]["pod"]: line["labels"]
        for line in lines
        if line["collector"] == "vllm" and line["metric"] == "generation_tokens_total"
    }
    assert tokens == {
        "llama-0": {**replay.POD, "node": replay.NODE},
        "llama-1": {**replay.SHARING_POD, "node": replay.NODE},
    }
    # Passed through with Prometheus's labels, renamed; and a custom query's narrower selection.
    raw = [line for line in lines if line["collector"] == "raw"]
    assert {line["metric"] for line in raw} == {"dcgm_power_watts"}
    assert any(line["labels"].get("UUID") == replay.GPU_UUID and line["value"] == 250.0 for line in raw)
    queried = [line for line in lines if line["collector"] == "vllm-query"]
    assert [(line["metric"], line["labels"]["pod"]) for line in queried] == [
        ("generation_tokens_total", "llama-1")
    ]

    # A source that is down makes the command fail, after printing what the others returned.
    config["collectors"].append(
        {"name": "gone", "type": "vllm", "prometheus_url": "http://127.0.0.1:9", "retries": 0}
    )
    status, lines, stderr = await run_collect_once(config, tmp_path)
    assert status == 1
    assert "gone: TransientCollectorError" in stderr
    assert any(line["collector"] == "dcgm" for line in lines)
