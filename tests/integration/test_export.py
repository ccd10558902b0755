"""`wattscale export` against a REAL Prometheus scraping replayed DCGM and vLLM exporters: the CSV it
writes, run through `wattscale estimate`, gives the watts per token the server published from the
same Prometheus for the same window."""

from __future__ import annotations

import io
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import replay_fixtures as replay
from integration_peers import ReplayExporter, StartPrometheus, Target, prometheus_has, wait_for
from prometheus_client import CollectorRegistry

from adapter.catalogue import PODS
from adapter.cli import main
from adapter.objects import StaticObjectIndex
from adapter.pipeline import SampleHistory, estimate_pass, sample_rows
from adapter.store import ObjectRef
from collectors.base import Sample
from collectors.dcgm import DcgmCollector
from collectors.prometheus_text import ExporterCollector
from collectors.support import build_settings
from collectors.vllm import VllmCollector

pytestmark = pytest.mark.prometheus

StartExporter = Callable[[Callable[[float], str]], Awaitable[ReplayExporter]]
WINDOW_SECONDS = 10.0


def _make(cls: type[ExporterCollector], base_url: str) -> ExporterCollector:
    settings = build_settings(cls.settings_cls, cls.__name__, {"prometheus_url": base_url})
    return cls(cls.__name__, settings, registry=CollectorRegistry())


async def test_exported_csv_estimates_what_the_server_published(
    replay_exporter: StartExporter,
    start_prometheus: StartPrometheus,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    start = time.time()
    dcgm = await replay_exporter(lambda now: replay.render_dcgm(now, start))
    vllm = await replay_exporter(lambda now: replay.render_vllm(now, start))
    sharing = await replay_exporter(
        lambda now: replay.render_vllm(now, start, replay.SHARING_POD_TOKENS_PER_SECOND)
    )
    base_url = await start_prometheus(
        [
            Target(dcgm.url, {}, "dcgm"),
            Target(vllm.url, {**replay.POD, "node": replay.NODE}, "vllm"),
            Target(sharing.url, {**replay.SHARING_POD, "node": replay.NODE}, "vllm-sharing"),
        ]
    )

    # The server's side: its collectors poll Prometheus, its estimator passes fill the store.
    collectors = [_make(DcgmCollector, base_url), _make(VllmCollector, base_url)]
    history = SampleHistory(keep_seconds=60.0)
    published: dict[float, float] = {}
    collected: list[Sample] = []
    ref = ObjectRef(PODS, replay.POD["namespace"], replay.POD["pod"])

    async def published_some() -> bool:
        now = time.time()
        for collector in collectors:
            samples = await collector.collect()
            collected.extend(samples)
            history.add(collector.name, sample_rows(samples), now)
        values = estimate_pass(
            history, now_seconds=now, index=StaticObjectIndex([]), racks=[], window_seconds=WINDOW_SECONDS
        )
        value = values.get((ref, "watts_per_token"))
        if value is not None:
            published[value.timestamp_seconds] = value.value
        return len(published) >= 4 and now - start >= 3.5 * WINDOW_SECONDS  # three windows to export

    try:
        await wait_for(published_some, timeout_seconds=90, what="published values over three windows")
    finally:
        for collector in collectors:
            await collector.aclose()
    assert await prometheus_has(base_url, "count_over_time(vllm:generation_tokens_total[1m]) > 3")

    # The user's side: export the same span, estimate offline.
    csv_path = tmp_path / "export.csv"
    args = ["export", "--prometheus-url", base_url, "--start", f"{start:.3f}", "--end", f"{time.time():.3f}"]
    # Half the 1 s scrape interval: two jittered scrapes never fall between two steps.
    assert main([*args, "--step", "500ms", "--namespace", "llm", "--output", str(csv_path)]) == 0
    exported = pd.read_csv(csv_path)
    assert {"timestamp", "metric", "value", "node", "gpu_uuid", "namespace", "pod"} <= set(exported.columns)
    assert {
        "gpu_energy_joules_total",
        "gpu_power_watts",
        "gpu_assignment_info",
        "generation_tokens_total",
    } <= set(exported["metric"])
    assert (
        main(["estimate", "watts-per-token", "--input", str(csv_path), "--window", f"{WINDOW_SECONDS:g}s"])
        == 0
    )
    offline = pd.read_csv(io.StringIO(capsys.readouterr().out))
    mine = offline[(offline["namespace"] == replay.POD["namespace"]) & (offline["pod"] == replay.POD["pod"])]
    # The replayed GPU draws 250 W shared by token rate (500 of 2,000 tokens/s): 0.125 J/token.
    expected = replay.GPU_POWER_WATTS / (
        replay.GENERATION_TOKENS_PER_SECOND + replay.SHARING_POD_TOKENS_PER_SECOND
    )
    assert len(mine) >= 2
    # Prometheus stamps a scrape at its start; on a busy machine the exporter renders up to ~0.5 s
    # later (see test_prometheus_sources), which moves a 10 s window's counts by up to 5%.
    assert mine["watts_per_token"].median() == pytest.approx(expected, rel=0.08)
    # Every energy and token reading the server's collectors got is in the export, same instant and
    # value: offline analysis starts from exactly what the server estimated from.
    rows = {
        (r.metric, r.timestamp, r.value)
        for r in exported.itertuples()
        if r.metric in ("gpu_energy_joules_total", "generation_tokens_total")
    }
    served_rows = {
        (s.metric, s.timestamp_seconds, s.value)
        for s in collected
        if s.metric in ("gpu_energy_joules_total", "generation_tokens_total")
    }
    assert len(served_rows) >= 10
    assert served_rows <= rows
    # And the server published the same figure, within what one pass cannot yet know.
    assert np.median(list(published.values())) == pytest.approx(expected, rel=0.08)
