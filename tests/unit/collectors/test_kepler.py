from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from collector_helpers import FIXTURES, ServeText, make
from prometheus_client import CollectorRegistry

from collectors.base import CollectorConfigError, Sample
from collectors.kepler import KeplerCollector

LEGACY = json.loads((FIXTURES / "kepler/kepler-0.7-legacy-prometheus-query-range.json").read_text())


def _values(samples: list[Sample] | tuple[Sample, ...], metric: str) -> dict[tuple[str, ...], float]:
    return {tuple(s.labels.values()): s.value for s in samples if s.metric == metric}


STAMPS = sorted({stamp for rows in LEGACY.values() for series in rows for stamp, _ in series["values"]})


def _at(series: dict[str, object], step: int) -> list[object] | None:
    """The series' [timestamp, value] at the step's timestamp, if it existed then."""
    values = series["values"]
    assert isinstance(values, list)
    return next((v for v in values if v[0] == STAMPS[step]), None)


class _FakePrometheus:
    """Answers instant queries from the real query_range fixture, one timestamp per step."""

    def __init__(self) -> None:
        self.step = 0
        self.queries: list[str] = []

    async def query(self, request: web.Request) -> web.Response:
        query = request.query["query"]
        self.queries.append(query)
        stamp_of = re.fullmatch(r'timestamp\(\{__name__="(\w+)"\}\)', query)
        rows = [
            (series["metric"], point)
            for rows in LEGACY.values()
            for series in rows
            if series["metric"]["__name__"] in KeplerCollector.source_metrics
            and (point := _at(series, self.step)) is not None
        ]
        if stamp_of is None:
            result = [{"metric": metric, "value": point} for metric, point in rows]
        else:
            result = [
                {
                    "metric": {k: v for k, v in metric.items() if k != "__name__"},
                    "value": [point[0], str(point[0])],
                }
                for metric, point in rows
                if metric["__name__"] == stamp_of.group(1)
            ]
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": result}})


def _expected_legacy(step: int, metrics: set[str], modes: set[str]) -> dict[tuple[str, ...], float]:
    sums: dict[tuple[str, ...], float] = defaultdict(float)
    for name in metrics:
        for series in LEGACY[name]:
            labels = series["metric"]
            point = _at(series, step)
            if labels["mode"] in modes and point is not None:
                key = (labels["container_namespace"], labels["pod_name"], labels["instance"])
                sums[key] += float(str(point[1]))
    return dict(sums)


async def test_legacy_series_from_prometheus(
    aiohttp_server: Callable[..., Awaitable[TestServer]], registry: CollectorRegistry
) -> None:
    fake = _FakePrometheus()
    app = web.Application()
    app.router.add_get("/api/v1/query", fake.query)
    server = await aiohttp_server(app)
    collector = make(KeplerCollector, registry, prometheus_url=str(server.make_url("")).rstrip("/"))
    try:
        for step in (0, 3, 6):
            fake.step = step
            samples = list(await collector.collect())
            cpu = _values(samples, "pod_cpu_energy_joules_total")
            assert cpu == pytest.approx(
                _expected_legacy(
                    step,
                    {"kepler_container_package_joules_total", "kepler_container_dram_joules_total"},
                    {"dynamic", "idle"},
                )
            )
            # Legacy Kepler gives every container an equal share of idle GPU energy; only dynamic counts.
            assert {s.timestamp_seconds for s in samples} == {STAMPS[step]}
            gpu = _values(samples, "pod_gpu_energy_joules_total")
            assert gpu == pytest.approx(
                _expected_legacy(step, {"kepler_container_gpu_joules_total"}, {"dynamic"})
            )
        assert collector.generation == "legacy"
        # Three containers, package + dram, dynamic + idle, read off the fixture by hand.
        package = 0.306 + 470.52 + 7.476 + 332.964 + 42.318 + 332.964
        dram = 0.276 + 199.641 + 1.287 + 141.348 + 29.343 + 141.348
        assert cpu[("monitoring", "prometheus-k8s-0", "kind-fms-control-plane")] == pytest.approx(
            package + dram
        )
        platform = _values(samples, "node_energy_joules_total")
        assert platform == {("kind-fms-control-plane",): 441.0 + 42828.0}
        assert not any("kepler_container_joules_total" in q for q in fake.queries)  # it would double count
    finally:
        await collector.aclose()


def _line(name: str, value: float, **labels: str) -> str:
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" + f" {value}\n"


def _rewrite_text(package_joules: float) -> str:
    pod = {
        "node_name": "n1",
        "pod_id": "u1",
        "pod_name": "llama-0",
        "pod_namespace": "llm",
        "state": "running",
    }
    gone = {**pod, "pod_id": "u0", "pod_name": "old-0", "state": "terminated"}
    zones = {"package": package_joules, "core": 80, "uncore": 10, "dram": 20, "psys": 400}
    node = {"package": 9000, "package-1": 8000, "core": 7000, "dram": 1000}
    return (
        "# TYPE kepler_pod_cpu_joules_total counter\n"
        + "".join(_line("kepler_pod_cpu_joules_total", v, **pod, zone=z) for z, v in zones.items())
        + _line("kepler_pod_cpu_joules_total", 999, **gone, zone="package")
        + "# TYPE kepler_pod_gpu_joules_total counter\n"
        + _line("kepler_pod_gpu_joules_total", 5000, **pod)
        + "# TYPE kepler_node_cpu_joules_total counter\n"
        + "".join(
            _line("kepler_node_cpu_joules_total", v, node_name="n1", path=f"/rapl/{i}", zone=z)
            for i, (z, v) in enumerate(node.items())
        )
        + "# TYPE kepler_platform_watts gauge\n"
        + _line("kepler_platform_watts", 310, node_name="n1", source="redfish", source_id="PS1")
        + _line("kepler_platform_watts", 290, node_name="n1", source="redfish", source_id="PS2")
    )


async def test_rewrite_series_never_sum_overlapping_zones(
    serve_text: ServeText, registry: CollectorRegistry
) -> None:
    endpoint, url = await serve_text(_rewrite_text(100))
    collector = make(KeplerCollector, registry, scrape_urls=[url])
    try:
        samples = list(await collector.collect())
        assert collector.generation == "rewrite"
        # package + dram only: core and uncore sit inside package, psys contains everything.
        assert _values(samples, "pod_cpu_energy_joules_total") == {("llm", "llama-0", "n1"): 120.0}
        assert _values(samples, "pod_gpu_energy_joules_total") == {("llm", "llama-0", "n1"): 5000.0}
        assert _values(samples, "node_cpu_energy_joules_total") == {("n1",): 18000.0}
        assert _values(samples, "node_power_watts") == {("n1",): 600.0}
        endpoint.text = _rewrite_text(150)
        samples = list(await collector.collect())
        assert _values(samples, "pod_cpu_energy_joules_total") == {("llm", "llama-0", "n1"): 170.0}
    finally:
        await collector.aclose()


def test_overlapping_zones_are_refused() -> None:
    with pytest.raises(CollectorConfigError, match="overlap package"):
        KeplerCollector.from_settings(
            "k", {"scrape_urls": ["http://k:28282/metrics"], "cpu_zones": ["package", "core"]}
        )
