from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from collectors.base import CollectorConfigError, CollectorError, Sample
from collectors.support import (
    MonotonicSums,
    PolledCollector,
    PollSettings,
    Secret,
    TransientCollectorError,
    build_settings,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Settings(PollSettings):
    url: str
    password: Secret | None = None
    names: tuple[str, ...] = ()

    def problems(self) -> list[str]:
        found = PollSettings.problems(self)
        if not self.url.startswith("https://"):
            found.append(f"url: want https://..., got {self.url!r}")
        return found


def test_settings_list_every_problem_at_once() -> None:
    with pytest.raises(CollectorConfigError) as caught:
        build_settings(_Settings, "pdu-a", {"interval_seconds": "often", "names": "x", "colour": "red"})
    problems = caught.value.problems
    assert any(p.startswith("colour: unknown setting") for p in problems)
    assert any(p.startswith("interval_seconds: want a number") for p in problems)
    assert any(p.startswith("names: want a list") for p in problems)
    assert "url: required" in problems
    assert str(caught.value).startswith("pdu-a: 4 problem(s)")


def test_settings_semantic_problems_follow_type_checks() -> None:
    with pytest.raises(CollectorConfigError) as caught:
        build_settings(_Settings, "pdu-a", {"type": "x", "url": "http://pdu", "timeout_seconds": 30})
    assert caught.value.problems == [
        "timeout_seconds: must be > 0 and <= interval_seconds",
        "url: want https://..., got 'http://pdu'",
    ]


def test_secret_is_never_shown() -> None:
    settings = build_settings(_Settings, "pdu-a", {"url": "https://pdu", "password": "hunter2"})
    assert "hunter2" not in repr(settings)
    assert settings.password is not None and settings.password.reveal() == "hunter2"


def test_monotonic_sums_carry_resets_and_vanished_series() -> None:
    sums = MonotonicSums()
    assert sums.update([("pod-a", "c1", 10.0), ("pod-a", "c2", 5.0)]) == {"pod-a": 15.0}
    # c1 restarted (counter from zero), c2 advanced.
    assert sums.update([("pod-a", "c1", 2.0), ("pod-a", "c2", 6.0)]) == {"pod-a": 18.0}
    # c2 disappears: its 6 stay counted.
    assert sums.update([("pod-a", "c1", 3.0)]) == {"pod-a": 19.0}
    # The pod disappears, then a new pod of the same name starts from scratch.
    assert sums.update([]) == {}
    assert sums.update([("pod-a", "c9", 1.0)]) == {"pod-a": 1.0}


def test_monotonic_sums_count_a_series_that_skips_one_poll_once() -> None:
    # Two containers of one pod at 100 J each; c2's series is missing from one scrape, then is back
    # having advanced to 115 J: the pod has used 225 J, not 325 J (its 100 J counted twice).
    sums = MonotonicSums()
    assert sums.update([("pod-a", "c1", 100.0), ("pod-a", "c2", 100.0)]) == {"pod-a": 200.0}
    assert sums.update([("pod-a", "c1", 110.0)]) == {"pod-a": 210.0}
    assert sums.update([("pod-a", "c1", 110.0), ("pod-a", "c2", 115.0)]) == {"pod-a": 225.0}
    # Back after a gap having reset (restarted while unseen): what it had counted stays counted.
    assert sums.update([("pod-a", "c1", 120.0)]) == {"pod-a": 235.0}
    assert sums.update([("pod-a", "c1", 120.0), ("pod-a", "c2", 4.0)]) == {"pod-a": 239.0}


class _Flaky(PolledCollector):
    def __init__(self, failures: list[BaseException], registry: CollectorRegistry, **poll: float) -> None:
        super().__init__("flaky", PollSettings(backoff_seconds=0.0, **poll), registry=registry)  # type: ignore[arg-type]
        self.failures = failures
        self.calls = 0

    async def _poll(self) -> list[Sample]:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return [Sample(metric="x_watts", value=1.0, timestamp_seconds=0.0)]


async def test_transient_failures_are_retried_within_one_poll(registry: CollectorRegistry) -> None:
    collector = _Flaky([TransientCollectorError("refused"), TransientCollectorError("refused")], registry)
    samples = await collector.collect()
    assert [s.metric for s in samples] == ["x_watts"]
    assert collector.calls == 3
    assert registry.get_sample_value("wattscale_collector_source_samples", {"collector": "flaky"}) == 1.0
    assert registry.get_sample_value(
        "wattscale_collector_source_last_success_timestamp_seconds", {"collector": "flaky"}
    )


async def test_malformed_answers_are_not_retried_and_are_counted(registry: CollectorRegistry) -> None:
    collector = _Flaky([CollectorError("not JSON")], registry)
    with pytest.raises(CollectorError, match="not JSON"):
        await collector.collect()
    assert collector.calls == 1
    labels = {"collector": "flaky", "reason": "invalid_answer"}
    assert registry.get_sample_value("wattscale_collector_source_errors_total", labels) == 1.0


async def test_a_hanging_source_times_out(registry: CollectorRegistry) -> None:
    class _Hangs(_Flaky):
        async def _poll(self) -> list[Sample]:
            self.calls += 1
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    collector = _Hangs([], registry, timeout_seconds=0.05, interval_seconds=1.0, retries=1)
    with pytest.raises(TransientCollectorError, match=r"no answer within 0\.05 s"):
        await collector.collect()
    assert collector.calls == 2
    labels = {"collector": "flaky", "reason": "transient"}
    assert registry.get_sample_value("wattscale_collector_source_errors_total", labels) == 1.0


async def test_output_is_bounded(registry: CollectorRegistry) -> None:
    class _Floods(_Flaky):
        async def _poll(self) -> list[Sample]:
            return [Sample(metric="x_watts", value=1.0, timestamp_seconds=0.0)] * 11

    collector = _Floods([], registry, max_samples=10)
    with pytest.raises(CollectorError, match="11 samples exceed max_samples=10"):
        await collector.collect()


def test_self_metrics_follow_each_registry_even_when_one_dies() -> None:
    import gc

    from collectors.support import self_metrics

    for _ in range(50):  # ids of collected registries get reused: each new one must get its own metrics
        registry = CollectorRegistry()
        self_metrics(registry).errors_total.labels("c", "transient").inc()
        assert (
            registry.get_sample_value(
                "wattscale_collector_source_errors_total", {"collector": "c", "reason": "transient"}
            )
            == 1.0
        )
        del registry
        gc.collect()
