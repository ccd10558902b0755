"""The recording rules we ship, evaluated by a REAL Prometheus (and by a real VictoriaMetrics with vmalert)
over replayed exporters, give the same served values as the in-process estimator reading the raw series of
the same exporters."""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import aiohttp
import pandas as pd
import pytest
import replay_fixtures as replay
from integration_peers import (
    StartExporter,
    StartPrometheus,
    make_collector,
    poll_for_span,
    start_replayed_fleet,
    wait_for,
)

from adapter.catalogue import PODS
from adapter.objects import StaticObjectIndex
from adapter.pipeline import POD_METRICS, store_values
from adapter.store import Key, ObjectRef, StoredValue
from collectors.base import Sample
from collectors.dcgm import DcgmCollector
from collectors.kepler import KeplerCollector
from collectors.prometheus_recorded import RecordedSeriesCollector
from collectors.vllm import VllmCollector
from estimators.fleet import estimate_fleet

pytestmark = pytest.mark.prometheus

RULES = Path(__file__).resolve().parents[2] / "apiservice" / "recording-rules" / "wattscale-rules.yaml"
RULE_WINDOW_SECONDS = 60.0
NO_RACKS = pd.DataFrame(columns=["rack", "cap_watts", "margin_ratio"])


def test_promtool_accepts_the_shipped_rules() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed: run .ci/setup.d/10-prometheus.sh"
    checked = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 4 rules found" in checked.stdout


def _served(samples: Sequence[Sample], window_seconds: float) -> Mapping[Key, StoredValue]:
    frame = pd.DataFrame(
        [
            {"metric": s.metric, "value": s.value, "timestamp_seconds": s.timestamp_seconds, **s.labels}
            for s in samples
        ]
    )
    now = float(frame["timestamp_seconds"].max())
    estimate = estimate_fleet(
        frame, node_racks={}, racks=NO_RACKS, window_seconds=window_seconds, now_seconds=now
    )
    return store_values(
        estimate, index=StaticObjectIndex([]), racks_of_nodes={}, window_seconds=window_seconds
    )


async def _stamps(base_url: str, query: str, at_seconds: float | None = None) -> list[float]:
    """The values of an instant query (at `at_seconds`, else now): here `timestamp(...)` of recorded series."""
    params = {"query": query} if at_seconds is None else {"query": query, "time": repr(at_seconds)}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url}/api/v1/query", params=params) as response,
    ):
        result = (await response.json())["data"]["result"]
    return [float(series["value"][1]) for series in result]


async def _newest_evaluation(base_url: str) -> float:
    """When the GPU holder energy rule last recorded llama-0's GPU (0 before it did)."""
    stamps = await _stamps(
        base_url, 'timestamp(wattscale:gpu_holder_energy_joules:increase1m{pod="llama-0"})'
    )
    return stamps[0] if stamps else 0.0


@pytest.fixture(params=["prometheus", "victoria_metrics"])
def rule_engine(request: pytest.FixtureRequest) -> StartPrometheus:
    """Each engine the rules file says it runs on unchanged: Prometheus, and VictoriaMetrics with vmalert."""
    engine: StartPrometheus = request.getfixturevalue(f"start_{request.param}")
    return engine


async def test_recorded_series_serve_what_the_in_process_estimator_serves(
    replay_exporter: StartExporter, rule_engine: StartPrometheus
) -> None:
    exporters, base_url, _ = await start_replayed_fleet(replay_exporter, rule_engine, [RULES])

    # In process: the raw exporter series, read through Prometheus and estimated here.
    raw_collectors = [
        make_collector(cls, prometheus_url=base_url)
        for cls in (DcgmCollector, VllmCollector, KeplerCollector)
    ]
    try:
        raw = await poll_for_span(raw_collectors, span_seconds=5.0)
    finally:
        for collector in raw_collectors:
            await collector.aclose()
    stamps = [s.timestamp_seconds for s in raw if s.metric == "generation_tokens_total"]
    in_process = _served(raw, max(stamps) - min(stamps) + 0.5)

    # Recorded: once a rule evaluation covers a whole window of every exporter's scrapes (increase()
    # of a younger series reads low), the few recorded series alone.
    first_scrape = max(exporter.served[0][0] for exporter in exporters.values())
    full_window_at = first_scrape + RULE_WINDOW_SECONDS + 2.0

    async def window_recorded() -> bool:
        return await _newest_evaluation(base_url) >= full_window_at

    await wait_for(window_recorded, timeout_seconds=150, what="a rule evaluation over a full window")
    # GPU energy and tokens, split together, are of one evaluation (one group): the same window.
    evaluated_at = await _newest_evaluation(base_url)
    inputs = " or ".join(
        f"timestamp(wattscale:{name}:increase1m)"
        for name in ("gpu_holder_energy_joules", "pod_generation_tokens")
    )
    assert set(await _stamps(base_url, inputs, evaluated_at)) == {evaluated_at}
    recorded_collector = make_collector(RecordedSeriesCollector, prometheus_url=base_url)
    try:
        recorded_samples = list(await recorded_collector.collect())
        read_at = time.time()
    finally:
        await recorded_collector.aclose()
    recorded = _served(recorded_samples, RULE_WINDOW_SECONDS)

    # The recorded path read a few series per pod, not the exporters' samples.
    assert {s.metric for s in recorded_samples} == {
        "gpu_holder_power_watts",
        "pod_cpu_power_watts",
        "pod_generation_tokens_per_second",
        "pod_prompt_tokens_per_second",
        "gpu_power_watts",
    }
    for pod in (replay.POD, replay.SHARING_POD):
        ref = ObjectRef(PODS, pod["namespace"], pod["pod"])
        for metric in POD_METRICS:
            ours, theirs = recorded[(ref, metric)], in_process[(ref, metric)]
            assert math.isclose(ours.value, theirs.value, rel_tol=0.02), (pod, metric, ours, theirs)
        # Stamped with the rule evaluation that recorded it (after the full window), not when it was read.
        assert full_window_at <= recorded[(ref, "power_watts")].timestamp_seconds < read_at
        assert recorded[(ref, "watts_per_token")].labels["method"].startswith("recording_rule")
    # The shared GPU split by tokens, as the estimator splits it: 250 W x 500 / 2,000 tokens/s.
    llama0 = ObjectRef(PODS, replay.POD["namespace"], replay.POD["pod"])
    share = replay.GPU_POWER_WATTS * replay.GENERATION_TOKENS_PER_SECOND / 2000.0
    assert recorded[(llama0, "gpu_power_watts")].value == pytest.approx(share, rel=0.02)
