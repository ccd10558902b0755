"""Source faults end to end: `wattscale serve` (its own process, as a user runs it) reading real peers
while they fail. For each fault the API keeps serving every other source's values, the affected ones
answer 503 with their staleness in the Status message (and are left out of selector lists), they come
back by themselves when the source does, and no energy or token is counted twice.

Windows are short (`WINDOW_SECONDS`, `MAX_AGE_SECONDS`) so each fault shows within seconds; every wait
polls the API against a deadline.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import replay_fixtures as replay
from aiohttp.test_utils import TestServer
from integration_peers import (
    NodeAgentProcess,
    PrometheusServers,
    ReplayExporter,
    SnmpSimulator,
    StartExporter,
    load_unit_helper,
    start_replayed_fleet,
    wait_for,
)
from kubernetes_asyncio import client as kube_client
from prometheus_client.parser import text_string_to_metric_families
from serve_process import Answer, Serve, serve

from poweroperator.cluster import ClusterError, KubeCluster

mockup_module = load_unit_helper("redfish_mockup")

WINDOW_SECONDS = 6
MAX_AGE_SECONDS = 15
FAST_POLLS = {"interval_seconds": 1, "timeout_seconds": 0.5, "retries": 0}
POD_PATH = "/namespaces/llm/pods/llama-0"
RACK_PATH = "/powerbudgets.wattscale.io/rack-a"


def settings(*collectors: dict[str, Any]) -> dict[str, Any]:
    return {
        "window_seconds": WINDOW_SECONDS,
        "max_age_seconds": MAX_AGE_SECONDS,
        "estimate_interval_seconds": 0.5,
        "collectors": list(collectors),
        "racks": [{"name": "rack-a", "cap_watts": 20_000}],
    }


def vllm_scrape(exporter_url: str) -> dict[str, Any]:
    return {
        "name": "vllm",
        "type": "vllm",
        "scrape_urls": [{"url": exporter_url, "labels": {**replay.POD, "node": replay.NODE}}],
        **FAST_POLLS,
    }


@contextlib.asynccontextmanager
async def capper_view(api: Serve) -> AsyncIterator[KubeCluster]:
    """The operator's client of the custom metrics API, pointed at `serve` (no cluster, no auth)."""
    configuration = kube_client.Configuration(host=api.url)
    configuration.verify_ssl = False  # serve's self-signed certificate
    async with kube_client.ApiClient(configuration) as kube:
        yield KubeCluster(kube, agent_url_template="http://{node_ip}:9477")


def redfish_pdu(mockup_server: TestServer) -> dict[str, Any]:
    """The rack-a PDU served by the Redfish mockup at `mockup_server`."""
    url = str(mockup_server.make_url("")).rstrip("/")
    return {
        "name": "pdu-a",
        "type": "redfish_pdu",
        "url": url,
        "rack": "rack-a",
        "auth": "none",
        **FAST_POLLS,
    }


def served_at(answer: Any) -> float:
    """The served item's timestamp (whole seconds, as the wire carries it)."""
    (item,) = answer.body["items"]
    return time.mktime(time.strptime(item["timestamp"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone


async def assert_still_served(api: Serve, path: str, expected: float, rel: float = 0.05) -> None:
    answer = await api.metric(path)
    assert answer.status == 200, answer
    assert answer.value == pytest.approx(expected, rel=rel)


@pytest.mark.parametrize("fault", ["slow", "500", "garbage", "truncated"])
async def test_a_failing_redfish_pdu_makes_only_its_rack_stale_and_recovers(
    fault: str,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    replay_exporter: StartExporter,
    tmp_path: Path,
) -> None:
    mockup = mockup_module.RedfishMockup(auth="none")
    pdu = await aiohttp_server(mockup.app())
    start = time.time()
    vllm = await replay_exporter(lambda now: replay.render_vllm(now, start))
    pdu_settings = redfish_pdu(pdu)
    latest = f"{RACK_PATH}/rack_power_latest_watts"
    tokens = f"{POD_PATH}/generation_tokens_per_second"
    async with serve(settings(pdu_settings, vllm_scrape(vllm.url)), tmp_path) as api:
        assert (await api.wait_for_status(latest, 200)).value == 6438.0  # the mockup's Metrics.PowerWatts
        await api.wait_for_status(tokens, 200)

        if fault == "slow":
            mockup.delay_seconds = 2.0  # beyond the collector's 0.5 s timeout
        else:
            mockup.fault = fault
        failed_at = time.time()
        stale = await api.wait_for_status(latest, 503)

        assert stale.body["kind"] == "Status" and stale.body["reason"] == "ServiceUnavailable"
        assert "rack_power_latest_watts" in stale.body["message"] and "is stale" in stale.body["message"]
        assert f"max age {MAX_AGE_SECONDS}s" in stale.body["message"]
        # Everything else is still served, fresh.
        await assert_still_served(api, tokens, replay.GENERATION_TOKENS_PER_SECOND)
        page = await api.self_metrics()
        pdu_lines = "\n".join(line for line in page.splitlines() if "pdu-a" in line)
        assert self_metric(page, "wattscale_collector_up", collector="pdu-a") == 0.0, (
            f"{pdu_lines}\n{api.log.read_text()[-3000:]}"
        )
        assert self_metric(page, "wattscale_collector_up", collector="vllm") == 1.0

        mockup.delay_seconds, mockup.fault = 0.0, None
        back = await api.wait_for_status(latest, 200)
        assert back.value == 6438.0
        assert served_at(back) >= int(failed_at)  # a new reading, not the old one revived


@dataclass
class CounterLine:
    """One counter series an exporter serves: `rate` per second since `epoch` (a reset moves it)."""

    series: str
    rate: float
    epoch: float
    skip_next: bool = False


@dataclass
class Counters:
    lines: list[CounterLine]
    exporter: ReplayExporter | None = None

    def render(self, now: float) -> str:
        """Each value with the time it was read (as exporters with their own clock serve it), so the
        rates the adapter computes depend only on what was served, not on when a busy poller looked."""
        at_ms = int(now * 1000)
        text = []
        for line in self.lines:
            if line.skip_next:  # missing from exactly one scrape
                line.skip_next = False
                continue
            text.append(f"{line.series} {line.rate * (at_ms / 1000 - line.epoch)!r} {at_ms}")
        return "\n".join(text) + "\n"

    def reset(self, index: int) -> None:
        """The counter restarts from zero at the last scrape, so no increase is lost in between."""
        assert self.exporter is not None
        self.lines[index].epoch = int(self.exporter.served[-1][0] * 1000) / 1000

    def true_rate(self) -> float:
        """Increase per second over everything served, counted as Prometheus's `increase()` counts:
        a value below the last one is a reset, a series missing from a scrape is not."""
        assert self.exporter is not None
        last: dict[str, float] = {}
        increase = 0.0
        stamps = []
        for _, text in self.exporter.served:
            for row in text.splitlines():
                series, number, at_ms = row.rsplit(" ", 2)
                stamps.append(int(at_ms) / 1000)
                value = float(number)
                previous = last.get(series)
                if previous is not None:
                    increase += value - previous if value >= previous else value
                last[series] = value
        return increase / (max(stamps) - min(stamps))


async def observe(
    api: Serve, paths: Sequence[str], exporters: Sequence[ReplayExporter], windows: int = 1
) -> dict[str, list[float]]:
    """Every value served at `paths` while each exporter serves `windows` windows of new scrapes."""
    targets = [len(e.served) + windows * WINDOW_SECONDS + 2 for e in exporters]
    seen: dict[str, list[float]] = {path: [] for path in paths}

    async def window_passed() -> bool:
        for path in paths:
            answer = await api.metric(path)
            assert answer.status == 200, (path, answer)
            seen[path].append(answer.value)
        return all(len(e.served) >= n for e, n in zip(exporters, targets, strict=True))

    await wait_for(window_passed, timeout_seconds=90, what="a window of scrapes")
    return seen


async def test_counter_resets_and_skipped_polls_are_counted_once(
    replay_exporter: StartExporter, tmp_path: Path
) -> None:
    start = time.time()
    engines = Counters(
        [
            CounterLine(f'vllm:generation_tokens_total{{model_name="m",engine="{e}"}}', rate, start)
            for e, rate in (("0", 300.0), ("1", 200.0))
        ]
    )
    container = (
        'container_id="c1",container_name="vllm",container_namespace="llm",pod_name="llama-0",mode="dynamic"'
    )
    kepler = Counters(
        [
            CounterLine(f"kepler_container_{zone}_joules_total{{{container}}}", watts, start)
            for zone, watts in (("package", 30.0), ("dram", 10.0))
        ]
    )
    engines.exporter = await replay_exporter(engines.render)
    kepler.exporter = await replay_exporter(kepler.render)
    kepler_settings = {
        "name": "kepler",
        "type": "kepler",
        "scrape_urls": [{"url": kepler.exporter.url, "labels": {"node": replay.NODE}}],
        **FAST_POLLS,
    }
    tokens = f"{POD_PATH}/generation_tokens_per_second"
    power = f"{POD_PATH}/power_watts"
    exporters = [engines.exporter, kepler.exporter]
    async with serve(settings(vllm_scrape(engines.exporter.url), kepler_settings), tmp_path) as api:
        await api.wait_for_status(tokens, 200)
        await api.wait_for_status(power, 200)
        steady = await observe(api, [tokens, power], exporters)

        # One engine's series and the pod's DRAM series miss one scrape each.
        engines.lines[1].skip_next = kepler.lines[1].skip_next = True
        skipped = await observe(api, [tokens, power], exporters, windows=2)  # every window over the gap
        # One engine restarts, and the container's package counter with it.
        engines.reset(0)
        kepler.reset(0)
        reset = await observe(api, [tokens, power], exporters)

    assert engines.true_rate() == pytest.approx(500.0, rel=0.01)
    assert kepler.true_rate() == pytest.approx(40.0, rel=0.01)
    # Served to 1 token/s and 1 W. A series missing from one scrape counts at its last value in that
    # scrape: a window edge there misses at most its rate for one interval (200 tokens, 10 J over a
    # span of at least half a window). Counted twice, it would add everything it ever counted (over
    # 2,000 tokens and 100 J by then) at once.
    phases = {"steady": (steady, 2, 1), "skipped": (skipped, 75, 6), "reset": (reset, 2, 1)}
    for name, (phase, tokens_off, watts_off) in phases.items():
        assert phase[tokens] and phase[power], name
        assert phase[tokens] == pytest.approx([engines.true_rate()] * len(phase[tokens]), abs=tokens_off), (
            name
        )
        assert phase[power] == pytest.approx([kepler.true_rate()] * len(phase[power]), abs=watts_off), name


def names(answer: Answer) -> set[str]:
    return {item["describedObject"]["name"] for item in answer.body["items"]}


@pytest.mark.prometheus
async def test_prometheus_stopped_makes_its_pods_stale_and_its_restart_brings_them_back(
    replay_exporter: StartExporter,
    start_prometheus: PrometheusServers,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    tmp_path: Path,
) -> None:
    _, prometheus, _ = await start_replayed_fleet(replay_exporter, start_prometheus)
    # Another pod's vLLM server read directly, and a rack PDU: neither goes through Prometheus.
    start = time.time()
    direct = await replay_exporter(lambda now: replay.render_vllm(now, start))
    mockup = mockup_module.RedfishMockup(auth="none")
    pdu = await aiohttp_server(mockup.app())
    collectors = [
        {"name": kind, "type": kind, "prometheus_url": prometheus, **FAST_POLLS}
        for kind in ("dcgm", "vllm", "kepler")
    ]
    direct_settings = {
        **vllm_scrape(direct.url),
        "name": "vllm-direct",
        "scrape_urls": [{"url": direct.url, "labels": {"namespace": "llm", "pod": "llama-2"}}],
    }
    pdu_settings = redfish_pdu(pdu)
    every_pod = "/namespaces/llm/pods/*/generation_tokens_per_second"
    tokens = f"{POD_PATH}/generation_tokens_per_second"
    power = f"{POD_PATH}/power_watts"
    node = f"/nodes/{replay.NODE}/gpu_power_watts"
    latest = f"{RACK_PATH}/rack_power_latest_watts"
    async with serve(settings(*collectors, direct_settings, pdu_settings), tmp_path) as api:
        for path in (tokens, power, node, latest):
            await api.wait_for_status(path, 200)

        async def all_three_pods() -> bool:
            answer = await api.metric(every_pod)
            return answer.status == 200 and names(answer) == {"llama-0", "llama-1", "llama-2"}

        await wait_for(all_three_pods, timeout_seconds=60, what="every pod listed")

        await start_prometheus.stop(prometheus)
        stale = await api.wait_for_status(tokens, 503)
        assert "generation_tokens_per_second for pods llama-0 is stale" in stale.body["message"]

        async def only_the_direct_pod() -> bool:  # the stale pods are left out of the list
            answer = await api.metric(every_pod)
            return answer.status == 200 and names(answer) == {"llama-2"}

        await wait_for(only_the_direct_pod, timeout_seconds=30, what="only llama-2 listed")
        for path in (power, node):  # power is a window's average: stale once the window has passed
            stale = await api.wait_for_status(path, 503)
            assert "is stale: last sample" in stale.body["message"]
        await assert_still_served(api, latest, 6438.0)
        await assert_still_served(api, "/namespaces/llm/pods/llama-2/generation_tokens_per_second", 500.0)
        page = await api.self_metrics()
        assert self_metric(page, "wattscale_collector_up", collector="dcgm") == 0.0

        await start_prometheus.start_again(prometheus)
        for path in (tokens, power, node):
            await api.wait_for_status(path, 200)
        await wait_for(all_three_pods, timeout_seconds=60, what="every pod listed again")
        assert (await api.metric(tokens)).value == pytest.approx(replay.GENERATION_TOKENS_PER_SECOND, rel=0.1)
        async with api.session.get(api.url + "/livez", ssl=False) as response:
            assert response.status == 200


@pytest.mark.snmp
async def test_snmpsim_killed_makes_its_rack_stale_and_its_restart_brings_it_back(
    replay_exporter: StartExporter, tmp_path: Path
) -> None:
    agent = SnmpSimulator()
    start = time.time()
    vllm = await replay_exporter(lambda now: replay.render_vllm(now, start))
    pdu_settings = {
        "name": "pdu-a",
        "type": "snmp_pdu",
        "host": "127.0.0.1",
        "port": agent.port,
        "vendor": "apc",
        "community": "apc-rpdu2",
        "rack": "rack-a",
        "pdu": "apc",
        **FAST_POLLS,
    }
    latest = f"{RACK_PATH}/rack_power_latest_watts"
    tokens = f"{POD_PATH}/generation_tokens_per_second"
    try:
        await agent.start()
        async with (
            serve(settings(pdu_settings, vllm_scrape(vllm.url)), tmp_path) as api,
            capper_view(api) as cluster,
        ):
            assert (await api.wait_for_status(latest, 200)).value == 1170.0  # the APC recording's inlet
            await api.wait_for_status(tokens, 200)
            assert (await cluster.rack_power("rack-a")).power_watts == 1170.0

            await agent.kill()
            killed_at = time.time()
            stale = await api.wait_for_status(latest, 503)
            message = stale.body["message"]
            assert "rack_power_latest_watts for powerbudgets.wattscale.io rack-a is stale" in message
            await assert_still_served(api, tokens, replay.GENERATION_TOKENS_PER_SECOND)
            page = await api.self_metrics()
            assert self_metric(page, "wattscale_collector_up", collector="pdu-a") == 0.0
            # The operator reads the rack as stale, not as the window average that still answers.
            with pytest.raises(ClusterError, match="rack_power_latest_watts: HTTP 503"):
                await cluster.rack_power("rack-a")

            await agent.start()
            back = await api.wait_for_status(latest, 200)
            assert back.value == 1170.0 and served_at(back) >= int(killed_at)
            assert (await cluster.rack_power("rack-a")).power_watts == 1170.0
    finally:
        await agent.stop()


def self_metric(page: str, name: str, **labels: str) -> float:
    """One sample's value on a /metrics page (NaN when absent, which equals nothing)."""
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return math.nan


async def test_a_hung_node_agent_delays_nothing_else_and_is_polled_again_when_it_answers(
    node_agent: NodeAgentProcess, replay_exporter: StartExporter, tmp_path: Path
) -> None:
    start = time.time()
    vllm = await replay_exporter(lambda now: replay.render_vllm(now, start))
    agent_settings = {"name": "gpus", "type": "node_agent", "agent_urls": [node_agent.url], **FAST_POLLS}
    tokens = f"{POD_PATH}/generation_tokens_per_second"
    async with serve(settings(agent_settings, vllm_scrape(vllm.url)), tmp_path) as api:
        await api.wait_for_status(tokens, 200)
        # SIGSTOP: the kernel still accepts connections on the agent's port; nothing answers them.
        node_agent.process.send_signal(signal.SIGSTOP)
        try:
            hung_at = time.time()
            runs = "wattscale_collector_runs_total"
            answered = "wattscale_collector_source_errors_total"  # reason "target": it answered 503
            stopped_runs = self_metric(await api.self_metrics(), runs, collector="gpus")
            baseline: dict[str, float] = {}

            async def two_polls_since_the_stop() -> bool:
                page = await api.self_metrics()
                baseline["runs"] = self_metric(page, runs, collector="gpus")
                baseline["answered"] = self_metric(page, answered, collector="gpus", reason="target")
                return baseline["runs"] >= stopped_runs + 2

            await wait_for(two_polls_since_the_stop, timeout_seconds=60, what="two polls of the hung agent")

            async def polled_through_the_hang() -> bool:
                """Its poll loop goes on (each poll ends unanswered) while the rest stays fresh."""
                await assert_still_served(api, tokens, replay.GENERATION_TOKENS_PER_SECOND)
                again = self_metric(await api.self_metrics(), runs, collector="gpus")
                return again >= baseline["runs"] + 3 and time.time() - hung_at > MAX_AGE_SECONDS

            await wait_for(polled_through_the_hang, timeout_seconds=90, what="three more polls")
            page = await api.self_metrics()
            assert self_metric(page, answered, collector="gpus", reason="target") == baseline["answered"]
            assert self_metric(page, "wattscale_collector_up", collector="gpus") == 0.0
            assert self_metric(page, "wattscale_collector_up", collector="vllm") == 1.0
            async with api.session.get(api.url + "/livez", ssl=False) as response:
                assert response.status == 200
        finally:
            node_agent.process.send_signal(signal.SIGCONT)

        # Answering again, the agent is read again (here it answers 503: no GPU driver on this machine).
        async def agent_answers_again() -> bool:
            page = await api.self_metrics()
            return self_metric(page, answered, collector="gpus", reason="target") > baseline["answered"]

        await wait_for(agent_answers_again, timeout_seconds=60, what="a poll the agent answered")
