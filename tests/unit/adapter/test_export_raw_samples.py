"""`wattscale export` keeps every raw sample, even one that no query step saw (a late scrape less than a
step before the next one), against a fake Prometheus that answers range queries as Prometheus does."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prometheus_api_client import PrometheusConnect

from adapter.commands.export import _range_rows
from collectors.prometheus_api import SAMPLE_TIME_OF

NAME = "vllm:generation_tokens_total"
LABELS = {"namespace": "llm", "pod": "llama-0", "job": "vllm"}
# Read at 1 s steps, the steps see the samples at 0.5, 2.0 and 3.0 s; those at 1.3 and 1.8 s (late
# scrapes, each followed by another before the next step) fall between two steps.
RAW = [(0.5, 10.0), (1.3, 20.0), (1.8, 30.0), (2.0, 40.0), (3.0, 50.0)]


class FakePrometheus(PrometheusConnect):
    """A range query for values and their times gives each step the newest raw sample at or before it,
    and its time (`timestamp(...)`, marked); a range selector gives the raw samples in (time - range, time]."""

    def __init__(self) -> None:  # no HTTP session: nothing is fetched
        pass

    def custom_query_range(
        self, query: str, start_time: datetime, end_time: datetime, step: str, **_: Any
    ) -> Any:
        assert query.endswith(
            f'or label_replace(timestamp({{__name__="{NAME}"}}), "{SAMPLE_TIME_OF}", "{NAME}", "", "")'
        )
        first, last, every = start_time.timestamp(), end_time.timestamp(), float(step)
        steps = [first + k * every for k in range(int((last - first) / every) + 1)]
        newest = [max(((t, v) for t, v in RAW if t <= at), default=None) for at in steps]
        values = [[at, str(seen[1])] for at, seen in zip(steps, newest, strict=True) if seen]
        stamps = [[at, str(seen[0])] for at, seen in zip(steps, newest, strict=True) if seen]
        return [
            {"metric": {"__name__": NAME, **LABELS}, "values": values},
            {"metric": {**LABELS, SAMPLE_TIME_OF: NAME}, "values": stamps},
        ]

    def custom_query(self, query: str, params: dict[str, Any] | None = None) -> Any:
        assert params is not None and query.endswith("ms]")
        at, span = float(params["time"]), float(query[query.rindex("[") + 1 : -3]) / 1000
        values = [[t, str(v)] for t, v in RAW if at - span < t <= at]
        return [{"metric": {"__name__": NAME, **LABELS}, "values": values}]


def test_a_sample_no_step_saw_is_exported_at_its_own_instant() -> None:
    start, end = (datetime.fromtimestamp(t, tz=UTC) for t in (0.0, 3.0))
    rows = _range_rows(FakePrometheus(), [NAME], "", start, end, "1")
    exported = sorted(set(zip(rows["timestamp_seconds"], rows["value"], strict=True)))
    assert exported == sorted(RAW)
    # Only the raw read saw 1.3 s: it is a step of its own, with the series' labels.
    late = rows[rows["timestamp_seconds"] == 1.3]
    assert late["step_seconds"].tolist() == [1.3]
    assert dict(late["labels"].iloc[0]) == LABELS
