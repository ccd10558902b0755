"""The pipeline end to end on the simulated fleet: a failing or hanging source goes stale alone."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from adapter.catalogue import NODES, PODS, POWER_BUDGETS
from adapter.errors import ConfigError, StaleMetricError
from adapter.objects import KubeObject, StaticObjectIndex
from adapter.pipeline import Pipeline, node_racks
from adapter.plugins import load_collectors
from adapter.selectors import parse_selector
from adapter.selfmetrics import PipelineMetrics
from adapter.settings import RackSettings, Settings
from adapter.store import MetricStore, ObjectRef
from collectors.base import CollectorError, Sample
from collectors.simulated import Fleet, SimNode, SimPod, SimulatedCollector, SimulatedSettings
from collectors.support import PolledCollector, PollSettings

POD = ObjectRef(PODS, "llm", "llama-0")
TOKEN_METRICS = {"generation_tokens_total", "prompt_tokens_total"}


class FakeSplitCollector:
    """Passes on part of the simulated fleet's samples; can be told to fail or to hang."""

    def __init__(
        self, name: str, source: SimulatedCollector, metrics: set[str] | None, exclude: set[str]
    ) -> None:
        self.name = name
        self.interval_seconds = 1.0
        self.poll_timeout_seconds = 0.05
        self._source = source
        self._metrics = metrics
        self._exclude = exclude
        self.mode = "ok"
        self.latest: Sequence[Sample] = ()

    async def collect(self) -> Sequence[Sample]:
        if self.mode == "fail":
            raise CollectorError("connection refused")
        if self.mode == "hang":
            await asyncio.Event().wait()
        return [
            s
            for s in self.latest
            if (self._metrics is None or s.metric in self._metrics) and s.metric not in self._exclude
        ]

    async def aclose(self) -> None:
        return None


@pytest.fixture
def clock() -> list[float]:
    return [10_000.0]


def make_pipeline(
    clock: list[float],
) -> tuple[Pipeline, MetricStore, SimulatedCollector, list[FakeSplitCollector]]:
    fleet = Fleet(
        nodes=(SimNode("node-1", "rack-a", 2), SimNode("node-2", "rack-a", 2)),
        pods=(SimPod("llm", "llama-0", "node-1", 1, 0.5), SimPod("llm", "llama-1", "node-2", 2, 1.0)),
    )
    simulated = SimulatedCollector(
        "sim", SimulatedSettings(noise_ratio=0.0), fleet=fleet, clock=lambda: clock[0]
    )
    gpus = FakeSplitCollector(
        "gpus", simulated, None, TOKEN_METRICS | {"pdu_power_watts", "pdu_energy_joules_total"}
    )
    tokens = FakeSplitCollector("tokens", simulated, TOKEN_METRICS, set())
    pdu = FakeSplitCollector("pdu", simulated, {"pdu_power_watts", "pdu_energy_joules_total"}, set())
    settings = Settings.from_mapping(
        {
            "window_seconds": 30,
            "max_age_seconds": 60,
            "racks": [{"name": "rack-a", "cap_watts": 2000, "margin_ratio": 0.1}],
        }
    )
    store = MetricStore(max_age_seconds=60, clock=lambda: clock[0])
    pipeline = Pipeline(
        [gpus, tokens, pdu],
        store=store,
        index=StaticObjectIndex([]),
        settings=settings,
        metrics=PipelineMetrics(),
        clock=lambda: clock[0],
    )
    return pipeline, store, simulated, [gpus, tokens, pdu]


async def advance(
    pipeline: Pipeline,
    simulated: SimulatedCollector,
    fakes: list[FakeSplitCollector],
    clock: list[float],
    seconds: float,
) -> None:
    clock[0] += seconds
    batch = await simulated.collect()
    for fake in fakes:
        fake.latest = batch
        await pipeline.poll(fake)
    await pipeline.estimate_once()


async def test_values_follow_the_simulated_load(clock: list[float]) -> None:
    pipeline, store, simulated, fakes = make_pipeline(clock)
    for _ in range(4):
        await advance(pipeline, simulated, fakes, clock, 5.0)
    llama0 = store.get(POD, "gpu_power_watts").value
    llama1 = store.get(ObjectRef(PODS, "llm", "llama-1"), "gpu_power_watts").value
    assert 240 < llama0 < 320  # batch 128 on one GPU: ~307 W in the H100 sweep
    assert 760 < llama1 < 830  # batch 256 on two GPUs: ~398 W each
    wpt = store.get(POD, "watts_per_token")
    assert wpt.labels["method"] == "energy_counter+kepler_cpu"  # GPU energy counter plus the pod's CPU share
    assert 0.27 < wpt.value < 0.32  # (~307 W GPU + 35 W CPU) / ~1,152 tokens/s
    rack = store.get(ObjectRef(POWER_BUDGETS, "", "rack-a"), "rack_power_watts")
    assert rack.labels["estimated"] == "false"  # from the PDU
    # Served resolution (README): watts to 1 W, J/token to 1 mJ.
    assert llama0 == round(llama0) and rack.value == round(rack.value)
    assert wpt.value == round(wpt.value, 3) and wpt.value != round(wpt.value, 2)
    node = store.get(ObjectRef(NODES, "", "node-1"), "rack_power_headroom_watts")
    assert node.value == store.get(ObjectRef(POWER_BUDGETS, "", "rack-a"), "rack_power_headroom_watts").value


async def test_a_failing_source_goes_stale_and_the_rest_is_still_served(clock: list[float]) -> None:
    pipeline, store, simulated, fakes = make_pipeline(clock)
    _, tokens, pdu = fakes
    for _ in range(4):
        await advance(pipeline, simulated, fakes, clock, 5.0)
    tokens.mode = "fail"
    pdu.mode = "hang"
    for _ in range(9):  # 90 s: past the window (30 s) and then past max age (60 s)
        await advance(pipeline, simulated, fakes, clock, 10.0)
    with pytest.raises(StaleMetricError, match="watts_per_token for pods llama-0 is stale"):
        store.get(POD, "watts_per_token")
    assert store.get(POD, "gpu_power_watts").timestamp_seconds == clock[0]
    rack = store.get(ObjectRef(POWER_BUDGETS, "", "rack-a"), "rack_power_watts")
    assert rack.labels["estimated"] == "true"  # the PDU hangs: the sum of nodes stands in, and says so
    metrics = pipeline._metrics.registry
    assert metrics.get_sample_value("wattscale_collector_up", {"collector": "tokens"}) == 0
    assert (
        metrics.get_sample_value(
            "wattscale_collector_errors_total", {"collector": "pdu", "error": "TimeoutError"}
        )
        == 9
    )
    assert metrics.get_sample_value("wattscale_collector_up", {"collector": "gpus"}) == 1
    tokens.mode = "ok"
    for _ in range(3):
        await advance(pipeline, simulated, fakes, clock, 5.0)
    assert store.get(POD, "watts_per_token").timestamp_seconds == clock[0]


class FakeSlowStartCollector(PolledCollector):
    """A source that answers only on its last retry: the first attempts hang until they time out."""

    def __init__(self, poll: PollSettings) -> None:
        super().__init__("slow-start", poll, registry=CollectorRegistry())
        self.attempts = 0

    async def _poll(self) -> list[Sample]:
        self.attempts += 1
        if self.attempts <= self.settings.retries:
            await asyncio.Event().wait()
        return [Sample(metric="gpu_power_watts", value=300.0, timestamp_seconds=1.0)]


async def test_a_poll_gets_the_whole_retry_budget_its_collector_declares(clock: list[float]) -> None:
    pipeline, _, _, _ = make_pipeline(clock)
    # Three attempts time out (0.9 s), the fourth answers: longer than two intervals (0.6 s).
    collector = FakeSlowStartCollector(
        PollSettings(interval_seconds=0.3, timeout_seconds=0.3, retries=3, backoff_seconds=0.0)
    )
    assert await pipeline.poll(collector)
    assert collector.attempts == 4
    assert (
        pipeline._metrics.registry.get_sample_value("wattscale_collector_up", {"collector": "slow-start"})
        == 1
    )


def test_unknown_collector_types_and_bad_settings_are_all_reported() -> None:
    with pytest.raises(ConfigError) as caught:
        load_collectors(
            [("a", "no-such-source", {}), ("b", "simulated", {"noise_ratio": 2, "colour": "red"})]
        )
    problems = caught.value.problems
    assert any("collectors.a.type: unknown collector 'no-such-source'" in p for p in problems)
    assert any(p.startswith("collectors.b.colour: unknown setting") for p in problems)
    assert any(p.startswith("collectors.b.noise_ratio") for p in problems)


def test_settings_list_every_problem() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_mapping(
            {"window_seconds": -1, "racks": [{"name": "r", "margin_ratio": 3}, {"cap_watts": 5}], "colour": 1}
        )
    assert caught.value.problems == [
        "colour: unknown setting (known: collectors, estimate_interval_seconds, max_age_seconds, racks, "
        "window_seconds)",
        "window_seconds: want a positive number, got -1",
        "racks[0].cap_watts: required",
        "racks[0].margin_ratio: want a number in [0, 1), got 3",
        "racks[1].name: required",
    ]


async def test_token_figures_carry_the_time_of_the_token_counter_read(clock: list[float]) -> None:
    pipeline, store, simulated, fakes = make_pipeline(clock)
    _, tokens, _ = fakes
    for _ in range(4):
        await advance(pipeline, simulated, fakes, clock, 5.0)
    last_token_read = clock[0]
    tokens.mode = "fail"
    await advance(pipeline, simulated, fakes, clock, 5.0)
    assert store.get(POD, "gpu_power_watts").timestamp_seconds == clock[0]
    assert store.get(POD, "watts_per_token").timestamp_seconds == last_token_read
    assert store.get(POD, "generation_tokens_per_second").timestamp_seconds == last_token_read


async def test_latest_rack_power_is_the_newest_pdu_reading_and_goes_stale_with_the_pdu(
    clock: list[float],
) -> None:
    pipeline, store, simulated, fakes = make_pipeline(clock)
    _, _, pdu = fakes
    for _ in range(4):
        await advance(pipeline, simulated, fakes, clock, 5.0)
    newest = [s.value for s in pdu.latest if s.metric == "pdu_power_watts"]
    rack = store.get(ObjectRef(POWER_BUDGETS, "", "rack-a"), "rack_power_latest_watts")
    assert (rack.value, rack.timestamp_seconds) == (round(sum(newest)), clock[0])
    assert store.get(ObjectRef(NODES, "", "node-2"), "rack_power_latest_watts").value == rack.value
    pdu.mode = "hang"
    for _ in range(7):  # 70 s without a reading: past max age (60 s)
        await advance(pipeline, simulated, fakes, clock, 10.0)
    with pytest.raises(StaleMetricError):
        store.get(ObjectRef(POWER_BUDGETS, "", "rack-a"), "rack_power_latest_watts")


def test_a_silent_pdu_keeps_its_last_reading_and_its_age() -> None:
    import pandas as pd

    from estimators.fleet import LATEST_RACK_COLUMNS, estimate_fleet

    samples = pd.DataFrame(
        {
            "metric": ["pdu_power_watts"] * 4 + ["node_power_watts"],
            "value": [1000.0, 1100.0, 2000.0, 9999.0, 5.0],
            "timestamp_seconds": [10.0, 20.0, 12.0, 11.0, 30.0],
            "rack": ["r1", "r1", "r1", "r1", "r1"],
            "pdu": ["a", "a", "b", "b", None],
        }
    )
    # a's newest is 1100 at t=20; b went silent after 2000 at t=12 (9999 at t=11 is older).
    racks = pd.DataFrame(columns=["rack", "cap_watts", "margin_ratio"])
    latest = estimate_fleet(
        samples, node_racks={}, racks=racks, window_seconds=60.0, now_seconds=30.0
    ).latest_racks
    assert latest[LATEST_RACK_COLUMNS].values.tolist() == [["r1", 3100.0, 12.0]]


@pytest.mark.parametrize(
    ("component", "counter", "labels"),
    [
        ("collector:gpus", "wattscale_collector_runs_total", {"collector": "gpus"}),
        ("estimator", "wattscale_pipeline_duration_seconds_count", {}),
    ],
)
async def test_a_killed_pipeline_task_is_restarted_and_its_work_goes_on(
    clock: list[float], component: str, counter: str, labels: dict[str, str]
) -> None:
    import time

    from adapter.supervise import Backoff, Supervisor

    pipeline, _, _, _ = make_pipeline(clock)
    restarts: list[str] = []
    supervisor = Supervisor(on_restart=restarts.append, backoff=Backoff(initial_seconds=0.01))
    pipeline.start(supervisor)
    metrics = pipeline._metrics.registry

    def done() -> float:
        return metrics.get_sample_value(counter, labels) or 0.0

    async def until(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 30.0
        while not condition():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)

    try:
        await until(lambda: done() >= 1)
        attempt = supervisor.attempt(component)
        assert attempt is not None
        attempt.cancel()
        before = done()
        await until(lambda: done() > before)
        assert restarts == [component]
        assert supervisor.problems() == []
    finally:
        await supervisor.stop()


async def test_a_pass_runs_only_when_samples_arrived_or_objects_changed(clock: list[float]) -> None:
    pipeline, _, simulated, fakes = make_pipeline(clock)
    await advance(pipeline, simulated, fakes, clock, 5.0)
    assert not pipeline.due()  # an idle adapter computes nothing
    await pipeline.poll(fakes[0])
    assert pipeline.due()
    await pipeline.estimate_once()
    assert not pipeline.due()


def test_each_node_goes_to_the_first_rack_whose_selector_matches_else_to_its_samples_rack() -> None:
    rng = np.random.default_rng(0)
    selectors = ["rack={r}", "zone in (z{r},z99),rack!=r0", "!gpu,zone=z{r}", "rack={r},row=a"]
    racks = [
        RackSettings(
            name=f"rack-{r}", cap_watts=1.0, node_selector=parse_selector(selectors[r % 4].format(r=r))
        )
        for r in range(40)
    ]
    nodes = []
    for n in range(400):
        labels = {
            "rack": str(rng.integers(45)),
            "zone": f"z{rng.integers(45)}",
            "row": str(rng.choice(["a", "b"])),
        }
        if rng.random() < 0.5:
            labels["gpu"] = "h100"
        nodes.append(KubeObject(NODES, "", f"node-{n}", labels=labels))
    labelled = [(f"node-{n}", f"sampled-{n % 3}") for n in range(0, 420, 2)]
    found = node_racks(StaticObjectIndex(nodes), racks, labelled)
    by_selector = {
        node.name: rack.name
        for node in nodes
        for rack in reversed(racks)  # the first match written last
        if rack.node_selector.matches(node.labels)
    }
    assert found == {name: by_selector.get(name, rack) for name, rack in labelled} | by_selector
    assert 100 < len(by_selector) < len(nodes)  # nodes of a rack by selector, and by samples only
